// khugepaged and MADV_COLLAPSE for private anonymous memory: the mm registry, the scan of one
// PMD span, and the collapse of its 512 PTEs into a 2 MiB THP (mm/khugepaged.c, v6.2; the
// COW PTE series' [PATCH v3 05/14] mm/khugepaged: Break COW PTE before scanning pte).
// File and shmem collapse (collapse_file, collapse_pte_mapped_thp, retract_page_tables) are
// not modelled: shmem THPs are not, so a shared anonymous VMA is never eligible.
#include <algorithm>
#include <iterator>
#include <utility>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

const char* to_string(ScanResult r) noexcept {  // the tracepoint's names
  static constexpr const char* kNames[] = {"failed",
                                           "succeeded",
                                           "pmd_null",
                                           "pmd_none",
                                           "page_has_been_mapped_by_pmd",
                                           "exceed_none_pte",
                                           "exceed_swap_pte",
                                           "exceed_shared_pte",
                                           "pte_non_present",
                                           "no_writable_page",
                                           "lack_referenced_page",
                                           "page_null",
                                           "page_count",
                                           "page_not_anon",
                                           "vma_null",
                                           "vma_check_failed",
                                           "alloc_huge_page_failed",
                                           "cowed_pte"};
  static_assert(std::size(kNames) == std::size_t(ScanResult::count));
  return kNames[std::size_t(r)];
}

// hugepage_flags_enabled: khugepaged runs at all ("always" or "madvise").
static bool hugepage_flags_enabled(ThpMode m) noexcept { return m != ThpMode::never; }

// khugepaged_enter_vma: register the mm with khugepaged once one of its VMAs may be collapsed
// (the first THP fault, MADV_HUGEPAGE, an mmap that merged into a VMA with anon memory).
void Kernel::khugepaged_enter_vma(Vma& vma, std::uint64_t vm_flags) {
  MmStruct& mm = *vma.vm_mm;
  if (mm.test_flag(MMF_VM_HUGEPAGE) || !hugepage_flags_enabled(cfg.thp)) return;
  if (hugepage_vma_check(vma, vm_flags, false, false, true)) __khugepaged_enter(mm);
}

void Kernel::__khugepaged_enter(MmStruct& mm) {
  mm.set_flag(MMF_VM_HUGEPAGE);
  khugepaged.mm_slots.push_back(&mm);  // at the tail: scanned after the mms already there
}

// khugepaged_fork: a child of a registered mm is registered too.
void Kernel::khugepaged_fork(MmStruct& mm, const MmStruct& oldmm) {
  if (oldmm.test_flag(MMF_VM_HUGEPAGE)) __khugepaged_enter(mm);
}

// khugepaged_exit (__mmput): the mm leaves the registry; a scan that stood on it goes on with
// the next mm (Linux leaves the slot for the scan to collect; the effect is the same).
void Kernel::khugepaged_exit(MmStruct& mm) {
  if (!mm.test_flag(MMF_VM_HUGEPAGE)) return;
  mm.clear_flag(MMF_VM_HUGEPAGE);
  auto& slots = khugepaged.mm_slots;
  auto it = std::find(slots.begin(), slots.end(), &mm);
  if (it == slots.end()) return;
  const bool current = khugepaged.has_slot && khugepaged.slot == it;
  auto next = slots.erase(it);
  if (current) {
    khugepaged.has_slot = next != slots.end();
    khugepaged.slot = next;
    khugepaged.address = 0;
  }
}

// find_pmd_or_thp_or_none: the PMD of address, and what it holds.
ScanResult Kernel::find_pmd_or_thp_or_none(MmStruct& mm, vaddr_t address, EntryRef& pmd) {
  pmd = walk_to_pmd(mm, address);
  if (!pmd) return ScanResult::pmd_null;
  const pteval_t v = pmd.get();
  if (pmd_none(v)) return ScanResult::pmd_none;
  if (pmd_trans_huge(v)) return ScanResult::pmd_mapped;  // the huge zero PMD too
  return ScanResult::succeed;
}

