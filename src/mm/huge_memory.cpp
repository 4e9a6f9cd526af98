// Transparent huge pages for private anonymous memory: the THP policy, the huge PMD fault and
// its write fault, fork's copy, zap, mprotect, splitting a PMD and splitting the page, and the
// deposited PTE table (mm/huge_memory.c, mm/pgtable-generic.c, include/linux/huge_mm.h, v6.1).
#include <algorithm>
#include <utility>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"
#include "mm/rmap_walk.hpp"

namespace cowpte {

// transhuge_vma_suitable: the 2 MiB span at addr lies inside the VMA. An anonymous VMA's
// offset needs no alignment (a file VMA's would; the model has no file THPs).
bool Kernel::transhuge_vma_suitable(const Vma& vma, vaddr_t addr) noexcept {
  const vaddr_t haddr = addr & PMD_MASK;  // (written so that nothing wraps below 2 MiB)
  return haddr >= vma.vm_start && vma.vm_end >= PMD_SIZE && haddr <= vma.vm_end - PMD_SIZE;
}

// hugepage_vma_check (v6.2; thp_vma_allowable_order later): may vma hold THPs? MADV_NOHUGEPAGE
// forbids them; outside a fault the VMA must hold a whole aligned span; shmem THPs are not
// modelled (never); "enabled" applies unless enforce_sysfs is false (MADV_COLLAPSE): "never"
// allows none, "madvise" only VM_HUGEPAGE VMAs. An anonymous VMA without anon memory yet is
// eligible for a fault (and for smaps), not for khugepaged or MADV_COLLAPSE.
bool Kernel::hugepage_vma_check(const Vma& vma, std::uint64_t vm_flags, bool smaps, bool in_pf,
                                bool enforce_sysfs) const noexcept {
  if (vm_flags & VM_NOHUGEPAGE) return false;
  if (!in_pf && !transhuge_vma_suitable(vma, vma.vm_end - PMD_SIZE)) return false;
  if (!vma_is_anonymous(vma)) return false;  // shmem_huge_enabled: shmem THPs are not modelled
  if (enforce_sysfs &&
      (cfg.thp == ThpMode::never || (!(vm_flags & VM_HUGEPAGE) && cfg.thp != ThpMode::always)))
    return false;
  if (!vma.anon_vma) return smaps || in_pf;
  return true;
}

// get_huge_zero_page: a 2 MiB compound page of zeros, made on first use, with the kernel's one
// reference. Huge zero PMDs take no reference and no mapcount of it, as in Linux; the model
// counts them (Linux counts the mms using it) and frees the page when the last one goes (Linux
// leaves that to the huge zero page's shrinker: the model runs it at once).
Page* Kernel::get_huge_zero_page() {
  if (!huge_zero_page) {
    huge_zero_page = mem.alloc_huge_page();
    if (!huge_zero_page) return nullptr;
    tm_page_alloc(huge_zero_page, true);
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) huge_zero_page[i].set(PG_zero);
    huge_zero_page->set(PG_reserved);
  }
  return huge_zero_page;
}

void Kernel::put_huge_zero_pmd() {
  if (--huge_zero_pmds == 0 && huge_zero_page) {
    // The kernel's reference goes; a GUP reference still held keeps the old zero THP (its
    // subpages still PG_zero) until it is dropped.
    Page* zero = std::exchange(huge_zero_page, nullptr);
    zero->clear(PG_reserved);
    mem.put_page(*zero);
  }
}

// pgtable_trans_huge_deposit / withdraw (mm/pgtable-generic.c): each huge PMD keeps a PTE
// table in reserve, on a list hanging off its PMD table's struct page, so that a split never
// needs to allocate. The caller holds the PMD lock.
void Kernel::pgtable_trans_huge_deposit(EntryRef pmd, Page& pgtable) {
  pgtable.pmd_huge_pte = pmd.table->pmd_huge_pte;
  pmd.table->pmd_huge_pte = &pgtable;
}

Page& Kernel::pgtable_trans_huge_withdraw(EntryRef pmd) {
  Page* t = pmd.table->pmd_huge_pte;
  if (!t) throw InvariantViolation("pgtable_trans_huge_withdraw: no deposited table");
  pmd.table->pmd_huge_pte = t->pmd_huge_pte;
  t->pmd_huge_pte = nullptr;
  return *t;
}

