// Page migration, as compaction does it for one anonymous page: migrate_pages for one page
// (mm/migrate.c: unmap_and_move, migrate_folio_move_mapping, remove_migration_ptes) and the
// rmap side (mm/rmap.c: try_to_migrate, try_to_migrate_one), with the COW PTE series' break of
// a shared table first ([PATCH v3 04/14]). The model migrates synchronously: the migration
// entries exist only inside Machine::migrate_page, so no other path ever meets one (fork's
// copy_nonpresent_pte would make a writable one readable; the threads issue will let another
// task run while they are installed).
#include "mm/errno.hpp"
#include "mm/kernel.hpp"
#include "mm/rmap_walk.hpp"

namespace cowpte {

// try_to_migrate_one: replace one mapping of page by a migration entry that remembers whether
// the mapping was writable or exclusive, and its accessed and dirty bits. False (the mapping
// restored) when the page may be pinned and was exclusive here.
bool Kernel::try_to_migrate_one(Page& page, Vma& vma, vaddr_t addr, EntryRef pmd) {
  MmStruct& mm = *vma.vm_mm;
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(mm, *pte.table));
  const pteval_t pteval = pte.get();
  tm_entry(pte);
  tm_op(Op::pte);
  ptep_get_and_clear(pte);  // ptep_clear_flush
  flush_tlb_page(mm, addr);
  if (pte_dirty(pteval)) page.set(PG_dirty);
  const bool anon_exclusive = PageAnonExclusive(page);
  if (anon_exclusive && page_maybe_dma_pinned(page)) {  // page_try_share_anon_rmap: -EBUSY
    set_pte_at(pte, pteval);
    return false;
  }
  page.clear(PG_anon_exclusive);
  const unsigned type = pte_write(pteval) ? SWP_MIGRATION_WRITE
                        : anon_exclusive  ? SWP_MIGRATION_READ_EXCLUSIVE
                                          : SWP_MIGRATION_READ;
  std::uint64_t offset = raw(mem.pfn(page));
  if (pte_young(pteval)) offset |= SWP_MIG_YOUNG;
  if (pte_dirty(pteval)) offset |= SWP_MIG_DIRTY;
  set_swp_pte_unmapping(pte, pteval, swp_entry_to_pte(SwpEntry{type, offset}), page);
  return true;
}

// try_to_migrate: every mapping of page becomes a migration entry; true if none is left.
bool Kernel::try_to_migrate(Page& page) {
  rmap_walk_anon(page, /*break_cow=*/true, [&](Vma& vma, vaddr_t addr, EntryRef pmd) {
    return try_to_migrate_one(page, vma, addr, pmd);
  });
  return page_mapcount(page) == 0;
}

// remove_migration_ptes: every migration entry for src becomes a mapping of dst (dst == src
// when the migration failed): accessed and dirty as they were, writable if it was, exclusive
// unless it was a shared read-only mapping. The walk looks where src's index says, as
// rmap_walk_locked does with the old folio.
void Kernel::remove_migration_ptes(Page& src, Page& dst) {
  const Pfn src_pfn = mem.pfn(src);
  for_each_anon_address(src.anon_index, [&](MmStruct& mm, Vma& vma, vaddr_t addr, EntryRef pmd) {
    if (pmd_trans_huge(pmd.get())) return true;
    EntryRef pte = pte_offset_map(pmd, addr);
    SpinGuard ptl(pte_lockptr(mm, *pte.table));
    const pteval_t v = pte.get();
    if (!is_swap_pte(v)) return true;
    const SwpEntry e = pte_to_swp_entry(v);
    if (!is_migration_entry(e) || pfn_swap_entry_to_pfn(e) != src_pfn) return true;
    pteval_t nw = pte_mkold(pfn_pte(mem.pfn(dst), vma.vm_page_prot));
    if (pte_swp_soft_dirty(v)) nw = pte_mksoft_dirty(nw);
    if (e.offset & SWP_MIG_YOUNG) nw = pte_mkyoung(nw);
    if (e.offset & SWP_MIG_DIRTY) nw = pte_mkdirty(nw);
    if (e.type == SWP_MIGRATION_WRITE && (vma.vm_flags & VM_WRITE)) nw = pte_mkwrite(nw);
    get_page(dst);
    page_add_anon_rmap(dst, vma, addr, e.type != SWP_MIGRATION_READ);
    set_pte_at(pte, nw);
    tm_entry(pte);
    return true;
  });
}

// migrate_page (unmap_and_move for one isolated anonymous page): a new frame, every mapping
// replaced by a migration entry, the contents and the swap cache's place moved over, the new
// frame mapped where the old one was. The old frame is freed. ENOMEM without a new frame; EBUSY
// when a mapping cannot be unmapped (a pin, or a shared table the break could not copy) or a
// reference besides the mappings holds the page (GUP): then everything is as before.
Result<Pfn> Kernel::migrate_page(Page& page) {
  PhaseScope phase(*this, Phase::reclaim);
  get_page(page);  // isolate_lru_page: before the allocation, which may reclaim
  Page* nw = alloc_page(Gfp::kernel);
  if (!nw) {
    mem.put_page(page);
    return Errno::nomem;
  }
  const std::int32_t expected = 1 + (PageSwapCache(page) ? 1 : 0);  // isolation + cache
  bool moved = false;
  if (try_to_migrate(page) && page_count(page) == expected) {
    // migrate_folio_move_mapping + folio_migrate_copy: contents, flags, the swap cache slot.
    mem.copy_page(*nw, page);
    tm_page_copy();
    nw->flags = page.flags & (PG_anon | PG_swapbacked | PG_dirty | PG_swapcache);
    nw->anon_index = page.anon_index;
    if (PageSwapCache(page)) {
      nw->swap_offset = page.swap_offset;
      swap->cache[page.swap_offset] = nw;
      get_page(*nw);  // the cache's reference moves to the new frame
      page.clear(PG_swapcache);
      mem.put_page(page);
    }
    moved = true;
  }
  remove_migration_ptes(page, moved ? *nw : page);
  mem.put_page(page);  // putback, or the last reference of the migrated frame
  if (!moved) {
    mem.put_page(*nw);
    return Errno::busy;
  }
  ++vm_events.pgmigrate_success;
  const Pfn pfn = mem.pfn(*nw);
  mem.put_page(*nw);  // the allocation's reference: the mappings and the cache hold it now
  return pfn;
}

}  // namespace cowpte
