// Tearing mappings down: zap_pte_range and the levels above it, zap_page_range
// (mm/memory.c), free_pgtables and exit_mmap (mm/mmap.c), tlb_finish_mmu (mm/mmu_gather.c).
#include <fmt/format.h>

#include <algorithm>

#include "mm/kernel.hpp"

namespace cowpte {

// zap_pte_range: clear each entry, de-account it, and queue the page reference to be dropped
// after the TLB flush (a page is freed when its last reference goes). When the gather's batch
// fills, flush the TLB before the lock goes, free the batch, and come back for the rest. The
// loop runs without hooks when none can act (with_hooks).
void Kernel::zap_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end) {
  MmStruct& mm = *tlb.mm;
  bool force_flush;
  do {  // again:
    force_flush = false;
    {
      RssVec rss{};
      EntryRef pte = pte_offset_map(pmd, addr);
      SpinGuard ptl(pte_lockptr(*tlb.mm, *pte.table));  // pte_offset_map_lock
      with_hooks(hooks_on(), [&](auto hooks) {
        constexpr bool H = decltype(hooks)::value;
        do {
          const pteval_t v = pte.get();
          tm_entry<H>(pte);
          if (pte_none(v)) continue;
          if (!pte_present(v)) [[unlikely]] {  // a genuine swap entry: a private anon page
            --rss[MM_SWAPENTS];
            if (!free_swap_and_cache(pte_to_swp_entry(v)))
              throw InvariantViolation(fmt::format("zap_pte_range: bad swap PTE {:#x} at {:#x}", v,
                                                   addr));  // print_bad_pte
            pte_clear(pte);                                 // pte_clear_not_present_full
            continue;
          }
          Page* page = vm_normal_page(vma, v);
          tm_op<H>(Op::pte);
          if (page) tm_page<H>(*page, 1);  // page_remove_rmap; the reference goes after the flush
          ptep_get_and_clear<H>(pte);      // ptep_get_and_clear_full
          tlb.tlb_remove_tlb_entry(addr, PAGE_SIZE);
          if (!page) continue;                                        // the zero page
          if (!PageAnon(*page) && pte_dirty(v)) page->set(PG_dirty);  // set_page_dirty
          --rss[mm_counter(*page)];
          page_remove_rmap(*page);
          force_flush = tlb.__tlb_remove_page(*page);
        } while (++pte.p, addr += PAGE_SIZE, addr != end && !force_flush);
      });
      add_mm_rss_vec(mm, rss);
      if (force_flush) tlb_flush_mmu_tlbonly(tlb);  // the flush before the lock goes
    }                                               // pte_unmap_unlock
    if (force_flush) tlb_flush_mmu(tlb);            // then free the batched pages
  } while (addr != end);
}

// zap_cow_pte_range: v4's zap of a table others still share: undo this mm's accounting of the
// entries in [addr, end) (rmap, RSS, the page reference after the flush; a swap entry's
// reference and MM_SWAPENTS) but leave the entries for the other holders; free_pte_range (or
// zap_cow_pte) then drops this mm's reference.
void Kernel::zap_cow_pte_range(MmGather& tlb, EntryRef pmd, vaddr_t addr, vaddr_t end) {
  tlb.tlb_remove_tlb_entry(addr, end - addr);  // this mm's translations of the range go
  RssVec rss{};
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(*tlb.mm, *pte.table));
  with_hooks(hooks_on(), [&](auto hooks) {
    constexpr bool H = decltype(hooks)::value;
    do {
      const pteval_t v = pte.get();
      tm_entry<H>(pte);
      if (pte_none(v)) continue;
      if (!pte_present(v)) {
        --rss[MM_SWAPENTS];
        free_swap_and_cache(pte_to_swp_entry(v));
        continue;
      }
      if (pte_special(v)) continue;
      Page& page = mem.page(pte_pfn(v));
      tm_page<H>(page, 1);
      --rss[mm_counter(page)];
      page_remove_rmap(page);
      tlb_remove_page(tlb, page);
    } while (++pte.p, addr += PAGE_SIZE, addr != end);
  });
  add_mm_rss_vec(*tlb.mm, rss);
}

