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
//    goes on when that fails (SeriesQuirks).
// Break, zap and free are the seed's (delegated).
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

  int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const override {
    return seed().break_table(ops, mm, pmd, addr);
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
