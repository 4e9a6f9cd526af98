// The fork-policy registry and what tells the built-in policies apart, through the facade:
// which tables a fork shares, and what the first write after the other holders left does
// (on_demand_fork copies the table even at refcount 1, rfc_v2 and seed reuse it).
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>

#include <string>

namespace cowpte {
namespace {

constexpr vaddr_t kBase = 0x7f0000000000;  // 2 MiB aligned
constexpr std::uint64_t kLen = 4ull << 20;

struct Forked {
  Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
  Process* parent = nullptr;
  Process* child = nullptr;
  explicit Forked(const std::string& policy) {
    parent = &m.spawn();
    EXPECT_TRUE(parent->set_cow_pte(policy).has_value());
    EXPECT_TRUE(
        parent
            ->mmap(kBase, kLen, Prot::read | Prot::write,
                   MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate)
            .has_value());
    for (vaddr_t a = kBase; a < kBase + kLen; a += 4096)
      EXPECT_TRUE(parent->store(a, a).has_value());
    child = *parent->fork();
    m.check_invariants();
  }
  pfn_t table(const Process& p) const { return m.walk(p, kBase).table[3]; }
};

TEST(ForkPolicy, SharedPoliciesShareTheTableClassicCopiesIt) {
  for (const char* name : {"seed", "on_demand_fork", "rfc_v2"}) {
    Forked f(name);
    EXPECT_EQ(f.table(*f.parent), f.table(*f.child)) << name;
    EXPECT_EQ(f.m.page_info(f.table(*f.parent)).refcount, 2) << name;
  }
  Forked f("classic");
  EXPECT_NE(f.table(*f.parent), f.table(*f.child));
}

TEST(ForkPolicy, LastHolderReusesUnderRfcV2AndSeedButCopiesUnderOnDemandFork) {
  for (const char* name : {"seed", "on_demand_fork", "rfc_v2"}) {
    Forked f(name);
    const pfn_t shared = f.table(*f.parent);
    f.child->exit();
    f.m.check_invariants();
    ASSERT_EQ(f.table(*f.parent), shared) << name;  // still write-protected, refcount 1
    ASSERT_TRUE(f.parent->store(kBase + 8, 1).has_value());
    f.m.check_invariants();
    const bool reused = f.table(*f.parent) == shared;
    EXPECT_EQ(reused, std::string(name) != "on_demand_fork") << name;
    EXPECT_EQ(*f.parent->load(kBase + 4096), kBase + 4096) << name;
    EXPECT_EQ(f.parent->rss().anon, std::int64_t(kLen / 4096)) << name;
    EXPECT_EQ(f.parent->pgtables_bytes(), 4u * 4096) << name;  // a PUD, a PMD and two PTE tables
  }
}

TEST(ForkPolicy, UnknownNamesAreRejectedEverywhere) {
  Machine m;
  Process& p = m.spawn();
  EXPECT_EQ(p.set_cow_pte("").error(), Errno::inval);
  EXPECT_EQ(p.set_cow_pte("Seed").error(), Errno::inval);
  EXPECT_TRUE(p.set_cow_pte("rfc_v2").has_value());
  EXPECT_THROW(machine_config_from_json(R"({"cow_pte_policy": "odf"})"), std::invalid_argument);
  EXPECT_EQ(machine_config_from_json(R"({"cow_pte_policy": "rfc_v2"})").cow_pte_policy, "rfc_v2");
}

}  // namespace
}  // namespace cowpte