// zap_deposited_table: the reserve of a huge PMD that goes.
void Kernel::zap_deposited_table(MmStruct& mm, EntryRef pmd) {
  Page& t = pgtable_trans_huge_withdraw(pmd);
  pgtable_free(t);
  mm.pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_ptes
}

// page_add_new_anon_rmap(compound): a fresh THP mapped by one PMD, exclusive; each subpage
// carries its own index for the rmap walk.
void Kernel::page_add_new_anon_rmap_compound(Page& head, Vma& vma, vaddr_t haddr) {
  entire_mapcount_of(head) = 1;
  const std::uint64_t index = linear_page_index(vma, haddr);
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    Page& p = (&head)[i];
    p.anon_index = index + i;
    p.set(PG_anon);
    p.set(PG_swapbacked);
  }
  head.set(PG_anon_exclusive);
}

// page_try_dup_anon_rmap(compound): as for a base page, with the folio's pin count.
int Kernel::page_try_dup_anon_rmap_compound(Page& head, Vma& src_vma) {
  if (PageAnonExclusive(head)) {
    const MmStruct& mm = *src_vma.vm_mm;
    if (is_cow_mapping(src_vma.vm_flags) && mm.test_flag(MMF_HAS_PINNED) &&
        page_maybe_dma_pinned(head))
      return -EBUSY;
    head.clear(PG_anon_exclusive);
  }
  ++entire_mapcount_of(head);
  return 0;
}

// page_remove_rmap(compound): one PMD mapping less. A THP that stays mapped by some of its
// subpages' PTEs only is partially mapped: it goes on the deferred split queue.
void Kernel::page_remove_rmap_compound(Page& head) {
  if (--entire_mapcount_of(head) < 0) [[unlikely]]
    throw InvariantViolation("page_remove_rmap: negative entire mapcount");
  if (folio_entire_mapcount(head) == 0 && PageAnon(head))
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i)
      if (page_mapcount((&head)[i])) return deferred_split_huge_page(head);
}

// do_huge_pmd_anonymous_page: a fault on an empty PMD of a THP-eligible span. A read maps the
// huge zero page; otherwise a fresh 2 MiB page. VM_FAULT_FALLBACK when no 2 MiB block is free
// (thp_fault_fallback): the 4 KiB path serves the fault.
vm_fault_t Kernel::do_huge_pmd_anonymous_page(VmFault& vmf) {
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  if (!transhuge_vma_suitable(vma, vmf.address)) return VM_FAULT_FALLBACK;
  if (!anon_vma_prepare(vma)) return VM_FAULT_OOM;
  khugepaged_enter_vma(vma, vma.vm_flags);
  if (!(vmf.flags & FAULT_FLAG_WRITE) && !mm_forbids_zeropage() && cfg.thp_use_zero_page) {
    Page* pgtable = pte_alloc_one(mm);
    if (!pgtable) return VM_FAULT_OOM;
    Page* zero = get_huge_zero_page();
    if (!zero) {
      pgtable_free(*pgtable);
      ++vm_events.thp_fault_fallback;
      return VM_FAULT_FALLBACK;
    }
    SpinGuard ptl(pmd_lockptr(mm, *vmf.pmd.table));
    if (!pmd_none(vmf.pmd.get())) {
      pgtable_free(*pgtable);
      return 0;
    }
    pgtable_trans_huge_deposit(vmf.pmd, *pgtable);  // set_huge_zero_page
    set_pmd_at(mm, vmf.pmd, pmd_mkhuge(pfn_pte(mem.pfn(*zero), vma.vm_page_prot)));
    ++huge_zero_pmds;
    tm_entry(vmf.pmd);
    mm.pgtables_bytes += PAGE_SIZE;  // mm_inc_nr_ptes
    return 0;
  }
  Page* folio = mem.alloc_huge_page();  // vma_alloc_folio(GFP_TRANSHUGE_LIGHT, HPAGE_PMD_ORDER)
  if (!folio) {
    ++vm_events.thp_fault_fallback;
    return VM_FAULT_FALLBACK;
  }
  ++vm_events.thp_fault_alloc;
  return __do_huge_pmd_anonymous_page(vmf, *folio);
}

