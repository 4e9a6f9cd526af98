// Reverse-map bookkeeping on struct page and anon_vma lifetime (mm/rmap.c,
// include/linux/rmap.h), and vm_normal_page / mm_counter (mm/memory.c, include/linux/mm.h).
#include "cowpte/kernel.hpp"

namespace cowpte {

// page_add_new_anon_rmap: a fresh page mapped once, exclusive to this process.
void Kernel::page_add_new_anon_rmap(Page& page, Vma&) {
  page._mapcount = 0;
  page.set(PG_anon);
  page.set(PG_swapbacked);
  page.set(PG_anon_exclusive);
}

void Kernel::page_add_file_rmap(Page& page) { ++page._mapcount; }

void Kernel::page_remove_rmap(Page& page) {
  if (--page._mapcount < -1) throw InvariantViolation("page_remove_rmap: negative mapcount");
}

// page_move_anon_rmap: the reusing process owns the page alone from now on.
void Kernel::page_move_anon_rmap(Page& page) { page.set(PG_anon_exclusive); }

// page_try_dup_anon_rmap: share an anon page with a child, unless it may be pinned (then the
// child must get its own copy, -EBUSY). Only valid while fork holds write_protect_seq.
int Kernel::page_try_dup_anon_rmap(Page& page, Vma& src_vma) {
  if (PageAnonExclusive(page)) {
    // page_needs_cow_for_dma
    const MmStruct& mm = *src_vma.vm_mm;
    if (!(mm.write_protect_seq & 1)) throw InvariantViolation("dup_anon_rmap outside fork");
    if (is_cow_mapping(src_vma.vm_flags) && mm.test_flag(MMF_HAS_PINNED) &&
        page_maybe_dma_pinned(page))
      return -16;  // -EBUSY
    page.clear(PG_anon_exclusive);
  }
  ++page._mapcount;  // __page_dup_rmap
  return 0;
}

// anon_vma_prepare: the first COW write in a VMA gives it an anon_vma.
bool Kernel::anon_vma_prepare(Vma& vma) {
  if (vma.anon_vma) return true;
  if (mem.should_fail_alloc()) return false;
  vma.anon_vma = new AnonVma();
  vma.anon_vma_chain = 1;
  return true;
}

// anon_vma_fork: the child's VMA links to the parent's anon_vmas and gets one of its own.
bool Kernel::anon_vma_fork(Vma& dst, const Vma& src) {
  if (!src.anon_vma) return true;
  if (mem.should_fail_alloc()) return false;
  dst.anon_vma = new AnonVma();
  dst.anon_vma_chain = src.anon_vma_chain + 1;
  return true;
}

// vm_normal_page: the struct page behind a present PTE, or nullptr for special mappings
// (the zero page).
Page* Kernel::vm_normal_page(const Vma&, pteval_t pte) noexcept {
  if (pte_special(pte)) return nullptr;
  return &mem.page(pte_pfn(pte));
}

// mm_counter: anon pages, shmem (swap-backed non-anon) pages and file pages.
unsigned Kernel::mm_counter(const Page& page) noexcept {
  if (PageAnon(page)) return MM_ANONPAGES;
  return page.test(PG_swapbacked) ? MM_SHMEMPAGES : MM_FILEPAGES;
}

}  // namespace cowpte
