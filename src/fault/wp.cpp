// Write-protect faults: do_wp_page, wp_page_reuse, wp_page_copy and wp_page_shared
// (mm/memory.c), including the unshare fault of a read-only long-term pin.
#include "mm/kernel.hpp"

namespace cowpte {

// wp_page_reuse: the faulting process keeps the page; make the PTE young, dirty and writable.
void Kernel::wp_page_reuse(VmFault& vmf) {
  pteval_t entry = pte_mkyoung(vmf.orig_pte);
  entry = pte_mkdirty(entry);
  if (vmf.vma->vm_flags & VM_WRITE) entry = pte_mkwrite(entry);  // maybe_mkwrite
  set_pte_at(vmf.pte, entry);                                    // ptep_set_access_flags
  pte_lockptr(*vmf.vma->vm_mm, *vmf.pte.table).unlock();
}

// wp_page_copy: give the faulting process its own copy (or a fresh zeroed page in place of
// the zero page). The old page loses this mapping only after the new PTE is in place.
vm_fault_t Kernel::wp_page_copy(VmFault& vmf) {
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  Page* old_page = vmf.page;  // holds the reference do_wp_page took
  const bool unshare = vmf.flags & FAULT_FLAG_UNSHARE;
  auto release_old = [&] {
    if (old_page) mem.put_page(*old_page);
  };
  if (!anon_vma_prepare(vma)) {
    release_old();
    return VM_FAULT_OOM;
  }
  Page* new_page = mem.alloc_page();
  if (!new_page) {
    release_old();
    return VM_FAULT_OOM;
  }
  tm_page_alloc(new_page, !old_page);
  if (old_page) tm_page_copy();
  if (old_page) mem.copy_page(*new_page, *old_page);  // else: zero-filled, like the zero page

  SpinLockRef ptl = pte_lockptr(*vmf.vma->vm_mm, *vmf.pte.table);
  ptl.lock();
  if (vmf.pte.get() != vmf.orig_pte) {  // the PTE changed meanwhile: drop the copy
    ptl.unlock();
    mem.put_page(*new_page);
    release_old();
    return 0;
  }
  if (old_page && !PageAnon(*old_page)) {
    --mm.rss_stat[mm_counter(*old_page)];
    ++mm.rss_stat[MM_ANONPAGES];
  } else if (!old_page) {
    ++mm.rss_stat[MM_ANONPAGES];
  }
  pteval_t entry = pfn_pte(mem.pfn(*new_page), vma.vm_page_prot);
  entry = pte_mkyoung(entry);
  if (unshare) {
    // An unshare fault maps the exclusive copy read-only and keeps soft-dirty and uffd-wp.
    if (pte_soft_dirty(vmf.orig_pte)) entry |= _PAGE_SOFT_DIRTY;
    if (pte_uffd_wp(vmf.orig_pte)) entry |= _PAGE_UFFD_WP;
  } else {
    entry = pte_mkdirty(entry);
    if (vma.vm_flags & VM_WRITE) entry = pte_mkwrite(entry);
  }
  ptep_get_and_clear(vmf.pte);  // ptep_clear_flush_notify: clear, flush, then set
  flush_tlb_page(mm, vmf.address);
  page_add_new_anon_rmap(*new_page, vma, vmf.address);
  set_pte_at(vmf.pte, entry);
  tm_entry(vmf.pte);
  if (old_page) {
    page_remove_rmap(*old_page);
    mem.put_page(*old_page);  // the mapping's reference
  }
  ptl.unlock();
  release_old();  // do_wp_page's reference
  return unshare ? vm_fault_t{0} : vm_fault_t{VM_FAULT_WRITE};
}

// wp_page_shared: a write to a read-only PTE of a shared mapping (soft-dirty tracking);
// shmem has no page_mkwrite, so the page is reused and dirtied.
vm_fault_t Kernel::wp_page_shared(VmFault& vmf) {
  Page* page = vmf.page;
  wp_page_reuse(vmf);
  if (page) page->set(PG_dirty);  // fault_dirty_shared_page
  return VM_FAULT_WRITE;
}

// do_wp_page: called with the PTE lock held, for write and unshare faults on a read-only PTE.
// Reuse an anon page that is exclusive, or that nobody else references; copy otherwise.
vm_fault_t Kernel::do_wp_page(VmFault& vmf) {
  PhaseScope phase(*this, Phase::fault_wp);
  Vma& vma = *vmf.vma;
  const bool unshare = vmf.flags & FAULT_FLAG_UNSHARE;
  SpinLockRef ptl = pte_lockptr(*vmf.vma->vm_mm, *vmf.pte.table);
  vmf.page = vm_normal_page(vma, vmf.orig_pte);

  if (vma.vm_flags & (VM_SHARED | VM_MAYSHARE)) return wp_page_shared(vmf);

  if (vmf.page && PageAnon(*vmf.page)) {
    Page& page = *vmf.page;
    bool reuse = PageAnonExclusive(page);
    // Not exclusive: reuse only when this mapping holds the only reference (no other mapping,
    // no GUP reference, no pin), after the swap cache let go of a page no swap PTE needs. The
    // model has no LRU pagevecs to drain.
    if (!reuse && page_count(page) <= 1 + int{PageSwapCache(page)}) {
      if (PageSwapCache(page)) folio_free_swap(page);
      if (page_count(page) == 1) {
        page_move_anon_rmap(page);
        reuse = true;
      }
    }
    if (reuse) {
      if (unshare) {
        ptl.unlock();
        return 0;
      }
      wp_page_reuse(vmf);
      return VM_FAULT_WRITE;
    }
  }
  // Copy: an anon page others still reference, the zero page, or (v6.2) a non-anon page that
  // a read-only long-term pin must unshare.
  if (vmf.page) get_page(*vmf.page);
  ptl.unlock();
  return wp_page_copy(vmf);
}

}  // namespace cowpte
