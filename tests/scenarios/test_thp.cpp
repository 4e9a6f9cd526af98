// Transparent huge pages: the THP policy and MADV_(NO)HUGEPAGE, the huge fault and the huge
// zero page, fork's copy_huge_pmd under every sound fork policy, the COW fault that splits,
// partial munmap and the deferred split, mprotect, MADV_DONTNEED, mremap, pins, fragmentation
// and allocation failure, and the 2 MiB TLB; check_invariants() after every step.
#include <gtest/gtest.h>

#include <string>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr vaddr_t kBase = 0x7f0000000000;  // 2 MiB aligned
constexpr std::uint64_t kHuge = 512;       // pages per THP
constexpr std::uint64_t kPse = 1ull << 7;  // PS: a huge PMD

MachineConfig thp_machine(ThpMode mode = ThpMode::always, std::uint64_t memory = 64ull << 20) {
  return MachineConfig{.memory_bytes = memory, .thp = mode};
}

class Thp : public ScenarioTest {
 protected:
  Thp() : ScenarioTest(thp_machine()) {}
  explicit Thp(const MachineConfig& cfg) : ScenarioTest(cfg) {}

  bool huge(const Process& p, vaddr_t a) {
    const PtWalk w = m.walk(p, a);
    return w.levels == 3 && (w.entry[2] & kPse);
  }
  pfn_t huge_pfn(const Process& p, vaddr_t a) { return pte_pfn(m.walk(p, a).entry[2]); }
  std::uint64_t anon_huge(const Process& p) {
    std::uint64_t n = 0;
    for (const SmapsEntry& e : p.smaps()) n += e.anon_huge;
    return n;
  }
};

// A write fault in a 2 MiB-aligned span of an anonymous VMA maps one THP by a huge PMD: 512
// pages of RSS, consecutive frames in pagemap, AnonHugePages, a compound page whose head has
// the reference and whose subpages are each mapped once (the entire mapping).
TEST_F(Thp, WriteFaultMapsAHugePmd) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 2 * kHuge, kBase);
  store(p, a + 5 * kPage, 42);
  ASSERT_TRUE(huge(p, a));
  EXPECT_TRUE(m.walk(p, a).entry[2] & kRW);
  const pfn_t head = huge_pfn(p, a);
  EXPECT_EQ(head % kHuge, 0u);
  EXPECT_EQ(p.rss().anon, static_cast<std::int64_t>(kHuge));
  EXPECT_EQ(anon_huge(p), 2ull << 20);
  for (std::uint64_t i : {0ull, 1ull, 5ull, 511ull}) {
    const PagemapEntry e = p.pagemap(a + i * kPage);
    EXPECT_TRUE(e.present && e.exclusive);
    EXPECT_EQ(e.pfn, head + i);
  }
  EXPECT_TRUE(page(head).compound_head);
  EXPECT_TRUE(page(head + 7).compound_tail);
  EXPECT_EQ(page(head + 7).order, 9u);
  EXPECT_EQ(page(head).refcount, 1);
  EXPECT_EQ(page(head + 7).mapcount, 1);
  EXPECT_EQ(load(p, a + 5 * kPage), 42u);
  EXPECT_EQ(load(p, a + 6 * kPage), 0u);
  EXPECT_EQ(m.vmstat().thp_fault_alloc, 1u);
  EXPECT_EQ(m.vmstat().nr_anon_thp, 1u);
  EXPECT_FALSE(huge(p, a + (2ull << 20)));  // the second span is untouched
  finish();
}

