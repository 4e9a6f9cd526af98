// Simulated physical memory: mem_map, the free list and order-0 allocation (mm/page_alloc.c).
#include <sys/mman.h>

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
  } else if (watermark_ < nr_frames_) {
    // A frame handed out for the first time: construct its struct page (memmap_init).
    p = new (&mem_map_[watermark_++]) Page();
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
  if (should_fail_alloc()) return nullptr;
  Page* p = take_free_frame();
  while (!p && reclaim_ && reclaim_->alloc_slowpath()) p = take_free_frame();
  return p;
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
}

}  // namespace cowpte
