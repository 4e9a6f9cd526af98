// The cost model: what the kernel paths and the hardware walk cost in simulated cycles. The
// kernel paths only say what they touch and do (an entry, a struct page and its atomics, a page
// allocation or copy, one of the operations in Op) and which phase they are in; everything that
// turns that into cycles, per CPU and per process, is here, and does nothing (one branch) when
// the timing model is off (hw null). The Kernel is a CostModel; src/mmu/timing.cpp has the
// out-of-line parts (settling statistics at a context switch, lock timing, TLB flushes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "cowpte/model/interleave.hpp"
#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable.hpp"
#include "cowpte/model/spinlock.hpp"
#include "cowpte/stats.hpp"
#include "mmu/hw.hpp"

namespace cowpte {

class CostModel {
 public:
  // The kernel's operations with a fixed cost in TimingConfig (calibrated or estimated there).
  enum class Op : std::uint8_t {
    pte,        // one PTE handled by a fork, zap, mprotect or table copy (pte_op)
    vma,        // one VMA duplicated by fork (vma_op)
    fork_base,  // copy_process: task, creds, files, signals, pid (fork_base)
    page_copy,  // copy_user_highpage (page_copy)
  };
  template <bool Hooks = true>
  void tm_op(Op op) noexcept {
    if (Hooks && cur_cpu) [[unlikely]]
      cur_cpu->clock += op_cycles(op);
  }

  std::unique_ptr<Hardware> hw;  // null when the timing model is off
  Cpu* cur_cpu = nullptr;        // the CPU the current kernel path runs on, while timed
  // Whether a kernel path's hooks can act: the timing model's charges, the explorer's
  // interleaving points (with_hooks runs a loop compiled without them otherwise).
  bool hooks_on() const noexcept { return cur_cpu || current_interleaver; }
  // The machine's time: when the latest operation (a user access or a system call of any task,
  // a khugepaged pass) started. The facade's calls are events in this order; an operation never
  // starts before the one called before it, so CPUs overlap but never run backwards in time.
  std::uint64_t now = 0;
  // A CPU has nothing to run until t: its clock moves there and the gap counts as idle.
  static void idle_until(Cpu& cpu, std::uint64_t t) noexcept {
    if (t > cpu.clock) {
      cpu.stats.idle_cycles += t - cpu.clock;
      cpu.idle += t - cpu.clock;
      cpu.clock = t;
    }
  }
  // An operation starts on cpu no earlier than `ready` (the task's runnable time) and the
  // machine's time; that start is the machine's time from now on.
  void start_at(Cpu& cpu, std::uint64_t ready) noexcept {
    idle_until(cpu, std::max(ready, now));
    now = cpu.clock;
  }
  std::vector<HwStats> proc_stats;  // per process (index pid - 1)
  std::unique_ptr<LockTiming> timed_locks;
  // Charge cycles, a data access to an entry, the struct page line of a frame (with an atomic
  // read-modify-write of its counters), to the current CPU. One branch when timing is off;
  // nothing in a loop compiled without hooks (Hooks false: with_hooks, hooks_on).
  void tm_cycles(std::uint64_t c) noexcept {
    if (cur_cpu) [[unlikely]]
      cur_cpu->clock += c;
  }
  template <bool Hooks = true>
  void tm_entry(EntryRef e) noexcept {
    if (Hooks && cur_cpu) [[unlikely]]
      hw->access(*cur_cpu, (raw(mem_->pfn(*e.table)) << PAGE_SHIFT) |
                               std::uint64_t(e.p - table_base(*e.table)) * 8);
  }
  template <bool Hooks = true>
  void tm_page(const Page& p, unsigned atomics = 0) noexcept {
    if (Hooks && cur_cpu) [[unlikely]] {
      hw->access_struct_page(*cur_cpu, raw(mem_->pfn(p)));
      cur_cpu->clock += std::uint64_t(atomics) * hw->cfg.atomic_rmw;
    }
  }
  void tm_page_alloc(const Page* p, bool zero) noexcept {
    if (cur_cpu && p) [[unlikely]] {
      tm_page(*p, 1);
      cur_cpu->clock += hw->cfg.page_alloc + (zero ? hw->cfg.page_zero : 0);
    }
  }
  void tm_page_copy() noexcept { tm_op(Op::page_copy); }
  // Time a path: count it and add its cycles to the CPU's and the process's phase.
  class PhaseScope {
   public:
    PhaseScope(CostModel& k, Phase p) noexcept
        : k_(k), p_(p), start_(k.cur_cpu ? k.cur_cpu->clock : 0) {}
    ~PhaseScope() {
      if (k_.cur_cpu) [[unlikely]]
        k_.end_phase(p_, start_);
    }
    PhaseScope(const PhaseScope&) = delete;
    PhaseScope& operator=(const PhaseScope&) = delete;

   private:
    CostModel& k_;
    Phase p_;
    std::uint64_t start_;
  };
  void end_phase(Phase p, std::uint64_t start) noexcept { end_phase(*cur_cpu, p, start); }
  static void end_phase(Cpu& cpu, Phase p, std::uint64_t start) noexcept {
    PhaseStat& s = cpu.stats.phase[std::size_t(p)];
    ++s.count;
    s.cycles += cpu.clock - start;
  }
  void settle_stats(Cpu& cpu, int new_owner) noexcept;  // credit the CPU's owner, switch

 protected:
  explicit CostModel(const PhysMem* mem) noexcept : mem_(mem) {}
  ~CostModel() = default;

 private:
  std::uint64_t op_cycles(Op op) const noexcept {
    const TimingConfig& c = hw->cfg;
    switch (op) {
      case Op::pte:
        return c.pte_op;
      case Op::vma:
        return c.vma_op;
      case Op::fork_base:
        return c.fork_base;
      case Op::page_copy:
        return c.page_copy;
    }
    return 0;
  }
  const PhysMem* mem_;  // the Kernel's, for the physical addresses of entries and struct pages
};

}  // namespace cowpte
