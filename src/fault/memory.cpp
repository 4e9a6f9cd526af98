// The generic fault path: handle_mm_fault, __handle_mm_fault, handle_pte_fault and
// do_anonymous_page (mm/memory.c).
#include <optional>

#include "mm/kernel.hpp"

namespace cowpte {

// do_anonymous_page: a read maps the shared zero page read-only (unless mm_forbids_zeropage:
// MachineConfig::zero_page false); a write, or a read without the zero page, maps a new zeroed
// page, exclusive to this process.
vm_fault_t Kernel::do_anonymous_page(VmFault& vmf) {
  PhaseScope phase(*this, Phase::fault_anonymous);
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  if (vma.vm_flags & VM_SHARED) return VM_FAULT_SIGBUS;
  if (!pte_alloc(mm, vmf.pmd)) return VM_FAULT_OOM;

  if (!(vmf.flags & FAULT_FLAG_WRITE) && !mm_forbids_zeropage()) {
    const pteval_t entry = pte_mkspecial(pfn_pte(mem.pfn(*zero_page), vma.vm_page_prot));
    vmf.pte = pte_offset_map(vmf.pmd, vmf.address);
    SpinGuard ptl(pte_lockptr(*vmf.vma->vm_mm, *vmf.pte.table));  // pte_offset_map_lock
    if (!pte_none(vmf.pte.get())) return 0;                       // someone else mapped it
    set_pte_at(vmf.pte, entry);
    tm_entry(vmf.pte);
    return 0;
  }

  if (!anon_vma_prepare(vma)) return VM_FAULT_OOM;
  Page* page = mem.alloc_page();  // alloc_zeroed_user_highpage_movable
  if (!page) return VM_FAULT_OOM;
  tm_page_alloc(page, true);
  pteval_t entry = pfn_pte(mem.pfn(*page), vma.vm_page_prot);
  if (vma.vm_flags & VM_WRITE) entry = pte_mkwrite(pte_mkdirty(entry));
  vmf.pte = pte_offset_map(vmf.pmd, vmf.address);
  SpinGuard ptl(pte_lockptr(*vmf.vma->vm_mm, *vmf.pte.table));
  if (!pte_none(vmf.pte.get())) {
    mem.put_page(*page);
    return 0;
  }
  ++mm.rss_stat[MM_ANONPAGES];  // inc_mm_counter_fast
  page_add_new_anon_rmap(*page, vma, vmf.address);
  set_pte_at(vmf.pte, entry);
  tm_entry(vmf.pte);
  return 0;
}

// handle_pte_fault: dispatch on the state of the PTE.
vm_fault_t Kernel::handle_pte_fault(VmFault& vmf) {
  interleave_point(Point::entry_read, vmf.pmd.p);  // the PMD and PTE are read without a lock
  if (pmd_none(vmf.pmd.get())) {
    vmf.pte = {};
  } else {
    vmf.pte = pte_offset_map(vmf.pmd, vmf.address);
    vmf.orig_pte = vmf.pte.get();
    tm_entry(vmf.pte);
    if (pte_none(vmf.orig_pte)) vmf.pte = {};
  }
  if (!vmf.pte) return vma_is_anonymous(*vmf.vma) ? do_anonymous_page(vmf) : do_fault(vmf);
  if (!pte_present(vmf.orig_pte)) return do_swap_page(vmf);
  if (pte_protnone(vmf.orig_pte)) return VM_FAULT_SIGSEGV;  // no NUMA balancing in the model

  SpinLockRef ptl = pte_lockptr(*vmf.vma->vm_mm, *vmf.pte.table);
  ptl.lock();
  pteval_t entry = vmf.pte.get();
  if (entry != vmf.orig_pte) {  // !pte_same: raced, retry the access
    ptl.unlock();
    return 0;
  }
  if (vmf.flags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE)) {
    if (!pte_write(entry)) return do_wp_page(vmf);  // drops the lock
    if (vmf.flags & FAULT_FLAG_WRITE) entry = pte_mkdirty(entry);
  }
  entry = pte_mkyoung(entry);
  if (entry != vmf.orig_pte) set_pte_at(vmf.pte, entry);  // ptep_set_access_flags
  ptl.unlock();
  return 0;
}

// __handle_mm_fault: allocate the missing upper levels, then the PTE level decides.
vm_fault_t Kernel::__handle_mm_fault(Vma& vma, vaddr_t address, unsigned flags) {
  MmStruct& mm = *vma.vm_mm;
  VmFault vmf;
  vmf.vma = &vma;
  vmf.address = address & PAGE_MASK;
  vmf.flags = flags;
  EntryRef pgd = pgd_offset(mm, address);
  EntryRef pud = pud_alloc(mm, pgd, address);  // p4d_alloc is folded
  if (!pud) return VM_FAULT_OOM;
  vmf.pmd = pmd_alloc(mm, pud, address);
  if (!vmf.pmd) return VM_FAULT_OOM;
  // Transparent huge pages: an empty PMD of an eligible span gets a 2 MiB page (create_huge_pmd);
  // a huge PMD takes a write or unshare fault itself (wp_huge_pmd) and splits to fall back.
  interleave_point(Point::entry_read, vmf.pmd.p);  // read without a lock (pmdp_get_lockless)
  const pteval_t orig_pmd = vmf.pmd.get();
  if (pmd_none(orig_pmd) && hugepage_vma_check(vma, vma.vm_flags, false, true, true)) {
    PhaseScope phase(*this, Phase::fault_anonymous);
    if (const vm_fault_t ret = do_huge_pmd_anonymous_page(vmf); !(ret & VM_FAULT_FALLBACK))
      return ret;
  } else if (pmd_trans_huge(orig_pmd)) {
    if (!(flags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE)) || pmd_write(orig_pmd)) {
      huge_pmd_set_accessed(vmf, orig_pmd);
      return 0;
    }
    if (const vm_fault_t ret = do_huge_pmd_wp_page(vmf, orig_pmd); !(ret & VM_FAULT_FALLBACK))
      return ret;
  }
  // A fault in a COW-ed table breaks it first. The series breaks for write and unshare faults
  // and for any fault in a VMA with vm_ops (here shmem); On-demand-fork for any fault.
  // The model also breaks for an anonymous read fault, which the series lets do_anonymous_page
  // serve in the shared table: that puts the zero page into every holder's view, also where a
  // holder has no VMA (its load then succeeds instead of SIGSEGV) or another mapping (a shmem
  // VMA mapped there after fork then reads zeros). The randomized differential test found it.
  if (pmd_cow_pte(mm, vmf.pmd.get()))
    if (const vm_fault_t ret = handle_cow_pte_fault(vmf)) return ret;
  return handle_pte_fault(vmf);
}

vm_fault_t Kernel::handle_mm_fault(Vma& vma, vaddr_t address, unsigned flags) {
  // The series' read faults write into shared tables. Only a COW PTE mm asks its policy: the
  // fault path is hot, and the classic fork has no quirks.
  std::optional<SharedPteWrites> unchecked;
  if (mm_cow_pte(*vma.vm_mm) && fork_policy(*vma.vm_mm).quirks().unchecked_shared_writes)
    unchecked.emplace();
  const vm_fault_t ret = __handle_mm_fault(vma, address, flags);
  COWPTE_TRACE(*this, "fault: pid {} addr {:#x} flags {:#x} -> {:#x}", vma.vm_mm->pid, address,
               flags, ret);
  return ret;
}

}  // namespace cowpte
