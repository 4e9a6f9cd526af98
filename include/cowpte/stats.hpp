// The timing model's statistics as the facade reports them: cycles per phase of the kernel and
// user paths, TLB, paging-structure cache and cache hits, walks, flushes and lock waits
// (Machine::hw_stats_json(), Process::hw_stats()).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace cowpte {

// Where the cycles went, per CPU and per process.
enum class Phase : std::uint8_t {
  user_access,          // loads and stores, including TLB misses and walks
  fork,                 // kernel_clone, the whole address-space copy
  fault_anonymous,      // do_anonymous_page
  fault_wp,             // do_wp_page (COW copy, reuse, unshare)
  fault_shmem,          // do_fault on shmem
  fault_swap,           // do_swap_page (swap-in, from the swap cache or the device)
  reclaim,              // reclaim_pages (MADV_PAGEOUT) and swapoff
  break_cow_pte,        // break_cow_pte (the seed's COW PTE)
  tfork_one_pte_table,  // On-demand-fork's table copy
  zap,                  // munmap / MADV_DONTNEED
  exit,                 // exit_mmap
  other_syscall,        // mmap, mprotect, madvise, pin, ...
  collapse,             // khugepaged's scan and MADV_COLLAPSE (collapse_huge_page)
  count
};
const char* to_string(Phase) noexcept;

struct PhaseStat {
  std::uint64_t count = 0;
  std::uint64_t cycles = 0;  // inclusive of nested phases (a break inside a fault counts in both)
};

struct HwStats {
  std::array<PhaseStat, std::size_t(Phase::count)> phase{};
  std::uint64_t dtlb_hits = 0, stlb_hits = 0, tlb_misses = 0;
  std::uint64_t walks = 0, walk_cycles = 0;
  std::uint64_t walk_dirty_rewalks = 0;  // a TLB entry that could not serve a write: walk again
  std::uint64_t pwc_pml4e_hits = 0, pwc_pdpte_hits = 0, pwc_pde_hits = 0;
  std::uint64_t l1d_hits = 0, l2_hits = 0, llc_hits = 0, dram_accesses = 0;
  std::uint64_t invlpg = 0, full_flushes = 0, shootdowns_sent = 0, shootdowns_received = 0;
  std::uint64_t lock_waits = 0, lock_wait_cycles = 0;
  // A CPU's cycles with nothing to run: its clock moved forward to the machine's time, or to
  // the moment a task became runnable (a forked child, a migrated task), or to a shootdown
  // IPI's arrival. Per CPU only (a process is never charged for idle time).
  std::uint64_t idle_cycles = 0;
  HwStats& operator+=(const HwStats& o) noexcept;
  HwStats& operator-=(const HwStats& o) noexcept;
};

}  // namespace cowpte
