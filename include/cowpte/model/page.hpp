// struct page and simulated physical memory: one 32-byte record per frame in one contiguous
// array (like vmemmap), free frames on a Boost.Intrusive free list, and frame contents that
// exist in host memory only after a non-zero store (blocks of a BlockArena). Models
// include/linux/mm_types.h, include/linux/page_ref.h, include/linux/page-flags.h and
// mm/page_alloc.c (order 0 only).
#pragma once

#include <algorithm>
#include <boost/intrusive/slist.hpp>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cowpte/model/block_arena.hpp"
#include "cowpte/model/pgtable_types.hpp"
#include "cowpte/model/spinlock.hpp"
#include "cowpte/types.hpp"

namespace cowpte {

struct ShmemFile;
struct MmStruct;

// Page flags (page-flags.h); only those the model uses.
enum PageFlags : std::uint32_t {
  PG_free = 1u << 0,            // on the free list (the buddy allocator's PageBuddy)
  PG_anon = 1u << 1,            // PageAnon: page->mapping is an anon_vma
  PG_anon_exclusive = 1u << 2,  // PageAnonExclusive (aliases PG_mappedtodisk)
  PG_table = 1u << 3,           // PageTable: a page-table frame
  PG_zero = 1u << 4,            // the shared zero page (is_zero_pfn)
  PG_swapcache = 1u << 5,       // PageSwapCache
  PG_dirty = 1u << 6,           // PageDirty
  PG_swapbacked = 1u << 7,      // PageSwapBacked: anon and shmem pages
  PG_reserved = 1u << 8,        // never freed (the zero page)
};

// GUP_PIN_COUNTING_BIAS (include/linux/mm.h): a FOLL_PIN on a small folio adds 1024 references.
inline constexpr std::int32_t GUP_PIN_COUNTING_BIAS = 1024;

using FreeListHook =
    boost::intrusive::slist_member_hook<boost::intrusive::link_mode<boost::intrusive::normal_link>>;

// struct page, 32 bytes. As in Linux, fields that no frame needs at the same time share
// storage: the free-list link only exists while the frame is free, the page-cache mapping only
// while it is a shmem page, the linear index only while it is an anon page; the split lock only
// in a table frame, the page-cache index only in a shmem page, the swap slot only in a
// swap-cache page. A smaller mem_map is also what keeps fork's walk over it fast.
struct Page {
  union {
    FreeListHook lru;    // on the free list (the buddy list_head)
    ShmemFile* mapping;  // page->mapping of a shmem page-cache page
    MmStruct* pt_owner;  // On-demand-fork: the mm charged for a shared PTE table (RFC v2's owner)
    std::uint64_t anon_index;  // page->index of an anon page: linear_page_index, for the rmap walk
  };
  std::uint64_t* data = nullptr;  // 4 KiB of contents; null means all zeros
  std::int32_t _refcount = 0;     // page_count()
  std::int32_t _mapcount = -1;    // page_mapcount() - 1
  std::uint32_t flags = 0;
  union {
    SpinLock ptl;               // split PTE/PMD lock of a table frame
    std::uint32_t index = 0;    // page->index in its shmem mapping
    std::uint32_t swap_offset;  // page->private of a swap-cache page: its slot
  };

  Page() : mapping(nullptr) {}
  ~Page() {}
  Page(const Page&) = delete;
  Page& operator=(const Page&) = delete;

  bool test(PageFlags f) const noexcept { return flags & f; }
  void set(PageFlags f) noexcept { flags |= f; }
  void clear(PageFlags f) noexcept { flags &= ~f; }
};
static_assert(sizeof(Page) <= 64, "struct page must stay within 64 bytes, like Linux's");
static_assert(sizeof(Page) == 32, "two struct pages per cache line");

// page_ref.h / mm.h / rmap.h helpers on one page.
inline int page_count(const Page& p) noexcept { return p._refcount; }
inline int page_mapcount(const Page& p) noexcept { return p._mapcount + 1; }
inline void get_page(Page& p) noexcept { ++p._refcount; }
inline bool PageAnon(const Page& p) noexcept { return p.test(PG_anon); }
inline bool PageAnonExclusive(const Page& p) noexcept { return p.test(PG_anon_exclusive); }
inline bool PageSwapCache(const Page& p) noexcept { return p.test(PG_swapcache); }
inline bool page_maybe_dma_pinned(const Page& p) noexcept {
  return page_count(p) >= GUP_PIN_COUNTING_BIAS;  // small folio: may give false positives
}

using FreeList =
    boost::intrusive::slist<Page, boost::intrusive::member_hook<Page, FreeListHook, &Page::lru>,
                            boost::intrusive::constant_time_size<true>,
                            boost::intrusive::cache_last<false>>;

// What an allocation that finds no free frame calls before it gives up: the kernel's direct
// reclaim and, when that frees nothing, the OOM killer (__alloc_pages_slowpath). True when a
// frame may be free now.
class ReclaimHook {
 public:
  virtual bool alloc_slowpath() = 0;

 protected:
  ~ReclaimHook() = default;
};

// Simulated physical memory: the mem_map array, the free list and frame contents.
class PhysMem {
 public:
  explicit PhysMem(std::uint64_t memory_bytes);
  ~PhysMem();
  PhysMem(const PhysMem&) = delete;
  PhysMem& operator=(const PhysMem&) = delete;