vm_fault_t Kernel::__do_huge_pmd_anonymous_page(VmFault& vmf, Page& folio) {
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  const vaddr_t haddr = vmf.address & PMD_MASK;
  Page* pgtable = pte_alloc_one(mm);
  if (!pgtable) {
    mem.put_page(folio);
    return VM_FAULT_OOM;
  }
  // clear_huge_page: 512 pages zeroed (the contents are zeros already: no host memory).
  if (cur_cpu) {
    tm_page_alloc(&folio, false);
    tm_cycles(std::uint64_t(HPAGE_PMD_NR) * hw->cfg.page_zero);
  }
  pteval_t entry = mk_huge_pmd(mem.pfn(folio), vma.vm_page_prot);
  if (vma.vm_flags & VM_WRITE) entry = pmd_mkwrite(pmd_mkdirty(entry));  // maybe_pmd_mkwrite
  SpinGuard ptl(pmd_lockptr(mm, *vmf.pmd.table));
  if (!pmd_none(vmf.pmd.get())) {
    pgtable_free(*pgtable);
    mem.put_page(folio);
    return 0;
  }
  page_add_new_anon_rmap_compound(folio, vma, haddr);
  pgtable_trans_huge_deposit(vmf.pmd, *pgtable);
  set_pmd_at(mm, vmf.pmd, entry);
  tm_entry(vmf.pmd);
  mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR;  // add_mm_counter
  mm.pgtables_bytes += PAGE_SIZE;             // mm_inc_nr_ptes
  return 0;
}

// huge_pmd_set_accessed: a fault on a present huge PMD that needs no COW (the young bit).
void Kernel::huge_pmd_set_accessed(VmFault& vmf, pteval_t orig_pmd) {
  MmStruct& mm = *vmf.vma->vm_mm;
  SpinGuard ptl(pmd_lockptr(mm, *vmf.pmd.table));
  if (vmf.pmd.get() != orig_pmd) return;
  pteval_t entry = pmd_mkyoung(orig_pmd);
  if (vmf.flags & FAULT_FLAG_WRITE) entry = pmd_mkdirty(entry);
  if (entry != orig_pmd) set_pmd_at(mm, vmf.pmd, entry);  // pmdp_set_access_flags
}

// do_huge_pmd_wp_page (v6.1): a write (or unshare) fault on a write-protected huge PMD. An
// exclusive THP (or one only this PMD references) is reused in place; anything else — the huge
// zero page, a THP fork shared — splits the PMD and falls back to the 4 KiB path, which copies
// the one subpage written (v5.8 and later no longer copy 2 MiB on a COW fault).
vm_fault_t Kernel::do_huge_pmd_wp_page(VmFault& vmf, pteval_t orig_pmd) {
  PhaseScope phase(*this, Phase::fault_wp);
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  const bool unshare = vmf.flags & FAULT_FLAG_UNSHARE;
  if (!is_huge_zero_pmd(orig_pmd)) {
    SpinGuard ptl(pmd_lockptr(mm, *vmf.pmd.table));
    if (vmf.pmd.get() != orig_pmd) return 0;
    Page& head = mem.page(pmd_pfn(orig_pmd));
    tm_page(head);
    // Reuse: exclusive already, or our PMD is the folio's only reference (and mapping).
    bool reuse = PageAnonExclusive(head);
    if (!reuse && page_count(head) == 1 && !PageSwapCache(head)) {
      page_move_anon_rmap(head);
      reuse = true;
    }
    if (reuse) {
      if (unshare) return 0;
      pteval_t entry = pmd_mkyoung(orig_pmd);
      entry = pmd_mkdirty(entry);
      if (vma.vm_flags & VM_WRITE) entry = pmd_mkwrite(entry);  // maybe_pmd_mkwrite
      set_pmd_at(mm, vmf.pmd, entry);
      return 0;
    }
  }
  split_huge_pmd(vma, vmf.pmd, vmf.address);  // fallback:
  return VM_FAULT_FALLBACK;
}