// Eligibility: "never", "madvise" without MADV_HUGEPAGE, MADV_NOHUGEPAGE under "always", a
// span that the VMA does not cover whole, and shared memory all take 4 KiB pages.
TEST(ThpPolicy, OnlyEligibleSpansGetHugePages) {
  for (ThpMode mode : {ThpMode::never, ThpMode::madvise, ThpMode::always}) {
    Machine m(thp_machine(mode));
    Process& p = m.spawn();
    ASSERT_TRUE(p.mmap(kBase, 4ull << 20, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
    ASSERT_TRUE(p.store(kBase, 1));
    EXPECT_EQ(m.walk(p, kBase).levels == 3, mode == ThpMode::always) << to_string(mode);
    ASSERT_TRUE(p.madvise(kBase + (2ull << 20), 2ull << 20, Advice::hugepage));
    ASSERT_TRUE(p.store(kBase + (2ull << 20), 1));
    EXPECT_EQ(m.walk(p, kBase + (2ull << 20)).levels == 3, mode != ThpMode::never);
    m.check_invariants();
  }
  Machine m(thp_machine(ThpMode::always));
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, 4ull << 20, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(p.madvise(kBase, 2ull << 20, Advice::nohugepage));
  ASSERT_TRUE(p.store(kBase, 1));
  EXPECT_EQ(m.walk(p, kBase).levels, 4);
  // A VMA that ends inside the span: 4 KiB.
  ASSERT_TRUE(p.mmap(kBase + (8ull << 20), (2ull << 20) - 4096, Prot::read | Prot::write,
                     kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(p.store(kBase + (8ull << 20), 1));
  EXPECT_EQ(m.walk(p, kBase + (8ull << 20)).levels, 4);
  // Shared anonymous memory (shmem): 4 KiB.
  ASSERT_TRUE(p.mmap(kBase + (16ull << 20), 2ull << 20, Prot::read | Prot::write,
                     MapFlags::shared | MapFlags::anonymous | MapFlags::fixed));
  ASSERT_TRUE(p.store(kBase + (16ull << 20), 1));
  EXPECT_EQ(m.walk(p, kBase + (16ull << 20)).levels, 4);
  EXPECT_EQ(m.vmstat().thp_fault_alloc, 0u);
  m.check_invariants();
}

// A read fault maps the huge zero page read-only; a write then splits it into 512 zero-page
// PTEs and COWs the one page written. The huge zero page is freed with its last PMD.
TEST_F(Thp, ReadFaultMapsTheHugeZeroPageAndAWriteSplitsIt) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, kHuge, kBase);
  EXPECT_EQ(load(p, a + 9 * kPage), 0u);
  ASSERT_TRUE(huge(p, a));
  EXPECT_FALSE(m.walk(p, a).entry[2] & kRW);
  EXPECT_EQ(p.rss().anon, 0);
  EXPECT_EQ(anon_huge(p), 0u);
  store(p, a + 9 * kPage, 7);
  EXPECT_FALSE(huge(p, a));
  EXPECT_EQ(p.rss().anon, 1);
  EXPECT_EQ(pfn_of(p, a), m.zero_pfn());
  EXPECT_EQ(load(p, a + 9 * kPage), 7u);
  EXPECT_EQ(m.vmstat().thp_fault_alloc, 0u);
  finish();
}

// Fork under every sound policy shares the THP: both PMDs write-protected and huge, one
// reference and one entire mapping more, the deposited table charged to the child. The
// child's first write splits only its own PMD and copies one 4 KiB page; the parent's then does
// the same (the THP is not exclusive any more).
class ThpFork : public Thp, public ::testing::WithParamInterface<std::string> {};

TEST_P(ThpFork, ForkSharesTheThpAndTheFirstWriteSplitsAndCopies4KiB) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = map_anon(p, kHuge, kBase);
  for (std::uint64_t i = 0; i < kHuge; i += 64) store(p, a + i * kPage, pattern(1, i));
  const pfn_t head = huge_pfn(p, a);
  Process& c = fork(p);
  ASSERT_TRUE(huge(p, a) && huge(c, a));
  EXPECT_EQ(huge_pfn(c, a), head);
  EXPECT_FALSE(m.walk(p, a).entry[2] & kRW);
  EXPECT_FALSE(m.walk(c, a).entry[2] & kRW);
  EXPECT_EQ(page(head).refcount, 2);
  EXPECT_EQ(page(head + 3).mapcount, 2);
  EXPECT_FALSE(page(head).anon_exclusive);
  EXPECT_EQ(c.rss().anon, static_cast<std::int64_t>(kHuge));
  EXPECT_EQ(c.pgtables_bytes(), p.pgtables_bytes());

  store(c, a + 64 * kPage, 99);
  EXPECT_FALSE(huge(c, a));
  EXPECT_TRUE(huge(p, a));
  EXPECT_NE(pfn_of(c, a + 64 * kPage), head + 64);
  EXPECT_EQ(pfn_of(c, a + 65 * kPage), head + 65);  // the rest still maps the THP
  EXPECT_EQ(m.vmstat().thp_split_pmd, 1u);
  EXPECT_EQ(load(p, a + 64 * kPage), pattern(1, 64));
  EXPECT_EQ(load(c, a + 64 * kPage), 99u);

  store(p, a, 5);
  EXPECT_FALSE(huge(p, a));
  EXPECT_NE(pfn_of(p, a), head);
  EXPECT_EQ(load(c, a), pattern(1, 0));
  for (std::uint64_t i = 128; i < kHuge; i += 64) {
    EXPECT_EQ(load(p, a + i * kPage), pattern(1, i));
    EXPECT_EQ(load(c, a + i * kPage), pattern(1, i));
  }
  finish();
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, ThpFork, ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const auto& param_info) { return param_info.param; });

