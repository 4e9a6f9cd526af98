// mprotect(2): do_mprotect_pkey, mprotect_fixup, change_protection, change_pte_range and
// can_change_pte_writable (mm/mprotect.c).
#include "mm/kernel.hpp"

namespace cowpte {

// can_change_pte_writable: mprotect may map writable at once only what a write fault would
// reuse: an exclusive anon page (private), or a dirty page (shared), and only when neither
// soft-dirty nor uffd-wp tracking needs the write fault.
bool Kernel::can_change_pte_writable(Vma& vma, pteval_t pte) {
  if (!(vma.vm_flags & VM_WRITE)) return false;
  if (pte_protnone(pte)) return false;
  if (vma_soft_dirty_enabled(vma) && !pte_soft_dirty(pte)) return false;
  if (!(vma.vm_flags & VM_SHARED)) {
    Page* page = vm_normal_page(vma, pte);
    return page && PageAnon(*page) && PageAnonExclusive(*page);
  }
  return pte_dirty(pte);
}

long Kernel::change_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end,
                              pteval_t newprot, bool try_writable) {
  long pages = 0;
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(*vma.vm_mm, *pte.table));  // pte_offset_map_lock
  do {
    const pteval_t oldpte = pte.get();
    tm_entry(pte);
    if (!pte_present(oldpte)) continue;  // a swap entry keeps its bits (no migration entries)
    tm_op(Op::pte);
    ptep_get_and_clear(pte);  // ptep_modify_prot_start
    pteval_t ptent = pte_modify(oldpte, newprot);
    if (try_writable && !pte_write(ptent) && can_change_pte_writable(vma, ptent))
      ptent = pte_mkwrite(ptent);
    set_pte_at(pte, ptent);                                          // ptep_modify_prot_commit
    if (ptent != oldpte) tlb.tlb_remove_tlb_entry(addr, PAGE_SIZE);  // tlb_flush_pte_range
    ++pages;
  } while (++pte.p, addr += PAGE_SIZE, addr != end);
  return pages;
}

// change_protection: walk the range; a huge PMD the range covers whole changes as one entry
// (change_huge_pmd), one it covers in part splits first (change_pmd_range).
long Kernel::change_protection(MmGather& tlb, Vma& vma, vaddr_t start, vaddr_t end,
                               bool try_writable) {
  long pages = 0;
  for (vaddr_t addr = start; addr < end;) {
    vaddr_t next;
    EntryRef pmd = walk_to_pmd(*vma.vm_mm, addr, end, next);
    if (pmd && pmd_trans_huge(pmd.get())) {
      if (next - addr == PMD_SIZE) {
        pages += change_huge_pmd(tlb, vma, pmd, addr, vma.vm_page_prot);
        addr = next;
        continue;
      }
      split_huge_pmd(vma, pmd, addr);
    }
    // [PATCH 09/14]: break a shared table first, and on failure skip this PMD, its entries
    // left as they were. Only the series' own policy gets here with one (do_mprotect_pkey).
    if (pmd && pmd_cow_pte(*vma.vm_mm, pmd.get()) && break_cow_pte(*vma.vm_mm, pmd, addr)) {
      addr = next;
      continue;
    }
    if (pmd && !pmd_none(pmd.get()))
      pages += change_pte_range(tlb, vma, pmd, addr, next, vma.vm_page_prot, try_writable);
    addr = next;
  }
  return pages;
}

// mprotect_fixup: split or merge so that [start, end) is one VMA, then change its PTEs.
bool Kernel::mprotect_fixup(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end,
                            std::uint64_t newflags) {
  if (newflags == vma.vm_flags) return true;
  // Memory that turns into writable private data is charged from now on. VM_ACCOUNT stays when
  // it turns read-only again (which keeps it from merging with a never-charged neighbour),
  // unless it is anonymous memory never faulted: v6.3+ (the hosts) un-charge that.
  if ((newflags & VM_WRITE) && !(vma.vm_flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE)))
    newflags |= VM_ACCOUNT;
  else if (!(newflags & VM_WRITE) && (vma.vm_flags & VM_ACCOUNT) && vma_is_anonymous(vma) &&
           !vma.anon_vma)
    newflags &= ~VM_ACCOUNT;
  Vma* v = split_vma_range(mm, vma, start, end);
  if (!v) return false;
  v->vm_flags = newflags;
  vma_set_page_prot(*v);
  // vma_wants_manual_pte_write_upgrade: private writable, or shared writable under write-notify
  // (its vm_page_prot lacks RW, so dirty PTEs are upgraded one by one).
  const bool writable = v->vm_flags & VM_WRITE;
  const bool try_writable =
      (v->vm_flags & VM_SHARED) ? writable && !(v->vm_page_prot & _PAGE_RW) : writable;
  MmGather tlb(mm, false);
  change_protection(tlb, *v, start, end, try_writable);
  tlb_finish_mmu(tlb);
  vma_merge(mm, *v);
  return true;
}

// do_mprotect_pkey (v6.1): VMA after VMA from start, each changed (split, its PTEs changed,
// merged) before the next is looked up. A hole ends the call with ENOMEM, and the VMAs before it
// stay changed, as in Linux; no VMA at start changes nothing.
Result<void> Kernel::do_mprotect_pkey(MmStruct& mm, vaddr_t start, std::uint64_t len, Prot prot) {
  if (start & ~PAGE_MASK) return Errno::inval;
  if (!len) return {};
  len = (len + PAGE_SIZE - 1) & PAGE_MASK;
  const vaddr_t end = start + len;
  if (end <= start) return Errno::nomem;
  if (static_cast<std::uint32_t>(prot) & ~7u) return Errno::inval;
  MmapWriteGuard lock(mm);
  const std::uint64_t newbits = static_cast<std::uint32_t>(prot);
  for (vaddr_t a = start; a < end;) {
    Vma* v = mm.vma_lookup(a);
    if (!v) return Errno::nomem;  // a hole (or nothing at start)
    const vaddr_t vend = std::min(end, v->vm_end);
    const std::uint64_t newflags = (v->vm_flags & ~VM_ACCESS_FLAGS) | newbits;
    // [PATCH 09/14]: change_pte_range breaks COW PTE and silently skips the PMD when that fails,
    // leaving the old protection in place (David suspected it wrong). The model breaks the shared
    // tables of this VMA's part before changing it, and fails with ENOMEM; the series' own
    // policy keeps its way (change_protection).
    if (newflags != v->vm_flags && !fork_policy(mm).quirks().ignore_failed_breaks &&
        break_cow_pte_range(mm, a, vend))
      return Errno::nomem;
    if (!mprotect_fixup(mm, *v, a, vend, newflags)) return Errno::nomem;
    a = vend;
  }
  COWPTE_TRACE(*this, "mprotect: pid {} {:#x}-{:#x} prot {}", mm.pid, start, end, newbits);
  return {};
}

}  // namespace cowpte
