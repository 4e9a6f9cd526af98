// Reclaim of anonymous pages: reclaim_pages and shrink_folio_list (mm/vmscan.c), and the
// reverse-map walk that unmaps a page from every process, try_to_unmap and try_to_unmap_one
// (mm/rmap.c), with the COW PTE series' break of a shared table first ([PATCH v3 04/14]
// mm/rmap: Break COW PTE in rmap walking).
#include <optional>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"
#include "mm/rmap_walk.hpp"

namespace cowpte {

// page_try_share_anon_rmap: before a page's exclusive mapping becomes a swap entry, it stops
// being exclusive, unless it may be pinned (-EBUSY: it must stay mapped).
static int page_try_share_anon_rmap(Page& page) {
  if (page_maybe_dma_pinned(page)) return -EBUSY;
  page.clear(PG_anon_exclusive);
  return 0;
}

// try_to_unmap_one: replace one mapping of page by its swap entry (or drop a clean lazily
// freeable page), flushing the TLBs that hold it. False when the page must stay mapped.
bool Kernel::try_to_unmap_one(Page& page, Vma& vma, vaddr_t addr, EntryRef pmd) {
  MmStruct& mm = *vma.vm_mm;
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(mm, *pte.table));
  const pteval_t pteval = pte.get();
  tm_entry(pte);
  tm_op(Op::pte);
  tm_page(page, 1);
  if (vma.vm_flags & VM_LOCKED) return false;
  ptep_get_and_clear(pte);  // ptep_clear_flush
  flush_tlb_page(mm, addr);
  if (pte_dirty(pteval)) page.set(PG_dirty);
  if (!page.test(PG_swapbacked)) {  // MADV_FREE: drop it, unless it was written since
    if (page_count(page) == 1 + page_mapcount(page) && !page.test(PG_dirty)) {
      --mm.rss_stat[MM_ANONPAGES];
      page_remove_rmap(page);
      mem.put_page(page);
      return true;
    }
    set_pte_at(pte, pteval);
    page.set(PG_swapbacked);
    return false;
  }
  if (!PageSwapCache(page)) {  // swap-backed but not in the swap cache: Linux WARNs
    set_pte_at(pte, pteval);
    return false;
  }
  const SwpEntry entry = page_swap_entry(page);
  const bool anon_exclusive = PageAnonExclusive(page);
  if (swap_duplicate(entry) < 0) {
    set_pte_at(pte, pteval);
    return false;
  }
  if (anon_exclusive && page_try_share_anon_rmap(page)) {
    swap_free(entry);
    set_pte_at(pte, pteval);
    return false;
  }
  --mm.rss_stat[MM_ANONPAGES];
  ++mm.rss_stat[MM_SWAPENTS];
  pteval_t swp_pte = swp_entry_to_pte(entry);
  if (anon_exclusive) swp_pte = pte_swp_mkexclusive(swp_pte);
  set_swp_pte_unmapping(pte, pteval, swp_pte, page);
  return true;
}

// The end of try_to_unmap_one and try_to_migrate_one: the non-present entry takes the PTE's
// place, with its soft-dirty bit, and the mapping's hold on the page goes.
void Kernel::set_swp_pte_unmapping(EntryRef pte, pteval_t old, pteval_t swp_pte, Page& page) {
  if (pte_soft_dirty(old)) swp_pte = pte_swp_mksoft_dirty(swp_pte);
  set_pte_at(pte, swp_pte);
  page_remove_rmap(page);
  mem.put_page(page);
}

// try_to_unmap: unmap page from every process that maps it; true if no mapping is left.
bool Kernel::try_to_unmap(Page& page) {
  rmap_walk_anon(page, /*break_cow=*/true, [&](Vma& vma, vaddr_t addr, EntryRef pmd) {
    return try_to_unmap_one(page, vma, addr, pmd);
  });
  return page_mapcount(page) == 0;
}

// shrink_folio_list for one isolated anon page (the caller holds the isolation reference):
// give it a slot, unmap it everywhere, write it out, and take it out of the swap cache. True
// when it is reclaimed (the caller's reference is then the last). A page that must stay is
// "activated": it keeps its slot and cache place unless swap is more than half full.
bool Kernel::shrink_folio(Page& page) {
  const bool anon_swapbacked = PageAnon(page) && page.test(PG_swapbacked);
  if (anon_swapbacked && !PageSwapCache(page) && !add_to_swap(page)) return false;
  if (page_mapcount(page) > 0 && !try_to_unmap(page)) {
    if (PageSwapCache(page) && vm_swap_full()) folio_free_swap(page);  // activate_locked
    return false;
  }
  if (page.test(PG_dirty)) {
    if (!PageSwapCache(page)) return false;
    swap_writepage(page);  // pageout
  }
  // __remove_mapping: nothing but the isolation reference and the cache's may hold the page.
  if (PageSwapCache(page)) {
    if (page_count(page) != 2) return false;
    delete_from_swap_cache(page);
  } else if (page_count(page) != 1) {
    return false;
  }
  return true;
}

