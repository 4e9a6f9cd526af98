// The timing model's kernel side: statistics settled at a context switch, lock timing in
// simulated time, the hardware statistics as JSON. TLB flushes are in src/mmu/tlb.cpp.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <unordered_map>

#include "mm/kernel.hpp"

namespace cowpte {

namespace {

// Simulated-time locks. Each lock remembers the intervals its last holders held it, writers
// and readers apart. A CPU that takes it at a time inside another holder's interval waits
// until that holder let go (and again if that lands in another interval); a time outside
// every interval takes it at once, even when a holder came later on another CPU's clock: the
// holders did not overlap. Kernel paths run one at a time, to completion, so a holder's
// interval is known before anyone else asks; what the model cannot see is a later holder on
// another CPU whose start falls inside this holder's interval (it took the lock first in
// simulated order and does not wait). Deterministic for a given order of operations.
class TimedLocks final : public LockTiming {
 public:
  explicit TimedLocks(Kernel& k) : k_(k) {}

  void acquire(const void* lock, bool exclusive) override {
    Cpu* cpu = k_.cur_cpu;
    if (!cpu) return;
    Times& t = times(lock);
    const std::uint64_t ready = t.free_at(cpu->clock, exclusive);
    if (ready > cpu->clock) {
      ++cpu->stats.lock_waits;
      cpu->stats.lock_wait_cycles += ready - cpu->clock;
      cpu->clock = ready;
    }
    cpu->clock += k_.hw->cfg.lock_acquire;
    if (t.depth++ == 0) t.since = cpu->clock;  // a reader may take it again inside its hold
  }
  void release(const void* lock, bool exclusive) override {
    Cpu* cpu = k_.cur_cpu;
    if (!cpu) return;
    cpu->clock += k_.hw->cfg.lock_release;
    Times& t = times(lock);
    if (t.depth == 0 || --t.depth != 0) return;
    t.record(exclusive, Hold{t.since, cpu->clock});
  }

 private:
  struct Hold {
    std::uint64_t from = 0, to = 0;  // [from, to): held
  };
  // The last kHolds holders of each kind: enough for the CPUs that contend on one lock within
  // one operation's span; an older holder's interval is long over by then.
  static constexpr std::size_t kHolds = 4;
  struct Times {
    std::array<Hold, kHolds> writers{}, readers{};
    std::uint8_t next_writer = 0, next_reader = 0;
    unsigned depth = 0;
    std::uint64_t since = 0;

    // When a CPU asking at time `at` may take the lock: a writer waits for every holder, a
    // reader for writers only.
    std::uint64_t free_at(std::uint64_t at, bool exclusive) const noexcept {
      for (bool moved = true; moved;) {
        moved = false;
        for (const Hold& h : writers) moved |= push_past(h, at);
        if (exclusive)
          for (const Hold& h : readers) moved |= push_past(h, at);
      }
      return at;
    }
    static bool push_past(const Hold& h, std::uint64_t& at) noexcept {
      if (h.from <= at && at < h.to) {
        at = h.to;
        return true;
      }
      return false;
    }
    void record(bool exclusive, Hold h) noexcept {
      std::uint8_t& next = exclusive ? next_writer : next_reader;
      (exclusive ? writers : readers)[next] = h;
      next = std::uint8_t((next + 1) % kHolds);
    }
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
    delta.idle_cycles = 0;  // the CPU's, not the process's
    proc_stats[std::size_t(cpu.owner - 1)] += delta;
  }
  cpu.at_switch = cpu.stats;
  cpu.owner = new_owner;
}

void Kernel::context_switch(Cpu& cpu, Process& p) noexcept {
  if (cpu.owner)
    if (Process* prev = procs.find(cpu.owner))
      prev->ready_at_ = std::max(prev->ready_at_, cpu.clock);
  settle_stats(cpu, p.pid());
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
