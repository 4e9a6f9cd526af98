// The hardware side of the timing model: CPUs with their TLBs, paging-structure caches and
// private caches, a shared last-level cache, DRAM, and the statistics each CPU keeps. Every
// structure is a SetAssoc with LRU (set_assoc.hpp); geometry and latencies come from
// TimingConfig. Caches are indexed by physical address; there is no coherence traffic between
// the private caches (a simplification: atomics and locks cost their uncontended price plus
// whatever miss the line takes).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "cowpte/set_assoc.hpp"
#include "cowpte/timing_config.hpp"
#include "cowpte/types.hpp"

namespace cowpte {

// What a TLB entry caches: the frame, and the rights the walk found (RW and U are the AND of
// every level; dirty: the PTE had D set, so a write may use the entry without walking again).
struct TlbEntry {
  std::uint64_t pfn = 0;
  bool writable = false;
  bool dirty = false;
};
// A paging-structure cache entry: the frame of the next table, and whether every level so far
// allowed writes.
struct PwcEntry {
  std::uint64_t table = 0;
  bool writable = false;
};

// Where the cycles went, per CPU and per process.
enum class Phase : std::uint8_t {
  user_access,          // loads and stores, including TLB misses and walks
  fork,                 // kernel_clone, the whole address-space copy
  fault_anonymous,      // do_anonymous_page
  fault_wp,             // do_wp_page (COW copy, reuse, unshare)
  fault_shmem,          // do_fault on shmem
  break_cow_pte,        // break_cow_pte (the seed's COW PTE)
  tfork_one_pte_table,  // On-demand-fork's table copy
  zap,                  // munmap / MADV_DONTNEED
  exit,                 // exit_mmap
  other_syscall,        // mmap, mprotect, madvise, pin, ...
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
  HwStats& operator+=(const HwStats& o) noexcept;
  HwStats& operator-=(const HwStats& o) noexcept;
};

struct Cpu {
  explicit Cpu(const TimingConfig& c)
      : dtlb_4k(c.dtlb_4k.sets, c.dtlb_4k.ways),
        stlb(c.stlb.sets, c.stlb.ways),
        pml4e(c.pwc_pml4e.sets, c.pwc_pml4e.ways),
        pdpte(c.pwc_pdpte.sets, c.pwc_pdpte.ways),
        pde(c.pwc_pde.sets, c.pwc_pde.ways),
        l1d(c.l1d.sets, c.l1d.ways),
        l2(c.l2.sets, c.l2.ways) {}

  SetAssoc<TlbEntry> dtlb_4k, stlb;  // keys: PCID << 36 | virtual page number
  // The DTLB slot used last: the most recently used way of its set, so hitting it again needs
  // no LRU update (a simulation shortcut, invisible in the results).
  std::uint64_t mru_key = ~0ull;
  std::size_t mru_slot = 0;
  SetAssoc<PwcEntry> pml4e, pdpte, pde;  // keys: PCID << 36 | va >> 39, 30, 21
  SetAssoc<> l1d, l2;                    // keys: physical line number
  std::uint64_t clock = 0;               // cycles this CPU has run
  std::uint64_t last_line = ~0ull;       // the line the last access touched (an L1 hit again)
  HwStats stats;
  // The process whose account the counters since at_switch belong to (a context switch, or a
  // read of the statistics, settles them).
  int owner = 0;
  HwStats at_switch;
};

// TLB and PWC keys: the PCID in the bits above a 36-bit page number (a 48-bit address space
// has 36 bits of 4 KiB page number).
inline std::uint64_t tlb_key(unsigned pcid, vaddr_t va, unsigned shift) noexcept {
  return (std::uint64_t(pcid) << 36) | (va >> shift);
}

class Hardware {
 public:
  Hardware(const TimingConfig& cfg, unsigned cpus, std::uint64_t memory_bytes);

  const TimingConfig cfg;
  std::vector<Cpu> cpus;
  SetAssoc<> llc;
  const std::uint64_t vmemmap_base;  // physical address of struct page records (64 B each)

  // One data access by cpu at a physical address: its latency, charged to the CPU.
  std::uint64_t access(Cpu& cpu, std::uint64_t paddr) noexcept {
    const std::uint64_t line = paddr >> 6;
    if (line == cpu.last_line) {  // the same line as the previous access: an L1 hit
      ++cpu.stats.l1d_hits;
      cpu.clock += cfg.l1d.latency;
      return cfg.l1d.latency;
    }
    cpu.last_line = line;
    return miss_path(cpu, line);
  }
  std::uint64_t struct_page_addr(std::uint64_t pfn) const noexcept {
    return vmemmap_base + pfn * 64;
  }

  // Invalidate what a CPU caches for a PCID: one page (INVLPG, which also drops every
  // paging-structure cache entry of the PCID, SDM 4.10.4.1) or everything.
  void invlpg(Cpu& cpu, unsigned pcid, vaddr_t va) noexcept;
  void flush_pcid(Cpu& cpu, unsigned pcid) noexcept;

  std::string stats_json() const;  // every CPU's statistics

 private:
  std::uint64_t miss_path(Cpu& cpu, std::uint64_t line) noexcept;
};

}  // namespace cowpte
