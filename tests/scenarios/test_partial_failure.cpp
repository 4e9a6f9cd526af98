// Range calls over a hole do what Linux does on the way to the error (this machine's kernel,
// 6.18, run with the same layout: the figures below are what it showed). Layout: VMA A of four
// pages, a two-page hole, VMA B of four pages. Every policy, in a child whose tables a fork
// shared, with check_invariants() after every step.
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>

#include <string>

namespace cowpte {
namespace {

constexpr vaddr_t kPage = 4096;
constexpr vaddr_t kR = 0x7f0000000000;  // 2 MiB aligned: A, the hole and B share one PTE table
constexpr vaddr_t kA = kR, kB = kR + 6 * kPage;
constexpr auto kRW = Prot::read | Prot::write;
constexpr auto kPrivFixed = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;

struct Layout {
  Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
  Process* p = nullptr;
  explicit Layout(const std::string& policy, bool populate) {
    Process& parent = m.spawn();
    EXPECT_TRUE(parent.set_cow_pte(policy).has_value());
    const MapFlags f = populate ? kPrivFixed | MapFlags::populate : kPrivFixed;
    EXPECT_TRUE(parent.mmap(kA, 4 * kPage, kRW, f).has_value());
    EXPECT_TRUE(parent.mmap(kB, 4 * kPage, kRW, f).has_value());
    if (populate) {
      for (vaddr_t a : {kA, kA + 3 * kPage, kB, kB + 3 * kPage})
        EXPECT_TRUE(parent.store(a, a).has_value());
    }
    p = *parent.fork();  // under a COW PTE policy the child's table is shared
    m.check_invariants();
  }
  bool present(vaddr_t a) const { return p->pagemap(a).present; }
  std::vector<std::pair<vaddr_t, vaddr_t>> vmas() const {
    std::vector<std::pair<vaddr_t, vaddr_t>> out;
    for (const SmapsEntry& e : p->smaps()) out.emplace_back(e.start, e.end);
    return out;
  }
};

class PartialFailure : public ::testing::TestWithParam<std::string> {};

// mprotect(A+2, 6 pages): A's part changes (A splits), then ENOMEM at the hole; B is untouched.
TEST_P(PartialFailure, MprotectChangesTheVmasBeforeTheHole) {
  Layout l(GetParam(), true);
  EXPECT_EQ(l.p->mprotect(kA + 2 * kPage, 6 * kPage, Prot::read).error(), Errno::nomem);
  l.m.check_invariants();
  using V = std::vector<std::pair<vaddr_t, vaddr_t>>;
  EXPECT_EQ(l.vmas(),
            (V{{kA, kA + 2 * kPage}, {kA + 2 * kPage, kA + 4 * kPage}, {kB, kB + 4 * kPage}}));
  EXPECT_EQ(l.p->store(kA + 3 * kPage, 1).error(), Errno::fault) << "now read-only";
  EXPECT_EQ(*l.p->load(kA + 3 * kPage), kA + 3 * kPage);
  EXPECT_TRUE(l.p->store(kA, 1).has_value()) << "before the range";
  EXPECT_TRUE(l.p->store(kB, 1).has_value()) << "after the hole";
  l.m.check_invariants();
  // No VMA at the start: nothing changes.
  EXPECT_EQ(l.p->mprotect(kA + 4 * kPage, 4 * kPage, Prot::read).error(), Errno::nomem);
  EXPECT_TRUE(l.p->store(kB + kPage, 1).has_value());
  l.m.check_invariants();
}

// MADV_DONTNEED(A+3, 4 pages): A's last page and B's first are zapped, then ENOMEM.
TEST_P(PartialFailure, DontneedZapsEveryMappedPartThenFails) {
  Layout l(GetParam(), true);
  EXPECT_EQ(l.p->madvise(kA + 3 * kPage, 4 * kPage, Advice::dontneed).error(), Errno::nomem);
  l.m.check_invariants();
  EXPECT_FALSE(l.present(kA + 3 * kPage));
  EXPECT_FALSE(l.present(kB));
  EXPECT_TRUE(l.present(kA));
  EXPECT_EQ(*l.p->load(kA + 3 * kPage), 0u) << "zapped: reads back as zero";
  EXPECT_EQ(*l.p->load(kB), 0u);
  EXPECT_EQ(*l.p->load(kB + 3 * kPage), kB + 3 * kPage);
  // Hole first, then B: B's part is still zapped.
  ASSERT_TRUE(l.p->store(kB, 5).has_value());
  EXPECT_EQ(l.p->madvise(kA + 4 * kPage, 3 * kPage, Advice::dontneed).error(), Errno::nomem);
  EXPECT_EQ(*l.p->load(kB), 0u);
  l.m.check_invariants();
}

// MADV_DONTFORK(A+2, 6 pages): both parts get VM_DONTCOPY (A and B split), then ENOMEM; a fork
// then leaves those parts out of the child.
TEST_P(PartialFailure, DontforkMarksEveryMappedPartThenFails) {
  Layout l(GetParam(), true);
  EXPECT_EQ(l.p->madvise(kA + 2 * kPage, 6 * kPage, Advice::dontfork).error(), Errno::nomem);
  l.m.check_invariants();
  using V = std::vector<std::pair<vaddr_t, vaddr_t>>;
  EXPECT_EQ(l.vmas(), (V{{kA, kA + 2 * kPage},
                         {kA + 2 * kPage, kA + 4 * kPage},
                         {kB, kB + 2 * kPage},
                         {kB + 2 * kPage, kB + 4 * kPage}}));
  Process& c = **l.p->fork();
  l.m.check_invariants();
  EXPECT_EQ(*c.load(kA), kA);
  EXPECT_EQ(c.load(kA + 3 * kPage).error(), Errno::fault);
  EXPECT_EQ(c.load(kB).error(), Errno::fault);
  EXPECT_EQ(*c.load(kB + 3 * kPage), kB + 3 * kPage);
}

// MADV_POPULATE_READ(A+2, 8 pages): A's part is populated, then ENOMEM at the hole and B stays
// unpopulated (Linux since 6.10); a hole first populates nothing.
TEST_P(PartialFailure, PopulateFillsTheVmasBeforeTheHole) {
  Layout l(GetParam(), false);
  EXPECT_EQ(l.p->madvise(kA + 2 * kPage, 8 * kPage, Advice::populate_read).error(), Errno::nomem);
  l.m.check_invariants();
  EXPECT_TRUE(l.present(kA + 2 * kPage));
  EXPECT_TRUE(l.present(kA + 3 * kPage));
  EXPECT_FALSE(l.present(kA + kPage));
  EXPECT_FALSE(l.present(kB));
  EXPECT_EQ(l.p->madvise(kA + 4 * kPage, 4 * kPage, Advice::populate_write).error(), Errno::nomem);
  EXPECT_FALSE(l.present(kB));
  EXPECT_FALSE(l.present(kB + kPage));
  // A VMA that forbids the access after one that allows it: the first is populated, EINVAL.
  ASSERT_TRUE(l.p->mprotect(kB, 4 * kPage, Prot::read).has_value());
  ASSERT_TRUE(l.p->munmap(kA + 4 * kPage, 2 * kPage).has_value());
  ASSERT_TRUE(l.p->mmap(kA + 4 * kPage, 2 * kPage, kRW, kPrivFixed).has_value());  // no hole
  EXPECT_EQ(l.p->madvise(kA + 4 * kPage, 4 * kPage, Advice::populate_write).error(), Errno::inval);
  EXPECT_TRUE(l.present(kA + 4 * kPage));
  EXPECT_FALSE(l.present(kB));
  l.m.check_invariants();
}

// mmap(MAP_FIXED) unmaps what it replaces before it allocates (v6.1's mmap_region): when the
// shmem object cannot be allocated, the call fails with ENOMEM and the old mapping is gone,
// with its pages freed (nothing leaks).
TEST_P(PartialFailure, MapFixedThatFailsAfterTheUnmapLosesTheOldMapping) {
  Layout l(GetParam(), true);
  // A store breaks a shared table first, so that the first allocation of the mmap is the shmem
  // object's (a break that fails instead makes the munmap fail, with nothing changed).
  ASSERT_TRUE(l.p->store(kB + kPage, 9).has_value());
  const std::uint64_t free_before = l.m.free_pages();
  l.m.fail_nth_allocation(1);
  const auto r =
      l.p->mmap(kB, 4 * kPage, kRW, MapFlags::shared | MapFlags::anonymous | MapFlags::fixed);
  l.m.fail_nth_allocation(0);
  EXPECT_EQ(r.error(), Errno::nomem);
  l.m.check_invariants();
  EXPECT_EQ(l.p->load(kB + 3 * kPage).error(), Errno::fault) << "B was unmapped first";
  EXPECT_EQ(*l.p->load(kA + 3 * kPage), kA + 3 * kPage) << "A is not in the range";
  using V = std::vector<std::pair<vaddr_t, vaddr_t>>;
  EXPECT_EQ(l.vmas(), (V{{kA, kA + 4 * kPage}}));
  EXPECT_GE(l.m.free_pages(), free_before) << "B's pages (if the child held the last ref) freed";
}

// MADV_FREE then MADV_PAGEOUT (no swap device): a clean lazily freeable page this process alone
// maps is dropped (reads zero); one written again after MADV_FREE stays; a page a child shares
// is left alone; anonymous pages never freed stay (nowhere to swap them). What this machine's
// kernel does too (test_real_kernel.cpp compares it step by step).
TEST_P(PartialFailure, FreeThenPageoutDropsOnlyCleanExclusivePages) {
  Layout l(GetParam(), true);    // A and B populated, shared with the parent
  for (int i = 0; i < 4; ++i) {  // written by the child: its own copies now
    ASSERT_TRUE(l.p->store(kA + i * kPage, kA + i * kPage).has_value());
    ASSERT_TRUE(l.p->store(kB + i * kPage, kB + i * kPage).has_value());
  }
  ASSERT_TRUE(l.p->madvise(kA, 4 * kPage, Advice::free_).has_value());
  ASSERT_TRUE(l.p->store(kA + kPage, 5).has_value());  // redirtied
  ASSERT_TRUE(l.p->madvise(kA, 4 * kPage, Advice::pageout).has_value());
  ASSERT_TRUE(l.p->madvise(kB, 4 * kPage, Advice::pageout).has_value());  // never freed
  l.m.check_invariants();
  EXPECT_FALSE(l.present(kA));
  EXPECT_EQ(*l.p->load(kA + 8), 0u) << "dropped: reads zero";
  EXPECT_EQ(*l.p->load(kA + kPage), 5u) << "written after MADV_FREE: kept";
  EXPECT_EQ(*l.p->load(kB + 3 * kPage), kB + 3 * kPage) << "no swap: anonymous pages stay";
  EXPECT_TRUE(l.present(kB + 3 * kPage));
  // Shared with a child: MADV_PAGEOUT leaves it alone.
  ASSERT_TRUE(l.p->store(kA + 2 * kPage, 7).has_value());
  ASSERT_TRUE(l.p->madvise(kA + 2 * kPage, kPage, Advice::free_).has_value());
  Process& c = **l.p->fork();
  ASSERT_TRUE(l.p->madvise(kA + 2 * kPage, kPage, Advice::pageout).has_value());
  EXPECT_EQ(*l.p->load(kA + 2 * kPage), 7u);
  EXPECT_EQ(*c.load(kA + 2 * kPage), 7u);
  l.m.check_invariants();
}

// MADV_REMOVE punches a hole in shared memory: every process that maps it reads zeros; on
// private memory it is EINVAL. MADV_WIPEONFORK: the child gets the range empty (EINVAL on
// shared memory); KEEPONFORK undoes it.
TEST_P(PartialFailure, RemoveAndWipeonfork) {
  Layout l(GetParam(), true);
  const vaddr_t s = kR + 64 * kPage;
  ASSERT_TRUE(l.p->mmap(s, 4 * kPage, kRW, MapFlags::shared | MapFlags::anonymous | MapFlags::fixed)
                  .has_value());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(l.p->store(s + i * kPage, 40 + i).has_value());
  Process& c = **l.p->fork();
  EXPECT_EQ(*c.load(s + kPage), 41u);
  ASSERT_TRUE(l.p->madvise(s + kPage, 2 * kPage, Advice::remove).has_value());
  l.m.check_invariants();
  EXPECT_EQ(*c.load(s + kPage), 0u) << "the child's mapping of the hole reads zeros";
  EXPECT_EQ(*l.p->load(s + 2 * kPage), 0u);
  EXPECT_EQ(*c.load(s + 3 * kPage), 43u);
  EXPECT_EQ(l.p->madvise(kA, kPage, Advice::remove).error(), Errno::inval);
  EXPECT_EQ(l.p->madvise(s, kPage, Advice::wipeonfork).error(), Errno::inval);
  ASSERT_TRUE(l.p->madvise(kA, 2 * kPage, Advice::wipeonfork).has_value());
  Process& g = **l.p->fork();
  l.m.check_invariants();
  EXPECT_EQ(*g.load(kA), 0u) << "wiped in the child";
  EXPECT_EQ(*g.load(kA + 3 * kPage), kA + 3 * kPage) << "outside the range";
  EXPECT_EQ(*l.p->load(kA), kA) << "the parent keeps it";
  ASSERT_TRUE(l.p->madvise(kA, 2 * kPage, Advice::keeponfork).has_value());
  Process& h = **l.p->fork();
  EXPECT_EQ(*h.load(kA), kA);
  l.m.check_invariants();
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, PartialFailure,
                         ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace cowpte