// is_refcount_suitable: every reference is a mapping's (or the swap cache's): no GUP pin or
// other holder that would keep seeing the old page after the collapse.
bool Kernel::is_refcount_suitable(const Page& head) const noexcept {
  int expected = PageCompound(head) ? total_mapcount(head) : page_mapcount(head);
  if (PageSwapCache(head)) expected += PageCompound(head) ? int(HPAGE_PMD_NR) : 1;
  return page_count(head) == expected;
}

// hpage_collapse_scan_pmd: may the span at address (2 MiB aligned, inside vma) collapse? It
// reads the 512 PTEs under the table's lock, counts empty, swapped and shared ones against the
// limits (khugepaged only), and collapses when nothing stops it. Under COW PTE the span's
// table is broken first: khugepaged never scans, and never collapses, a shared table.
ScanResult Kernel::hpage_collapse_scan_pmd(MmStruct& mm, Vma& vma, vaddr_t address,
                                           const CollapseControl& cc) {
  EntryRef pmd;
  ScanResult result = find_pmd_or_thp_or_none(mm, address, pmd);
  if (result != ScanResult::succeed) return trace_scan(mm, address, result);
  if (break_cow_pte(mm, pmd, address)) return trace_scan(mm, address, ScanResult::cow_pte);
  unsigned none_or_zero = 0, unmapped = 0, shared = 0, referenced = 0;
  bool writable = false;
  {
    Page& table = table_of(pmd.get());
    SpinGuard ptl(pte_lockptr(mm, table));
    const pteval_t* pte = table_base(table);
    vaddr_t a = address;
    for (unsigned i = 0; i < PTRS_PER_TABLE; ++i, a += PAGE_SIZE) {
      const pteval_t v = pte[i];
      tm_op(Op::pte);
      if (is_swap_pte(v)) {
        if (!cc.is_khugepaged || ++unmapped <= cfg.khugepaged_max_ptes_swap) continue;
        return trace_scan(mm, address, ScanResult::exceed_swap_pte);
      }
      if (pte_none(v) || mem.page(pte_pfn(v)).test(PG_zero)) {
        if (!cc.is_khugepaged || ++none_or_zero <= cfg.khugepaged_max_ptes_none) continue;
        return trace_scan(mm, address, ScanResult::exceed_none_pte);
      }
      if (pte_write(v)) writable = true;
      Page* page = vm_normal_page(vma, v);
      if (!page) return trace_scan(mm, address, ScanResult::page_null);
      tm_page(*page);
      if (page_mapcount(*page) > 1 && cc.is_khugepaged && ++shared > cfg.khugepaged_max_ptes_shared)
        return trace_scan(mm, address, ScanResult::exceed_shared_pte);
      const Page& head = compound_head(*page);
      if (!PageAnon(head)) return trace_scan(mm, address, ScanResult::page_anon);
      if (!is_refcount_suitable(head)) return trace_scan(mm, address, ScanResult::page_count);
      if (cc.is_khugepaged && pte_young(v)) ++referenced;
    }
  }
  if (!writable) {
    result = ScanResult::page_ro;
  } else if (cc.is_khugepaged && (!referenced || (unmapped && referenced < HPAGE_PMD_NR / 2))) {
    result = ScanResult::lack_referenced_page;
  } else {
    result = collapse_huge_page(mm, address, unmapped, cc);
  }
  return trace_scan(mm, address, result);
}

ScanResult Kernel::trace_scan(MmStruct& mm, vaddr_t address, ScanResult r) {
  COWPTE_TRACE(*this, "mm_khugepaged_scan_pmd: pid {} addr {:#x} result {}", mm.pid, address,
               to_string(r));
  return r;
}

// hugepage_vma_revalidate: the VMA at address may still collapse there (after the allocation,
// and after the swap-in faults, which Linux makes without the mmap lock).
ScanResult Kernel::hugepage_vma_revalidate(MmStruct& mm, vaddr_t address, const CollapseControl& cc,
                                           Vma*& vma) {
  vma = mm.vma_lookup(address);
  if (!vma) return ScanResult::vma_null;
  if (!transhuge_vma_suitable(*vma, address)) return ScanResult::vma_check;
  if (!hugepage_vma_check(*vma, vma->vm_flags, false, false, cc.is_khugepaged))
    return ScanResult::vma_check;
  return ScanResult::succeed;
}

