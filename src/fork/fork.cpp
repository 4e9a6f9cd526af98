// fork(): kernel_clone -> copy_process -> copy_mm -> dup_mm -> dup_mmap (kernel/fork.c).
#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// dup_mmap: copy every VMA but VM_DONTCOPY ones; VM_WIPEONFORK ones come empty. Both mms are
// write-locked (the child's nested) for the whole copy; the parent's TLB is flushed at the end
// because copy_present_pte write-protected its PTEs.
int Kernel::dup_mmap(MmStruct& mm, MmStruct& oldmm) {
  MmapWriteGuard old_lock(oldmm);
  MmapWriteGuard new_lock(mm);  // mmap_write_lock_nested(SINGLE_DEPTH_NESTING)
  int retval = 0;
  cow_pte_recover = {};
  for (Vma& mpnt : oldmm.mm_mt) {
    if (mpnt.vm_flags & VM_DONTCOPY) continue;
    tm_op(Op::vma);
    Vma* tmp = vm_area_dup(mpnt);
    if (!tmp) {
      retval = -ENOMEM;
      break;
    }
    tmp->vm_mm = &mm;
    if (tmp->vm_flags & VM_WIPEONFORK) {
      tmp->anon_vma = nullptr;  // the child starts with an empty anon_vma-less VMA
      tmp->anon_vma_chain = 0;
    } else {
      tmp->anon_vma = nullptr;
      if (!anon_vma_fork(*tmp, mpnt)) {
        vm_area_free(tmp);
        retval = -ENOMEM;
        break;
      }
    }
    tmp->vm_flags &= ~VM_LOCKED;
    mm.mm_mt.insert(*tmp);
    if (!(tmp->vm_flags & VM_WIPEONFORK)) retval = copy_page_range(*tmp, mpnt);
    if (retval) break;
  }
  flush_tlb_mm(oldmm);
  return retval;
}

// kernel_clone: the COW PTE series turns MMF_COW_PTE_READY into MMF_COW_PTE before copying.
// A failed copy tears the half-built mm down with exit_mmap; no pid is used up.
Result<Process*> Kernel::kernel_clone(Process& parent) {
  MmStruct& oldmm = *parent.mm();
  COWPTE_TRACE(*this, "fork: pid {} start", oldmm.pid);
  tm_op(Op::fork_base);  // copy_process: task, creds, files, signals, pid
  if (oldmm.test_flag(MMF_COW_PTE_READY)) {
    oldmm.clear_flag(MMF_COW_PTE_READY);
    oldmm.set_flag(MMF_COW_PTE);
  }
  auto new_mm = mm_alloc();
  if (!new_mm) return new_mm.error();
  std::unique_ptr<MmStruct>& mm = *new_mm;
  mm->flags = oldmm.flags & MMF_INIT_MASK;
  mm->cow_pte_policy = oldmm.cow_pte_policy;
  const int err = dup_mmap(*mm, oldmm);
  if (err) {
    exit_mmap(*mm);  // mmput
    pgd_free(*mm);
    mm_free_pcid(*mm);
    COWPTE_TRACE(*this, "fork: pid {} failed {}", oldmm.pid, err);
    return Errno::nomem;
  }
  // alloc_pid, after copy_mm. The child starts on the next CPU (the scheduler spreads them); its
  // mm has run nowhere yet.
  Process& child = add_process(std::move(mm), (parent.cpu() + 1) % cfg.cpus);
  COWPTE_TRACE(*this, "fork: pid {} -> child {}", oldmm.pid, child.pid());
  return &child;
}

}  // namespace cowpte
