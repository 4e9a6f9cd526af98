// A fork policy defined outside the library: "large_vmas_only" shares PTE tables the way
// On-demand-fork does, but only for VMAs of at least 8 MiB; smaller VMAs are copied as the
// classic fork copies them. It registers itself, forks under it, and checks the machine's
// invariants, the loads and which tables were shared. scripts/test.sh builds and runs it.
#include <cowpte/cowpte.hpp>
#include <cowpte/model/model.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>

namespace {

using namespace cowpte;

class LargeVmasOnly final : public ForkPolicy {
 public:
  std::string_view name() const noexcept override { return "large_vmas_only"; }
  std::string_view summary() const noexcept override {
    return "On-demand-fork for VMAs of 8 MiB or more, the classic copy below";
  }
  TableAccounting accounting() const noexcept override { return odf().accounting(); }
  int copy_pmd(PolicyOps& ops, const ForkPmd& f) const override {
    if (f.src_vma.vm_end - f.src_vma.vm_start >= (8u << 20)) return odf().copy_pmd(ops, f);
    return ops.copy_pte_range(f.dst_vma, f.src_vma, f.dst_pmd, f.src_pmd, f.addr, f.end);
  }
  // Every table this policy shared, On-demand-fork shared: it breaks, zaps and frees them.
  int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const override {
    return odf().break_table(ops, mm, pmd, addr);
  }
  bool zap_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd, vaddr_t addr) const override {
    return odf().zap_table(ops, tlb, pmd, addr);
  }
  bool free_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd) const override {
    return odf().free_table(ops, tlb, pmd);
  }

 private:
  static const ForkPolicy& odf() {
    static const ForkPolicy& policy = *find_fork_policy("on_demand_fork");  // once, not per PMD
    return policy;
  }
};

const LargeVmasOnly kPolicy;

int fail(const char* what) {
  std::fprintf(stderr, "policy consumer: %s\n", what);
  return 1;
}

}  // namespace

int main() try {
  if (!register_fork_policy(kPolicy)) return fail("register_fork_policy refused the policy");
  if (register_fork_policy(kPolicy).error() != Errno::exist) return fail("registered twice");
  bool listed = false;
  for (const std::string& n : fork_policy_names()) listed |= n == "large_vmas_only";
  if (!listed) return fail("fork_policy_names() does not list the policy");

  Machine m(MachineConfig{.memory_bytes = 256ull << 20});
  Process& parent = m.spawn();
  if (!parent.set_cow_pte("large_vmas_only")) return fail("set_cow_pte(\"large_vmas_only\")");
  const Prot rw = Prot::read | Prot::write;
  const MapFlags anon = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;
  const vaddr_t big = 0x7f0000000000, small = 0x7f0100000000;
  if (!parent.mmap(big, 16u << 20, rw, anon) || !parent.mmap(small, 1u << 20, rw, anon))
    return fail("mmap");
  for (vaddr_t off = 0; off < (16u << 20); off += 4096) (void)parent.store(big + off, off + 1);
  for (vaddr_t off = 0; off < (1u << 20); off += 4096) (void)parent.store(small + off, off + 2);
  auto child = parent.fork();
  if (!child) return fail("fork");
  Process& c = **child;
  m.check_invariants();
  const auto table = [&](const Process& p, vaddr_t va) { return m.walk(p, va).table[3]; };
  if (table(parent, big) != table(c, big)) return fail("the 16 MiB VMA's tables are not shared");
  if (table(parent, small) == table(c, small)) return fail("the 1 MiB VMA's table is shared");
  if (*c.load(big + 8192) != 8193 || *c.load(small + 4096) != 4098) return fail("child loads");
  if (!c.store(big + 8192, 7)) return fail("child store");  // breaks that table: a copy
  m.check_invariants();
  if (*parent.load(big + 8192) != 8193 || *c.load(big + 8192) != 7) return fail("after COW");
  if (table(parent, big) == table(c, big)) return fail("the written table is still shared");
  c.exit();
  parent.exit();
  m.check_invariants();
  if (m.free_pages() + 1 != m.total_pages()) return fail("frames leaked (all but the zero page)");
  std::printf("policy consumer: large_vmas_only registered, forked, checked: ok\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "policy consumer: %s\n", e.what());
  return 1;
}