// __collapse_huge_page_swapin: bring the span's swapped pages back, one swap fault each
// (Linux calls do_swap_page; the fault path reaches it the same way for a swap PTE).
ScanResult Kernel::__collapse_huge_page_swapin(MmStruct& mm, Vma& vma, vaddr_t haddr) {
  for (vaddr_t a = haddr; a < haddr + PMD_SIZE; a += PAGE_SIZE) {
    EntryRef pmd = walk_to_pmd(mm, a);
    if (!pmd || !pmd_present(pmd.get()) || pmd_trans_huge(pmd.get())) return ScanResult::pmd_null;
    if (!is_swap_pte(pte_offset_map(pmd, a).get())) continue;
    if (handle_mm_fault(vma, a, 0) & VM_FAULT_ERROR) return ScanResult::fail;
  }
  return ScanResult::succeed;
}

// __collapse_huge_page_isolate: the second look, with the PMD cleared and the table locked:
// every PTE present (or empty within the limit), anonymous, with no extra reference, and at
// least one writable (and for khugepaged, one young) PTE.
ScanResult Kernel::__collapse_huge_page_isolate(Vma& vma, Page& table, const CollapseControl& cc) {
  unsigned none_or_zero = 0, shared = 0, referenced = 0;
  bool writable = false;
  const pteval_t* pte = table_base(table);
  for (unsigned i = 0; i < PTRS_PER_TABLE; ++i) {
    const pteval_t v = pte[i];
    if (pte_none(v) || (pte_present(v) && mem.page(pte_pfn(v)).test(PG_zero))) {
      if (!cc.is_khugepaged || ++none_or_zero <= cfg.khugepaged_max_ptes_none) continue;
      return ScanResult::exceed_none_pte;
    }
    if (!pte_present(v)) return ScanResult::pte_non_present;
    Page* page = vm_normal_page(vma, v);
    if (!page) return ScanResult::page_null;
    if (page_mapcount(*page) > 1 && cc.is_khugepaged && ++shared > cfg.khugepaged_max_ptes_shared)
      return ScanResult::exceed_shared_pte;
    if (!is_refcount_suitable(compound_head(*page))) return ScanResult::page_count;
    if (cc.is_khugepaged && pte_young(v)) ++referenced;
    if (pte_write(v)) writable = true;
  }
  if (!writable) return ScanResult::page_ro;
  if (cc.is_khugepaged && !referenced) return ScanResult::lack_referenced_page;
  return ScanResult::succeed;
}

// __collapse_huge_page_copy: each subpage of the THP gets its PTE's data (zeros for an empty
// or zero-page PTE, which now counts in RSS); the old PTEs go, with their mappings and
// references. The table is left empty: it becomes the THP's deposit.
void Kernel::__collapse_huge_page_copy(MmStruct& mm, Vma& vma, Page& table, Page& hpage) {
  SpinGuard ptl(pte_lockptr(mm, table));
  pteval_t* pte = table_base(table);
  for (unsigned i = 0; i < PTRS_PER_TABLE; ++i) {
    const pteval_t v = pte[i];
    EntryRef ref{&table, pte + i};
    tm_entry(ref);
    if (pte_none(v) || mem.page(pte_pfn(v)).test(PG_zero)) {
      tm_cycles(cur_cpu ? hw->cfg.page_zero : 0);  // clear_user_highpage
      ++mm.rss_stat[MM_ANONPAGES];                 // add_mm_counter
      if (!pte_none(v)) set_pte_at(ref, 0);        // ptep_clear of the zero page
      continue;
    }
    Page& src = *vm_normal_page(vma, v);
    tm_page_copy();
    mem.copy_page((&hpage)[i], src);  // copy_user_highpage
    set_pte_at(ref, 0);               // ptep_clear
    page_remove_rmap(src);
    free_page_and_swap_cache(src);
  }
}

