// "seed_exact" (the COW PTE series as posted) next to "seed" (the same design with cowpte's
// fixes): each test runs one sequence under both and asserts what each does. Under "seed"
// check_invariants() holds after every step; under "seed_exact" it names the broken invariant at
// the step where the series breaks Linux's semantics. README, "What the series gets wrong".
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>

#include <string>

namespace cowpte {
namespace {

constexpr vaddr_t kPage = 4096;
constexpr vaddr_t kSpan = 2ull << 20;
constexpr vaddr_t kBase = 0x7d0000000000;  // 2 MiB aligned: every VMA below shares one table
constexpr auto kRW = Prot::read | Prot::write;
constexpr auto kPriv = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;
constexpr auto kShared = MapFlags::shared | MapFlags::anonymous | MapFlags::fixed;

// The invariant check's message, or "" when every invariant holds.
std::string broken(const Machine& m) {
  try {
    m.check_invariants();
  } catch (const InvariantViolation& e) {
    return e.what();
  }
  return "";
}
bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class SeedVsSeedExact : public ::testing::TestWithParam<const char*> {};

struct Steps {
  explicit Steps(const char* policy) : exact(std::string(policy) == "seed_exact") {
    EXPECT_TRUE(p.set_cow_pte(policy).has_value());
  }
  // A VMA of `pages` pages at a, each page holding a + i.
  void populate(Process& q, vaddr_t a, std::uint64_t pages) {
    ASSERT_TRUE(q.mmap(a, pages * kPage, kRW, kPriv).has_value());
    for (std::uint64_t i = 0; i < pages; ++i) ASSERT_TRUE(q.store(a + i * kPage, a + i));
  }
  Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
  Process& p = m.spawn();
  const bool exact;
};

// The read-fault chain. The child maps a page into the hole of a span it shares with its parent
// and reads it: the series does not break the table for an anonymous read fault, so the
// zero-page PTE lands in the table the parent walks too. The parent, with no VMA there, loads 0
// where Linux raises SIGSEGV; once it maps shared memory there and writes, do_wp_page reuses
// the zero page (wp_pfn_shared) and the store lands in the global zero page, which every fresh
// anonymous read in the machine then returns.
TEST_P(SeedVsSeedExact, ReadFaultInASharedTableEndsWithAWriteIntoTheZeroPage) {
  Steps r(GetParam());
  r.populate(r.p, kBase, 4);
  Process& c = **r.p.fork();
  EXPECT_EQ(broken(r.m), "");
  const vaddr_t hole = kBase + 8 * kPage;
  ASSERT_TRUE(c.mmap(hole, kPage, kRW, kPriv).has_value());
  EXPECT_EQ(*c.load(hole), 0u);
  if (!r.exact) {
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(r.p.load(hole).error(), Errno::fault);
  } else {
    EXPECT_TRUE(contains(broken(r.m), "outside every VMA")) << broken(r.m);
    EXPECT_EQ(*r.p.load(hole), 0u) << "Linux: SIGSEGV, no VMA there";
  }
  ASSERT_TRUE(r.p.mmap(hole, kPage, kRW, kShared).has_value());
  ASSERT_TRUE(r.p.store(hole, 42).has_value());
  EXPECT_EQ(*r.p.load(hole), 42u);
  Process& q = r.m.spawn();  // an unrelated process reads fresh anonymous memory
  ASSERT_TRUE(q.mmap(kBase, kPage, Prot::read, kPriv).has_value());
  if (!r.exact) {
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(*q.load(kBase), 0u);
  } else {
    const std::string b = broken(r.m);
    EXPECT_TRUE(contains(b, "zero page")) << b;  // written, and mapped writable
    EXPECT_EQ(q.pagemap(kBase).pfn, r.m.zero_pfn());
    EXPECT_EQ(*q.load(kBase), 42u) << "the zero page holds the parent's store";
    EXPECT_EQ(*c.load(hole), 42u) << "and the child's own page reads it too";
  }
}

// recover_pte_range as posted: a page that may be pinned makes fork fall back; the series clears
// the child's PMD without mm_dec_nr_ptes, so VmPTE counts the shared table and the child's own,
// and exit leaves 4 KiB behind ("BUG: non-zero pgtables_bytes on freeing mm").
TEST_P(SeedVsSeedExact, RecoverPteRangeCountsTheChildsTableTwice) {
  Steps r(GetParam());
  r.populate(r.p, kBase, 4);
  ASSERT_TRUE(r.p.pin(kBase + 2 * kPage, kPage, PinFlags::write | PinFlags::longterm));
  Process& c = **r.p.fork();
  EXPECT_NE(r.m.walk(c, kBase).table[3], r.m.walk(r.p, kBase).table[3]) << "fell back";
  EXPECT_NE(c.pagemap(kBase + 2 * kPage).pfn, r.p.pagemap(kBase + 2 * kPage).pfn) << "copied";
  const std::uint64_t tables = 3 * kPage;  // PUD, PMD and PTE table
  if (!r.exact) {
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(c.pgtables_bytes(), tables);
  } else {
    EXPECT_TRUE(contains(broken(r.m), "pgtables_bytes")) << broken(r.m);
    EXPECT_EQ(c.pgtables_bytes(), tables + kPage);
  }
  c.exit();
  const std::vector<std::string> log = r.m.dmesg();
  if (!r.exact) {
    EXPECT_TRUE(log.empty());
    EXPECT_EQ(broken(r.m), "");
  } else {
    ASSERT_EQ(log.size(), 1u);
    EXPECT_TRUE(contains(log[0], "BUG: non-zero pgtables_bytes on freeing mm: 4096")) << log[0];
  }
}

// A later VMA of a span that fell back: its child PMD is private and writable, and the series
// calls copy_cow_pte_range again, which shares the parent's table over the child's private one.
// The child then maps the parent's pinned page (which fork had to copy), and its private table
// leaks with the pages it holds.
TEST_P(SeedVsSeedExact, ALaterVmaOfASpanThatFellBackSharesTheTableAgainAndLeaksTheCopy) {
  Steps r(GetParam());
  const std::uint64_t free0 = r.m.free_pages();
  r.populate(r.p, kBase, 4);
  r.populate(r.p, kBase + 8 * kPage, 4);  // a second VMA of the span, after a hole
  const vaddr_t pinned = kBase + 2 * kPage;
  ASSERT_TRUE(r.p.pin(pinned, kPage, PinFlags::write | PinFlags::longterm));
  Process& c = **r.p.fork();
  if (!r.exact) {
    EXPECT_EQ(broken(r.m), "");
    EXPECT_NE(r.m.walk(c, kBase).table[3], r.m.walk(r.p, kBase).table[3]);
    EXPECT_NE(c.pagemap(pinned).pfn, r.p.pagemap(pinned).pfn);
  } else {
    EXPECT_NE(broken(r.m), "");
    EXPECT_EQ(r.m.walk(c, kBase).table[3], r.m.walk(r.p, kBase).table[3]) << "shared again";
    EXPECT_EQ(c.pagemap(pinned).pfn, r.p.pagemap(pinned).pfn) << "the pinned page, in the child";
  }
  for (std::uint64_t i = 0; i < 4; ++i)
    EXPECT_EQ(*c.load(kBase + 8 * kPage + i * kPage), kBase + 8 * kPage + i);
  ASSERT_TRUE(r.p.unpin(pinned, kPage));
  if (!r.exact) {
    c.exit();
    r.p.exit();
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(r.m.free_pages(), free0 + 1) << "everything came back, and the parent's pgd";
  } else {
    // The pinned page is mapped twice now but counted once: the second zap takes its mapcount
    // below -1, where Linux reports "Bad page map" and the model stops.
    std::string what;
    try {
      c.exit();
      r.p.exit();
    } catch (const InvariantViolation& e) {
      what = e.what();
    }
    EXPECT_TRUE(contains(what, "negative mapcount")) << what;
  }
}

// VM_WIPEONFORK: the child must get the range empty. The series shares the span's table with
// the rest of it, so the child reads the parent's data there.
TEST_P(SeedVsSeedExact, WipeonforkRangeInASharedSpanReachesTheChild) {
  Steps r(GetParam());
  r.populate(r.p, kBase, 4);
  const vaddr_t w = kBase + 8 * kPage;
  r.populate(r.p, w, 4);
  ASSERT_TRUE(r.p.madvise(w, 4 * kPage, Advice::wipeonfork).has_value());
  Process& c = **r.p.fork();
  EXPECT_EQ(*c.load(kBase + kPage), kBase + 1);
  if (!r.exact) {
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(*c.load(w + kPage), 0u);
  } else {
    EXPECT_EQ(*c.load(w + kPage), w + 1) << "Linux: the child reads zeros";
    EXPECT_NE(broken(r.m), "");
  }
}

// mremap into a span whose table this process shares with another: the series breaks only the
// source, so the moved entry lands in the table the other process walks.
TEST_P(SeedVsSeedExact, MremapIntoASharedSpanWritesIntoTheOtherProcesssTable) {
  Steps r(GetParam());
  r.populate(r.p, kBase, 4);
  r.populate(r.p, kBase + kSpan, 1);
  Process& c = **r.p.fork();
  const vaddr_t to = kBase + kSpan + 8 * kPage;
  ASSERT_TRUE(c.mremap(kBase, kPage, kPage, MremapFlags::maymove | MremapFlags::fixed, to));
  EXPECT_EQ(*c.load(to), kBase);
  if (!r.exact) {
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(r.p.load(to).error(), Errno::fault);
  } else {
    EXPECT_TRUE(contains(broken(r.m), "outside every VMA")) << broken(r.m);
    EXPECT_EQ(*r.p.load(to), kBase) << "the child's page, in the parent, where it has no VMA";
  }
}

// mprotect when the break runs out of memory: the series skips the span and returns success,
// the entries keep their old protection: the child reads memory it made PROT_NONE.
TEST_P(SeedVsSeedExact, MprotectWhoseBreakFailsSucceedsAndChangesNoEntry) {
  Steps r(GetParam());
  r.populate(r.p, kBase, 4);
  Process& c = **r.p.fork();
  r.m.fail_nth_allocation(1);  // the break's new table
  auto res = c.mprotect(kBase, 4 * kPage, Prot::none);
  r.m.fail_nth_allocation(0);
  if (!r.exact) {
    EXPECT_EQ(res.error(), Errno::nomem);
    EXPECT_EQ(broken(r.m), "");
    EXPECT_EQ(*c.load(kBase + kPage), kBase + 1) << "unchanged: still read-write";
  } else {
    EXPECT_TRUE(res.has_value());
    EXPECT_EQ(*c.load(kBase + kPage), kBase + 1) << "Linux: SIGSEGV, the VMA is PROT_NONE";
    EXPECT_EQ(c.smaps().size(), 1u);
  }
}

INSTANTIATE_TEST_SUITE_P(SameSteps, SeedVsSeedExact, ::testing::Values("seed", "seed_exact"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           return std::string(i.param);
                         });

TEST(SeedExact, IsRegisteredButNotSound) {
  const auto names = fork_policy_names(), sound = sound_fork_policy_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "seed_exact"), names.end());
  EXPECT_EQ(std::find(sound.begin(), sound.end(), "seed_exact"), sound.end());
  EXPECT_NE(std::find(sound.begin(), sound.end(), "seed"), sound.end());
}

}  // namespace
}  // namespace cowpte