// zap_cow_pte: a zap that meets a COW-ed table (write-protected PMD): the COW PTE part of v4's
// zap_pte_range and of v5's zap path (mm/memory.c), which the mm's fork policy carries out
// (ForkPolicy::zap_table). True when nothing is left for zap_pte_range to do.
bool Kernel::zap_cow_pte(MmGather& tlb, EntryRef pmd, vaddr_t addr) {
  return fork_policy(*tlb.mm).zap_table(*this, tlb, pmd, addr);
}

// Whether a zap that meets a shared table takes every entry this mm has in its span (exit, or
// munmap with no VMA left in the span). Otherwise the zap must cover the whole span
// (MADV_DONTNEED of it): anything less would change entries other processes still map, and its
// caller broke the table first (do_vmi_munmap, madvise), so meeting one here is a bug.
bool Kernel::cow_pte_zap_whole_mm(const MmGather& tlb, vaddr_t span) {
  const bool whole_mm =
      tlb.fullmm || (tlb.free_tables && !tlb.mm->find_vma_intersection(span, span + PMD_SIZE));
  const bool whole_span = tlb.zap_start <= span && span + PMD_SIZE <= tlb.zap_end;
  if (!whole_mm && !whole_span)
    throw InvariantViolation(
        fmt::format("zap of shared PTE table at {:#x} that was not broken", span));
  return whole_mm;
}

void Kernel::zap_pmd_range(MmGather& tlb, Vma& vma, EntryRef pud, vaddr_t addr, vaddr_t end) {
  EntryRef pmd = pmd_offset(pud, addr);
  do {
    const vaddr_t next = pmd_addr_end(addr, end);
    if (pmd_trans_huge(pmd.get())) {
      if (next - addr == PMD_SIZE && zap_huge_pmd(tlb, vma, pmd, addr)) continue;
      split_huge_pmd(vma, pmd, addr);  // a partial zap: the PTEs of the rest stay
    }
    if (pmd_none(pmd.get())) continue;  // pmd_none_or_trans_huge_or_clear_bad
    if (pmd_cow_pte(*tlb.mm, pmd.get()) && zap_cow_pte(tlb, pmd, addr)) continue;
    zap_pte_range(tlb, vma, pmd, addr, next);
  } while (++pmd.p, addr = pmd_addr_end(addr, end), addr != end);
}

void Kernel::zap_pud_range(MmGather& tlb, Vma& vma, EntryRef pgd, vaddr_t addr, vaddr_t end) {
  EntryRef pud = pud_offset(pgd, addr);
  do {
    const vaddr_t next = pud_addr_end(addr, end);
    if (pmd_none(pud.get())) continue;
    zap_pmd_range(tlb, vma, pud, addr, next);
  } while (++pud.p, addr = pud_addr_end(addr, end), addr != end);
}

void Kernel::unmap_page_range(MmGather& tlb, Vma& vma, vaddr_t addr, vaddr_t end) {
  EntryRef pgd = pgd_offset(*tlb.mm, addr);
  do {
    const vaddr_t next = pgd_addr_end(addr, end);
    if (pmd_none(pgd.get())) continue;
    zap_pud_range(tlb, vma, pgd, addr, next);
  } while (++pgd.p, addr = pgd_addr_end(addr, end), addr != end);
}

// unmap_vmas: zap [start, end) of each VMA in turn.
void Kernel::unmap_vmas(MmGather& tlb, const std::vector<Vma*>& vmas, vaddr_t start, vaddr_t end) {
  for (Vma* vma : vmas) {
    const vaddr_t s = std::max(start, vma->vm_start);
    const vaddr_t e = std::min(end, vma->vm_end);
    if (s < e) unmap_page_range(tlb, *vma, s, e);
  }
}

// zap_page_range: MADV_DONTNEED over every VMA in [start, end), one gather (madvise_dontneed);
// the tables stay, but for shared ones whose whole span goes (see zap_cow_pte).
void Kernel::zap_page_range(MmStruct& mm, vaddr_t start, vaddr_t end) {
  MmGather tlb(mm, false);
  tlb.zap_start = start;
  tlb.zap_end = end;
  mm.for_each_vma_range (start, end, [&](Vma& v) {
    unmap_page_range(tlb, v, std::max(start, v.vm_start), std::min(end, v.vm_end));
  });
  tlb_finish_mmu(tlb);
}