// collapse_huge_page: allocate the THP, bring swapped pages in, clear the PMD and flush (no
// walk can reach the table any more), check the PTEs again, copy, and map the THP with one
// PMD; the emptied PTE table is deposited under it. On a failed check the PMD points at the
// table again as it was (pages the swap-in brought back stay in memory, as in Linux).
ScanResult Kernel::collapse_huge_page(MmStruct& mm, vaddr_t address, unsigned unmapped,
                                      const CollapseControl& cc) {
  Page* hpage = mem.alloc_huge_page();  // alloc_charge_hpage
  if (!hpage) {
    ++vm_events.thp_collapse_alloc_failed;
    return ScanResult::alloc_huge_page_fail;
  }
  ++vm_events.thp_collapse_alloc;
  tm_page_alloc(hpage, false);
  Vma* vma = nullptr;
  EntryRef pmd;
  ScanResult result = hugepage_vma_revalidate(mm, address, cc, vma);
  if (result == ScanResult::succeed) result = find_pmd_or_thp_or_none(mm, address, pmd);
  if (result == ScanResult::succeed && unmapped) {
    result = __collapse_huge_page_swapin(mm, *vma, address);
    if (result == ScanResult::succeed) result = hugepage_vma_revalidate(mm, address, cc, vma);
    if (result == ScanResult::succeed) result = find_pmd_or_thp_or_none(mm, address, pmd);
  }
  if (result == ScanResult::succeed && pmd_cow_pte(mm, pmd.get())) {
    // The series warns here: a table shared again since the scan broke it. Back off.
    result = ScanResult::cow_pte;
  }
  if (result != ScanResult::succeed) {
    mem.put_page(*hpage);
    return result;
  }
  // Linux takes the mmap lock for writing from here on; the model's caller holds it for
  // reading, and nothing else runs meanwhile.
  const pteval_t orig_pmd = pmd.get();
  Page& table = table_of(orig_pmd);
  {
    SpinGuard pmd_ptl(pmd_lockptr(mm, *pmd.table));
    set_pmd_at(mm, pmd, 0);  // pmdp_collapse_flush
    tm_entry(pmd);
  }
  flush_tlb_range(mm, address, address + PMD_SIZE);
  {
    SpinGuard ptl(pte_lockptr(mm, table));
    result = __collapse_huge_page_isolate(*vma, table, cc);
  }
  if (result != ScanResult::succeed) {
    SpinGuard pmd_ptl(pmd_lockptr(mm, *pmd.table));
    set_pmd_at(mm, pmd, orig_pmd);  // pmd_populate: the table is back as it was
    mem.put_page(*hpage);
    return result;
  }
  __collapse_huge_page_copy(mm, *vma, table, *hpage);
  pteval_t entry = mk_huge_pmd(mem.pfn(*hpage), vma->vm_page_prot);
  entry = pmd_mkdirty(entry);
  if (vma->vm_flags & VM_WRITE) entry = pmd_mkwrite(entry);  // maybe_pmd_mkwrite
  SpinGuard pmd_ptl(pmd_lockptr(mm, *pmd.table));
  page_add_new_anon_rmap_compound(*hpage, *vma, address);
  pgtable_trans_huge_deposit(pmd, table);
  set_pmd_at(mm, pmd, entry);
  tm_entry(pmd);
  return ScanResult::succeed;
}

// khugepaged_scan_mm_slot: scan the current mm from where the last pass stopped, span by span,
// until `pages` is used up; at the end of its VMAs the scan moves to the next mm (or, after the
// last one, to none: one full scan more).
std::uint64_t Kernel::khugepaged_scan_mm_slot(std::uint64_t pages, const CollapseControl& cc) {
  auto& scan = khugepaged;
  if (!scan.has_slot) {
    scan.slot = scan.mm_slots.begin();
    scan.has_slot = true;
    scan.address = 0;
  }
  MmStruct& mm = **scan.slot;
  std::uint64_t progress = 0;
  MmStruct* const prev_busy = std::exchange(busy_mm, &mm);  // an OOM kill waits for the scan
  bool exhausted = true;
  {
    MmapReadGuard lock(mm);
    for (vaddr_t next = scan.address; Vma* vma = mm.find_vma(next);) {
      next = vma->vm_end;
      if (!hugepage_vma_check(*vma, vma->vm_flags, false, false, true)) {
        ++progress;  // skip
        continue;
      }
      const vaddr_t hstart = (vma->vm_start + PMD_SIZE - 1) & PMD_MASK;
      const vaddr_t hend = vma->vm_end & PMD_MASK;
      if (scan.address > hend) {
        ++progress;
        continue;
      }
      scan.address = std::max(scan.address, hstart);
      while (scan.address < hend) {
        const vaddr_t a = scan.address;
        if (hpage_collapse_scan_pmd(mm, *vma, a, cc) == ScanResult::succeed)
          ++vm_events.khugepaged_pages_collapsed;
        scan.address = a + PMD_SIZE;
        progress += HPAGE_PMD_NR;
        if (progress >= pages) {
          exhausted = false;
          break;
        }
      }
      if (!exhausted) break;
    }
  }
  busy_mm = prev_busy;
  if (exhausted) {  // every VMA done: the next mm, or the end of a full scan
    auto next = std::next(scan.slot);
    scan.address = 0;
    if (next != scan.mm_slots.end()) {
      scan.slot = next;
    } else {
      scan.has_slot = false;
      ++vm_events.khugepaged_full_scans;
    }
  }
  return progress;
}

