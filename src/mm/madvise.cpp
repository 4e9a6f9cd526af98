// madvise(2): DONTNEED, DONTFORK, DOFORK, PAGEOUT and POPULATE_(READ|WRITE) (mm/madvise.c).
#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// madvise_update_vma: split or merge so that [start, end) carries newflags.
bool Kernel::madvise_update_vma(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end,
                                std::uint64_t newflags) {
  if (newflags == vma.vm_flags) return true;
  Vma* v = split_vma_range(mm, vma, start, end);
  if (!v) return false;
  v->vm_flags = newflags;
  vma_merge(mm, *v);
  return true;
}

namespace {
// madvise_walk_vmas (mm/madvise.c, v6.1): visit each VMA of [start, end) in address order with
// its part of the range. The first error a visit returns ends the walk, and what the earlier
// visits did stays done; a hole anywhere gives ENOMEM once every VMA was visited.
template <class Visit>
Result<void> madvise_walk_vmas(MmStruct& mm, vaddr_t start, vaddr_t end, Visit&& visit) {
  bool unmapped_error = false;
  while (start < end) {
    Vma* vma = mm.find_vma(start);
    if (!vma) return Errno::nomem;  // nothing mapped from here to end
    if (start < vma->vm_start) {
      unmapped_error = true;
      start = vma->vm_start;
      if (start >= end) break;
    }
    const vaddr_t tmp = std::min(end, vma->vm_end);
    if (Result<void> r = visit(*vma, start, tmp); !r) return r;
    start = tmp;
  }
  if (unmapped_error) return Errno::nomem;
  return {};
}
}  // namespace

// madvise_populate: fault the range in through GUP, as MADV_POPULATE_(READ|WRITE) do, VMA after
// VMA in address order. As in Linux since 6.10 (this project's hosts run 6.18; v6.1 ran it per
// VMA inside madvise_walk_vmas and went on past a hole): the first hole gives ENOMEM, a VMA
// that forbids the access EINVAL, a fault that fails ENOMEM or EFAULT, and the pages before
// stay populated.
Result<void> Kernel::madvise_populate(MmStruct& mm, vaddr_t start, vaddr_t end, bool write) {
  const unsigned gup_flags = FOLL_TOUCH | (write ? FOLL_WRITE : 0u);
  MmapReadGuard lock(mm);
  for (vaddr_t a = start; a < end;) {
    Vma* v = mm.vma_lookup(a);
    if (!v) return Errno::nomem;
    if (check_vma_flags(*v, gup_flags)) return Errno::inval;  // faultin_page_range
    const vaddr_t e = std::min(end, v->vm_end);
    // A short count stopped at a page whose fault failed: Linux calls GUP again from there,
    // which fails at once with that page's error (memory that ran short stays short: an
    // injected failure is that), so the error that cut the count decides.
    const std::uint64_t nr = (e - a) >> PAGE_SHIFT;
    int stopped = 0;
    const long r = get_user_pages(mm, a, nr, gup_flags, nullptr, &stopped);
    if (r < 0 || static_cast<std::uint64_t>(r) < nr)
      return stopped == -EFAULT ? Errno::fault : Errno::nomem;  // VM_FAULT_SIGBUS/SIGSEGV, OOM
    a = e;
  }
  return {};
}

// madvise_free_pte_range: MADV_FREE. A private anonymous page this process alone maps (or one
// that is not dirty) becomes lazily freeable: its PTE clean and old, the page no longer
// swap-backed (mark_page_lazyfree). Reclaim may then drop it instead of swapping it, unless a
// write dirtied it again. A dirty page others map too is left alone. A swapped-out page's data
// is not needed any more: its swap entry goes.
void Kernel::madvise_free_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr,
                                    vaddr_t end) {
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(*tlb.mm, *pte.table));
  for (; addr != end; ++pte.p, addr += PAGE_SIZE) {
    const pteval_t v = pte.get();
    tm_entry(pte);
    if (is_swap_pte(v)) {
      --tlb.mm->rss_stat[MM_SWAPENTS];
      free_swap_and_cache(pte_to_swp_entry(v));
      pte_clear(pte);  // pte_clear_not_present_full
      continue;
    }
    if (!pte_present(v)) continue;
    Page* page = vm_normal_page(vma, v);
    if (!page || !PageAnon(*page) || PageCompound(*page)) continue;  // the zero page, a THP
    if (page->test(PG_dirty)) {
      if (page_mapcount(*page) != 1) continue;  // shared: PG_dirty is not ours to clear
      page->clear(PG_dirty);
    }
    if (pte_young(v) || pte_dirty(v)) {
      ptep_get_and_clear(pte);  // ptep_get_and_clear_full, then remap old and clean
      set_pte_at(pte, pte_mkclean(pte_mkold(v)));
      tlb.tlb_remove_tlb_entry(addr, PAGE_SIZE);
    }
    page->clear(PG_swapbacked);  // mark_page_lazyfree
  }
}

