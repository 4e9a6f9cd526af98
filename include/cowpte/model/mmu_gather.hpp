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
#include <memory>
#include <vector>

#include "cowpte/types.hpp"

namespace cowpte {

struct Page;
struct MmStruct;

// The page references of a gather: Linux's batches (batch->encoded_pages, batch->nr) as one
// array of `max` pointers. The array is host memory reused from one gather to the next on a host
// thread (Linux's batch pages are kernel memory the model does not simulate): allocated afresh
// by every gather, a full batch's 80 KiB crossed glibc's mmap and trim thresholds, so that every
// other exit mapped (or trimmed) and faulted it in again: 7 ns per page of a 64 MiB exit instead
// of 4.3. A fixed array rather than a vector: no capacity test per page.
class GatherPages {
 public:
  explicit GatherPages(std::size_t max) : max_(max), buf_(take_spare(max)) {}
  ~GatherPages() { keep_spare(std::move(buf_), max_); }
  GatherPages(const GatherPages&) = delete;
  GatherPages& operator=(const GatherPages&) = delete;

  // Queue a reference; true when the array is full. A push to a full array is a model bug.
  bool push(Page* p) {
    if (nr_ == max_) [[unlikely]]
      throw InvariantViolation("mmu_gather: a page queued to a full batch");
    buf_[nr_++] = p;
    return nr_ == max_;
  }
  Page* const* begin() const noexcept { return buf_.get(); }
  Page* const* end() const noexcept { return buf_.get() + nr_; }
  std::size_t size() const noexcept { return nr_; }
  bool empty() const noexcept { return nr_ == 0; }
  void clear() noexcept { nr_ = 0; }

 private:
  using Buf = std::unique_ptr<Page*[]>;
  struct Spare {
    Buf buf;
    std::size_t max = 0;
  };
  static Spare& spare() {
    thread_local Spare s;
    return s;
  }
  static Buf take_spare(std::size_t max) {
    Spare& s = spare();
    if (s.buf && s.max == max) return std::move(s.buf);  // a nested gather finds none
    return Buf(new Page*[max]);
  }
  static void keep_spare(Buf buf, std::size_t max) noexcept {
    Spare& s = spare();
    if (!s.buf) s = Spare{std::move(buf), max};
  }

  std::size_t max_;
  Buf buf_;
  std::size_t nr_ = 0;
};

// struct mmu_gather.
struct MmGather {
  MmStruct* mm = nullptr;
  bool fullmm = false;                 // exit_mmap: the whole address space goes
  bool free_tables = false;            // munmap: free_pgtables follows the zap (unmap_region)
  vaddr_t zap_start = 0, zap_end = 0;  // the whole range of a multi-VMA zap (MADV_DONTNEED)
  vaddr_t cow_pte_span = ~0ull;        // the shared table this zap de-accounted last
  vaddr_t start = ~0ull, end = 0;      // the range whose translations must be flushed
  std::vector<Page*> tables;           // table frames to free after the flush (tlb_remove_table)
  std::size_t tables_flushed = 0;      // tables[0, this) are covered by a flush already

  static constexpr std::size_t MMU_GATHER_BUNDLE = 8, MAX_GATHER_BATCH = 510,
                               MAX_GATHER_BATCH_COUNT = 10000 / MAX_GATHER_BATCH;
  static constexpr std::size_t kMaxPages =
      MMU_GATHER_BUNDLE + MAX_GATHER_BATCH_COUNT * MAX_GATHER_BATCH;

  GatherPages pages{kMaxPages};  // references to drop after the flush (__tlb_remove_page)

  MmGather(MmStruct& m, bool full) : mm(&m), fullmm(full) {}
  MmGather(const MmGather&) = delete;
  MmGather& operator=(const MmGather&) = delete;
  // __tlb_remove_page: queue a page reference; true when the batch is now full and the caller
  // must flush (tlb_flush_mmu) before it queues another.
  bool __tlb_remove_page(Page& page) { return pages.push(&page); }
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
};

}  // namespace cowpte
