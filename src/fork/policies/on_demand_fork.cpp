// "on_demand_fork": On-demand-fork (Zhao, Gong, Fonseca, EuroSys'21, the paper version of its
// kernel): fork shares every PTE table that one private anonymous VMA fully covers and does no
// per-page work; pages are counted once per table and charged to one holder, the owner; any
// fault in a shared table copies it (no reuse at refcount 1) and does the per-page work then.
//   fork   copy_pmd_range_tfork (src/fork/copy_pmd_range_tfork.cpp), else copy_pte_range
//   break  tfork_one_pte_table (src/fault/cow_pte.cpp)
//   zap    the paper's zap_pmd_range: drop this mm's PMD, dereference_pte_table
#include "mm/kernel.hpp"

namespace cowpte {

namespace {

class OnDemandForkPolicy final : public ForkPolicy {
 public:
  std::string_view name() const noexcept override { return "on_demand_fork"; }
  std::string_view summary() const noexcept override {
    return "On-demand-fork (EuroSys'21): tables shared, no per-page work at fork";
  }
  TableAccounting accounting() const noexcept override { return TableAccounting::owner; }

  int copy_pmd(PolicyOps& ops, const ForkPmd& f) const override {
    Kernel& k = kernel_of(ops);
    if (k.copy_pmd_range_tfork(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, f.addr)) return 0;
    return k.copy_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, f.addr, f.end);
  }

  int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const override {
    return kernel_of(ops).tfork_one_pte_table(mm, pmd, addr);
  }

  // Exit, munmap of the span or MADV_DONTNEED of all of it: this mm's PMD and reference go now;
  // the last holder releases the pages (the paper's zap_pmd_range).
  bool zap_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd, vaddr_t addr) const override {
    Kernel& k = kernel_of(ops);
    MmStruct& mm = *tlb.mm;
    Page& table = k.table_of(pmd.get());
    const vaddr_t span = addr & PMD_MASK;
    (void)k.cow_pte_zap_whole_mm(tlb, span);  // throws for a zap that should have broken it
    {
      SpinGuard pl(pmd_lockptr(mm, *pmd.table));
      set_pmd_at(mm, pmd, 0);  // pmd_clear
    }
    tlb.tlb_remove_tlb_entry(span, PMD_SIZE);  // tlb_flush_pmd_range
    k.dereference_pte_table(mm, table, span, &tlb);
    return true;
  }

  // zap_table dropped every shared table of a zapped span already.
  bool free_table(PolicyOps&, MmGather&, EntryRef) const override {
    throw InvariantViolation("free_pte_range: a shared table the zap did not drop");
  }
};

}  // namespace

const ForkPolicy& on_demand_fork_fork_policy() noexcept {
  static const OnDemandForkPolicy policy;
  return policy;
}

}  // namespace cowpte
