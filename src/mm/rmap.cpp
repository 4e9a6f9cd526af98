// Reverse-map bookkeeping on struct page and anon_vma lifetime (mm/rmap.c). The per-PTE hot
// helpers (page_try_dup_anon_rmap, page_remove_rmap, vm_normal_page) are inline in kernel.hpp.
#include "mm/kernel.hpp"

namespace cowpte {

// page_add_new_anon_rmap: a fresh page mapped once, exclusive to this process. Its index is
// where rmap_walk_anon looks for it in every VMA of the anon_vma's family.
void Kernel::page_add_new_anon_rmap(Page& page, Vma& vma, vaddr_t address) {
  page._mapcount = 0;
  page.anon_index = linear_page_index(vma, address);
  page.set(PG_anon);
  page.set(PG_swapbacked);
  page.set(PG_anon_exclusive);
}

// page_add_anon_rmap: do_swap_page maps a page from the swap cache; the first mapping makes it
// anon at this index (__page_set_anon_rmap), RMAP_EXCLUSIVE marks it exclusive.
void Kernel::page_add_anon_rmap(Page& page, Vma& vma, vaddr_t address, bool exclusive) {
  if (++page._mapcount == 0) {
    page.anon_index = linear_page_index(vma, address);
    page.set(PG_anon);
  }
  if (exclusive) page.set(PG_anon_exclusive);
}

// page_move_anon_rmap: the reusing process owns the page alone from now on.
void Kernel::page_move_anon_rmap(Page& page) { page.set(PG_anon_exclusive); }

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

}  // namespace cowpte
