// Breaking a shared PTE table: break_cow_pte, break_cow_pte_range and handle_cow_pte_fault
// (mm/memory.c of "[PATCH v3 03/14] mm: Add break COW PTE fault and helper functions", v4), which
// hand the break to the mm's fork policy (src/fork/policies/). On-demand-fork's break:
// tfork_one_pte_table and dereference_pte_table (the ODF code's mm/memory.c), where the copy also
// does the per-page work fork skipped.
#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// break_cow_pte: give mm a private, writable table for addr's 2 MiB span, if pmd points at a
// shared one; the mm's fork policy decides how (the seed: SeedPolicy::break_table, which is the
// series' break_cow_pte; On-demand-fork: tfork_one_pte_table). 0 or -ENOMEM, nothing changed.
int Kernel::break_cow_pte(MmStruct& mm, EntryRef pmd, vaddr_t addr) {
  if (!pmd || !pmd_cow_pte(mm, pmd.get())) return 0;
  return fork_policy(mm).break_table(*this, mm, pmd, addr);
}

// break_cow_pte_range: break every shared table over [start, end).
int Kernel::break_cow_pte_range(MmStruct& mm, vaddr_t start, vaddr_t end) {
  if (!mm_cow_pte(mm)) return 0;
  for (vaddr_t a = start & PMD_MASK, next; a < end; a = next) {
    EntryRef pmd = walk_to_pmd(mm, a, end, next);
    if (pmd && break_cow_pte(mm, pmd, a)) return -ENOMEM;
  }
  return 0;
}

// handle_cow_pte_fault: the fault path's break, for the faults the policy breaks on;
// VM_FAULT_OOM with nothing changed on failure.
// break_cow_pte_partial: before a zap of [start, end) (MADV_DONTNEED, MADV_REMOVE), break the
// shared table of a span at either end that the range covers only partly, if a VMA of mm lies
// in its part of the range: the zap would change entries the other holders still map (the
// series relies on zap_pte_range breaking it; here the break comes first, so that its failure
// changes nothing). A span the range covers whole is left to zap_cow_pte.
int Kernel::break_cow_pte_partial(MmStruct& mm, vaddr_t start, vaddr_t end) {
  for (const vaddr_t a : {start, end - 1}) {
    const vaddr_t span = a & PMD_MASK;
    const vaddr_t s = std::max(span, start), e = std::min(span + PMD_SIZE, end);
    if ((span < start || span + PMD_SIZE > end) && mm.find_vma_intersection(s, e) &&
        break_cow_pte_range(mm, span, span + 1))
      return -ENOMEM;
  }
  return 0;
}

vm_fault_t Kernel::handle_cow_pte_fault(VmFault& vmf) {
  MmStruct& mm = *vmf.vma->vm_mm;
  if (!fork_policy(mm).fault_breaks_table(*vmf.vma, vmf.flags)) return 0;
  return break_cow_pte(mm, vmf.pmd, vmf.address) ? VM_FAULT_OOM : vm_fault_t{0};
}

// pte_table_rss: what a table's pages and swap entries count in the RSS counters.
RssVec Kernel::pte_table_rss(Page& table) {
  RssVec rss{};
  const pteval_t* pte = table_base(table);
  for (unsigned i = 0; i < PTRS_PER_TABLE; ++i) {
    if (pte_none(pte[i])) continue;
    if (!pte_present(pte[i])) {
      ++rss[MM_SWAPENTS];
    } else if (!pte_special(pte[i])) {
      ++rss[mm_counter(mem.page(pte_pfn(pte[i])))];
    }
  }
  return rss;
}

// odf_transfer_owner: the mm charged for a shared table leaves it; another holder takes the
// charge, so that a process's RSS never goes negative when it exits (the paper decrements the
// RSS of whichever mm drops the last reference, which may never have been charged).
void Kernel::odf_transfer_owner(Page& table, MmStruct& from, vaddr_t span) {
  for (Process& p : procs) {
    MmStruct* to = p.mm();
    if (!to || to == &from) continue;
    EntryRef pmd = walk_to_pmd(*to, span);
    if (!pmd || pmd_none(pmd.get()) || &table_of(pmd.get()) != &table) continue;
    const RssVec rss = pte_table_rss(table);
    for (unsigned i = 0; i < NR_MM_COUNTERS; ++i) {
      from.rss_stat[i] -= rss[i];
      to->rss_stat[i] += rss[i];
    }
    from.pgtables_bytes -= PAGE_SIZE;
    to->pgtables_bytes += PAGE_SIZE;
    table.pt_owner = to;
    return;
  }
  throw InvariantViolation("odf_transfer_owner: a shared table with no other holder");
}

