// struct mmu_gather (include/asm-generic/tlb.h, mm/mmu_gather.c): a zap batches the pages and
// table frames that may be freed only after the TLB flush. The hardware TLBs belong to the timing
// model (src/mmu/); the functional model walks the tables on every access.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cowpte/types.hpp"

namespace cowpte {

struct Page;
struct MmStruct;

// struct mmu_gather.
struct MmGather {
  MmStruct* mm = nullptr;
  bool fullmm = false;                 // exit_mmap: the whole address space goes
  bool free_tables = false;            // munmap: free_pgtables follows the zap (unmap_region)
  vaddr_t zap_start = 0, zap_end = 0;  // the whole range of a multi-VMA zap (MADV_DONTNEED)
  vaddr_t cow_pte_span = ~0ull;        // the shared table this zap de-accounted last
  vaddr_t start = ~0ull, end = 0;      // the range whose translations must be flushed
  std::vector<Page*> pages;            // references to drop after the flush (__tlb_remove_page)
  std::vector<Page*> tables;           // table frames to free after the flush (tlb_remove_table)

  MmGather(MmStruct& m, bool full) : mm(&m), fullmm(full) {}
  void tlb_remove_tlb_entry(vaddr_t addr, std::uint64_t size) {  // tlb_flush_pte_range
    start = std::min(start, addr);
    end = std::max(end, addr + size);
  }
  bool need_flush() const { return end > start; }
};

}  // namespace cowpte