// An exclusive THP written after its PMD was write-protected by mprotect is reused in place.
TEST_F(Thp, MprotectOfAWholeThpKeepsItHugeAndAWriteReusesIt) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, kHuge, kBase);
  store(p, a, 1);
  const pfn_t head = huge_pfn(p, a);
  STEP(p.mprotect(a, 2ull << 20, Prot::read));
  ASSERT_TRUE(huge(p, a));
  EXPECT_FALSE(m.walk(p, a).entry[2] & kRW);
  STEP(p.mprotect(a, 2ull << 20, Prot::read | Prot::write));
  store(p, a + kPage, 2);
  EXPECT_TRUE(huge(p, a));
  EXPECT_EQ(huge_pfn(p, a), head);
  // mprotect of part of the span splits the PMD (and the VMA).
  STEP(p.mprotect(a + 16 * kPage, 4 * kPage, Prot::read));
  EXPECT_FALSE(huge(p, a));
  EXPECT_EQ(pfn_of(p, a + 16 * kPage), head + 16);
  EXPECT_FALSE(pte(p, a + 16 * kPage) & kRW);
  EXPECT_TRUE(pte(p, a + 15 * kPage) & kRW);
  EXPECT_EQ(load(p, a + kPage), 2u);
  finish();
}

// munmap of part of a THP splits the PMD; the THP waits on the deferred split queue until
// reclaim's shrinker splits it and frees the pages no longer mapped. MADV_DONTNEED of a whole
// span frees the THP at once.
TEST_F(Thp, PartialMunmapDefersTheSplitAndDontneedFreesAWholeThp) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 2 * kHuge, kBase);
  store(p, a, 1);
  store(p, a + (2ull << 20), 2);
  const std::uint64_t free1 = m.free_pages();
  STEP(p.munmap(a + 256 * kPage, 256 * kPage));
  EXPECT_FALSE(huge(p, a));
  EXPECT_EQ(p.rss().anon, static_cast<std::int64_t>(kHuge + 256));
  EXPECT_EQ(m.free_pages(), free1);  // the THP is whole until the deferred split
  m.reclaim(0);
  inv();
  EXPECT_EQ(m.vmstat().thp_split_page, 1u);
  EXPECT_EQ(m.free_pages(), free1 + 256);
  EXPECT_EQ(load(p, a), 1u);
  const std::uint64_t free2 = m.free_pages();
  STEP(p.madvise(a + (2ull << 20), 2ull << 20, Advice::dontneed));
  EXPECT_EQ(m.free_pages(), free2 + kHuge + 1);  // the THP and its deposited table
  EXPECT_EQ(load(p, a + (2ull << 20)), 0u);
  finish();
}

// mremap moves a huge PMD whole, with its deposited table.
TEST_F(Thp, MremapMovesAHugePmd) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, kHuge, kBase);
  store(p, a + 8, 77);
  const pfn_t head = huge_pfn(p, a);
  auto r = p.mremap(a, 2ull << 20, 2ull << 20, MremapFlags::maymove | MremapFlags::fixed,
                    kBase + (64ull << 20));
  ASSERT_TRUE(r);
  inv();
  ASSERT_TRUE(huge(p, *r));
  EXPECT_EQ(huge_pfn(p, *r), head);
  EXPECT_EQ(load(p, *r + 8), 77u);
  finish();
}

// A pinned THP cannot be shared at fork: the parent's PMD splits and the child gets copies of
// the pinned pages (copy_huge_pmd's -EAGAIN, then copy_present_page).
TEST_F(Thp, ForkOfAPinnedThpSplitsAndCopies) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, kHuge, kBase);
  store(p, a, 3);
  const pfn_t head = huge_pfn(p, a);
  STEP(p.pin(a, 2 * kPage, PinFlags::write | PinFlags::longterm));
  Process& c = fork(p);
  EXPECT_FALSE(huge(p, a));
  EXPECT_EQ(pfn_of(p, a), head);
  EXPECT_NE(pfn_of(c, a), head);
  EXPECT_EQ(load(c, a), 3u);
  STEP(p.unpin(a, 2 * kPage));
  finish();
}

