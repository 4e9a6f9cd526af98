// The swap-in fault: do_swap_page (mm/memory.c), with should_try_to_free_swap.
#include "mm/kernel.hpp"

namespace cowpte {

// should_try_to_free_swap: after a swap-in, free the slot now if swap is filling up, or if a
// write fault is about to make the page exclusive anyway (only the cache's reference and ours).
bool Kernel::should_try_to_free_swap(const Page& page, const Vma& vma, unsigned fault_flags) const {
  if (!PageSwapCache(page)) return false;
  if (vm_swap_full() || (vma.vm_flags & VM_LOCKED)) return true;
  return (fault_flags & FAULT_FLAG_WRITE) && page_count(page) == 2;
}

// do_swap_page: a fault on a swap PTE. The page comes from the swap cache, or is read from the
// device into it (a major fault). Mapped writable at once only if the swap PTE said exclusive,
// or nothing else references the page; a write fault on a shared page goes on to do_wp_page.
// Under COW PTE the table was broken before (v4: handle_pte_fault breaks before do_swap_page;
// the model breaks for every fault in a shared table).
vm_fault_t Kernel::do_swap_page(VmFault& vmf) {
  PhaseScope phase(*this, Phase::fault_swap);
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  const SwpEntry entry = pte_to_swp_entry(vmf.orig_pte);
  if (!swap || entry.type != swap->type || entry.offset == 0 || entry.offset >= swap->pages)
    return VM_FAULT_SIGBUS;  // not a swap entry of the device: print_bad_pte
  vm_fault_t ret = 0;
  Page* page = lookup_swap_cache(entry);
  if (page) {
    ++vm_events.swapcache_hits;
  } else {
    page = read_swap_cache_async(entry);  // swapin_readahead
    if (!page) {
      // Back out if the PTE changed meanwhile; otherwise no frame was free.
      SpinGuard ptl(pte_lockptr(mm, *vmf.pte.table));
      return vmf.pte.get() == vmf.orig_pte ? VM_FAULT_OOM : vm_fault_t{0};
    }
    ret = VM_FAULT_MAJOR;
    ++vm_events.pgmajfault;
  }
  tm_page(*page, 2);
  SpinLockRef ptl = pte_lockptr(mm, *vmf.pte.table);
  ptl.lock();
  if (vmf.pte.get() != vmf.orig_pte || !PageSwapCache(*page) ||
      page->swap_offset != entry.offset) {  // out_nomap / out_page: raced, retry the access
    ptl.unlock();
    mem.put_page(*page);
    return ret;
  }
  // A page that was never exposed beyond this swap PTE's owner is certainly exclusive.
  const bool exclusive = pte_swp_exclusive(vmf.orig_pte);
  swap_free(entry);
  if (should_try_to_free_swap(*page, vma, vmf.flags)) folio_free_swap(*page);
  ++mm.rss_stat[MM_ANONPAGES];
  --mm.rss_stat[MM_SWAPENTS];
  pteval_t pte = pfn_pte(mem.pfn(*page), vma.vm_page_prot);
  bool rmap_exclusive = false;
  if (exclusive || page_count(*page) == 1) {
    if (vmf.flags & FAULT_FLAG_WRITE) {
      pte = pte_mkdirty(pte);
      if (vma.vm_flags & VM_WRITE) pte = pte_mkwrite(pte);  // maybe_mkwrite
      vmf.flags &= ~FAULT_FLAG_WRITE;
      ret |= VM_FAULT_WRITE;
    }
    rmap_exclusive = true;
  }
  if (pte_swp_soft_dirty(vmf.orig_pte)) pte = pte_mksoft_dirty(pte);
  vmf.orig_pte = pte;
  page_add_anon_rmap(*page, vma, vmf.address, rmap_exclusive);
  set_pte_at(vmf.pte, pte);
  tm_entry(vmf.pte);
  if (vmf.flags & FAULT_FLAG_WRITE) {
    // The reference from the lookup is the mapping's now; do_wp_page drops the lock.
    ret |= do_wp_page(vmf);
    return ret & VM_FAULT_ERROR ? (ret & VM_FAULT_ERROR) : ret;
  }
  ptl.unlock();
  return ret;
}

}  // namespace cowpte