// copy_huge_pmd: fork of one huge PMD. The THP is shared write-protected (one more reference
// and one more entire mapping; not exclusive any more), the child gets a deposited table of
// its own, and the huge zero PMD is shared as it is. A THP that may be pinned cannot be shared:
// its PMD splits and the 4 KiB path copies it (-EAGAIN). -ENOMEM without the child's table.
int Kernel::copy_huge_pmd(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                          vaddr_t addr) {
  MmStruct& dst_mm = *dst_vma.vm_mm;
  MmStruct& src_mm = *src_vma.vm_mm;
  Page* pgtable = pte_alloc_one(dst_mm);
  if (!pgtable) return -ENOMEM;
  SpinLockRef dst_ptl = pmd_lockptr(dst_mm, *dst_pmd.table);
  SpinLockRef src_ptl = pmd_lockptr(dst_mm, *src_pmd.table);
  dst_ptl.lock();
  src_ptl.lock();  // spin_lock_nested
  pteval_t pmd = src_pmd.get();
  tm_op(Op::pte);
  if (!is_huge_zero_pmd(pmd)) {
    Page& head = mem.page(pmd_pfn(pmd));
    tm_page(head, 2);
    get_page(head);
    if (page_try_dup_anon_rmap_compound(head, src_vma)) [[unlikely]] {
      mem.put_page(head);  // maybe pinned: split, and let copy_pte_range copy
      pgtable_free(*pgtable);
      src_ptl.unlock();
      dst_ptl.unlock();
      split_huge_pmd(src_vma, src_pmd, addr);
      return -EAGAIN;
    }
    dst_mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR;
    if (pmd_write(pmd)) pmdp_set_wrprotect(src_mm, src_pmd);
  } else {
    ++huge_zero_pmds;  // mm_get_huge_zero_page
  }
  dst_mm.pgtables_bytes += PAGE_SIZE;  // mm_inc_nr_ptes
  pgtable_trans_huge_deposit(dst_pmd, *pgtable);
  pmd = pmd_mkold(pmd_wrprotect(pmd));
  set_pmd_at(dst_mm, dst_pmd, pmd);
  tm_entry(dst_pmd);
  src_ptl.unlock();
  dst_ptl.unlock();
  return 0;
}

// zap_huge_pmd: a zap that covers a whole huge PMD. The THP's reference goes after the flush
// (tlb_remove_page_size), the deposited table at once. True when the PMD was huge.
bool Kernel::zap_huge_pmd(MmGather& tlb, Vma&, EntryRef pmd, vaddr_t addr) {
  MmStruct& mm = *tlb.mm;
  SpinGuard ptl(pmd_lockptr(mm, *pmd.table));  // __pmd_trans_huge_lock
  const pteval_t orig = pmd.get();
  if (!pmd_trans_huge(orig)) return false;
  set_pmd_at(mm, pmd, 0);  // pmdp_huge_get_and_clear_full
  tm_entry(pmd);
  tlb.tlb_remove_pmd_tlb_entry(addr, PMD_SIZE);
  zap_deposited_table(mm, pmd);
  if (is_huge_zero_pmd(orig)) {
    put_huge_zero_pmd();
    return true;
  }
  Page& head = mem.page(pmd_pfn(orig));
  tm_page(head, 1);
  page_remove_rmap_compound(head);
  mm.rss_stat[MM_ANONPAGES] -= HPAGE_PMD_NR;
  if (tlb.__tlb_remove_page(head)) {
    tlb_flush_mmu_tlbonly(tlb);
    tlb_flush_mmu(tlb);
  }
  return true;
}

// __split_huge_zero_page_pmd: 512 read-only entries of the 4 KiB zero page.
void Kernel::__split_huge_zero_page_pmd(Vma& vma, EntryRef pmd, vaddr_t haddr) {
  MmStruct& mm = *vma.vm_mm;
  set_pmd_at(mm, pmd, 0);  // pmdp_huge_clear_flush
  flush_tlb_range(mm, haddr, haddr + PMD_SIZE, PMD_SHIFT);
  Page& pgtable = pgtable_trans_huge_withdraw(pmd);
  {
    SpinGuard ptl(pte_lockptr(mm, pgtable));
    pteval_t* pte = table_base(pgtable);
    const pteval_t entry = pte_mkspecial(pfn_pte(mem.pfn(*zero_page), vma.vm_page_prot));
    for (unsigned i = 0; i < PTRS_PER_TABLE; ++i) set_pte_at(EntryRef{&pgtable, pte + i}, entry);
  }
  set_pmd_at(mm, pmd, mk_table_entry(mem.pfn(pgtable)));  // pmd_populate
  put_huge_zero_pmd();
}

