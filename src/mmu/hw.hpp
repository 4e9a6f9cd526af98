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

#include "cowpte/stats.hpp"
#include "cowpte/timing_config.hpp"
#include "cowpte/types.hpp"
#include "mmu/set_assoc.hpp"

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

struct Cpu {
  explicit Cpu(const TimingConfig& c)
      : dtlb_4k(c.dtlb_4k.sets, c.dtlb_4k.ways),
        dtlb_2m(c.dtlb_2m.sets, c.dtlb_2m.ways),
        dtlb_1g(c.dtlb_1g.sets, c.dtlb_1g.ways),
        stlb(c.stlb.sets, c.stlb.ways),
        pml4e(c.pwc_pml4e.sets, c.pwc_pml4e.ways),
        pdpte(c.pwc_pdpte.sets, c.pwc_pdpte.ways),
        pde(c.pwc_pde.sets, c.pwc_pde.ways),
        l1d(c.l1d.sets, c.l1d.ways),
        l2(c.l2.sets, c.l2.ways) {}

  // Keys: PCID << 36 | virtual page number of the entry's size (tlb_key). The STLB holds 4 KiB
  // and 2 MiB translations (Skylake's is shared), the 2 MiB ones keyed with kStlbHuge set.
  SetAssoc<TlbEntry> dtlb_4k, dtlb_2m, dtlb_1g, stlb;
  // The DTLB slot used last: the most recently used way of its set, so hitting it again needs
  // no LRU update (a simulation shortcut, invisible in the results).
  std::uint64_t mru_key = ~0ull;
  std::size_t mru_slot = 0;
  SetAssoc<PwcEntry> pml4e, pdpte, pde;  // keys: PCID << 36 | va >> 39, 30, 21
  SetAssoc<> l1d, l2;                    // keys: physical line number
  std::uint64_t last_line = ~0ull;       // the line the last access touched (an L1 hit again)
  bool stlb_huge = false;                // the STLB may hold a 2 MiB translation
  std::uint64_t clock = 0;               // cycles this CPU has run
  std::uint64_t clock_at_reset = 0;      // clock when Machine::reset_stats() last ran
  std::uint64_t idle = 0;                // cycles of clock spent idle, ever (stats: since reset)
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
// A 2 MiB translation in the STLB: bit 35 is above every 4 KiB page number of a 47-bit space.
inline constexpr std::uint64_t kStlbHuge = 1ull << 35;
inline std::uint64_t stlb_key_2m(unsigned pcid, vaddr_t va) noexcept {
  return tlb_key(pcid, va, 21) | kStlbHuge;
}

class Hardware {
 public:
  // The geometry of TimingConfig's default caches, which the lookups run with constants when
  // every CPU has it (fixed_geometry_).
  static constexpr std::uint32_t kL1Sets = 64, kL1Ways = 8, kL2Sets = 1024, kL2Ways = 16,
                                 kLlcSets = 8192, kLlcWays = 16;

  Hardware(const TimingConfig& cfg, unsigned cpus, std::uint64_t memory_bytes);

  const TimingConfig cfg;
  std::vector<Cpu> cpus;
  SetAssoc<> llc;
  const std::uint64_t vmemmap_base;  // physical address of struct page records (64 B each)

  // One data access by cpu at a physical address: its latency, charged to the CPU.
  std::uint64_t access(Cpu& cpu, std::uint64_t paddr) noexcept {
    const std::uint64_t line = paddr >> 6;
    // An L1 hit on the line accessed last (its set's most recent), or on one of the two most
    // recent lines of its set: no call, nothing looked up.
    if (line == cpu.last_line || l1_hit_recent(cpu, line)) return l1_hit(cpu, line);
    cpu.last_line = line;
    return miss_path(cpu, line);
  }
  // access for a line that is rarely one of its L1 set's two most recent (a struct page that a
  // fork or an exit walks to once per page): the same answer, without the inline check first.
  std::uint64_t access_cold(Cpu& cpu, std::uint64_t paddr) noexcept {
    const std::uint64_t line = paddr >> 6;
    if (line == cpu.last_line) return l1_hit(cpu, line);
    cpu.last_line = line;
    return miss_path(cpu, line);
  }
  // An access to a frame's struct page: through the caches, or, without
  // cfg.struct_pages_cached, charged as an L1 miss that hits L2 (and counted as that L2 hit)
  // without entering them.
  std::uint64_t access_struct_page(Cpu& cpu, std::uint64_t pfn) noexcept {
    if (cfg.struct_pages_cached) [[likely]]
      return access_cold(cpu, struct_page_addr(pfn));
    ++cpu.stats.l2_hits;
    const std::uint64_t lat = cfg.l1d.latency + cfg.l2.latency;
    cpu.clock += lat;
    return lat;
  }
  std::uint64_t struct_page_addr(std::uint64_t pfn) const noexcept {
    return vmemmap_base + pfn * 64;
  }

  // Invalidate what a CPU caches for a PCID: one page (INVLPG, which also drops every
  // paging-structure cache entry of the PCID, SDM 4.10.4.1) or everything.
  void invlpg(Cpu& cpu, unsigned pcid, vaddr_t va) noexcept;
  void drop_translation(Cpu& cpu, unsigned pcid, vaddr_t va) noexcept;
  void flush_pcid(Cpu& cpu, unsigned pcid) noexcept;

  std::string stats_json() const;  // every CPU's statistics

 private:
  // An L1 hit the inline checks found: line is its set's most recent now.
  std::uint64_t l1_hit(Cpu& cpu, std::uint64_t line) noexcept {
    cpu.last_line = line;
    ++cpu.stats.l1d_hits;
    cpu.clock += cfg.l1d.latency;
    return cfg.l1d.latency;
  }
  [[gnu::always_inline]] bool l1_hit_recent(Cpu& cpu, std::uint64_t line) noexcept {
    return fixed_geometry_ ? cpu.l1d.hit_recent_fixed<kL1Sets, kL1Ways>(line)
                           : cpu.l1d.hit_recent(line);
  }
  std::uint64_t miss_path(Cpu& cpu, std::uint64_t line) noexcept;
  // miss_path for the geometry of L1D, L2 and LLC given as template arguments (sets, ways
  // each), which every CPU has (fixed_geometry_); 0s: the run-time geometry.
  template <std::uint32_t L1S, std::uint32_t L1W, std::uint32_t L2S, std::uint32_t L2W,
            std::uint32_t LlcS, std::uint32_t LlcW>
  std::uint64_t miss_path_for(Cpu& cpu, std::uint64_t line) noexcept;
  bool fixed_geometry_ = false;  // every CPU's caches have TimingConfig's default geometry
};

}  // namespace cowpte
