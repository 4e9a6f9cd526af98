// The timing model's description of the machine: TLBs, paging-structure caches, data caches,
// latencies and the cost of the kernel's basic operations. Every default names where it comes
// from (docs/model.md, "Timing model", lists the sources); "estimate" marks a
// figure no source pins down, and "calibrated" one set by `cowpte_calibrate` against this
// machine's real fork. Loadable from JSON (config_io.hpp); `enabled = false` is the functional
// model alone, at full speed.
#pragma once

#include <cstdint>

namespace cowpte {

struct ArrayGeometry {  // a set-associative structure
  std::uint32_t sets = 1;
  std::uint32_t ways = 1;
  std::uint32_t latency = 1;  // cycles to answer a lookup
  std::uint32_t entries() const noexcept { return sets * ways; }
};

struct TimingConfig {
  bool enabled = false;
  double ghz = 2.45;  // this project's machine: "AMD EPYC" at 2445 MHz (/proc/cpuinfo)

  // TLBs: Skylake (Intel Optimization Reference Manual, Table 2-15); STLB latency ChampSim's.
  ArrayGeometry dtlb_4k{16, 4, 1};  // 64 entries, 4-way
  ArrayGeometry dtlb_2m{8, 4, 1};   // 32 entries, 4-way
  ArrayGeometry dtlb_1g{1, 4, 1};   // 4 entries
  ArrayGeometry stlb{128, 12, 8};   // 1536 entries, 12-way, 8 cycles (ChampSim)
  // Paging-structure caches (SDM 3A 4.10.3): ChampSim-like sizes, 1 cycle.
  ArrayGeometry pwc_pml4e{1, 2, 1};  // 2 entries
  ArrayGeometry pwc_pdpte{1, 4, 1};  // 4 entries
  ArrayGeometry pwc_pde{4, 8, 1};    // 32 entries
  // Data caches, physically indexed, 64-byte lines; latencies ChampSim's defaults.
  ArrayGeometry l1d{64, 8, 5};       // 32 KiB, 8-way
  ArrayGeometry l2{1024, 16, 10};    // 1 MiB, 16-way (Skylake-SP)
  ArrayGeometry llc{8192, 16, 20};   // 8 MiB, 16-way, shared (ChampSim-like)
  std::uint32_t dram_latency = 200;  // ~80 ns loaded latency at 2.4 GHz (estimate)
  bool next_line_prefetch = true;    // an L1 miss also brings the next line into L2 and LLC
  // Whether struct page accesses (the refcount and mapcount updates of a fork, a zap, a fault)
  // go through the simulated caches (true: exact, the default) or skip them, each charged as an
  // L1 miss that hits L2 (false: the latency a fork's or an exit's stream of struct pages
  // mostly gets from the next-line prefetch). false is an approximation for speed: timed forks
  // and exits run about twice as fast on the host; simulated figures move by under 3% in most
  // scenarios, up to 15% in some exits and 36% in On-demand-fork's cold first fork
  // (docs/speed.md, "Struct pages outside the caches").
  bool struct_pages_cached = true;

  // Kernel basic operations, cycles.
  std::uint32_t atomic_rmw = 18;     // LOCK INC m32, L1 hit (uops.info)
  std::uint32_t lock_acquire = 19;   // uncontended spin_lock: one LOCK CMPXCHG (uops.info)
  std::uint32_t lock_release = 1;    // a plain store
  std::uint32_t page_zero = 720;     // 4 KiB at 13.7 GB/s = 300 ns (Arora, clear_pages)
  std::uint32_t page_copy = 1440;    // twice a clear (published: 1-2x, estimate)
  std::uint32_t page_alloc = 120;    // per-cpu free list fast path (estimate)
  std::uint32_t invlpg = 336;        // ~140 ns (Alex Shi, LKML 2012)
  std::uint32_t full_flush = 500;    // CR3 reload / INVPCID single-context (estimate)
  std::uint32_t flush_ceiling = 33;  // tlb_single_page_flush_ceiling (x86 tlb.rst)
  std::uint32_t ipi_send = 2400;     // shootdown round trip seen by the initiator, ~1 us
                                     // (Amit ATC'17: "microseconds"; informal 1-3 us)
  std::uint32_t ipi_handle = 1200;   // the target's interrupt + flush handler (estimate)
  std::uint32_t exception = 600;     // #PF entry and exit, no KPTI (estimate)
  std::uint32_t syscall = 100;       // SYSCALL/SYSRET round trip (estimate)
  // What one PTE of a fork, zap or mprotect loop costs beyond the accesses charged one by one:
  // the instructions of copy_present_pte and the folio and rmap helpers, and, on this machine,
  // the hypervisor's nested paging (calibrated with cowpte_calibrate, README).
  std::uint32_t pte_op = 190;
  std::uint32_t vma_op = 800;       // vm_area_dup + anon_vma_fork + tree insert per VMA
                                    // (estimate)
  std::uint32_t fork_base = 60000;  // copy_process without the address space: task,
                                    // files, signals, pid (calibrated, ~25 us)
  // The swap device, charged to the CPU that waits for it: a swap-in fault's read, and
  // reclaim's write (the model writes synchronously). An NVMe SSD at queue depth 1: 80 us for
  // a 4 KiB random read (AnandTech's QD1 random reads: ~8,900 IOPS = 112 us for an Intel DC
  // P3700, ~50 us for a 2025 client drive; simplyblock's glossary: 20-70 us); 20 us for a write
  // the drive acknowledges from its cache (estimate; device-level random writes 30-100 us).
  // docs/model.md lists zram (~2 us) and a SATA SSD (100-200 us) as alternatives.
  std::uint32_t swap_in = 196000;
  std::uint32_t swap_out = 49000;
};

}  // namespace cowpte
