// khugepaged and MADV_COLLAPSE: a 4 KiB-populated span becomes one THP (data, RSS, the emptied
// table deposited, the old pages freed); the max_ptes_none/_shared/_swap limits; the selftests'
// collapse-after-fork cases (O21-O23, T02); pins (EAGAIN); MADV_COLLAPSE's errors; COW PTE
// tables broken before the scan under every sound policy; allocation failure; an mm exiting
// while registered; the timed pass. check_invariants() after every step.
#include <gtest/gtest.h>

#include <string>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr vaddr_t kBase = 0x7f0000000000;  // 2 MiB aligned
constexpr std::uint64_t kHuge = 512;       // pages per THP
constexpr std::uint64_t kSpan = 2ull << 20;
constexpr std::uint64_t kPse = 1ull << 7;  // PS: a huge PMD

// "madvise": faults map 4 KiB pages until MADV_HUGEPAGE, which registers the mm.
MachineConfig collapse_machine(ThpMode mode = ThpMode::madvise) {
  return MachineConfig{.memory_bytes = 64ull << 20, .swap_bytes = 16ull << 20, .thp = mode};
}

class Khugepaged : public ScenarioTest {
 protected:
  Khugepaged() : ScenarioTest(collapse_machine()) {}
  explicit Khugepaged(const MachineConfig& cfg) : ScenarioTest(cfg) {}

  bool huge(const Process& p, vaddr_t a) {
    const PtWalk w = m.walk(p, a);
    return w.levels == 3 && (w.entry[2] & kPse);
  }
  // A span of `pages` 4 KiB pages written with pattern(seed, i), then MADV_HUGEPAGE.
  vaddr_t populated_span(Process& p, std::uint64_t pages, std::uint64_t seed) {
    const vaddr_t a = map_anon(p, 2 * kHuge, kBase);
    populate(p, a, pages, seed);
    EXPECT_FALSE(huge(p, a));
    STEP(p.madvise(a, 2 * kSpan, Advice::hugepage));
    return a;
  }
  void expect_pattern(Process& p, vaddr_t a, std::uint64_t pages, std::uint64_t seed) {
    for (std::uint64_t i = 0; i < kHuge; ++i)
      ASSERT_EQ(load(p, a + i * kPage), i < pages ? pattern(seed, i) : 0u) << "page " << i;
  }
  std::uint64_t scan(std::uint64_t pages = 8192) {
    const std::uint64_t n = m.khugepaged_scan(pages);
    inv();
    return n;
  }
};

// The daemon's collapse: the 300 pages' data lands in a fresh THP mapped writable by one PMD;
// RSS counts all 512 pages; the PTE table is now the deposit (pgtables_bytes unchanged); the
// old pages are freed; the counters say one collapse.
TEST_F(Khugepaged, CollapsesA4KiBSpanIntoOneThp) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, 300, 1);
  const pfn_t old0 = pfn_of(p, a);
  const std::int64_t pgtables = p.pgtables_bytes();
  EXPECT_EQ(p.rss().anon, 300);
  EXPECT_EQ(scan(), 1u);
  ASSERT_TRUE(huge(p, a));
  EXPECT_TRUE(m.walk(p, a).entry[2] & kRW);
  EXPECT_EQ(p.rss().anon, static_cast<std::int64_t>(kHuge));
  EXPECT_EQ(p.pgtables_bytes(), pgtables);
  EXPECT_TRUE(page(old0).free);
  const pfn_t head = pte_pfn(m.walk(p, a).entry[2]);
  EXPECT_EQ(head % kHuge, 0u);
  EXPECT_TRUE(page(head).compound_head);
  EXPECT_TRUE(p.pagemap(a).exclusive);
  EXPECT_EQ(p.pagemap(a + 7 * kPage).pfn, head + 7);
  expect_pattern(p, a, 300, 1);
  const VmStat vs = m.vmstat();
  EXPECT_EQ(vs.thp_collapse_alloc, 1u);
  EXPECT_EQ(vs.khugepaged_pages_collapsed, 1u);
  EXPECT_EQ(vs.nr_anon_thp, 1u);
  EXPECT_GE(vs.khugepaged_full_scans, 1u);
  // The THP behaves as one: written in place, split by a partial munmap.
  store(p, a + 400 * kPage, 7);
  EXPECT_EQ(pte_pfn(m.walk(p, a).entry[2]), head);
  STEP(p.munmap(a + 10 * kPage, kPage));
  EXPECT_FALSE(huge(p, a));
  EXPECT_EQ(load(p, a + 400 * kPage), 7u);
  EXPECT_EQ(scan(), 0u);  // a span with a hole in its VMA is not eligible
  finish();
}

