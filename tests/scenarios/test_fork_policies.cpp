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

// A span shared with anonymous memory carries a shmem VMA's entries into the child: classic
// fork leaves them for the child to fault in (vma_needs_copy), so under "seed" the child is
// charged their MM_SHMEMPAGES and each page's mapcount counts it (docs/model.md says so).
TEST(ForkPolicies, SeedMapsAShmemVmaOfASharedSpanInTheChild) {
  constexpr std::uint64_t kPages = 16;
  for (const char* name : {"classic", "seed"}) {
    SCOPED_TRACE(name);
    Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
    Process& p = m.spawn();
    ASSERT_TRUE(p.set_cow_pte(name).has_value());
    const auto rw = Prot::read | Prot::write;
    ASSERT_TRUE(
        p.mmap(kBase, kPages * 4096, rw,
               MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate)
            .has_value());
    const vaddr_t shm = kBase + kPages * 4096;  // the same 2 MiB span
    ASSERT_TRUE(
        p.mmap(shm, kPages * 4096, rw, MapFlags::shared | MapFlags::anonymous | MapFlags::fixed)
            .has_value());
    for (std::uint64_t i = 0; i < kPages; ++i) ASSERT_TRUE(p.store(shm + i * 4096, i).has_value());
    Process& c = **p.fork();
    m.check_invariants();
    const bool seed = std::string(name) == "seed";
    EXPECT_EQ(c.rss().shmem, seed ? std::int64_t(kPages) : 0);
    EXPECT_EQ(c.rss().anon, std::int64_t(kPages));
    const PagemapEntry pm = p.pagemap(shm);
    ASSERT_TRUE(pm.present);
    EXPECT_EQ(m.page_info(pm.pfn).mapcount, seed ? 2 : 1);
    EXPECT_EQ(c.pagemap(shm).present, seed);
    EXPECT_EQ(*c.load(shm + 3 * 4096), 3u);  // the same page either way
    EXPECT_EQ(c.pagemap(shm).pfn, pm.pfn);
    m.check_invariants();
  }
}

// Soft-dirty survives fork in the parent and the child under every policy, as in classic fork
// and the seed's code. clear_soft_dirty first, so that the VMAs' VM_SOFTDIRTY (which pagemap
// reports too) is off and the bit seen is the entry's; after the fork, clear_soft_dirty in one
// process clears it there only.
TEST(ForkPolicies, ForkKeepsSoftDirtyUnderEveryPolicy) {
  for (const std::string& name : fork_policy_names()) {
    SCOPED_TRACE(name);
    Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
    Process& p = m.spawn();
    ASSERT_TRUE(p.set_cow_pte(name).has_value());
    ASSERT_TRUE(
        p.mmap(kBase, kLen, Prot::read | Prot::write,
               MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate)
            .has_value());
    ASSERT_TRUE(p.clear_soft_dirty().has_value());
    ASSERT_FALSE(p.pagemap(kBase).soft_dirty);
    ASSERT_TRUE(p.store(kBase, 1).has_value());  // soft-dirty again, in the entry only
    ASSERT_TRUE(p.pagemap(kBase).soft_dirty);
    Process& c = **p.fork();
    m.check_invariants();
    EXPECT_TRUE(p.pagemap(kBase).soft_dirty);
    EXPECT_TRUE(c.pagemap(kBase).soft_dirty);
    EXPECT_FALSE(c.pagemap(kBase + 4096).soft_dirty);
    ASSERT_TRUE(c.clear_soft_dirty().has_value());
    m.check_invariants();
    EXPECT_FALSE(c.pagemap(kBase).soft_dirty);
    EXPECT_TRUE(p.pagemap(kBase).soft_dirty) << "clear_refs of the child only";
    ASSERT_TRUE(c.store(kBase + 4096, 7).has_value());
    EXPECT_TRUE(c.pagemap(kBase + 4096).soft_dirty);
    m.check_invariants();
  }
}

// ptdump: a run of PTEs that ends at a PMD boundary, in a span whose base has bit 21 set, ends
// at base + 2 MiB (an OR of the two would print base again).
TEST(ForkPolicies, PtdumpPrintsTheEndOfARunThatEndsAtAPmdBoundary) {
  Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
  Process& p = m.spawn();
  const vaddr_t base = kBase + (2ull << 20);  // bit 21 set
  ASSERT_TRUE(
      p.mmap(base, 2ull << 20, Prot::read | Prot::write,
             MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate)
          .has_value());
  const std::string dump = m.ptdump(p);
  EXPECT_NE(dump.find("pte 0x7f0000200000-0x7f0000400000  512 pages"), std::string::npos) << dump;
}

}  // namespace
}  // namespace cowpte