// folio_referenced: harvest the accessed bits of every PTE that maps page, clearing them
// (ptep_clear_flush_young: x86 does not flush the TLB for it). A shared table is not broken
// for this (v4, after Barry Song's review): its one PTE is the A bit of every holder, so the
// harvest clears it once and the table stays shared. Returns the young PTEs found.
int Kernel::folio_referenced(Page& page) {
  int referenced = 0;
  rmap_walk_anon(page, /*break_cow=*/false, [&](Vma& vma, vaddr_t addr, EntryRef pmd) {
    MmStruct& mm = *vma.vm_mm;
    EntryRef pte = pte_offset_map(pmd, addr);
    SpinGuard ptl(pte_lockptr(mm, *pte.table));
    const bool shared = cow_pte_count(*pte.table) > 1;  // COW-ed, or a fork is sharing it
    std::optional<SharedPteWrites> harvest;             // the one write allowed into a shared table
    if (shared) harvest.emplace();
    const pteval_t v = pte.get();
    tm_entry(pte);
    if (shared) ++vm_events.referenced_shared_ptes;
    if (pte_young(v)) {
      set_pte_at(pte, pte_mkold(v));
      ++referenced;
    }
    return true;
  });
  return referenced;
}

// Whether direct reclaim may take page: an anonymous page mapped somewhere, or one only the
// swap cache holds; one that needs a swap slot only while a device has a free one.
bool Kernel::folio_reclaimable(const Page& page) const noexcept {
  // A THP is reclaimed once deferred_split_scan (or MADV_PAGEOUT) split it into base pages.
  if (page.test(PG_free) || page.test(PG_table) || !PageAnon(page) || PageCompound(page))
    return false;
  if (page_mapcount(page) == 0) return PageSwapCache(page);
  if (!page.test(PG_swapbacked) || PageSwapCache(page)) return true;  // lazyfree, or has a slot
  return swap && swap->writeok && swap->nr_free() > 0;
}

// try_to_free_pages: direct (or proactive) reclaim of up to nr_to_reclaim anonymous pages. The
// LRU is approximated by a clock over the frames: a page whose PTEs were young since the hand
// last passed gets a second chance (its accessed bits are cleared), an old one is reclaimed
// (shrink_folio_list). Linux's active and inactive lists age pages by the same accessed bits;
// the model keeps one list in frame order. At most two turns of the hand.
std::uint64_t Kernel::try_to_free_pages(std::uint64_t nr_to_reclaim) {
  PhaseScope phase(*this, Phase::reclaim);
  deferred_split_scan();  // the shrinkers first: partially mapped THPs give their unmapped part
  const std::uint64_t frames = mem.watermark();
  std::uint64_t reclaimed = 0;
  for (std::uint64_t scanned = 0; reclaimed < nr_to_reclaim && scanned < 2 * frames; ++scanned) {
    if (lru_hand >= frames) lru_hand = 0;
    Page& page = mem.page(Pfn{lru_hand++});
    if (!folio_reclaimable(page)) continue;
    ++vm_events.pgscan;
    if (page_mapcount(page) > 0 && folio_referenced(page)) continue;  // second chance
    get_page(page);                                                   // isolate
    reclaimed += shrink_folio(page);
    mem.put_page(page);
  }
  vm_events.pgsteal += reclaimed;
  return reclaimed;
}

// __alloc_pages_slowpath: no frame is free. Reclaim a batch (SWAP_CLUSTER_MAX pages); if that
// frees nothing, the OOM killer frees a process's memory. Reclaim's own allocations (a table
// for a break, a continuation frame) do not recurse. True when a frame is free now.
bool Kernel::alloc_slowpath() {
  if (in_reclaim) return false;
  in_reclaim = direct_reclaim = true;
  try_to_free_pages(32);
  in_reclaim = direct_reclaim = false;
  if (mem.free_pages()) return true;
  return out_of_memory() && mem.free_pages();
}

// reclaim_pages: MADV_PAGEOUT's list of isolated pages; each one's isolation reference is
// dropped at the end, which frees the reclaimed ones. Returns how many were reclaimed.
std::uint64_t Kernel::reclaim_pages(const std::vector<Page*>& pages) {
  in_reclaim = true;  // PF_MEMALLOC: a break's table here must not reclaim these pages again
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{in_reclaim};
  std::uint64_t reclaimed = 0;
  for (Page* page : pages) {
    reclaimed += shrink_folio(*page);
    mem.put_page(*page);  // putback / free
  }
  vm_events.pgsteal += reclaimed;
  return reclaimed;
}

}  // namespace cowpte