// __split_huge_pmd_locked: the huge PMD becomes its deposited table with 512 PTEs, each
// mapping one subpage with the PMD's rights, A, D and soft-dirty; each PTE holds a reference
// and a mapcount of its subpage; an exclusive THP's subpages are each exclusive. The caller
// holds the PMD lock.
void Kernel::__split_huge_pmd_locked(Vma& vma, EntryRef pmd, vaddr_t haddr) {
  const pteval_t old = pmd.get();
  if (is_huge_zero_pmd(old)) return __split_huge_zero_page_pmd(vma, pmd, haddr);
  MmStruct& mm = *vma.vm_mm;
  ++vm_events.thp_split_pmd;
  set_pmd_at(mm, pmd, 0);  // pmdp_invalidate, then the flush of one 2 MiB translation
  flush_tlb_range(mm, haddr, haddr + PMD_SIZE, PMD_SHIFT);
  Page& head = mem.page(pmd_pfn(old));
  const bool anon_exclusive = PageAnonExclusive(head);
  head._refcount += HPAGE_PMD_NR - 1;  // page_ref_add: one reference per PTE
  Page& pgtable = pgtable_trans_huge_withdraw(pmd);
  {
    SpinGuard ptl(pte_lockptr(mm, pgtable));
    pteval_t* pte = table_base(pgtable);
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
      Page& sub = (&head)[i];
      pteval_t entry = pfn_pte(mem.pfn(sub), vma.vm_page_prot);
      if (pmd_write(old)) entry = pte_mkwrite(entry);
      if (anon_exclusive) sub.set(PG_anon_exclusive);
      if (pmd_young(old)) entry = pte_mkyoung(entry);
      if (pmd_dirty(old)) entry = pte_mkdirty(entry);
      if (pmd_soft_dirty(old)) entry = pte_mksoft_dirty(entry);
      ++sub._mapcount;
      set_pte_at(EntryRef{&pgtable, pte + i}, entry);
    }
  }
  tm_cycles(cur_cpu ? std::uint64_t(HPAGE_PMD_NR) * hw->cfg.pte_op / 4 : 0);
  page_remove_rmap_compound(head);
  set_pmd_at(mm, pmd, mk_table_entry(mem.pfn(pgtable)));  // pmd_populate
}

// split_huge_pmd: split the PMD that maps address if it is huge (under its lock).
void Kernel::split_huge_pmd(Vma& vma, EntryRef pmd, vaddr_t address) {
  SpinGuard ptl(pmd_lockptr(*vma.vm_mm, *pmd.table));
  if (pmd_trans_huge(pmd.get())) __split_huge_pmd_locked(vma, pmd, address & PMD_MASK);
}

void Kernel::split_huge_pmd_address(Vma& vma, vaddr_t address) {
  EntryRef pmd = walk_to_pmd(*vma.vm_mm, address);
  if (pmd && pmd_trans_huge(pmd.get())) split_huge_pmd(vma, pmd, address);
}

// vma_adjust_trans_huge: a VMA boundary about to move to start or end must not cut a huge PMD.
void Kernel::vma_adjust_trans_huge(Vma& vma, vaddr_t start, vaddr_t end) {
  if (start & ~PMD_MASK) split_huge_pmd_address(vma, start);
  if (end & ~PMD_MASK) split_huge_pmd_address(vma, end);
}

void Kernel::split_huge_pmd_range(MmStruct& mm, vaddr_t start, vaddr_t end) {
  for (vaddr_t a = start, next; a < end; a = next) {
    EntryRef pmd = walk_to_pmd(mm, a, end, next);
    if (!pmd || !pmd_trans_huge(pmd.get())) continue;
    if (Vma* vma = mm.vma_lookup(a)) split_huge_pmd(*vma, pmd, a);
  }
}

