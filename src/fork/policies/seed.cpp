// "seed": Copy-On-Write PTE tables as the series does it from v3 on ("[PATCH v3 02/14] mm: Add
// Copy-On-Write PTE to fork()", with v4's changes and cowpte's fixes): fork still does every
// page's accounting (David Hildenbrand's "dedup only" design) and shares only the prepared
// table; a break copies the 512 entries, or reuses the table at refcount 1.
//   fork   copy_cow_pte_range, falling back to recover_pte_range (src/fork/copy_cow_pte_range.cpp)
//   break  break_cow_pte (mm/memory.c of [PATCH v3 03/14]), here
//   zap    v4's zap_pte_range and v5's zap of a COW-ed table, here; zap_cow_pte_range (zap.cpp)
//   free   v4's free_pte_range, here
#include <algorithm>

#include "mm/kernel.hpp"

namespace cowpte {

namespace {

class SeedPolicy final : public ForkPolicy {
 public:
  std::string_view name() const noexcept override { return "seed"; }
  std::string_view summary() const noexcept override {
    return "COW PTE, the series v3/v4: tables shared, every page accounted at fork";
  }

  // copy_pmd_range's COW PTE branch: share the span's table once per child (a later VMA of
  // the same span finds the child's PMD write-protected already); on -EAGAIN recover the
  // entries done so far into a private table and copy the rest.
  int copy_pmd(PolicyOps& ops, const ForkPmd& f) const override {
    Kernel& k = kernel_of(ops);
    const vaddr_t span = f.addr & PMD_MASK;
    const pteval_t dst = f.dst_pmd.get();
    if (!pmd_none(dst) && !pmd_write(dst)) return 0;  // shared through an earlier VMA already
    if (pmd_none(dst)) {
      vaddr_t recover_end = 0;
      const int ret = k.copy_cow_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, f.addr,
                                           f.end, recover_end);
      if (!ret) return 0;  // COW PTE succeeded
      if (ret != -EAGAIN) return -ENOMEM;
      if (k.recover_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, recover_end))
        return -ENOMEM;
      k.cow_pte_recover = {span, recover_end};
    }
    // The child's table is private: this span fell back (here, or for an earlier VMA of this
    // fork). The entries below recover_end are in it already; copy_pte_range does the rest.
    // (The seed resumes at recover_end only in the VMA that fell back; a later VMA of the same
    // span would be shared a second time. v4 fixed the address; the model keeps the span.)
    if (k.cow_pte_recover.span != span)
      throw InvariantViolation("copy_pmd_range: a private child table no fallback made");
    const vaddr_t from = std::max(f.addr, k.cow_pte_recover.end);
    if (from >= f.end) return 0;
    return k.copy_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, from, f.end);
  }

  // break_cow_pte (the series): the last holder reuses the table (makes its PMD writable); the
  // others get a copy of the 512 entries as they are (fork did the accounting) and drop their
  // reference. Then the span's TLB entries go. Differences from v4, on purpose: the new table is
  // allocated before anything changes (v5's order; v4 clears the PMD first and restores it on
  // failure, which David objected to); the count is checked again after the allocation, which
  // may have reclaimed or OOM-killed.
  int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const override {
    Kernel& k = kernel_of(ops);
    Kernel::PhaseScope phase(k, Phase::break_cow_pte);
    const pteval_t orig = pmd.get();
    Page& old = k.table_of(orig);
    Page* nw = nullptr;
    if (cow_pte_count(old) > 1) {
      Kernel::TableInHand hold(k, old);
      nw = k.pte_alloc_one(mm);
      if (!nw) return -ENOMEM;
    }
    ++mm.write_protect_seq;  // write_seqcount_begin: GUP-fast backs off
    bool copied = false;
    {
      SpinGuard ptl(pte_lockptr(mm, old));
      // Recheck under the lock, as v5 does: another thread of this mm may have broken the table
      // already (faults hold mmap_lock for read only; !pmd_same: nothing to do, the fault
      // retries), or the other holders may have left (the allocation may have reclaimed, or
      // they exited): reuse if this mm is the last one now.
      SpinGuard pl(pmd_lockptr(mm, *pmd.table));
      if (pmd.get() != orig) {
        // raced: another break of this mm got here first
      } else if (cow_pte_count(old) == 1) {
        set_pmd_at(mm, pmd, pmd_mkwrite(orig));  // reuse: refcount 1
      } else {
        if (!nw) throw InvariantViolation("break_cow_pte: a table's count rose under a fault");
        SpinGuard nptl(pte_lockptr(mm, *nw));
        const pteval_t* src = table_base(old);
        EntryRef dst{nw, table_base(*nw)};
        with_hooks(k.hooks_on(), [&](auto hooks) {
          constexpr bool H = decltype(hooks)::value;
          for (unsigned i = 0; i < PTRS_PER_TABLE; ++i, ++dst.p) {
            k.tm_entry<H>({&old, table_base(old) + i});
            if (pte_none(src[i])) continue;
            set_pte_at<H>(dst, src[i]);
            k.tm_entry<H>(dst);
          }
        });
        pmd_put_pte(old);  // the count is above 1 under the lock: a holder leaving takes it too
        set_pmd_at(mm, pmd, mk_table_entry(k.mem.pfn(*nw)));  // nr_ptes -1 +1
        copied = true;
      }
    }
    if (nw && !copied) k.pgtable_free(*nw);
    ++mm.write_protect_seq;
    k.flush_tlb_range(mm, addr & PMD_MASK, (addr & PMD_MASK) + PMD_SIZE);
    COWPTE_TRACE(k, "break_cow_pte: pid {} at {:#x}: {}", mm.pid, addr & PMD_MASK,
                 copied ? "copied" : "reused");
    return 0;
  }

  // zap_pte_range meeting a COW-ed table (v4, v5):
  //  - the last holder reuses it (the PMD becomes writable) and zaps as usual;
  //  - every entry of this mm in the span goes (exit, or munmap with no VMA left in the span):
  //    de-account the whole span once and leave the dropping to free_pte_range (v4);
  //  - MADV_DONTNEED over the whole span: de-account, drop this mm's PMD and reference now
  //    (v5's zap; v4 left the de-accounted table mapped, "possible to access the COW-ed PTE
  //    after it had been zapped").
  bool zap_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd, vaddr_t addr) const override {
    Kernel& k = kernel_of(ops);
    MmStruct& mm = *tlb.mm;
    Page& table = k.table_of(pmd.get());
    const vaddr_t span = addr & PMD_MASK;
    if (cow_pte_count(table) == 1) {
      SpinGuard pl(pmd_lockptr(mm, *pmd.table));
      set_pmd_at(mm, pmd, pmd_mkwrite(pmd.get()));  // an upgrade: no flush needed
      return false;
    }
    if (k.cow_pte_zap_whole_mm(tlb, span)) {
      // The whole span, once: each holder is charged for every entry of a shared table, also
      // those of VMAs it does not have (a fork that failed after sharing the span).
      if (tlb.cow_pte_span != span) k.zap_cow_pte_range(tlb, pmd, span, span + PMD_SIZE);
      tlb.cow_pte_span = span;
      return true;
    }
    k.zap_cow_pte_range(tlb, pmd, span, span + PMD_SIZE);
    {
      SpinGuard pl(pmd_lockptr(mm, *pmd.table));
      set_pmd_at(mm, pmd, 0);  // pmd_clear
    }
    tlb.tlb_remove_tlb_entry(span, PMD_SIZE);  // tlb_flush_pmd_range
    SpinGuard ptl(pte_lockptr(mm, table));
    pmd_put_pte(table);
    mm.pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_ptes
    return true;
  }

  // free_pte_range (v4): a write-protected PMD drops this mm's reference; the last holder frees
  // the table like a private one.
  bool free_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd) const override {
    Page& table = ops.table_of(pmd.get());
    {
      SpinGuard ptl(pte_lockptr(*tlb.mm, table));
      if (!pmd_put_pte(table)) return false;
    }
    pmd_clear_for_free(*tlb.mm, pmd);
    tlb.mm->pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_ptes
    return true;
  }
};

}  // namespace

const ForkPolicy& seed_fork_policy() noexcept {
  static const SeedPolicy policy;
  return policy;
}

}  // namespace cowpte