// max_ptes_none: with 0, only a span whose every PTE is populated collapses.
TEST(KhugepagedLimits, MaxPtesNone) {
  MachineConfig cfg = collapse_machine();
  cfg.khugepaged_max_ptes_none = 0;
  Machine m(cfg);
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, 2 * kSpan, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  for (std::uint64_t i = 0; i < kHuge - 1; ++i) ASSERT_TRUE(p.store(kBase + i * kPage, i + 1));
  ASSERT_TRUE(p.madvise(kBase, 2 * kSpan, Advice::hugepage));
  EXPECT_EQ(m.khugepaged_scan(8192), 0u);
  m.check_invariants();
  ASSERT_TRUE(p.store(kBase + (kHuge - 1) * kPage, kHuge));
  EXPECT_EQ(m.khugepaged_scan(8192), 1u);
  m.check_invariants();
  for (std::uint64_t i = 0; i < kHuge; ++i) ASSERT_EQ(*p.load(kBase + i * kPage), i + 1);
  // MADV_COLLAPSE ignores the limit.
  ASSERT_TRUE(p.store(kBase + kSpan, 1));
  EXPECT_TRUE(p.madvise(kBase + kSpan, kSpan, Advice::collapse));
  EXPECT_EQ(m.walk(p, kBase + kSpan).levels, 3);
  m.check_invariants();
}

// O21/O23 (khugepaged collapse_fork, collapse_max_ptes_shared): pages shared with a fork child
// count against max_ptes_shared (256). With 300 shared the daemon leaves both spans alone; once
// the child has written 100 of them, the child's span (200 shared) collapses; the parent's, all
// of it write-protected by the fork, needs a writable PTE first (SCAN_PAGE_RO), which its write
// to a page the child no longer shares gives. Each keeps its own data.
TEST_F(Khugepaged, SharedPtesAfterForkAgainstMaxPtesShared) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, 300, 2);
  Process& c = fork(p);
  EXPECT_EQ(scan(), 0u);
  EXPECT_FALSE(huge(p, a) || huge(c, a));
  for (std::uint64_t i = 0; i < 100; ++i) store(c, a + i * kPage, pattern(3, i));
  EXPECT_EQ(scan(), 1u);
  EXPECT_TRUE(huge(c, a));
  EXPECT_FALSE(huge(p, a));
  store(p, a, pattern(2, 0));  // reused in place: mapped by the parent only
  EXPECT_EQ(scan(), 1u);
  EXPECT_TRUE(huge(p, a));
  expect_pattern(p, a, 300, 2);
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_EQ(load(c, a + i * kPage), pattern(3, i));
  for (std::uint64_t i = 100; i < 300; ++i) ASSERT_EQ(load(c, a + i * kPage), pattern(2, i));
  finish();
}