// madvise_cold_or_pageout_pte_range: MADV_COLD and MADV_PAGEOUT over pages this process alone
// maps: the accessed bit goes (the model has no LRU lists to deactivate them on); PAGEOUT then
// isolates the anonymous ones and, with the PTE lock dropped, reclaims them (reclaim_pages ->
// shrink_folio_list -> try_to_unmap_one): with a swap device each becomes a swap entry; a
// lazily freeable one is dropped if no PTE dirtied it since MADV_FREE and nothing else holds a
// reference (else it is swap-backed again and kept, dirty); without a device the rest stays.
// Shmem is not swapped in the model: a shmem page is unmapped and stays cached.
void Kernel::madvise_cold_or_pageout_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr,
                                               vaddr_t end, bool pageout) {
  std::vector<Page*> isolated;
  madvise_cold_or_pageout_ptes(tlb, vma, pmd, addr, end, pageout, isolated);
  if (!isolated.empty()) {
    PhaseScope phase(*this, Phase::reclaim);
    reclaim_pages(isolated);
  }
}

void Kernel::madvise_cold_or_pageout_ptes(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr,
                                          vaddr_t end, bool pageout, std::vector<Page*>& isolated) {
  MmStruct& mm = *tlb.mm;
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(mm, *pte.table));
  for (; addr != end; ++pte.p, addr += PAGE_SIZE) {
    pteval_t v = pte.get();
    tm_entry(pte);
    if (!pte_present(v)) continue;
    Page* page = vm_normal_page(vma, v);
    if (!page || page_mapcount(*page) != 1) continue;  // other mappings are left alone
    if (PageCompound(*page)) continue;                 // a THP that could not be split
    if (pte_young(v)) {
      ptep_get_and_clear(pte);
      v = pte_mkold(v);
      set_pte_at(pte, v);
      tlb.tlb_remove_tlb_entry(addr, PAGE_SIZE);
    }
    if (!pageout) continue;
    if (!PageAnon(*page)) {
      // shmem: unmapped (try_to_unmap). A dirty page then has no swap to be written to and
      // stays in the file's cache; a clean one (never written: zeros) leaves the cache too
      // (__remove_mapping), unless a reference besides the cache's and this mapping's holds it.
      const bool dirty = pte_dirty(v) || page->test(PG_dirty);
      if (dirty) page->set(PG_dirty);
      ptep_get_and_clear(pte);
      tlb.tlb_remove_tlb_entry(addr, PAGE_SIZE);
      --mm.rss_stat[mm_counter(*page)];
      page_remove_rmap(*page);
      tlb_remove_page(tlb, *page);
      if (!dirty && page->mapping && page_count(*page) == 2 && page_mapcount(*page) == 0) {
        page->mapping->cache.erase(page->index);
        page->mapping = nullptr;
        mem.put_page(*page);  // the cache's reference; the mapping's goes after the flush
      }
      continue;
    }
    get_page(*page);  // folio_isolate_lru
    isolated.push_back(page);
  }
}

