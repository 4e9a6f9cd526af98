// The /proc windows: pagemap, smaps and clear_refs (fs/proc/task_mmu.c).
#include "mm/kernel.hpp"

namespace cowpte {

namespace {
constexpr std::uint64_t PM_PRESENT = 1ull << 63, PM_SWAP = 1ull << 62, PM_FILE = 1ull << 61,
                        PM_MMAP_EXCLUSIVE = 1ull << 56, PM_SOFT_DIRTY = 1ull << 55,
                        PM_PFRAME_MASK = (1ull << 55) - 1;
constexpr unsigned MAX_SWAPFILES_SHIFT = 5;
constexpr unsigned PSS_SHIFT = 12;

PagemapEntry decode_pagemap(std::uint64_t raw) {
  return PagemapEntry{(raw & PM_PRESENT) != 0,
                      (raw & PM_SWAP) != 0,
                      (raw & PM_FILE) != 0,
                      (raw & PM_MMAP_EXCLUSIVE) != 0,
                      (raw & PM_SOFT_DIRTY) != 0,
                      (raw & (PM_PRESENT | PM_SWAP)) ? (raw & PM_PFRAME_MASK) : 0,
                      raw};
}
}  // namespace

// pagemap_pte_range / pte_to_pagemap_entry; a hole in a VMA reports the VMA's soft-dirty bit.
PagemapEntry Kernel::pagemap(MmStruct& mm, vaddr_t addr) {
  MmapReadGuard lock(mm);
  const Vma* vma = mm.vma_lookup(addr);
  std::uint64_t word = 0;
  if (vma && (vma->vm_flags & VM_SOFTDIRTY)) word |= PM_SOFT_DIRTY;
  EntryRef pmd = walk_to_pmd(mm, addr);
  if (vma && pmd && pmd_trans_huge(pmd.get())) {
    // pagemap_pmd_range: each subpage's frame. Its page is pmd_page: the huge zero page, not
    // anonymous, reports PM_FILE (the 4 KiB zero page has no struct page here and does not).
    const pteval_t v = pmd.get();
    const Page& page = mem.page(Pfn{raw(pmd_pfn(v)) + pte_index(addr)});
    word |= PM_PRESENT | (raw(pmd_pfn(v)) + pte_index(addr));
    if (pmd_soft_dirty(v)) word |= PM_SOFT_DIRTY;
    if (!PageAnon(page)) word |= PM_FILE;
    if (page_mapcount(page) == 1) word |= PM_MMAP_EXCLUSIVE;
  } else if (vma && pmd && !pmd_none(pmd.get())) {
    const pteval_t pte = pte_offset_map(pmd, addr).get();
    if (pte_present(pte)) {
      word |= PM_PRESENT | raw(pte_pfn(pte));
      if (pte_soft_dirty(pte)) word |= PM_SOFT_DIRTY;
      const Page* page = vm_normal_page(*vma, pte);
      if (page && !PageAnon(*page)) word |= PM_FILE;
      if (page && page_mapcount(*page) == 1) word |= PM_MMAP_EXCLUSIVE;
    } else if (is_swap_pte(pte)) {
      // The frame field holds the swap type and offset (swp_type | offset << 5).
      const SwpEntry e = pte_to_swp_entry(pte);
      word |=
          PM_SWAP | ((std::uint64_t(e.type) | (e.offset << MAX_SWAPFILES_SHIFT)) & PM_PFRAME_MASK);
      if (pte_swp_soft_dirty(pte)) word |= PM_SOFT_DIRTY;
    }
  }
  return decode_pagemap(word);
}

// show_smap: smaps_pte_entry + smaps_account per VMA, with PSS in 1/4096 fixed point and every
// figure rounded down to kB as seq_put_decimal_ull_width prints it.
std::vector<SmapsEntry> Kernel::smaps(MmStruct& mm) {
  MmapReadGuard lock(mm);
  std::vector<SmapsEntry> out;
  for (Vma& vma : mm.mm_mt) {
    SmapsEntry e{vma.vm_start, vma.vm_end, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    std::uint64_t pss = 0;
    for (vaddr_t a = vma.vm_start; a < vma.vm_end;) {
      vaddr_t next;
      EntryRef pmd = walk_to_pmd(mm, a, vma.vm_end, next);
      if (!pmd || pmd_none(pmd.get())) {
        a = next;
        continue;
      }
      if (pmd_trans_huge(pmd.get())) {
        smaps_pmd_entry(e, pss, pmd.get());
        a = next;
        continue;
      }
      for (EntryRef pte = pte_offset_map(pmd, a); a < next; a += PAGE_SIZE, ++pte.p) {
        const pteval_t v = pte.get();
        if (is_swap_pte(v)) {
          e.swap += PAGE_SIZE;
          continue;
        }
        if (!pte_present(v)) continue;
        const Page* page = vm_normal_page(vma, v);
        if (!page) continue;  // the zero page is not counted
        if (PageAnon(*page)) e.anonymous += PAGE_SIZE;
        e.rss += PAGE_SIZE;
        const bool dirty = pte_dirty(v) || page->test(PG_dirty);
        const int mapcount = page_mapcount(*page);
        const bool priv = page_count(*page) == 1 || mapcount < 2;
        pss += (page_count(*page) == 1 || mapcount < 2) ? (PAGE_SIZE << PSS_SHIFT)
                                                        : (PAGE_SIZE << PSS_SHIFT) / mapcount;
        std::uint64_t& bucket = dirty ? (priv ? e.private_dirty : e.shared_dirty)
                                      : (priv ? e.private_clean : e.shared_clean);
        bucket += PAGE_SIZE;
      }
    }
    e.pss = ((pss >> PSS_SHIFT) >> 10) << 10;
    out.push_back(e);
  }
  return out;
}

// smaps_pmd_entry: a huge PMD (the huge zero page is not counted). smaps_account(compound):
// private when the THP has one reference, otherwise each subpage by its own mapcount.
void Kernel::smaps_pmd_entry(SmapsEntry& e, std::uint64_t& pss, pteval_t pmd) {
  const Page& head = mem.page(pmd_pfn(pmd));
  if (&head == huge_zero_page) return;
  e.anon_huge += PMD_SIZE;
  e.anonymous += PMD_SIZE;
  e.rss += PMD_SIZE;
  const bool dirty = pmd_dirty(pmd) || head.test(PG_dirty);
  const bool whole_private = page_count(head) == 1;
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    const int mapcount = page_mapcount((&head)[i]);
    const bool priv = whole_private || mapcount < 2;
    pss += priv ? (PAGE_SIZE << PSS_SHIFT) : (PAGE_SIZE << PSS_SHIFT) / mapcount;
    std::uint64_t& bucket = dirty ? (priv ? e.private_dirty : e.shared_dirty)
                                  : (priv ? e.private_clean : e.shared_clean);
    bucket += PAGE_SIZE;
  }
}

// clear_refs_write(CLEAR_REFS_SOFT_DIRTY): restart soft-dirty tracking. Each VMA loses
// VM_SOFTDIRTY; each present PTE is write-protected and loses soft-dirty, except a writable
// PTE of a page that may be pinned (pte_is_pinned); a swap PTE loses its soft-dirty bit.
Result<void> Kernel::clear_refs_soft_dirty(MmStruct& mm) {
  MmapWriteGuard lock(mm);
  // [PATCH 12/14] (v4: CLEAR_REFS_SOFT_DIRTY only): break COW PTE before write-protecting. The
  // model breaks every shared table first, so that ENOMEM leaves everything as it was.
  for (Vma& vma : mm.mm_mt)
    if (break_cow_pte_range(mm, vma.vm_start, vma.vm_end)) return Errno::nomem;
  for (Vma& vma : mm.mm_mt) {
    if (!(vma.vm_flags & VM_SOFTDIRTY)) continue;
    vma.vm_flags &= ~VM_SOFTDIRTY;
    vma_set_page_prot(vma);
  }
  for (Vma& vma : mm.mm_mt) {
    for (vaddr_t a = vma.vm_start; a < vma.vm_end;) {
      vaddr_t next;
      EntryRef pmd = walk_to_pmd(mm, a, vma.vm_end, next);
      if (!pmd || pmd_none(pmd.get())) {
        a = next;
        continue;
      }
      if (pmd_trans_huge(pmd.get())) {  // clear_soft_dirty_pmd
        SpinGuard ptl(pmd_lockptr(mm, *pmd.table));
        set_pmd_at(mm, pmd, pmd.get() & ~(_PAGE_RW | _PAGE_SOFT_DIRTY));
        a = next;
        continue;
      }
      EntryRef pte = pte_offset_map(pmd, a);
      SpinGuard ptl(pte_lockptr(mm, *pte.table));
      for (; a < next; a += PAGE_SIZE, ++pte.p) {
        const pteval_t v = pte.get();
        if (is_swap_pte(v)) {
          set_pte_at(pte, pte_swp_clear_soft_dirty(v));
          continue;
        }
        if (!pte_present(v)) continue;
        if (pte_write(v) && is_cow_mapping(vma.vm_flags) && mm.test_flag(MMF_HAS_PINNED)) {
          const Page* page = vm_normal_page(vma, v);
          if (page && page_maybe_dma_pinned(*page)) continue;  // pte_is_pinned
        }
        ptep_get_and_clear(pte);  // ptep_modify_prot_start
        set_pte_at(pte, pte_clear_soft_dirty(pte_wrprotect(v)));
      }
    }
  }
  flush_tlb_mm(mm);
  return {};
}

}  // namespace cowpte