// O21: MADV_COLLAPSE in the child of a fork: the child gets a THP of its own (every other page
// still shared: MADV_COLLAPSE has no max_ptes_shared); the parent keeps its 4 KiB pages and
// data, and writes stay private on both sides. Before the child writes, every PTE of its span
// is write-protected: v6.2 refuses (SCAN_PAGE_RO, EINVAL; later kernels collapse it).
TEST_F(Khugepaged, MadvCollapseInTheChildOfAForkLeavesTheParentAlone) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, kHuge, 4);
  const pfn_t parent0 = pfn_of(p, a);
  Process& c = fork(p);
  FAILS(c.madvise(a, kSpan, Advice::collapse), Errno::inval);
  store(c, a + 2 * kPage, pattern(4, 2));
  STEP(c.madvise(a, kSpan, Advice::collapse));
  EXPECT_TRUE(huge(c, a));
  EXPECT_FALSE(huge(p, a));
  EXPECT_EQ(pfn_of(p, a), parent0);
  EXPECT_EQ(page(parent0).mapcount, 1);  // the child's mapping went with its old PTEs
  store(p, a, 11);
  store(c, a + kPage, 12);
  EXPECT_EQ(load(c, a), pattern(4, 0));
  EXPECT_EQ(load(p, a + kPage), pattern(4, 1));
  EXPECT_EQ(load(c, a + kPage), 12u);
  finish();
}

// A pinned page holds the span back: MADV_COLLAPSE fails with EAGAIN (SCAN_PAGE_COUNT), the
// daemon skips it; after the unpin both collapse.
TEST_F(Khugepaged, PinnedPageBlocksCollapseWithEagain) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, 64, 5);
  const pfn_t pinned = pfn_of(p, a + 3 * kPage);
  STEP(p.pin(a + 3 * kPage, kPage, PinFlags::longterm));
  FAILS(p.madvise(a, kSpan, Advice::collapse), Errno::again);
  EXPECT_EQ(scan(), 0u);
  EXPECT_EQ(pfn_of(p, a + 3 * kPage), pinned);
  STEP(p.unpin(a + 3 * kPage, kPage));
  EXPECT_EQ(scan(), 1u);
  EXPECT_TRUE(huge(p, a));
  expect_pattern(p, a, 64, 5);
  finish();
}

// MADV_COLLAPSE's own results: 0 for a span mapped huge already or a range with no whole
// span; EINVAL for a VMA without anon memory, MADV_NOHUGEPAGE, shared memory and read-only
// PTEs (v6.2: SCAN_PAGE_RO); ENOMEM for a hole after the spans; EINVAL for bad arguments.
// It works whatever the THP mode, "never" included.
TEST(MadvCollapse, ErrorsAsLinux) {
  Machine m(collapse_machine(ThpMode::never));
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, 2 * kSpan, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  EXPECT_EQ(p.madvise(kBase, kSpan, Advice::collapse).error(), Errno::inval);  // no anon_vma
  ASSERT_TRUE(p.store(kBase, 1));
  EXPECT_TRUE(p.madvise(kBase, kPage, Advice::collapse));  // no whole span: nothing to do
  EXPECT_EQ(m.walk(p, kBase).levels, 4);
  EXPECT_TRUE(p.madvise(kBase, kSpan, Advice::collapse));
  EXPECT_EQ(m.walk(p, kBase).levels, 3);
  EXPECT_TRUE(p.madvise(kBase, kSpan, Advice::collapse));  // SCAN_PMD_MAPPED
  // The second span has no table yet (SCAN_PMD_NONE / pmd_null): EINVAL.
  EXPECT_EQ(p.madvise(kBase + kSpan, kSpan, Advice::collapse).error(), Errno::inval);
  ASSERT_TRUE(p.store(kBase + kSpan, 2));
  ASSERT_TRUE(p.mprotect(kBase + kSpan, kSpan, Prot::read));
  EXPECT_EQ(p.madvise(kBase + kSpan, kSpan, Advice::collapse).error(), Errno::inval);
  ASSERT_TRUE(p.mprotect(kBase + kSpan, kSpan, Prot::read | Prot::write));
  ASSERT_TRUE(p.madvise(kBase + kSpan, kSpan, Advice::nohugepage));
  EXPECT_EQ(p.madvise(kBase + kSpan, kSpan, Advice::collapse).error(), Errno::inval);
  EXPECT_EQ(p.madvise(kBase + 1, kSpan, Advice::collapse).error(), Errno::inval);
  // A hole after a collapsible VMA: the VMA is collapsed, then ENOMEM.
  ASSERT_TRUE(p.madvise(kBase + kSpan, kSpan, Advice::hugepage));
  EXPECT_EQ(p.madvise(kBase + kSpan, 2 * kSpan, Advice::collapse).error(), Errno::nomem);
  EXPECT_EQ(m.walk(p, kBase + kSpan).levels, 3);
  EXPECT_EQ(*p.load(kBase + kSpan), 2u);
  auto shm = p.mmap(0, kSpan, Prot::read | Prot::write, MapFlags::shared | MapFlags::anonymous);
  ASSERT_TRUE(shm);
  ASSERT_TRUE(p.store(*shm, 3));
  EXPECT_EQ(p.madvise(*shm, kSpan, Advice::collapse).error(), Errno::inval);
  EXPECT_EQ(m.khugepaged_scan(8192), 0u);  // "never": khugepaged does not run
  m.check_invariants();
}