// The THPs that PTEs of [start, end) map split into base pages where they can.
void Kernel::split_huge_pages_range(MmStruct& mm, vaddr_t start, vaddr_t end) {
  std::vector<Page*> heads;
  for (vaddr_t a = start, next; a < end; a = next) {
    EntryRef pmd = walk_to_pmd(mm, a, end, next);
    if (!pmd || pmd_none(pmd.get()) || pmd_trans_huge(pmd.get())) continue;
    EntryRef pte = pte_offset_map(pmd, a);
    for (vaddr_t x = a; x < next; x += PAGE_SIZE, ++pte.p) {
      const pteval_t v = pte.get();
      if (!pte_present(v) || pte_special(v)) continue;
      Page& page = mem.page(pte_pfn(v));
      if (PageCompound(page) && (heads.empty() || heads.back() != &compound_head(page)))
        heads.push_back(&compound_head(page));
    }
  }
  for (Page* head : heads) {
    if (!PageHead(*head)) continue;  // split already (it appeared twice)
    get_page(*head);
    split_huge_page(*head);
    mem.put_page(*head);
  }
}

// change_huge_pmd: mprotect of a whole huge PMD. 1 (HPAGE_PMD_NR pages changed), or 0.
long Kernel::change_huge_pmd(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr,
                             pteval_t newprot) {
  MmStruct& mm = *vma.vm_mm;
  SpinGuard ptl(pmd_lockptr(mm, *pmd.table));
  const pteval_t old = pmd.get();
  if (!pmd_trans_huge(old)) return 0;
  tm_entry(pmd);
  pteval_t entry = pmd_modify(old, newprot);
  // A write-protected exclusive THP may become writable again (can_change_pmd_writable).
  if (!is_huge_zero_pmd(old) && (vma.vm_flags & VM_WRITE) && !pmd_write(entry) &&
      PageAnonExclusive(mem.page(pmd_pfn(old))) && pmd_dirty(entry))
    entry = pmd_mkwrite(entry);
  if (is_huge_zero_pmd(old)) entry = pmd_wrprotect(entry);
  set_pmd_at(mm, pmd, entry);
  tlb.tlb_remove_pmd_tlb_entry(addr, PMD_SIZE);
  return HPAGE_PMD_NR;
}

// split_huge_page (split_huge_page_to_list): the THP becomes 512 base pages. Every PMD that
// maps it splits first (in every process: the rmap walk); then each subpage takes the
// references of its own PTE mappings (plus the caller's, on the head). -EBUSY when a reference
// other than the mappings and the caller's is held (can_split_folio: a pin).
int Kernel::split_huge_page(Page& head) {
  if (!PageHead(head) || &head == huge_zero_page) return -EINVAL;
  for_each_anon_address(head.anon_index, [&](MmStruct&, Vma& vma, vaddr_t addr, EntryRef pmd) {
    if (pmd_trans_huge(pmd.get()) && pmd_pfn(pmd.get()) == mem.pfn(head))
      split_huge_pmd(vma, pmd, addr);
    return true;
  });
  int mapped = 0;
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) mapped += page_mapcount((&head)[i]);
  if (folio_entire_mapcount(head) || page_count(head) != mapped + 1) return -EBUSY;
  const bool dirty = head.test(PG_dirty);
  mem.clear_compound_page(head);
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    Page& sub = (&head)[i];
    sub._refcount = page_mapcount(sub) + (i == 0);
    if (dirty) sub.set(PG_dirty);
  }
  head.clear(PG_swapcache);
  ++vm_events.thp_split_page;
  // Subpages nothing maps any more are freed now (__split_huge_page's put of the tails).
  for (unsigned i = 1; i < HPAGE_PMD_NR; ++i) {
    Page& sub = (&head)[i];
    if (sub._refcount == 0) {
      sub._refcount = 1;
      mem.put_page(sub);
    }
  }
  return 0;
}

// deferred_split_huge_page: a THP some of whose subpages were unmapped waits on the node's
// queue; deferred_split_scan (the shrinker, run by reclaim) splits it and frees what is no
// longer mapped.
void Kernel::deferred_split_huge_page(Page& head) { mem.deferred_split_add(head); }

std::uint64_t Kernel::deferred_split_scan() {
  std::uint64_t split = 0;
  for (Page* head : mem.take_deferred_split_queue()) {
    get_page(*head);
    if (split_huge_page(*head) == 0) ++split;
    mem.put_page(*head);
  }
  return split;
}

}  // namespace cowpte