// dereference_pte_table: mm no longer points at this shared table. Others left: drop one
// reference (and the charge, if mm carried it). mm was the last holder: release every page
// (zap_one_pte_table) and free the table; both were charged to mm.
void Kernel::dereference_pte_table(MmStruct& mm, Page& table, vaddr_t span, MmGather* tlb) {
  if (pmd_put_pte(table)) {
    if (table.pt_owner == &mm) odf_transfer_owner(table, mm, span);
    return;
  }
  if (table.pt_owner != &mm)
    throw InvariantViolation("dereference_pte_table: the last holder is not the owner");
  RssVec rss{};
  EntryRef pte{&table, table_base(table)};
  // A full gather batch is flushed as zap_pte_range does: the TLB under the lock, the pages
  // after it, then the release goes on (a gather never grows past Linux's batch).
  for (unsigned i = 0; i < PTRS_PER_TABLE;) {
    bool force_flush = false;
    {
      SpinGuard ptl(pte_lockptr(mm, table));
      for (; i < PTRS_PER_TABLE && !force_flush; ++i, ++pte.p) {
        const pteval_t v = pte.get();
        if (pte_none(v)) continue;
        pte_clear(pte);
        tm_entry(pte);
        if (!pte_present(v)) {
          --rss[MM_SWAPENTS];
          free_swap_and_cache(pte_to_swp_entry(v));
          continue;
        }
        if (pte_special(v)) continue;
        Page& page = mem.page(pte_pfn(v));
        tm_page(page, 1);
        --rss[mm_counter(page)];
        page_remove_rmap(page);
        if (tlb) {
          force_flush = tlb->__tlb_remove_page(page);
        } else {
          free_page_and_swap_cache(page);
        }
      }
      if (force_flush) tlb_flush_mmu_tlbonly(*tlb);
    }
    if (force_flush) tlb_flush_mmu(*tlb);
  }
  add_mm_rss_vec(mm, rss);
  mm.pgtables_bytes -= PAGE_SIZE;
  table.pt_owner = nullptr;
  if (tlb) {
    tlb->tables.push_back(&table);
  } else {
    pgtable_free(table);
  }
}

// tfork_undo_copy: the first n entries of a table copy go again, with the references the copy
// took for them (the write-protection of the source stays, as after a failed fork).
void Kernel::tfork_undo_copy(Page& table, unsigned n) {
  EntryRef pte{&table, table_base(table)};
  for (unsigned i = 0; i < n; ++i, ++pte.p) {
    const pteval_t v = pte.get();
    if (pte_none(v)) continue;
    pte_clear(pte);
    if (!pte_present(v)) {
      swap_free(pte_to_swp_entry(v));
    } else if (!pte_special(v)) {
      Page& page = mem.page(pte_pfn(v));
      page_remove_rmap(page);
      mem.put_page(page);
    }
  }
}