// Run a PTE-level pass of madvise over [start, end) of one VMA, with the tables it writes
// private first (COW PTE: broken before anything changes) and one TLB flush at the end.
template <class PteRange>
Result<void> Kernel::madvise_walk_ptes(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end,
                                       bool cold, PteRange&& range) {
  if (break_cow_pte_range(mm, start, end)) return Errno::nomem;
  // THPs: the PTE-level passes work on base pages. MADV_COLD ages a huge PMD it covers whole
  // (madvise_cold_or_pageout_pte_range's PMD case); otherwise huge PMDs split, and the THPs
  // behind the range's PTEs split into base pages where they can (MADV_FREE and MADV_PAGEOUT
  // split a THP they cover in part, reclaim one it swaps out); a pinned one stays whole and
  // the passes leave it alone.
  if (cold) {
    for (vaddr_t a = start, next; a < end; a = next) {
      EntryRef pmd = walk_to_pmd(mm, a, end, next);
      if (!pmd || !pmd_trans_huge(pmd.get())) continue;
      if (next - a < PMD_SIZE) {
        split_huge_pmd(vma, pmd, a);
        continue;
      }
      SpinGuard ptl(pmd_lockptr(mm, *pmd.table));
      if (pmd_young(pmd.get())) {
        set_pmd_at(mm, pmd, pmd_mkold(pmd.get()));
        flush_tlb_range(mm, a, next, PMD_SHIFT);
      }
    }
  } else {
    split_huge_pmd_range(mm, start, end);
    split_huge_pages_range(mm, start, end);
  }
  MmGather tlb(mm, false);
  for (vaddr_t a = start, next; a < end; a = next) {
    EntryRef pmd = walk_to_pmd(mm, a, end, next);
    if (pmd && !pmd_none(pmd.get()) && !pmd_trans_huge(pmd.get())) range(tlb, vma, pmd, a, next);
  }
  tlb_finish_mmu(tlb);
  return {};
}

// shmem_punch_hole: shmem_truncate_range over [first, last) of the file: the cached pages
// leave the cache (a page someone still pins lives on, detached).
void Kernel::shmem_punch_hole(ShmemFile& file, std::uint64_t first, std::uint64_t last) {
  for (auto it = file.cache.lower_bound(first); it != file.cache.end() && it->first < last;) {
    it->second->mapping = nullptr;
    mem.put_page(*it->second);
    it = file.cache.erase(it);
  }
}

// madvise_remove: MADV_REMOVE, fallocate(FALLOC_FL_PUNCH_HOLE) on the shmem behind a shared
// writable VMA: unmap_mapping_range zaps the range's pages in every process that maps them,
// then the pages leave the file, so that every mapper reads zeros again.
Result<void> Kernel::madvise_remove(Vma& vma, vaddr_t start, vaddr_t end) {
  if (!vma.vm_file) return Errno::inval;
  // vma_is_shared_maywrite, as this project's hosts (6.18) check; v6.1 wanted VM_WRITE itself.
  if ((vma.vm_flags & (VM_SHARED | VM_MAYWRITE)) != (VM_SHARED | VM_MAYWRITE)) return Errno::acces;
  ShmemFile& file = *vma.vm_file;
  const std::uint64_t first = vma.vm_pgoff + ((start - vma.vm_start) >> PAGE_SHIFT);
  const std::uint64_t last = first + ((end - start) >> PAGE_SHIFT);
  for (Process& p : procs) {  // unmap_mapping_range: the file's i_mmap, every mapper
    MmStruct* mm = p.mm();
    if (!mm) continue;
    for (Vma& v : mm->mm_mt) {
      if (v.vm_file.get() != &file) continue;
      const std::uint64_t vfirst = std::max(first, v.vm_pgoff);
      const std::uint64_t vlast = std::min(last, v.vm_pgoff + v.pages());
      if (vfirst >= vlast) continue;
      const vaddr_t s = v.vm_start + ((vfirst - v.vm_pgoff) << PAGE_SHIFT);
      const vaddr_t e = v.vm_start + ((vlast - v.vm_pgoff) << PAGE_SHIFT);
      if (break_cow_pte_partial(*mm, s, e)) return Errno::nomem;
      zap_page_range(*mm, s, e);
    }
  }
  shmem_punch_hole(file, first, last);
  return {};
}

