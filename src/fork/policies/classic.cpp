// "classic": Linux's fork (mm/memory.c copy_pte_range): every PTE table is copied entry by entry
// into a private table of the child; nothing is ever shared.
#include "mm/kernel.hpp"

namespace cowpte {

namespace {

class ClassicPolicy final : public ForkPolicy {
 public:
  std::string_view name() const noexcept override { return "classic"; }
  std::string_view summary() const noexcept override {
    return "Linux's fork: copy_pte_range copies every PTE table";
  }
  int copy_pmd(PolicyOps& ops, const ForkPmd& f) const override {
    return ops.copy_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, f.addr, f.end);
  }
  // The classic fork shares no table, so none of these can meet one.
  int break_table(PolicyOps&, MmStruct&, EntryRef, vaddr_t) const override { never(); }
  bool zap_table(PolicyOps&, MmGather&, EntryRef, vaddr_t) const override { never(); }
  bool free_table(PolicyOps&, MmGather&, EntryRef) const override { never(); }

 private:
  [[noreturn]] static void never() {
    throw InvariantViolation("classic fork policy: a shared PTE table in an mm that shares none");
  }
};

}  // namespace

const ForkPolicy& classic_fork_policy() noexcept {
  static const ClassicPolicy policy;
  return policy;
}

}  // namespace cowpte
