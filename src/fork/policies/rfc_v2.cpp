// "rfc_v2": the COW PTE series' RFC v2 (2022-09-28, "deferred accounting"): fork shares a table
// with no per-page work, pages are counted once per table and the table's owner carries its RSS
// and its 4 KiB (as On-demand-fork), but a break by the last holder reuses the table instead of
// copying it. The model keeps On-demand-fork's rule for which tables are shared (one private
// anonymous VMA covers the span); RFC v2 also shared spans that several VMAs overlap.
// Written against the model layer only, by delegation to "on_demand_fork": the shape a research
// policy takes.
#include "cowpte/model/fork_policy.hpp"

namespace cowpte {

namespace {

class RfcV2Policy final : public ForkPolicy {
 public:
  std::string_view name() const noexcept override { return "rfc_v2"; }
  std::string_view summary() const noexcept override {
    return "COW PTE RFC v2: deferred accounting with an owner, reuse at refcount 1";
  }
  TableAccounting accounting() const noexcept override { return TableAccounting::owner; }

  int copy_pmd(PolicyOps& ops, const ForkPmd& f) const override { return odf().copy_pmd(ops, f); }

  // The last holder is the owner (a leaving owner hands the charge on), so the table, its pages
  // (counted once) and its RSS are already this mm's: make the PMD writable, as a private
  // table. Otherwise copy, as On-demand-fork does.
  int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const override {
    Page& table = ops.table_of(pmd.get());
    if (cow_pte_count(table) > 1) return odf().break_table(ops, mm, pmd, addr);
    if (table.pt_owner != &mm)
      throw InvariantViolation("rfc_v2: the last holder of a shared table is not its owner");
    SpinGuard ptl(pte_lockptr(mm, table));
    table.pt_owner = nullptr;
    SpinGuard pl(pmd_lockptr(mm, *pmd.table));
    set_pmd_at(mm, pmd, pmd_mkwrite(pmd.get()));  // an upgrade: no flush needed
    return 0;
  }

  bool zap_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd, vaddr_t addr) const override {
    return odf().zap_table(ops, tlb, pmd, addr);
  }
  bool free_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd) const override {
    return odf().free_table(ops, tlb, pmd);
  }

 private:
  // Looked up once: copy_pmd runs for every PMD of a fork.
  static const ForkPolicy& odf() noexcept {
    static const ForkPolicy& policy = *find_fork_policy("on_demand_fork");
    return policy;
  }
};

}  // namespace

const ForkPolicy& rfc_v2_fork_policy() noexcept {
  static const RfcV2Policy policy;
  return policy;
}

}  // namespace cowpte
