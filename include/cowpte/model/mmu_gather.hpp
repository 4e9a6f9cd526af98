// struct mmu_gather (include/asm-generic/tlb.h, mm/mmu_gather.c): a zap batches the pages and
// table frames that may be freed only after the TLB flush. The hardware TLBs belong to the timing
// model (src/mmu/); the functional model walks the tables on every access.
//
// Pages are gathered in a batch of Linux's size: the 8 of the on-stack bundle plus 19 batch
// pages of 510 pointers each (MMU_GATHER_BUNDLE + MAX_GATHER_BATCH_COUNT * MAX_GATHER_BATCH on
// x86-64, assuming each batch page's GFP_NOWAIT allocation succeeds; those pages are kernel
// memory the model does not take from simulated memory). A full batch makes the zap flush the
// TLB and free what it gathered before it goes on (tlb_flush_mmu), so a gather never grows
// with the size of the process. Table frames are few (one per 512 pages) and are freed at the
// next flush, as tlb_remove_table's batch is.
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
  std::size_t tables_flushed = 0;      // tables[0, this) are covered by a flush already

  static constexpr std::size_t MMU_GATHER_BUNDLE = 8, MAX_GATHER_BATCH = 510,
                               MAX_GATHER_BATCH_COUNT = 10000 / MAX_GATHER_BATCH;
  static constexpr std::size_t kMaxPages =
      MMU_GATHER_BUNDLE + MAX_GATHER_BATCH_COUNT * MAX_GATHER_BATCH;

  MmGather(MmStruct& m, bool full) : mm(&m), fullmm(full), pages(take_spare()) {}
  ~MmGather() { keep_spare(pages); }
  MmGather(const MmGather&) = delete;
  MmGather& operator=(const MmGather&) = delete;
  // __tlb_remove_page: queue a page reference; true when the batch is now full and the caller
  // must flush (tlb_flush_mmu, which throws if it finds more than a batch) before it queues
  // another.
  bool __tlb_remove_page(Page& page) {
    pages.push_back(&page);
    return pages.size() >= kMaxPages;
  }
  bool cleared_ptes = false;  // 4 KiB translations were cleared (else only huge PMDs)
  void tlb_remove_tlb_entry(vaddr_t addr, std::uint64_t size) {  // tlb_flush_pte_range
    start = std::min(start, addr);
    end = std::max(end, addr + size);
    cleared_ptes = true;
  }
  void tlb_remove_pmd_tlb_entry(vaddr_t addr, std::uint64_t size) {  // tlb_flush_pmd_range
    start = std::min(start, addr);
    end = std::max(end, addr + size);
  }
  // tlb_get_unmap_shift: a range of huge PMDs only is flushed one INVLPG per 2 MiB.
  unsigned unmap_shift() const noexcept { return cleared_ptes ? 12 : 21; }
  bool need_flush() const { return end > start; }

 private:
  // The host storage of pages, reused from one gather to the next on a host thread (Linux's
  // batch pages are kernel memory the model does not simulate). Grown afresh by every gather, a
  // full batch's 80 KiB crossed glibc's mmap and trim thresholds, so that every other exit
  // mapped (or trimmed) and faulted it in again: 7 ns per page of a 64 MiB exit instead of 4.3.
  static std::vector<Page*>& spare() {
    thread_local std::vector<Page*> v;
    return v;
  }
  static std::vector<Page*> take_spare() {
    std::vector<Page*> v;
    v.swap(spare());  // a nested gather finds none and allocates its own
    v.reserve(kMaxPages);
    return v;
  }
  static void keep_spare(std::vector<Page*>& v) noexcept {
    if (v.capacity() <= spare().capacity()) return;
    v.clear();
    spare().swap(v);
  }
};

}  // namespace cowpte