// No free 2 MiB block (every block keeps a 4 KiB page in use): the fault falls back.
TEST(ThpFallback, FragmentedMemoryFallsBackTo4KiB) {
  Machine m(thp_machine(ThpMode::always, 8ull << 20));
  Process& p = m.spawn();
  Process& frag = m.spawn();
  ASSERT_TRUE(frag.mmap(kBase, 8ull << 20, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(frag.madvise(kBase, 8ull << 20, Advice::nohugepage));
  for (vaddr_t a = kBase; a < kBase + (6ull << 20); a += kPage) ASSERT_TRUE(frag.store(a, 1));
  // Free all but one page per block: nothing merges into a free 2 MiB block.
  for (vaddr_t a = kBase; a < kBase + (6ull << 20); a += 2 * kPage)
    ASSERT_TRUE(frag.munmap(a + kPage, kPage));
  m.check_invariants();
  ASSERT_TRUE(p.mmap(kBase, 2ull << 20, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(p.store(kBase, 9));
  EXPECT_EQ(m.walk(p, kBase).levels, 4);
  EXPECT_EQ(m.vmstat().thp_fault_fallback, 1u);
  m.check_invariants();
  // With the fragmenting process gone, its pages merge back into free blocks.
  frag.exit();
  ASSERT_TRUE(p.mmap(kBase + (2ull << 20), 2ull << 20, Prot::read | Prot::write,
                     kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(p.store(kBase + (2ull << 20), 9));
  EXPECT_EQ(m.walk(p, kBase + (2ull << 20)).levels, 3);
  m.check_invariants();
}

// Allocation failure: the THP itself (fallback to 4 KiB), the deposited table (VM_FAULT_OOM:
// the store fails with ENOMEM), the child's deposited table at fork (ENOMEM); nothing leaks.
TEST_F(Thp, AllocationFailureFallsBackOrFailsCleanly) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 3 * kHuge, kBase);
  store(p, a, 2);  // the anon_vma, then a THP
  EXPECT_TRUE(huge(p, a));
  m.fail_nth_allocation(1);  // the THP: the fault falls back to a 4 KiB page
  store(p, a + (2ull << 20), 1);
  EXPECT_EQ(m.walk(p, a + (2ull << 20)).levels, 4);
  EXPECT_EQ(m.vmstat().thp_fault_fallback, 1u);
  const std::uint64_t free0_ = m.free_pages();
  m.fail_nth_allocation(2);  // the deposited table after the THP: VM_FAULT_OOM, nothing kept
  FAILS(p.store(a + (4ull << 20), 1), Errno::nomem);
  m.fail_nth_allocation(0);
  EXPECT_EQ(m.free_pages(), free0_);
  EXPECT_TRUE(pte_none(p, a + (4ull << 20)));
  const std::uint64_t free1 = m.free_pages();
  for (std::uint64_t n = 1; n <= 8; ++n) {
    m.fail_nth_allocation(n);
    auto r = p.fork();
    m.fail_nth_allocation(0);
    inv();
    if (r) {
      (*r)->exit();
      inv();
    }
    EXPECT_EQ(m.free_pages(), free1) << "fork failing at allocation " << n;
  }
  finish();
}

// The timing model: a THP fills one 2 MiB TLB entry that serves every page of the span.
TEST(ThpTlb, OneWalkServesTheWhole2MiB) {
  MachineConfig cfg = thp_machine();
  cfg.timing.enabled = true;
  Machine m(cfg);
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, 2ull << 20, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(p.store(kBase, 1));
  m.reset_stats();
  for (vaddr_t a = kBase; a < kBase + (2ull << 20); a += kPage) ASSERT_TRUE(p.load(a));
  const HwStats s = p.hw_stats();
  EXPECT_LE(s.walks, 1u);
  EXPECT_GE(s.dtlb_hits + s.stlb_hits, 511u);
  m.check_invariants();
  // A split flushes the 2 MiB entry; the 4 KiB entries then fill one by one.
  ASSERT_TRUE(p.mprotect(kBase, kPage, Prot::read));
  m.check_invariants();
  m.reset_stats();
  for (vaddr_t a = kBase; a < kBase + 64 * kPage; a += kPage) ASSERT_TRUE(p.load(a));
  EXPECT_GE(p.hw_stats().walks, 64u);
  m.check_invariants();
}

}  // namespace
}  // namespace cowpte::scen
