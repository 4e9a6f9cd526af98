// fork(): kernel_clone -> copy_process -> copy_mm -> dup_mm -> dup_mmap (kernel/fork.c).
#include <fmt/format.h>

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
  khugepaged_fork(mm, oldmm);
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

// zap_unlinked_ptes: a fork that failed part-way can leave entries in the child's private
// tables that no VMA of the child covers, which exit_mmap's zap (VMA by VMA) would never reach:
// the seed's copy_cow_pte_range prepares and charges to the child every VMA of a 2 MiB span at
// the span's first VMA, and when that fork falls back, recover_pte_range copies them all into
// the child's own table; if a later VMA of the span then never reaches the child (vm_area_dup
// or anon_vma_fork runs out of memory), its entries, pages and swap entries, stay. Zap them, as
// zap_pte_range would. (The series as posted leaks them; found by the facade fuzzer.) Shared
// tables are left to exit_mmap, which de-accounts a shared span whole.
void Kernel::zap_unlinked_ptes(MmStruct& mm) {
  MmGather tlb(mm, false);
  RssVec rss{};
  for (vaddr_t a = 0, next; a < TASK_SIZE; a = next) {
    EntryRef pmd = walk_to_pmd(mm, a, TASK_SIZE, next);
    if (!pmd || pmd_none(pmd.get()) || pmd_trans_huge(pmd.get()) || pmd_cow_pte(mm, pmd.get()))
      continue;
    EntryRef pte = pte_offset_map(pmd, a);
    SpinGuard ptl(pte_lockptr(mm, *pte.table));
    for (vaddr_t x = a; x < next; x += PAGE_SIZE, ++pte.p) {
      const pteval_t v = pte.get();
      if (pte_none(v) || mm.vma_lookup(x)) continue;
      if (!pte_present(v)) {  // a swap entry the child got a reference to
        --rss[MM_SWAPENTS];
        if (!free_swap_and_cache(pte_to_swp_entry(v)))
          throw InvariantViolation(fmt::format("zap_unlinked_ptes: bad swap PTE {:#x} at {:#x}", v,
                                               x));  // print_bad_pte
        pte_clear(pte);
        continue;
      }
      ptep_get_and_clear(pte);
      tlb.tlb_remove_tlb_entry(x, PAGE_SIZE);
      if (pte_special(v)) continue;  // the zero page
      Page& page = mem.page(pte_pfn(v));
      --rss[mm_counter(page)];
      page_remove_rmap(page);
      tlb_remove_page(tlb, page);
    }
  }
  add_mm_rss_vec(mm, rss);
  tlb_finish_mmu(tlb);
}

// kernel_clone: the COW PTE series turns MMF_COW_PTE_READY into MMF_COW_PTE before copying.
// A failed copy tears the half-built mm down with exit_mmap; no pid is used up. With CLONE_VM
// the new task shares the mm (copy_mm: mmget) and, with CLONE_THREAD, its creator's group.
Result<Process*> Kernel::kernel_clone(Process& parent, std::uint64_t clone_flags) {
  MmStruct& oldmm = *parent.mm();
  tm_op(Op::fork_base);  // copy_process: task, creds, files, signals, pid
  // The new task starts on the next CPU (the scheduler spreads them).
  const unsigned cpu = (parent.cpu() + 1) % cfg.cpus;
  if (clone_flags & kCloneVm) {
    ++oldmm.mm_users;  // mmget
    Process& task = add_process(parent.mm_, cpu, clone_flags & kCloneThread ? parent.tgid() : 0);
    COWPTE_TRACE(*this, "clone: pid {} -> thread {}", parent.pid(), task.pid());
    return &task;
  }
  COWPTE_TRACE(*this, "fork: pid {} start", oldmm.pid);
  if (oldmm.test_flag(MMF_COW_PTE_READY)) {
    oldmm.clear_flag(MMF_COW_PTE_READY);
    oldmm.set_flag(MMF_COW_PTE);
  }
  auto new_mm = mm_alloc();
  if (!new_mm) return new_mm.error();
  std::unique_ptr<MmStruct>& mm = *new_mm;
  mm->flags = oldmm.flags & MMF_INIT_MASK;
  mm->cow_pte_policy = oldmm.cow_pte_policy;
  forking_mm = &oldmm;  // one fork at a time: direct reclaim leaves its shared tables alone
  const int err = dup_mmap(*mm, oldmm);
  forking_mm = nullptr;
  if (err) {
    zap_unlinked_ptes(*mm);
    exit_mmap(*mm);  // mmput
    pgd_free(*mm);
    mm_free_pcid(*mm);
    COWPTE_TRACE(*this, "fork: pid {} failed {}", oldmm.pid, err);
    return Errno::nomem;
  }
  // alloc_pid, after copy_mm; the child's mm has run nowhere yet.
  Process& child = add_process(std::move(mm), cpu);
  COWPTE_TRACE(*this, "fork: pid {} -> child {}", oldmm.pid, child.pid());
  return &child;
}

}  // namespace cowpte
