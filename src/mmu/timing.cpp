// The timing model's kernel side: statistics settled at a context switch, lock timing in
// simulated time, the hardware statistics as JSON. TLB flushes are in src/mmu/tlb.cpp.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <unordered_map>

#include "mm/kernel.hpp"

namespace cowpte {

namespace {

// Simulated-time locks: each lock remembers when its last writer (and its last reader) let it
// go. A CPU taking it earlier than that waits until then: contention between CPUs' kernel
// paths, deterministic for a given operation order.
class TimedLocks final : public LockTiming {
 public:
  explicit TimedLocks(Kernel& k) : k_(k) {}

  void acquire(const void* lock, bool exclusive) override {
    Cpu* cpu = k_.cur_cpu;
    if (!cpu) return;
    const Times& t = times(lock);
    const std::uint64_t ready = exclusive ? std::max(t.write_free, t.read_free) : t.write_free;
    if (ready > cpu->clock) {
      ++cpu->stats.lock_waits;
      cpu->stats.lock_wait_cycles += ready - cpu->clock;
      cpu->clock = ready;
    }
    cpu->clock += k_.hw->cfg.lock_acquire;
  }
  void release(const void* lock, bool exclusive) override {
    Cpu* cpu = k_.cur_cpu;
    if (!cpu) return;
    cpu->clock += k_.hw->cfg.lock_release;
    Times& t = times(lock);
    std::uint64_t& at = exclusive ? t.write_free : t.read_free;
    at = std::max(at, cpu->clock);
  }

 private:
  struct Times {
    std::uint64_t write_free = 0, read_free = 0;
  };
  // One record per lock ever taken: split locks of table frames (one frame in 512), the mm's
  // page_table_lock and mmap_lock. A hash map, not an array over every frame: that array cost
  // 16 bytes of host memory per simulated frame.
  // The lock used last is remembered: a path releases the lock it took (node-based map: a
  // record's address never changes).
  Times& times(const void* lock) {
    if (lock != last_lock_) last_lock_ = lock, last_times_ = &by_address_[lock];
    return *last_times_;
  }
  Kernel& k_;
  std::unordered_map<const void*, Times> by_address_;
  const void* last_lock_ = nullptr;
  Times* last_times_ = nullptr;
};

}  // namespace

std::unique_ptr<LockTiming> make_timed_locks(Kernel& k) { return std::make_unique<TimedLocks>(k); }

void CostModel::settle_stats(Cpu& cpu, int new_owner) noexcept {
  if (cpu.owner) {
    HwStats delta = cpu.stats;
    delta -= cpu.at_switch;
    proc_stats[std::size_t(cpu.owner - 1)] += delta;
  }
  cpu.at_switch = cpu.stats;
  cpu.owner = new_owner;
}

nlohmann::json hw_stats_to_json(const HwStats& s);  // src/mmu/hw.cpp

std::string Kernel::trace_stamp() const {
  if (!cur_cpu) return {};
  return fmt::format("cycle {} cpu {}: ", cur_cpu->clock, cur_cpu - hw->cpus.data());
}

// The statistics start again from zero (after a warm-up); the clocks go on, and each CPU's
// JSON says how far it ran since.
void Machine::reset_stats() {
  Kernel& k = *kernel_;
  if (!k.hw) return;
  for (Cpu& c : k.hw->cpus) {
    k.settle_stats(c, c.owner);
    c.stats = {};
    c.at_switch = {};
    c.clock_at_reset = c.clock;
  }
  std::fill(k.proc_stats.begin(), k.proc_stats.end(), HwStats{});
}

std::string Process::hw_stats_json() const {
  const Kernel& k = machine_->kernel();
  if (!k.hw) return "{}";
  nlohmann::json j = hw_stats_to_json(hw_stats());
  j["pid"] = pid_;
  j["cpu"] = cpu_;
  return j.dump(2);
}

std::string Machine::hw_stats_json() const {
  Kernel& k = const_cast<Kernel&>(*kernel_);
  if (!k.hw) return "{}";
  for (Cpu& c : k.hw->cpus) k.settle_stats(c, c.owner);
  nlohmann::json j;
  j["ghz"] = k.hw->cfg.ghz;
  j["cpus"] = nlohmann::json::parse(k.hw->stats_json());
  for (std::size_t i = 0; i < k.proc_stats.size(); ++i) {
    nlohmann::json p = hw_stats_to_json(k.proc_stats[i]);
    p["pid"] = i + 1;
    j["processes"].push_back(std::move(p));
  }
  return j.dump(2);
}

}  // namespace cowpte
