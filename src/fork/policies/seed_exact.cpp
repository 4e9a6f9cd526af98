// "seed_exact": the COW PTE series as posted ("[PATCH v3 02/14] mm: Add Copy-On-Write PTE to
// fork()" and its v4 fault path), bugs included, next to "seed", which is the same design with
// cowpte's fixes. What differs from "seed", each shown by a test in test_seed_exact.cpp:
//  - the fault path breaks a shared table only for a write, an unshare or a VMA with vm_ops: an
//    anonymous read fault writes a zero-page PTE into the table every sharer walks;
//  - copy_pmd_range re-enters copy_cow_pte_range for a child PMD a fallback made private (a
//    later VMA of the same span), which prepares that VMA again and leaks the private table;
//  - recover_pte_range clears the child's PMD without mm_dec_nr_ptes: VmPTE +4 KiB, non-zero
//    when the mm is freed;
//  - a VM_WIPEONFORK VMA's entries are shared with the child with the rest of the span;
//  - mprotect skips a span whose break fails and succeeds; mremap breaks the source only, and
//    goes on when that fails (SeriesQuirks);
//  - the break clears the PMD while it copies (v3/v4's slow path): another fault of the same mm
//    (faults hold mmap_lock for read) sees pmd_none() and installs an empty table of its own,
//    which the copy then overwrites; the explorer's break_vs_fault scenario finds the write
//    lost with it (tests/scenarios/test_explore.cpp).
// Zap and free are the seed's (delegated).
#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

namespace {

class SeedExactPolicy final : public ForkPolicy {
 public:
  std::string_view name() const noexcept override { return "seed_exact"; }
  std::string_view summary() const noexcept override {
    return "COW PTE exactly as the series posted it, with its bugs (compare with \"seed\")";
  }
  bool as_posted() const noexcept override { return true; }
  SeriesQuirks quirks() const noexcept override {
    return {.ignore_failed_breaks = true,
            .move_breaks_source_only = true,
            .check_mm_reports = true,
            .unchecked_shared_writes = true};
  }

  // copy_pmd_range's COW PTE branch as posted: skip a child PMD already write-protected (this
  // fork shared the span through an earlier VMA); otherwise share, even over a private table.
  int copy_pmd(PolicyOps& ops, const ForkPmd& f) const override {
    Kernel& k = kernel_of(ops);
    const pteval_t dst = f.dst_pmd.get();
    if (!pmd_none(dst) && !pmd_write(dst)) return 0;
    vaddr_t recover_end = 0;
    const int ret = k.copy_cow_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, f.addr, f.end,
                                         recover_end, true);
    if (!ret) return 0;
    if (ret != -EAGAIN) return -ENOMEM;
    if (k.recover_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, recover_end, true))
      return -ENOMEM;
    if (recover_end >= f.end) return 0;
    return k.copy_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, recover_end, f.end);
  }

  // handle_cow_pte_fault's condition (v4): a write, an unshare, or a VMA with vm_ops.
  bool fault_breaks_table(const Vma& vma, unsigned fault_flags) const noexcept override {
    return (fault_flags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE)) || !vma_is_anonymous(vma);
  }

  // break_cow_pte as v3/v4 posted it. The fast path reuses a table this mm holds alone, under
  // the PTE lock. The slow path clears the PMD (nr_ptes -1), lets pte_alloc install a fresh
  // table (nr_ptes +1), copies the old table's entries into whatever table the PMD holds by
  // then, and drops the old table; if that drop finds the count was 1 (the other holder left
  // meanwhile), the new table goes and the old one is reused. Nothing takes the PTE lock over
  // the window in which the PMD is none.
  int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const override {
    Kernel& k = kernel_of(ops);
    Kernel::PhaseScope phase(k, Phase::break_cow_pte);
    const pteval_t orig = pmd.get();
    Page& old = k.table_of(orig);
    const vaddr_t span = addr & PMD_MASK;
    ++mm.write_protect_seq;  // write_seqcount_begin
    bool reused = false;
    {
      SpinGuard ptl(pte_lockptr(mm, old));
      if (cow_pte_count(old) == 1) {
        SpinGuard pl(pmd_lockptr(mm, *pmd.table));
        set_pmd_at(mm, pmd, pmd_mkwrite(orig));
        reused = true;
      }
    }
    if (!reused) {
      Kernel::TableInHand hold(k, old);
      {
        SpinGuard pl(pmd_lockptr(mm, *pmd.table));
        set_pmd_at(mm, pmd, 0);  // pmd_clear
      }
      mm.pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_ptes
      if (!k.pte_alloc(mm, pmd)) {
        SpinGuard pl(pmd_lockptr(mm, *pmd.table));
        set_pmd_at(mm, pmd, orig);
        mm.pgtables_bytes += PAGE_SIZE;
        ++mm.write_protect_seq;
        return -ENOMEM;
      }
      Page& nw = k.table_of(pmd.get());
      {
        SpinGuard optl(pte_lockptr(mm, old));
        SpinGuard nptl(pte_lockptr(mm, nw));
        const pteval_t* src = table_base(old);
        EntryRef dst{&nw, table_base(nw)};
        for (unsigned i = 0; i < PTRS_PER_TABLE; ++i, ++dst.p) {
          k.tm_entry({&old, table_base(old) + i});
          if (pte_none(src[i])) continue;
          set_pte_at(dst, src[i]);  // into the table the PMD holds now, whoever put it there
          k.tm_entry(dst);
        }
      }
      if (!pmd_put_pte(old)) {  // the last holder after all: reuse the old table
        {
          SpinGuard nptl(pte_lockptr(mm, nw));
          EntryRef e{&nw, table_base(nw)};
          for (unsigned i = 0; i < PTRS_PER_TABLE; ++i, ++e.p)
            if (!pte_none(e.get())) pte_clear(e);
        }
        {
          SpinGuard pl(pmd_lockptr(mm, *pmd.table));
          set_pmd_at(mm, pmd, pmd_mkwrite(orig));
        }
        k.pgtable_free(nw);  // nr_ptes: -1 for the new table, +1 for the old one
      }
    }
    ++mm.write_protect_seq;
    k.flush_tlb_range(mm, span, span + PMD_SIZE);
    COWPTE_TRACE(k, "break_cow_pte (as posted): pid {} at {:#x}: {}", mm.pid, span,
                 reused ? "reused" : "copied");
    return 0;
  }
  bool zap_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd, vaddr_t addr) const override {
    return seed().zap_table(ops, tlb, pmd, addr);
  }
  bool free_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd) const override {
    return seed().free_table(ops, tlb, pmd);
  }

 private:
  static const ForkPolicy& seed() noexcept { return *find_fork_policy("seed"); }
};

}  // namespace

const ForkPolicy& seed_exact_fork_policy() noexcept {
  static const SeedExactPolicy policy;
  return policy;
}

}  // namespace cowpte
