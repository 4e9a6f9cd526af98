// Simulated physical memory: mem_map, the free list and order-0 allocation (mm/page_alloc.c).
#include <cstdlib>
#include <new>

#include "cowpte/model/page.hpp"

namespace cowpte {

PhysMem::PhysMem(std::uint64_t memory_bytes) : nr_frames_(memory_bytes >> PAGE_SHIFT) {
  // calloc leaves the untouched part of mem_map to the host's zero pages, so a large simulated
  // memory costs host memory only for the frames that were ever handed out.
  mem_map_ = static_cast<Page*>(std::calloc(nr_frames_ ? nr_frames_ : 1, sizeof(Page)));
  if (!mem_map_) throw std::bad_alloc();
}

PhysMem::~PhysMem() {
  free_list_.clear();
  for (std::uint64_t i = 0; i < watermark_; ++i) mem_map_[i].~Page();
  std::free(mem_map_);
}

Page* PhysMem::alloc_page() {
  if (should_fail_alloc()) return nullptr;
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