// tfork_one_pte_table: On-demand-fork's answer to any fault in a shared table. Copy all the
// entries into a new table, write-protecting COW mappings in both (as copy_present_pte does
// for the parent) and marking the copies old, and do now the per-page work fork skipped:
// a reference, a mapping (clearing PageAnonExclusive) and RSS in mm; a swap entry gets one more
// reference, as at fork. Then let go of the shared table. The paper copies even at count 1 (no
// reuse); the model keeps that rule. A swap count that needs a continuation frame the atomic
// allocation could not get undoes the copy, gets one that may sleep, and copies again (the
// paper's code has no swap handling; this is classic fork's -EIO path).
int Kernel::tfork_one_pte_table(MmStruct& mm, EntryRef pmd, vaddr_t addr) {
  PhaseScope phase(*this, Phase::tfork_one_pte_table);
  const vaddr_t span = addr & PMD_MASK;
  const pteval_t orig_pmd = pmd.get();
  Page& old = table_of(orig_pmd);
  Vma* vma = mm.vma_lookup(span);  // a shared table lies inside one VMA (fork's rule; splits
  if (!vma || vma->vm_end < span + PMD_SIZE)  // and partial unmaps copy it first)
    throw InvariantViolation("tfork_one_pte_table: a shared table not inside one VMA");
  TableInHand hold(*this, old);
  Page* nw = pte_alloc_one(mm);
  if (!nw) return -ENOMEM;
  RssVec rss{};
  SwpEntry needs_continuation{};
again:
  ++mm.write_protect_seq;  // as fork: page_try_dup_anon_rmap's pin check needs it
  {
    SpinGuard optl(pte_lockptr(mm, old));
    SharedPteWrites shared;  // write-protecting what the other holders map too
    SpinGuard nptl(pte_lockptr(mm, *nw));
    EntryRef src{&old, table_base(old)}, dst{nw, table_base(*nw)};
    // Already copied by another thread of mm (whose drop of the old table waits for this lock):
    // copy nothing; the check below gives the new table back.
    const unsigned n = pmd.get() == orig_pmd ? PTRS_PER_TABLE : 0;
    with_hooks(hooks_on(), [&](auto hooks) {
      constexpr bool H = decltype(hooks)::value;
      for (unsigned i = 0; i < n; ++i, ++src.p, ++dst.p) {
        pteval_t v = src.get();
        tm_entry<H>(src);
        if (pte_none(v)) continue;
        if (!pte_present(v)) [[unlikely]] {
          if (copy_nonpresent_pte(dst, src, rss) == -EIO) {
            needs_continuation = pte_to_swp_entry(v);
            tfork_undo_copy(*nw, i);
            break;
          }
          continue;
        }
        if (Page* page = vm_normal_page(*vma, v)) {
          tm_page<H>(*page, 2);
          get_page<H>(*page);
          if (PageAnon(*page) && page_try_dup_anon_rmap(*page, *vma)) [[unlikely]]
            throw InvariantViolation("tfork_one_pte_table: a pinned page in a shared table");
          if (!PageAnon(*page)) page_add_file_rmap(*page);
          ++rss[mm_counter(*page)];
        }
        if (is_cow_mapping(vma->vm_flags) && pte_write(v)) {
          ptep_set_wrprotect<H>(src);
          v = pte_wrprotect(v);
        }
        set_pte_at<H>(dst, pte_mkold(v));
        tm_entry<H>(dst);
        tm_op<H>(Op::pte);
      }
    });
  }
  ++mm.write_protect_seq;
  if (needs_continuation.offset) {
    ++vm_events.fork_swap_retries;
    if (add_swap_count_continuation(needs_continuation, Gfp::kernel) < 0) {
      pgtable_free(*nw);
      return -ENOMEM;
    }
    needs_continuation = {};
    rss = {};
    goto again;
  }
  // Another thread of mm may have copied the table first (faults hold mmap_lock for read only;
  // the paper's code does not recheck, and the explorer's break_vs_fault scenario finds the
  // shared table dropped twice): then this copy goes again and the fault retries.
  bool raced = false;
  {
    SpinGuard pl(pmd_lockptr(mm, *pmd.table));
    raced = pmd.get() != orig_pmd;
    if (!raced) set_pmd_at(mm, pmd, mk_table_entry(mem.pfn(*nw)));
  }
  if (raced) {
    {
      SpinGuard nptl(pte_lockptr(mm, *nw));
      tfork_undo_copy(*nw, PTRS_PER_TABLE);
    }
    pgtable_free(*nw);
    return 0;
  }
  add_mm_rss_vec(mm, rss);
  mm.pgtables_bytes += PAGE_SIZE;  // the copy is mm's own table
  dereference_pte_table(mm, old, span, nullptr);
  flush_tlb_range(mm, span, span + PMD_SIZE);
  COWPTE_TRACE(*this, "tfork_one_pte_table: pid {} at {:#x}", mm.pid, span);
  return 0;
}

}  // namespace cowpte