// Swapped PTEs: the daemon accepts up to max_ptes_swap (64) and brings them in first; more
// and it leaves the span.
TEST_F(Khugepaged, SwappedPagesComeBackIntoTheThp) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, 400, 6);
  STEP(p.madvise(a, 100 * kPage, Advice::pageout));
  EXPECT_TRUE(p.pagemap(a).swapped);
  EXPECT_EQ(scan(), 0u);  // 100 swapped > 64
  for (std::uint64_t i = 0; i < 50; ++i) EXPECT_EQ(load(p, a + i * kPage), pattern(6, i));
  const std::uint64_t in0 = m.vmstat().pswpin + m.vmstat().swapcache_hits;
  // 50 swapped and 350 young (at least half the span must be, with swapped PTEs).
  EXPECT_EQ(scan(), 1u);
  EXPECT_GT(m.vmstat().pswpin + m.vmstat().swapcache_hits, in0);
  EXPECT_TRUE(huge(p, a));
  expect_pattern(p, a, 400, 6);
  finish();
}

// No 2 MiB block for the THP (injected failure): ENOMEM from MADV_COLLAPSE, the daemon counts
// thp_collapse_alloc_failed; nothing changed, nothing leaked.
TEST_F(Khugepaged, AllocationFailureChangesNothing) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, 32, 7);
  const pfn_t old = pfn_of(p, a);
  const std::uint64_t free_before = m.free_pages();
  m.fail_nth_allocation(1);
  FAILS(p.madvise(a, kSpan, Advice::collapse), Errno::nomem);
  EXPECT_EQ(pfn_of(p, a), old);
  EXPECT_EQ(m.free_pages(), free_before);
  m.fail_nth_allocation(1);
  EXPECT_EQ(scan(), 0u);
  EXPECT_EQ(m.vmstat().thp_collapse_alloc_failed, 2u);
  m.fail_nth_allocation(0);
  EXPECT_EQ(scan(), 1u);
  expect_pattern(p, a, 32, 7);
  finish();
}

// The scan walks mms in registration order and resumes where a short pass stopped; an mm that
// exits while the scan stands on it is dropped and the scan goes on with the next.
TEST_F(Khugepaged, ShortPassesResumeAndExitedMmsDrop) {
  Process& p = spawn();
  const vaddr_t a = populated_span(p, 16, 8);
  Process& q = spawn();
  ASSERT_EQ(map_anon(q, 2 * kHuge, kBase), kBase);
  populate(q, kBase, 16, 9);
  STEP(q.madvise(kBase, 2 * kSpan, Advice::hugepage));
  EXPECT_EQ(m.khugepaged_scan(kHuge), 1u);  // p's first span only
  EXPECT_TRUE(huge(p, a));
  EXPECT_FALSE(huge(q, kBase));
  EXPECT_EQ(m.khugepaged_scan(kHuge), 0u);  // p's second span: empty
  exit(p);
  EXPECT_EQ(scan(), 1u);  // q's span
  EXPECT_TRUE(huge(q, kBase));
  expect_pattern(q, kBase, 16, 9);
  finish();
}