// tlb_flush_mmu_tlbonly: flush what the gather cleared since its last flush.
void Kernel::tlb_flush_mmu_tlbonly(MmGather& tlb) {
  // Nothing cleared and no table queued since the last flush: nothing to flush (the second
  // call of a forced flush, or a gather that zapped nothing).
  const bool freed_tables = tlb.tables.size() > tlb.tables_flushed;
  if (!tlb.need_flush() && !freed_tables) return;
  // A range flush also drops the paging-structure caches of the PCID (INVLPG does), so it
  // covers freed tables too; tables freed with no translation zapped still need a flush.
  if (tlb.fullmm || !tlb.need_flush()) {
    flush_tlb_mm(*tlb.mm);
  } else {
    flush_tlb_range(*tlb.mm, tlb.start, tlb.end, tlb.unmap_shift());
  }
  tlb.start = ~0ull;  // __tlb_reset_range
  tlb.end = 0;
  tlb.cleared_ptes = false;
  tlb.tables_flushed = tlb.tables.size();
}

// tlb_flush_mmu: flush, then drop the queued page references and free the queued tables.
void Kernel::tlb_flush_mmu(MmGather& tlb) {
  // Checked here, once per batch, rather than per page queued (which cost 3% of an exit).
  if (tlb.pages.size() > MmGather::kMaxPages) [[unlikely]]
    throw InvariantViolation(
        "tlb_flush_mmu: a gather grew past its batch (pages queued unflushed)");
  tlb_flush_mmu_tlbonly(tlb);
  with_hooks(hooks_on(), [&](auto hooks) {
    constexpr bool H = decltype(hooks)::value;
    for (Page* p : tlb.pages) {  // tlb_batch_pages_flush: free_pages_and_swap_cache
      tm_page<H>(*p, 1);
      free_page_and_swap_cache<H>(*p);
    }
  });
  for (Page* t : tlb.tables) pgtable_free(*t);  // tlb_table_flush
  tlb.pages.clear();
  tlb.tables.clear();
  tlb.tables_flushed = 0;
}

// tlb_finish_mmu: the last flush of a gather.
void Kernel::tlb_finish_mmu(MmGather& tlb) { tlb_flush_mmu(tlb); }

// free_pte_range: the PMD entry goes and the PTE table with it (after the flush).
// With COW PTE (v4) the fork policy lets a write-protected PMD drop this mm's reference; the
// last holder frees the table like a private one. The clear is free_pgtables' (mmap_lock, detached
// VMAs).
void Kernel::free_pte_range(MmGather& tlb, EntryRef pmd) {
  Page& table = table_of(pmd.get());
  if (pmd_cow_pte(*tlb.mm, pmd.get()) && fork_policy(*tlb.mm).free_table(*this, tlb, pmd))
    return;  // others still hold the table; this mm let go of it
  pmd_clear_for_free(*tlb.mm, pmd);
  tlb.tables.push_back(&table);         // pte_free_tlb
  tlb.mm->pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_ptes
}

// free_pmd_range: free the PTE tables, then the PMD table itself if [floor, ceiling) leaves
// no other user of its 1 GiB.
void Kernel::free_pmd_range(MmGather& tlb, EntryRef pud, vaddr_t addr, vaddr_t end, vaddr_t floor,
                            vaddr_t ceiling) {
  vaddr_t start = addr;
  EntryRef pmd = pmd_offset(pud, addr);
  do {
    if (pmd_none(pmd.get())) continue;  // pmd_none_or_clear_bad
    free_pte_range(tlb, pmd);
  } while (++pmd.p, addr = pmd_addr_end(addr, end), addr != end);

  start &= PUD_MASK;
  if (start < floor) return;
  if (ceiling) {
    ceiling &= PUD_MASK;
    if (!ceiling) return;
  }
  if (end - 1 > ceiling - 1) return;
  Page& table = table_of(pud.get());
  pud_clear_for_free(*tlb.mm, pud);
  tlb.tables.push_back(&table);         // pmd_free_tlb
  tlb.mm->pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_pmds
}

