// struct page and simulated physical memory: one 32-byte record per frame in one contiguous
// array (like vmemmap), free frames on a Boost.Intrusive free list, and frame contents that
// exist in host memory only after a non-zero store (blocks of a BlockArena). Models
// include/linux/mm_types.h, include/linux/page_ref.h, include/linux/page-flags.h and
// mm/page_alloc.c (orders 0 and 9: base pages and 2 MiB compound pages for THP).
#pragma once

#include <algorithm>
#include <boost/intrusive/slist.hpp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "cowpte/model/block_arena.hpp"
#include "cowpte/model/interleave.hpp"
#include "cowpte/model/pgtable_types.hpp"
#include "cowpte/model/spinlock.hpp"
#include "cowpte/types.hpp"

namespace cowpte {

struct ShmemFile;
struct MmStruct;

// Page flags (page-flags.h); only those the model uses.
enum PageFlags : std::uint32_t {
  PG_free = 1u << 0,             // on the free list (the buddy allocator's PageBuddy)
  PG_anon = 1u << 1,             // PageAnon: page->mapping is an anon_vma
  PG_anon_exclusive = 1u << 2,   // PageAnonExclusive (aliases PG_mappedtodisk)
  PG_table = 1u << 3,            // PageTable: a page-table frame
  PG_zero = 1u << 4,             // the shared zero page (is_zero_pfn)
  PG_swapcache = 1u << 5,        // PageSwapCache
  PG_dirty = 1u << 6,            // PageDirty
  PG_swapbacked = 1u << 7,       // PageSwapBacked: anon and shmem pages
  PG_reserved = 1u << 8,         // never freed (the zero page)
  PG_head = 1u << 9,             // PageHead: the first frame of a 2 MiB compound page (a THP)
  PG_tail = 1u << 10,            // PageTail: one of its other 511 frames
  PG_deferred_split = 1u << 11,  // a THP on the deferred split queue (the head's flag)
};

// A transparent huge page: HPAGE_PMD_ORDER (include/linux/huge_mm.h).
inline constexpr unsigned HPAGE_PMD_ORDER = 9;
inline constexpr unsigned HPAGE_PMD_NR = 1u << HPAGE_PMD_ORDER;

// GUP_PIN_COUNTING_BIAS (include/linux/mm.h): a FOLL_PIN on a small folio adds 1024 references.
inline constexpr std::int32_t GUP_PIN_COUNTING_BIAS = 1024;

using FreeListHook =
    boost::intrusive::slist_member_hook<boost::intrusive::link_mode<boost::intrusive::normal_link>>;

// struct page, 32 bytes. As in Linux, fields that no frame needs at the same time share
// storage: the free-list link only exists while the frame is free, the page-cache mapping only
// while it is a shmem page, the linear index only while it is an anon page; the split lock only
// in a table frame, the page-cache index only in a shmem page, the swap slot only in a
// swap-cache page. A smaller mem_map is also what keeps fork's walk over it fast.
//
// A compound page (a THP, order 9) keeps its state where Linux keeps it: the head's _refcount
// is the folio's, a tail's is unused (page_count() of any subpage reads the head); each
// subpage's _mapcount counts its PTE mappings; the first tail's _refcount field holds the
// entire (PMD) mapcount and the second tail's the pin count (folio->_entire_mapcount,
// _pincount). A tail's index is its distance from the head (Linux keeps a pointer to the head;
// the offset fits the four bytes a tail does not otherwise use). Every subpage of an anon THP
// carries its own anon_index, so the rmap walk finds a subpage as it finds a base page.
struct Page {
  union {
    FreeListHook lru;    // on the free list (the buddy list_head)
    ShmemFile* mapping;  // page->mapping of a shmem page-cache page
    MmStruct* pt_owner;  // On-demand-fork: the mm charged for a shared PTE table (RFC v2's owner)
    std::uint64_t anon_index;  // page->index of an anon page: linear_page_index, for the rmap walk
    Page* pmd_huge_pte;        // a PMD table: the PTE tables deposited for its huge PMDs (a list
                               // through the deposited tables' own pmd_huge_pte)
  };
  std::uint64_t* data = nullptr;  // 4 KiB of contents; null means all zeros
  std::int32_t _refcount = 0;     // page_count()
  std::int32_t _mapcount = -1;    // page_mapcount() - 1
  std::uint32_t flags = 0;
  union {
    SpinLock ptl;               // split PTE/PMD lock of a table frame
    std::uint32_t index = 0;    // page->index in its shmem mapping; a tail: its offset
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

// Compound pages (page-flags.h, mm.h).
inline bool PageHead(const Page& p) noexcept { return p.test(PG_head); }
inline bool PageTail(const Page& p) noexcept { return p.test(PG_tail); }
inline bool PageCompound(const Page& p) noexcept { return p.flags & (PG_head | PG_tail); }
inline Page& compound_head(Page& p) noexcept { return PageTail(p) ? *(&p - p.index) : p; }
inline const Page& compound_head(const Page& p) noexcept {
  return PageTail(p) ? *(&p - p.index) : p;
}
// folio_entire_mapcount / compound_pincount: stored in the first and second tail pages.
inline std::int32_t& entire_mapcount_of(Page& head) noexcept { return (&head)[1]._refcount; }
inline int folio_entire_mapcount(const Page& head) noexcept { return (&head)[1]._refcount; }
inline std::int32_t& compound_pincount_of(Page& head) noexcept { return (&head)[2]._refcount; }
inline int compound_pincount(const Page& head) noexcept { return (&head)[2]._refcount; }

// page_ref.h / mm.h / rmap.h helpers on one page; for a subpage of a THP they read its folio.
inline int page_count(const Page& p) noexcept { return compound_head(p)._refcount; }
// page_mapcount: a subpage of a THP is mapped by its PTEs and by every PMD mapping the whole.
inline int page_mapcount(const Page& p) noexcept {
  const int m = p._mapcount + 1;
  return PageCompound(p) ? m + folio_entire_mapcount(compound_head(p)) : m;
}
// total_mapcount (folio_mapcount): every mapping of a THP, PMD and PTE ones; a base page's.
inline int total_mapcount(const Page& head) noexcept {
  if (!PageHead(head)) return page_mapcount(head);
  int m = folio_entire_mapcount(head);
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) m += (&head)[i]._mapcount + 1;
  return m;
}
template <bool Hooks = true>
inline void get_page(Page& p) noexcept {
  interleave_point<Hooks>(Point::atomic, &p);
  ++compound_head(p)._refcount;
}
inline bool PageAnon(const Page& p) noexcept { return p.test(PG_anon); }
inline bool PageAnonExclusive(const Page& p) noexcept { return p.test(PG_anon_exclusive); }
inline bool PageSwapCache(const Page& p) noexcept { return p.test(PG_swapcache); }
// page_maybe_dma_pinned: a large folio counts its pins apart (compound_pincount); a small one
// in its refcount, which may give false positives.
inline bool page_maybe_dma_pinned(const Page& p) noexcept {
  if (PageCompound(p)) return compound_pincount(compound_head(p)) > 0;
  return page_count(p) >= GUP_PIN_COUNTING_BIAS;
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

// Simulated physical memory: the mem_map array, the free lists and frame contents.
//
// Two orders, as THP needs them: 4 KiB frames on an order-0 free list (LIFO, like the per-CPU
// lists) and free 2 MiB-aligned blocks on an order-9 list. Frames never handed out (at or above
// the watermark) are free too. An order-0 allocation takes the order-0 list, then fresh frames,
// then splits a free block (expand). The buddies merge lazily: freed 4 KiB frames stay on the
// order-0 list, each block counts its frames there, and an order-9 allocation that finds no
// free block and no fresh one moves every block whose 512 frames are all free to the order-9
// list in one pass. Memory whose blocks each keep one frame in use is fragmented: a THP fault
// then falls back to 4 KiB pages (there is no compaction).
class PhysMem {
 public:
  explicit PhysMem(std::uint64_t memory_bytes);
  ~PhysMem();
  PhysMem(const PhysMem&) = delete;
  PhysMem& operator=(const PhysMem&) = delete;

  std::uint64_t total_pages() const noexcept { return nr_frames_; }
  std::uint64_t free_pages() const noexcept {
    return free_list_.size() + HPAGE_PMD_NR * huge_free_.size() + (nr_frames_ - watermark_);
  }
  // 2 MiB blocks an order-9 allocation could take now without merging (free, or never used).
  std::uint64_t free_huge_blocks() const noexcept {
    const std::uint64_t fresh_from = (watermark_ + HPAGE_PMD_NR - 1) & ~std::uint64_t(511);
    return huge_free_.size() + (fresh_from < nr_frames_ ? (nr_frames_ - fresh_from) >> 9 : 0);
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
  // vma_alloc_folio(order 9) for a THP fault: a compound page with the head's refcount 1, or
  // nullptr (no 2 MiB block free after merging, or an injected failure). No reclaim or
  // compaction: THP's defrag setting "madvise" does neither for a VMA without MADV_HUGEPAGE,
  // and the model stops there for every VMA (the fault falls back to 4 KiB pages).
  Page* alloc_huge_page();
  void set_reclaim_hook(ReclaimHook* hook) noexcept { reclaim_ = hook; }
  // __free_page: the frame's references are gone; back to the free list.
  void free_page(Page& p);
  // put_page: drop one reference to the page's folio, free it on the last.
  template <bool Hooks = true>
  void put_page(Page& p) {
    interleave_point<Hooks>(Point::atomic, &p);
    Page& head = compound_head(p);
    if (--head._refcount == 0) {
      if (PageHead(head)) {
        free_compound_page(head);
      } else {
        free_page(head);
      }
    }
  }
  // free_compound_page: the 512 frames go back as one free block (off the deferred split
  // queue first).
  void free_compound_page(Page& head);
  // The node's deferred split queue (pglist_data's deferred_split_queue): partially mapped
  // THPs, without a reference; a THP freed meanwhile leaves it.
  void deferred_split_add(Page& head) {
    if (head.test(PG_deferred_split)) return;
    head.set(PG_deferred_split);
    deferred_split_.push_back(&head);
  }
  std::vector<Page*> take_deferred_split_queue() {
    for (Page* h : deferred_split_) h->clear(PG_deferred_split);
    return std::exchange(deferred_split_, {});
  }
  std::size_t deferred_split_queue_len() const noexcept { return deferred_split_.size(); }
  std::uint64_t compound_pages() const noexcept { return compound_pages_; }  // THPs allocated
  // split_huge_page's last step: the compound page becomes 512 base pages (the caller gave
  // each subpage its references).
  void clear_compound_page(Page& head) noexcept;

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
  Page* take_free_block();
  void merge_free_blocks();
  static void prep_compound_page(Page& head) noexcept;
  // The order-0 list's frames per 2 MiB block (for merging), and how many blocks have all 512.
  void note_taken(Pfn pfn) noexcept {
    if (block_free_[raw(pfn) >> HPAGE_PMD_ORDER]-- == HPAGE_PMD_NR) --mergeable_;
  }
  void note_freed(Pfn pfn) {
    const std::uint64_t b = raw(pfn) >> HPAGE_PMD_ORDER;
    if (b >= block_free_.size()) block_free_.resize(b + 1, 0);
    if (++block_free_[b] == HPAGE_PMD_NR) ++mergeable_;
  }

  ReclaimHook* reclaim_ = nullptr;
  Page* mem_map_ = nullptr;
  std::uint64_t nr_frames_ = 0;
  std::uint64_t watermark_ = 0;
  std::uint64_t table_frames_ = 0;
  FreeList free_list_;
  FreeList huge_free_;  // heads of free 2 MiB blocks (free_area[HPAGE_PMD_ORDER])
  std::vector<std::uint16_t> block_free_;
  std::vector<Page*> deferred_split_;
  std::uint64_t mergeable_ = 0;
  std::uint64_t compound_pages_ = 0;
  BlockArena blocks_;
  std::uint64_t host_blocks_ = 0;
  std::uint64_t allocations_ = 0;
  std::uint64_t fail_countdown_ = 0;
  std::uint64_t fail_times_ = 0;
};

}  // namespace cowpte