// khugepaged_do_scan: one wake-up of khugepaged: up to `pages` pages, passing the head of the
// mm list at most twice (at most one full scan). Returns the spans it collapsed.
std::uint64_t Kernel::khugepaged_do_scan(std::uint64_t pages) {
  const std::uint64_t before = vm_events.khugepaged_pages_collapsed;
  if (!hugepage_flags_enabled(cfg.thp)) return 0;  // khugepaged does not run
  const CollapseControl cc{.is_khugepaged = true};
  unsigned pass_through_head = 0;
  for (std::uint64_t progress = 0; progress < pages;) {
    if (!khugepaged.has_slot) ++pass_through_head;
    if (khugepaged.mm_slots.empty() || pass_through_head >= 2) break;
    progress += khugepaged_scan_mm_slot(pages - progress, cc);
  }
  return vm_events.khugepaged_pages_collapsed - before;
}

// madvise_collapse: MADV_COLLAPSE on [start, end) of one VMA: every 2 MiB span inside it is
// collapsed (or found PMD-mapped already), whatever the THP mode and the khugepaged limits.
// 0 when all are; otherwise the errno of the last failure (madvise_collapse_errno); a failure
// that retrying cannot cure stops at once.
Result<void> Kernel::madvise_collapse(Vma& vma, vaddr_t start, vaddr_t end) {
  if (!hugepage_vma_check(vma, vma.vm_flags, false, false, false)) return Errno::inval;
  MmStruct& mm = *vma.vm_mm;
  const CollapseControl cc{.is_khugepaged = false};
  const vaddr_t hstart = (start + PMD_SIZE - 1) & PMD_MASK;
  const vaddr_t hend = end & PMD_MASK;
  std::uint64_t thps = 0;
  ScanResult last_fail = ScanResult::fail;
  for (vaddr_t addr = hstart; addr < hend; addr += PMD_SIZE) {
    Vma* v = nullptr;
    ScanResult result = hugepage_vma_revalidate(mm, addr, cc, v);
    if (result == ScanResult::succeed) result = hpage_collapse_scan_pmd(mm, *v, addr, cc);
    switch (result) {
      case ScanResult::succeed:
      case ScanResult::pmd_mapped:
        ++thps;
        break;
      case ScanResult::pmd_null:  // the results where going on makes sense
      case ScanResult::pte_non_present:
      case ScanResult::page_ro:
      case ScanResult::lack_referenced_page:
      case ScanResult::page_null:
      case ScanResult::page_count:
        last_fail = result;
        break;
      default:
        return madvise_collapse_errno(result);
    }
  }
  if (thps == (hend - hstart) >> PMD_SHIFT) return {};
  return madvise_collapse_errno(last_fail);
}

// madvise_collapse_errno (v6.2 with its stable fix for SCAN_PAGE_COUNT).
Errno Kernel::madvise_collapse_errno(ScanResult r) noexcept {
  switch (r) {
    case ScanResult::alloc_huge_page_fail:
      return Errno::nomem;
    case ScanResult::page_count:  // transient: a pin, the page in flight
      return Errno::again;
    default:
      return Errno::inval;
  }
}

}  // namespace cowpte