// do_madvise (v6.1): the advice goes to every mapped part of the range in address order
// (madvise_walk_vmas), then a hole gives ENOMEM: the mapped parts are changed either way, as
// in Linux.
Result<void> Kernel::do_madvise(MmStruct& mm, vaddr_t start, std::uint64_t len_in, Advice advice) {
  switch (advice) {
    case Advice::dontneed:
    case Advice::free_:
    case Advice::remove:
    case Advice::dontfork:
    case Advice::dofork:
    case Advice::wipeonfork:
    case Advice::keeponfork:
    case Advice::cold:
    case Advice::pageout:
    case Advice::populate_read:
    case Advice::populate_write:
    case Advice::hugepage:
    case Advice::nohugepage:
    case Advice::collapse:
      break;
    default:
      return Errno::inval;  // madvise_behavior_valid
  }
  if (start & ~PAGE_MASK) return Errno::inval;
  const std::uint64_t len = (len_in + PAGE_SIZE - 1) & PAGE_MASK;
  if (len_in && !len) return Errno::inval;
  const vaddr_t end = start + len;
  if (end < start) return Errno::inval;
  if (end == start) return {};
  if (advice == Advice::populate_read || advice == Advice::populate_write)
    return madvise_populate(mm, start, end, advice == Advice::populate_write);
  COWPTE_TRACE(*this, "madvise: pid {} {:#x}-{:#x} advice {}", mm.pid, start, end,
               static_cast<int>(advice));
  switch (advice) {
    case Advice::dontneed: {
      MmapReadGuard lock(mm);
      if (break_cow_pte_partial(mm, start, end)) return Errno::nomem;
      // madvise_dontneed_free zaps each VMA's part in turn; one gather over the range zaps the
      // same entries (a hole has none), and lets a shared table whose whole span goes be
      // dropped at once (zap_cow_pte).
      zap_page_range(mm, start, end);
      return madvise_walk_vmas(mm, start, end, [](Vma&, vaddr_t, vaddr_t) -> Result<void> {
        return {};  // the result: ENOMEM for a hole
      });
    }
    case Advice::dontfork:
    case Advice::dofork: {
      MmapWriteGuard lock(mm);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        const std::uint64_t nf =
            advice == Advice::dontfork ? (v.vm_flags | VM_DONTCOPY) : (v.vm_flags & ~VM_DONTCOPY);
        if (!madvise_update_vma(mm, v, s, e, nf)) return Errno::nomem;
        return {};
      });
    }
    case Advice::hugepage:
    case Advice::nohugepage: {
      // hugepage_madvise: VM_HUGEPAGE and VM_NOHUGEPAGE exclude each other. The THPs mapped
      // already stay; MADV_HUGEPAGE registers the mm with khugepaged where the VMA qualifies.
      MmapWriteGuard lock(mm);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        std::uint64_t nf = v.vm_flags & ~(VM_HUGEPAGE | VM_NOHUGEPAGE);
        nf |= advice == Advice::hugepage ? VM_HUGEPAGE : VM_NOHUGEPAGE;
        if (advice == Advice::hugepage) khugepaged_enter_vma(v, nf);
        if (!madvise_update_vma(mm, v, s, e, nf)) return Errno::nomem;
        return {};
      });
    }
    case Advice::collapse: {
      MmapReadGuard lock(mm);
      PhaseScope phase(*this, Phase::collapse);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        return madvise_collapse(v, s, e);
      });
    }
    case Advice::wipeonfork:
    case Advice::keeponfork: {
      MmapWriteGuard lock(mm);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        if (advice == Advice::wipeonfork && (v.vm_file || (v.vm_flags & VM_SHARED)))
          return Errno::inval;  // private anonymous memory only
        const std::uint64_t nf = advice == Advice::wipeonfork ? (v.vm_flags | VM_WIPEONFORK)
                                                              : (v.vm_flags & ~VM_WIPEONFORK);
        if (!madvise_update_vma(mm, v, s, e, nf)) return Errno::nomem;
        return {};
      });
    }
    case Advice::free_: {
      MmapReadGuard lock(mm);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        if (!vma_is_anonymous(v)) return Errno::inval;  // madvise_free_single_vma
        return madvise_walk_ptes(mm, v, s, e, false,
                                 [&](MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t a, vaddr_t n) {
                                   madvise_free_pte_range(tlb, vma, pmd, a, n);
                                 });
      });
    }
    case Advice::cold:
    case Advice::pageout: {
      MmapReadGuard lock(mm);
      const bool pageout = advice == Advice::pageout;
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        return madvise_walk_ptes(mm, v, s, e, !pageout,
                                 [&](MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t a, vaddr_t n) {
                                   madvise_cold_or_pageout_pte_range(tlb, vma, pmd, a, n, pageout);
                                 });
      });
    }
    case Advice::remove: {
      MmapReadGuard lock(mm);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        return madvise_remove(v, s, e);
      });
    }
    default:
      break;
  }
  return Errno::inval;
}

}  // namespace cowpte
