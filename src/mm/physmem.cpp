// Simulated physical memory: mem_map, the free lists, order-0 and order-9 allocation and
// compound pages (mm/page_alloc.c).
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>

#include "cowpte/model/page.hpp"

namespace cowpte {

namespace {
// Up to 32 GiB of simulated memory (256 MiB of mem_map) mem_map comes from calloc, where the
// sanitizers see its bounds; above, from an mmap with MAP_NORESERVE: the largest memory
// allowed (2^46 bytes) reserves 512 GiB of address space, which calloc's accounted mapping is
// refused under the default overcommit heuristic.
constexpr std::uint64_t kCallocMax = 256ull << 20;
std::uint64_t map_bytes(std::uint64_t frames) { return (frames ? frames : 1) * sizeof(Page); }
}  // namespace

PhysMem::PhysMem(std::uint64_t memory_bytes)
    : nr_frames_(memory_bytes >> PAGE_SHIFT), blocks_(nr_frames_) {
  // Either way the untouched part of mem_map stays the host's zero pages, so a large simulated
  // memory costs host memory only for the frames that were ever handed out.
  const std::uint64_t bytes = map_bytes(nr_frames_);
  if (bytes <= kCallocMax) {
    mem_map_ = static_cast<Page*>(std::calloc(bytes / sizeof(Page), sizeof(Page)));
    if (!mem_map_) throw std::bad_alloc();
    return;
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  mem_map_ = static_cast<Page*>(p);
}

PhysMem::~PhysMem() {
  free_list_.clear();
  huge_free_.clear();
  for (std::uint64_t i = 0; i < watermark_; ++i) mem_map_[i].~Page();
  if (map_bytes(nr_frames_) <= kCallocMax) {
    std::free(mem_map_);
  } else {
    ::munmap(mem_map_, map_bytes(nr_frames_));
  }
}

// The free list's first frame, or a frame never handed out; nullptr when memory is exhausted.
Page* PhysMem::take_free_frame() {
  Page* p;
  if (!free_list_.empty()) {
    p = &free_list_.front();
    free_list_.pop_front();
    p->lru.~FreeListHook();  // the link's storage becomes page->mapping again
    p->mapping = nullptr;
    note_taken(pfn(*p));
  } else if (watermark_ < nr_frames_) {
    // A frame handed out for the first time: construct its struct page (memmap_init).
    p = new (&mem_map_[watermark_++]) Page();
  } else if (!huge_free_.empty()) {
    // expand(): split a free block, keep its first frame, put the other 511 on the order-0 list.
    p = &huge_free_.front();
    huge_free_.pop_front();
    p->lru.~FreeListHook();
    p->mapping = nullptr;
    for (unsigned i = HPAGE_PMD_NR - 1; i > 0; --i) {
      new (&p[i].lru) FreeListHook();
      free_list_.push_front(p[i]);
      note_freed(pfn(p[i]));
    }
  } else {
    return nullptr;  // out of memory
  }
  p->flags = 0;
  p->index = 0;
  p->_refcount = 1;
  p->_mapcount = -1;
  return p;
}

Page* PhysMem::alloc_page_atomic() {
  if (should_fail_alloc()) return nullptr;
  return take_free_frame();
}

// __alloc_pages: the fast path, then the slow path (reclaim, the OOM killer) until a frame is
// free or the slow path gives up.
Page* PhysMem::alloc_page() {
  interleave_point(Point::alloc, this);  // GFP_KERNEL may sleep: another CPU runs meanwhile
  if (should_fail_alloc()) return nullptr;
  Page* p = take_free_frame();
  while (!p && reclaim_ && reclaim_->alloc_slowpath()) p = take_free_frame();
  return p;
}

// A free 2 MiB block: the order-9 list's, else one never handed out (the frames below it that
// were never handed out either go to the order-0 list), else one merged from the order-0 list.
Page* PhysMem::take_free_block() {
  if (huge_free_.empty()) {
    const std::uint64_t aligned = (watermark_ + HPAGE_PMD_NR - 1) & ~std::uint64_t(511);
    if (aligned + HPAGE_PMD_NR <= nr_frames_) {
      while (watermark_ < aligned) free_page(*new (&mem_map_[watermark_++]) Page());
      for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) new (&mem_map_[watermark_++]) Page();
      return &mem_map_[aligned];
    }
    merge_free_blocks();
    if (huge_free_.empty()) return nullptr;
  }
  Page* head = &huge_free_.front();
  huge_free_.pop_front();
  head->lru.~FreeListHook();
  head->mapping = nullptr;
  return head;
}

// The buddies' merge, done lazily: every block whose 512 frames are on the order-0 list leaves
// it for the order-9 list (the order-0 list keeps its order otherwise).
void PhysMem::merge_free_blocks() {
  if (!mergeable_) return;
  auto whole = [this](const Page& p) {
    return block_free_[raw(pfn(p)) >> HPAGE_PMD_ORDER] == HPAGE_PMD_NR;
  };
  free_list_.remove_if(whole);
  for (std::uint64_t b = 0; b < block_free_.size(); ++b) {
    if (block_free_[b] != HPAGE_PMD_NR) continue;
    block_free_[b] = 0;
    Page& head = mem_map_[b << HPAGE_PMD_ORDER];
    new (&head.lru) FreeListHook();
    huge_free_.push_front(head);
  }
  mergeable_ = 0;
}

// prep_compound_page: PG_head and PG_tail, each tail's distance from the head, the entire
// mapcount and pin count zero, the folio's one reference on the head.
void PhysMem::prep_compound_page(Page& head) noexcept {
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    Page& p = (&head)[i];
    p.mapping = nullptr;
    p.flags = i ? PG_tail : PG_head;
    p.index = i;
    p._refcount = 0;
    p._mapcount = -1;
  }
  head._refcount = 1;
}

void PhysMem::clear_compound_page(Page& head) noexcept {
  --compound_pages_;
  if (head.test(PG_deferred_split)) {
    head.clear(PG_deferred_split);
    deferred_split_.erase(std::find(deferred_split_.begin(), deferred_split_.end(), &head));
  }
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    Page& p = (&head)[i];
    p.clear(PG_head);
    p.clear(PG_tail);
    p.index = 0;
  }
  (&head)[1]._refcount = 0;  // the tails' own counts start where the caller sets them
  (&head)[2]._refcount = 0;
}

Page* PhysMem::alloc_huge_page() {
  if (should_fail_alloc()) return nullptr;
  Page* head = take_free_block();
  if (head) {
    prep_compound_page(*head);
    ++compound_pages_;
  }
  return head;
}

void PhysMem::free_compound_page(Page& head) {
  --compound_pages_;
  if (head.test(PG_deferred_split))
    deferred_split_.erase(std::find(deferred_split_.begin(), deferred_split_.end(), &head));
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    Page& p = (&head)[i];
    release_contents(p);
    p.mapping = nullptr;
    p.flags = PG_free;
    p.index = 0;
    p._refcount = 0;
    p._mapcount = -1;
  }
  new (&head.lru) FreeListHook();
  huge_free_.push_front(head);
}

void PhysMem::free_page(Page& p) {
  // free_pages_prepare: the flags, mapping and contents go with the frame.
  release_contents(p);
  p.flags = PG_free;
  p.index = 0;
  p._refcount = 0;
  p._mapcount = -1;
  new (&p.lru) FreeListHook();  // page->mapping's storage becomes the free-list link
  free_list_.push_front(p);
  note_freed(pfn(p));
}

}  // namespace cowpte