// free_pud_range (free_p4d_range folded in): the same for the PUD table of a 512 GiB slot.
void Kernel::free_pud_range(MmGather& tlb, EntryRef pgd, vaddr_t addr, vaddr_t end, vaddr_t floor,
                            vaddr_t ceiling) {
  vaddr_t start = addr;
  EntryRef pud = pud_offset(pgd, addr);
  do {
    const vaddr_t next = pud_addr_end(addr, end);
    if (pmd_none(pud.get())) continue;
    free_pmd_range(tlb, pud, addr, next, floor, ceiling);
  } while (++pud.p, addr = pud_addr_end(addr, end), addr != end);

  start &= PGDIR_MASK;
  if (start < floor) return;
  if (ceiling) {
    ceiling &= PGDIR_MASK;
    if (!ceiling) return;
  }
  if (end - 1 > ceiling - 1) return;
  Page& table = table_of(pgd.get());
  pud_clear_for_free(*tlb.mm, pgd);     // p4d_clear on a folded p4d clears the pgd entry
  tlb.tables.push_back(&table);         // pud_free_tlb
  tlb.mm->pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_puds
}

// free_pgd_range: free the tables of [addr, end), but none that [floor, ceiling) still needs.
void Kernel::free_pgd_range(MmGather& tlb, vaddr_t addr, vaddr_t end, vaddr_t floor,
                            vaddr_t ceiling) {
  addr &= PMD_MASK;
  if (addr < floor) {
    addr += PMD_SIZE;
    if (!addr) return;
  }
  if (ceiling) {
    ceiling &= PMD_MASK;
    if (!ceiling) return;
  }
  if (end - 1 > ceiling - 1) end -= PMD_SIZE;
  if (addr > end - 1) return;
  EntryRef pgd = pgd_offset(*tlb.mm, addr);
  do {
    const vaddr_t next = pgd_addr_end(addr, end);
    if (pmd_none(pgd.get())) continue;
    free_pud_range(tlb, pgd, addr, next, floor, ceiling);
  } while (++pgd.p, addr = pgd_addr_end(addr, end), addr != end);
}

// free_pgtables: group VMAs less than a PMD apart and free each group's tables.
void Kernel::free_pgtables(MmGather& tlb, const std::vector<Vma*>& vmas, vaddr_t floor,
                           vaddr_t ceiling) {
  for (std::size_t i = 0; i < vmas.size();) {
    const vaddr_t addr = vmas[i]->vm_start;
    std::size_t j = i;
    while (j + 1 < vmas.size() && vmas[j + 1]->vm_start <= vmas[j]->vm_end + PMD_SIZE) ++j;
    const vaddr_t next_start = j + 1 < vmas.size() ? vmas[j + 1]->vm_start : ceiling;
    free_pgd_range(tlb, addr, vmas[j]->vm_end, floor, next_start);
    i = j + 1;
  }
}

// exit_mmap: zap everything, free every table, drop the VMAs. At the end every RSS counter and
// pgtables_bytes must be zero ("BUG: Bad rss-counter state" otherwise).
void Kernel::exit_mmap(MmStruct& mm) {
  khugepaged_exit(mm);  // __mmput
  MmapWriteGuard lock(mm);
  std::vector<Vma*> vmas;
  for (Vma& v : mm.mm_mt) vmas.push_back(&v);
  MmGather tlb(mm, true);
  unmap_vmas(tlb, vmas, 0, ~0ull);
  free_pgtables(tlb, vmas, 0, 0);
  tlb_finish_mmu(tlb);
  mm.mm_mt.clear_and_dispose([this](Vma* v) { remove_vma(v); });
  COWPTE_TRACE(*this, "exit_mmap: pid {}", mm.pid);
  check_mm(mm);
}

// check_mm (kernel/fork.c): what exit leaves in the counters, in Linux's words.
void Kernel::check_mm(MmStruct& mm) {
  static constexpr const char* kNames[NR_MM_COUNTERS] = {"MM_FILEPAGES", "MM_ANONPAGES",
                                                         "MM_SWAPENTS", "MM_SHMEMPAGES"};
  std::vector<std::string> bugs;
  for (unsigned i = 0; i < NR_MM_COUNTERS; ++i)
    if (mm.rss_stat[i])
      bugs.push_back(fmt::format("BUG: Bad rss-counter state mm:pid {} type:{} val:{}", mm.pid,
                                 kNames[i], mm.rss_stat[i]));
  if (mm.pgtables_bytes)
    bugs.push_back(
        fmt::format("BUG: non-zero pgtables_bytes on freeing mm: {}", mm.pgtables_bytes));
  if (bugs.empty()) return;
  if (!fork_policy(mm).quirks().check_mm_reports)
    throw InvariantViolation("exit_mmap: " + bugs.front());
  for (std::string& b : bugs) kernel_log.push_back(std::move(b));
}

}  // namespace cowpte