// COW PTE: the daemon breaks a shared table before it scans (the series' patch 05), so the
// scanned mm collapses its own copy and the other holder keeps its table and data.
class KhugepagedCowPte : public Khugepaged, public ::testing::WithParamInterface<std::string> {};

TEST_P(KhugepagedCowPte, BreaksTheSharedTableBeforeScanning) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = populated_span(p, kHuge, 10);
  Process& c = fork(p);
  if (GetParam() != "classic") {
    EXPECT_EQ(pte_table(c, a), pte_table(p, a));  // shared
  }
  // The scan breaks the table first: the child's own copy is all write-protected (EINVAL).
  FAILS(c.madvise(a, kSpan, Advice::collapse), Errno::inval);
  EXPECT_NE(pte_table(c, a), pte_table(p, a));
  for (std::uint64_t i = 0; i < kHuge; i += 97) EXPECT_EQ(load(c, a + i * kPage), pattern(10, i));
  store(c, a + kPage, pattern(10, 1));
  store(p, a + 2 * kPage, pattern(10, 2));
  STEP(c.madvise(a, kSpan, Advice::collapse));
  EXPECT_TRUE(huge(c, a));
  EXPECT_FALSE(huge(p, a));
  store(p, a, 1);
  EXPECT_EQ(load(c, a), pattern(10, 0));
  expect_pattern(c, a, kHuge, 10);
  finish();
}

// The other holder exits: the parent's PTEs stay write-protected from the fork (SCAN_PAGE_RO)
// until a write reuses one of its pages, now mapped by the parent only; then the span
// collapses. The scan's break of the table the parent still holds as COW-ed comes first.
TEST_P(KhugepagedCowPte, CollapsesOnceTheOtherHolderIsGoneAndAPageIsWritten) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = populated_span(p, kHuge, 11);
  Process& c = fork(p);
  exit(c);
  // RFC v2's fork shares the table with no per-page work and its last holder's break reuses
  // it as it is, PTEs writable: the span collapses at once.
  const bool writable_after_break = GetParam() == "rfc_v2";
  EXPECT_EQ(scan(), writable_after_break ? 1u : 0u);
  store(p, a + 5 * kPage, pattern(11, 5));
  if (!writable_after_break) {
    EXPECT_EQ(scan(), 1u);
  }
  EXPECT_TRUE(huge(p, a));
  expect_pattern(p, a, kHuge, 11);
  finish();
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, KhugepagedCowPte,
                         ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const auto& param_info) { return param_info.param; });

// Timed: the pass runs on a CPU as a kernel thread: its clock moves, the collapse phase counts
// the pass, and no process is charged.
TEST(KhugepagedTimed, APassCostsCyclesOnItsCpu) {
  MachineConfig cfg = collapse_machine();
  cfg.cpus = 2;
  cfg.timing.enabled = true;
  Machine m(cfg);
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, kSpan, Prot::read | Prot::write, kPrivAnon | MapFlags::fixed));
  for (std::uint64_t i = 0; i < kHuge; ++i) ASSERT_TRUE(p.store(kBase + i * kPage, i));
  ASSERT_TRUE(p.madvise(kBase, kSpan, Advice::hugepage));
  const std::uint64_t before = m.cycles(1);
  const std::uint64_t charged = p.hw_stats().phase[std::size_t(Phase::collapse)].count;
  EXPECT_EQ(m.khugepaged_scan(kHuge, 1), 1u);
  EXPECT_GT(m.cycles(1) - before, 512u * 100u);  // 512 page copies at least
  EXPECT_EQ(p.hw_stats().phase[std::size_t(Phase::collapse)].count, charged);
  EXPECT_THROW(m.khugepaged_scan(kHuge, 2), std::invalid_argument);
  for (std::uint64_t i = 0; i < kHuge; i += 31) EXPECT_EQ(*p.load(kBase + i * kPage), i);
  m.check_invariants();
}

}  // namespace
}  // namespace cowpte::scen