  std::uint64_t total_pages() const noexcept { return nr_frames_; }
  std::uint64_t free_pages() const noexcept {
    return free_list_.size() + (nr_frames_ - watermark_);
  }
  // Frames at or above the watermark were never handed out; their records are still zero.
  std::uint64_t watermark() const noexcept { return watermark_; }

  // pfn_to_page / page_to_pfn: pointer arithmetic on mem_map, as with vmemmap.
  Page& page(Pfn pfn) noexcept { return mem_map_[raw(pfn)]; }
  const Page& page(Pfn pfn) const noexcept { return mem_map_[raw(pfn)]; }
  Pfn pfn(const Page& p) const noexcept { return Pfn{static_cast<std::uint64_t>(&p - mem_map_)}; }
  bool valid(Pfn pfn) const noexcept { return raw(pfn) < nr_frames_; }
  bool ever_allocated(Pfn pfn) const noexcept { return raw(pfn) < watermark_; }

  // alloc_page(GFP_KERNEL): refcount 1, or nullptr when memory is exhausted (after the reclaim
  // hook, if one is set, could not free a frame) or a failure is injected. Contents read as
  // zeros (a fresh frame owns no host memory).
  Page* alloc_page();
  // alloc_page(GFP_ATOMIC): the same without reclaim (the caller holds a spinlock).
  Page* alloc_page_atomic();
  void set_reclaim_hook(ReclaimHook* hook) noexcept { reclaim_ = hook; }
  // __free_page: the frame's references are gone; back to the free list.
  void free_page(Page& p);
  // put_page: drop one reference, free on the last.
  void put_page(Page& p) {
    if (--p._refcount == 0) free_page(p);
  }

  // Fault injection shared by every allocator of the model (pages, VMAs, anon_vmas): the nth
  // allocation from now fails once (should_fail_alloc_page / should_failslab).
  bool should_fail_alloc() noexcept {
    ++allocations_;
    if (fail_countdown_ && --fail_countdown_ == 0) {
      if (--fail_times_) fail_countdown_ = 1;  // and the next ones, times in all
      return true;
    }
    return false;
  }
  void fail_nth_allocation(std::uint64_t n, std::uint64_t times = 1) noexcept {
    fail_countdown_ = n;
    fail_times_ = n ? std::max<std::uint64_t>(times, 1) : 0;
  }
  std::uint64_t allocations() const noexcept { return allocations_; }

  // Contents: 8-byte words.
  std::uint64_t load_word(const Page& p, unsigned off) const noexcept {
    return p.data ? p.data[off >> 3] : 0;
  }
  void store_word(Page& p, unsigned off, std::uint64_t v) {
    if (!p.data) {
      if (v == 0) return;  // still all zeros: no host memory needed
      p.data = alloc_block();
    }
    p.data[off >> 3] = v;
  }
  // copy_user_highpage
  void copy_page(Page& dst, const Page& src) { read_contents(dst, src.data); }
  // A continuation frame's digits are bytes of its contents (swap_count_continued's map).
  std::uint8_t load_byte(const Page& p, unsigned off) const noexcept {
    return p.data ? reinterpret_cast<const std::uint8_t*>(p.data)[off] : 0;
  }
  void store_byte(Page& p, unsigned off, std::uint8_t v) {
    if (!p.data) {
      if (v == 0) return;
      p.data = alloc_block();
    }
    reinterpret_cast<std::uint8_t*>(p.data)[off] = v;
  }
  // swap_writepage / swap_readpage: contents to and from the device's copy (nullptr: zeros).
  void read_contents(Page& dst, const std::uint64_t* src) {
    release_contents(dst);
    if (src) {
      dst.data = alloc_block_uninit();
      std::memcpy(dst.data, src, PAGE_SIZE);
    }
  }
  void release_contents(Page& p) noexcept {
    if (p.data) {
      blocks_.free(p.data);
      p.data = nullptr;
      --host_blocks_;
    }
  }
  // A table frame always has its 512 entries in host memory. table_frames() counts the frames
  // that hold tables now (NR_PAGETABLE, /proc/meminfo's PageTables, the pgd included).
  std::uint64_t* alloc_table_block() {
    std::uint64_t* b = alloc_block();
    ++table_frames_;
    return b;
  }
  void table_freed() noexcept { --table_frames_; }
  std::uint64_t table_frames() const noexcept { return table_frames_; }
  std::uint64_t host_blocks() const noexcept { return host_blocks_; }
  const BlockArena& arena() const noexcept { return blocks_; }

 private:
  std::uint64_t* alloc_block_uninit() {
    bool zeroed;
    void* b = blocks_.allocate(&zeroed);
    ++host_blocks_;
    return static_cast<std::uint64_t*>(b);
  }
  std::uint64_t* alloc_block() {
    bool zeroed;
    void* b = blocks_.allocate(&zeroed);
    ++host_blocks_;
    if (!zeroed) std::memset(b, 0, PAGE_SIZE);
    return static_cast<std::uint64_t*>(b);
  }

  Page* take_free_frame();

  ReclaimHook* reclaim_ = nullptr;
  Page* mem_map_ = nullptr;
  std::uint64_t nr_frames_ = 0;
  std::uint64_t watermark_ = 0;
  std::uint64_t table_frames_ = 0;
  FreeList free_list_;
  BlockArena blocks_;
  std::uint64_t host_blocks_ = 0;
  std::uint64_t allocations_ = 0;
  std::uint64_t fail_countdown_ = 0;
  std::uint64_t fail_times_ = 0;
};

}  // namespace cowpte
