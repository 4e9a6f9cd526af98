// The reverse-map walk over anonymous pages that reclaim, the accessed-bit harvest and
// migration share (mm/rmap.c rmap_walk_anon with page_vma_mapped_walk).
#pragma once

#include "mm/kernel.hpp"

namespace cowpte {

// Where an anonymous page of this index can be mapped: every anonymous VMA of every live mm
// whose range holds it (Linux: the anon_vma interval tree of page->mapping; the model takes the
// VMAs of every process, and the callers check the PTE), with the PMD entry of the address if
// its tables exist (a huge PMD too: the callers check). f(mm, vma, addr, pmd) returns false to
// stop; then this returns false.
template <class F>
bool Kernel::for_each_anon_address(std::uint64_t index, F&& f) {
  for (Process& p : procs) {
    MmStruct* mm = p.mm();
    if (!mm) continue;
    for (Vma& vma : mm->mm_mt) {
      if (!vma.anon_vma || vma.vm_file) continue;
      if (index < vma.vm_pgoff || index >= vma.vm_pgoff + vma.pages()) continue;
      const vaddr_t addr = vma.vm_start + ((index - vma.vm_pgoff) << PAGE_SHIFT);
      EntryRef pmd = walk_to_pmd(*mm, addr);
      if (!pmd || pmd_none(pmd.get())) continue;
      if (!f(*mm, vma, addr, pmd)) return false;
    }
  }
  return true;
}

// rmap_walk_anon: every PTE that maps page, in every process (for_each_anon_address of
// page->index, and the PTE there maps page: page_vma_mapped_walk). With break_cow
// (PVMW_BREAK_COW_PTE, patch 04) a shared table is broken first; a failed break skips that mapping.
// visit(vma, addr, pmd) returns false to stop the walk, and the walk then returns false. Direct
// reclaim does not unmap through a shared table the allocating path holds (breaking it, or
// sharing it with the child it forks): Linux's locks and rechecks cover that race, the model
// stays out of it. The walk stops there too.
template <class Visit>
bool Kernel::rmap_walk_anon(Page& page, bool break_cow, Visit&& visit) {
  const Pfn pfn = mem.pfn(page);
  return for_each_anon_address(
      page.anon_index, [&](MmStruct& mm, Vma& vma, vaddr_t addr, EntryRef pmd) {
        if (pmd_trans_huge(pmd.get())) return true;  // maps a THP: callers split those first
        const pteval_t pte = pte_offset_map(pmd, addr).get();
        if (!pte_present(pte) || pte_pfn(pte) != pfn) return true;  // page_vma_mapped_walk
        // Direct reclaim leaves alone a table the allocating path holds (TableInHand).
        if (break_cow && direct_reclaim && table_in_hand(mm, table_of(pmd.get()))) return false;
        if (break_cow && pmd_cow_pte(mm, pmd.get())) {
          if (break_cow_pte(mm, pmd, addr)) return true;  // no table for the break: not found
          ++vm_events.rmap_cow_pte_breaks;
        }
        return visit(vma, addr, pmd);
      });
}

}  // namespace cowpte
