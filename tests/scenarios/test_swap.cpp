// Swap: MADV_PAGEOUT to a swap device, swap-in faults, fork of swapped-out memory (with the swap
// count continuation path reached for real), zap, MADV_FREE and swapoff, under every sound
// fork policy; check_invariants() after every step (it recounts every swap slot).
#include <gtest/gtest.h>

#include <string>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr std::uint64_t kSwpExclusive = 1ull << 3;  // _PAGE_SWP_EXCLUSIVE (_PAGE_PWT)
constexpr std::uint64_t kSwpSoftDirty = 1ull << 1;  // _PAGE_SWP_SOFT_DIRTY (_PAGE_RW)
constexpr vaddr_t kBase = 0x7f0000000000;           // 2 MiB aligned: one PTE table
constexpr vaddr_t kFill = 0x7e0000000000;           // 2 MiB aligned, far from kBase

MachineConfig swap_machine(std::uint64_t memory = 64ull << 20, std::uint64_t swap = 16ull << 20) {
  return MachineConfig{.memory_bytes = memory, .swap_bytes = swap};
}

class Swap : public ScenarioTest, public ::testing::WithParamInterface<std::string> {
 protected:
  Swap() : ScenarioTest(swap_machine()) {}

  Process& parent() {
    Process& p = spawn();
    STEP(p.set_cow_pte(GetParam()));
    return p;
  }
  void pageout(Process& p, vaddr_t a, std::uint64_t pages, const loc_t& loc = loc_t::current()) {
    ok(p.madvise(a, pages * kPage, Advice::pageout), "MADV_PAGEOUT", loc);
  }
  bool swapped(const Process& p, vaddr_t a) {
    const PagemapEntry e = p.pagemap(a);
    return e.swapped && !e.present;
  }
  void expect_values(Process& p, vaddr_t a, std::uint64_t pages, std::uint64_t seed,
                     const loc_t& loc = loc_t::current()) {
    for (std::uint64_t i = 0; i < pages; ++i)
      EXPECT_EQ(load(p, a + i * kPage, loc), pattern(seed, i))
          << "page " << i << " at " << where(loc);
  }
  // Every slot free again, the cache empty, then the usual end: every frame back.
  void finish_swap(const loc_t& loc = loc_t::current()) {
    std::vector<Process*> live = m.processes();
    for (Process* p : live) exit(*p, loc);
    const VmStat s = m.vmstat();
    EXPECT_EQ(s.nr_swap_free, s.nr_swap_pages) << where(loc);
    EXPECT_EQ(s.nr_swapcached, 0u) << where(loc);
    if (s.swap_cont_pages) ok(m.swapoff(), "swapoff", loc);  // continuation frames go with it
    finish(loc);
  }
};

// An exclusive page goes out as an exclusive swap PTE, reads back exactly, and comes back from
// the swap cache without a second read.
TEST_P(Swap, PageoutThenSwapInReadsBackExactly) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 8, kBase);
  populate(p, a, 8, 1);
  const std::uint64_t free_before = m.free_pages();
  pageout(p, a, 8);
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(swapped(p, a + i * kPage)) << i;
    EXPECT_TRUE(PteBits(pte(p, a + i * kPage), kSwpExclusive, kP)) << i;
  }
  EXPECT_EQ(p.rss(), (RssStat{0, 0, 8, 0}));
  EXPECT_EQ(m.free_pages(), free_before + 8) << "the pages were freed";
  VmStat s = m.vmstat();
  EXPECT_EQ(s.pswpout, 8u);
  EXPECT_EQ(s.nr_swap_free, s.nr_swap_pages - 8);
  EXPECT_EQ(p.smaps().front().swap, 8 * kPage);
  expect_values(p, a, 8, 1);
  s = m.vmstat();
  EXPECT_EQ(s.pswpin, 8u);
  EXPECT_EQ(s.pgmajfault, 8u);
  EXPECT_EQ(p.rss(), (RssStat{0, 8, 0, 0}));
  // Read faults leave the pages in the swap cache (the slots stay held), mapped read-only but
  // exclusive: a write reuses the page in place.
  EXPECT_EQ(s.nr_swapcached, 8u);
  const pfn_t f = pfn_of(p, a);
  EXPECT_TRUE(PteBits(pte(p, a), kP, kRW));
  EXPECT_TRUE(page(f).anon_exclusive);
  EXPECT_TRUE(page(f).swapcache);
  store(p, a, 42);
  EXPECT_EQ(pfn_of(p, a), f) << "reused, not copied";
  // Out and in once more: the swap cache page is the one written back.
  pageout(p, a, 8);
  EXPECT_EQ(load(p, a), 42u);
  EXPECT_EQ(m.vmstat().swapcache_hits, 0u);
  finish_swap();
}

// Zeros go out and come back as zeros; a write fault swaps in and maps writable at once.
TEST_P(Swap, WriteFaultOnExclusiveSwapEntryMapsWritable) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 2, kBase);
  store(p, a, 0);  // a page of zeros
  store(p, a + kPage, 7);
  pageout(p, a, 2);
  store(p, a + kPage, 8);
  EXPECT_TRUE(PteBits(pte(p, a + kPage), kP | kRW | kD, 0));
  EXPECT_FALSE(page(pfn_of(p, a + kPage)).swapcache) << "a write frees the slot";
  EXPECT_EQ(load(p, a), 0u);
  EXPECT_EQ(load(p, a + kPage), 8u);
  finish_swap();
}

// Fork of swapped-out memory: the child gets a reference to every slot (under every policy),
// the parent's entries stop being exclusive, and both read the data back; their writes stay
// their own.
TEST_P(Swap, ForkSharesSwapEntries) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 8, kBase);
  populate(p, a, 8, 2);
  pageout(p, a + 2 * kPage, 4);  // present, swapped, present: the table holds both
  Process& c = fork(p);
  for (int i = 2; i < 6; ++i) {
    EXPECT_TRUE(swapped(p, a + i * kPage));
    EXPECT_TRUE(swapped(c, a + i * kPage));
    EXPECT_TRUE(PteBits(pte(p, a + i * kPage), 0, kSwpExclusive | kP)) << i;
  }
  EXPECT_EQ(c.rss().swapents, 4);
  expect_values(c, a, 8, 2);
  store(c, a + 3 * kPage, 99);
  expect_values(p, a, 8, 2);
  EXPECT_EQ(load(c, a + 3 * kPage), 99u);
  exit(c);
  expect_values(p, a, 8, 2);
  finish_swap();
}

// The parent pages out after the fork: a page the child maps too is left alone (mapcount 2),
// under every policy; under COW PTE madvise breaks the shared table first.
TEST_P(Swap, PageoutLeavesSharedPagesAlone) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 4, kBase);
  populate(p, a, 4, 3);
  Process& c = fork(p);
  pageout(p, a, 4);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(p.pagemap(a + i * kPage).present) << i;
  EXPECT_EQ(m.vmstat().pswpout, 0u);
  store(c, a, 5);  // the child's copy is its own: the parent's page is exclusive again
  STEP(p.madvise(a, kPage, Advice::pageout));
  EXPECT_TRUE(swapped(p, a));
  EXPECT_EQ(load(p, a), pattern(3, 0));
  EXPECT_EQ(load(c, a), 5u);
  finish_swap();
}

// munmap, MADV_DONTNEED and MADV_FREE of swap entries free their slots; exit frees the rest.
TEST_P(Swap, ZapAndMadvFreeReleaseSlots) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 12, kBase);
  populate(p, a, 12, 4);
  pageout(p, a, 12);
  const std::uint64_t total = m.vmstat().nr_swap_pages;
  EXPECT_EQ(m.vmstat().nr_swap_free, total - 12);
  STEP(p.munmap(a, 4 * kPage));
  EXPECT_EQ(m.vmstat().nr_swap_free, total - 8);
  STEP(p.madvise(a + 4 * kPage, 4 * kPage, Advice::dontneed));
  EXPECT_EQ(m.vmstat().nr_swap_free, total - 4);
  EXPECT_EQ(load(p, a + 4 * kPage), 0u) << "zapped: zeros";
  STEP(p.madvise(a + 8 * kPage, 2 * kPage, Advice::free_));
  EXPECT_EQ(m.vmstat().nr_swap_free, total - 2);
  EXPECT_EQ(p.rss().swapents, 2);
  EXPECT_EQ(load(p, a + 8 * kPage), 0u) << "MADV_FREE of a swapped page drops its data";
  EXPECT_EQ(load(p, a + 10 * kPage), pattern(4, 10));
  finish_swap();
}

// A pinned page stays mapped: its PTE cannot become a swap entry (page_try_share_anon_rmap).
// It keeps its slot in the swap cache until the unmap frees both.
TEST_P(Swap, PinnedPageIsNotSwappedOut) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 2, kBase);
  populate(p, a, 2, 5);
  STEP(p.pin(a, kPage, PinFlags::write | PinFlags::longterm));
  pageout(p, a, 2);
  EXPECT_TRUE(p.pagemap(a).present);
  EXPECT_TRUE(page(pfn_of(p, a)).swapcache) << "added to swap, then kept (activate)";
  EXPECT_TRUE(swapped(p, a + kPage));
  STEP(p.unpin(a, kPage));
  STEP(p.munmap(a, 2 * kPage));
  finish_swap();
}

// Soft-dirty survives a trip through swap: clear_refs clears it on swap entries too.
TEST_P(Swap, SoftDirtyTravelsInTheSwapEntry) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 2, kBase);
  populate(p, a, 2, 6);
  pageout(p, a, 2);
  EXPECT_TRUE(PteBits(pte(p, a), kSwpSoftDirty, 0));
  EXPECT_TRUE(p.pagemap(a).soft_dirty);
  STEP(p.clear_soft_dirty());
  EXPECT_FALSE(p.pagemap(a).soft_dirty);
  EXPECT_EQ(load(p, a), pattern(6, 0));
  EXPECT_FALSE(p.pagemap(a).soft_dirty) << "a read does not dirty";
  store(p, a + kPage, 1);
  EXPECT_TRUE(p.pagemap(a + kPage).soft_dirty);
  finish_swap();
}

// swapoff brings every page back into every process (breaking shared tables first).
TEST_P(Swap, SwapoffBringsEveryPageBack) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 16, kBase);
  populate(p, a, 16, 7);
  pageout(p, a, 16);
  Process& c = fork(p);
  ok(m.swapoff(), "swapoff");
  for (int i = 0; i < 16; ++i) {
    EXPECT_TRUE(p.pagemap(a + i * kPage).present) << i;
    EXPECT_TRUE(c.pagemap(a + i * kPage).present) << i;
  }
  EXPECT_EQ(p.rss(), (RssStat{0, 16, 0, 0}));
  EXPECT_EQ(c.rss().swapents, 0);
  EXPECT_EQ(m.vmstat().nr_swap_pages, 0u) << "the device is gone";
  fails(m.swapoff(), Errno::inval, "a second swapoff");
  expect_values(p, a, 16, 7);
  expect_values(c, a, 16, 7);
  STEP(p.madvise(a, 16 * kPage, Advice::pageout));  // no device: the pages stay
  EXPECT_TRUE(p.pagemap(a).present);
  finish();
}

// A swap-in that finds no free frame fails with ENOMEM and changes nothing.
TEST_P(Swap, SwapInWithoutMemoryFailsCleanly) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 2, kBase);
  populate(p, a, 2, 8);
  pageout(p, a, 2);
  m.fail_nth_allocation(1);
  fails(p.load(a), Errno::nomem, "swap-in with no frame");
  EXPECT_TRUE(swapped(p, a));
  EXPECT_EQ(m.vmstat().pswpin, 0u);
  EXPECT_EQ(load(p, a), pattern(8, 0));
  finish_swap();
}

// GUP on a swapped page faults it in first; mprotect leaves swap entries alone and the
// page comes back with the VMA's new protection.
TEST_P(Swap, PinAndMprotectMeetSwapEntries) {
  Process& p = parent();
  const vaddr_t a = map_anon(p, 4, kBase);
  populate(p, a, 4, 19);
  pageout(p, a, 4);
  STEP(p.pin(a, 2 * kPage, PinFlags::write | PinFlags::longterm));
  EXPECT_TRUE(p.pagemap(a).present);
  EXPECT_TRUE(p.pagemap(a + kPage).present);
  EXPECT_EQ(read_gup(p, a + kPage), pattern(19, 1));
  EXPECT_TRUE(swapped(p, a + 2 * kPage));
  STEP(p.mprotect(a + 2 * kPage, 2 * kPage, Prot::read));
  EXPECT_TRUE(swapped(p, a + 2 * kPage));
  EXPECT_EQ(load(p, a + 2 * kPage), pattern(19, 2));
  EXPECT_TRUE(PteBits(pte(p, a + 2 * kPage), kP, kRW));
  fails(p.store(a + 3 * kPage, 1), Errno::fault, "store into a read-only swapped page");
  EXPECT_TRUE(swapped(p, a + 3 * kPage) || p.pagemap(a + 3 * kPage).present);
  STEP(p.unpin(a, 2 * kPage));
  finish_swap();
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, Swap, ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- the swap count continuation (SWAP_MAP_MAX = 62 references in swap_map) ----

class SwapCount : public ScenarioTest, public ::testing::WithParamInterface<std::string> {
 protected:
  SwapCount() : ScenarioTest(swap_machine()) {}
};

// A page forked more times than swap_map can count while it is swapped out: the 63rd
// reference adds a continuation frame; the counts go back down as the children exit.
TEST_P(SwapCount, ForkBeyondSwapMapMaxAddsAContinuation) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = map_anon(p, 8, kBase);
  populate(p, a, 8, 9);
  STEP(p.madvise(a + 4 * kPage, kPage, Advice::pageout));
  std::vector<Process*> kids;
  for (int i = 0; i < 70; ++i) kids.push_back(&fork(p));
  EXPECT_EQ(m.vmstat().swap_cont_pages, 1u);
  EXPECT_EQ(load(*kids.back(), a + 4 * kPage), pattern(9, 4));
  for (Process* k : kids) exit(*k);
  EXPECT_EQ(load(p, a + 4 * kPage), pattern(9, 4));
  exit(p);
  EXPECT_EQ(m.vmstat().nr_swap_free, m.vmstat().nr_swap_pages);
  ok(m.swapoff(), "swapoff frees the continuation frame");
  finish();
}

// The same fork with the atomic allocation of the continuation frame failing: the copy drops
// the PTE lock, allocates a frame that may sleep, and resumes at the swap entry in the middle
// of the table (pages 0-3 were copied before it). With both allocations failing, fork fails
// with ENOMEM and leaks nothing.
TEST_P(SwapCount, ContinuationRetriesWithTheLockDropped) {
  auto build = [&](Machine& mm) -> Process& {
    Process& p = mm.spawn();
    EXPECT_TRUE(p.set_cow_pte(GetParam()).has_value());
    const vaddr_t a = *p.mmap(kBase, 8 * kPage, kRWProt, kPrivAnon | MapFlags::fixed);
    for (int i = 0; i < 8; ++i) EXPECT_TRUE(p.store(a + i * kPage, pattern(10, i)).has_value());
    EXPECT_TRUE(p.madvise(a + 4 * kPage, kPage, Advice::pageout).has_value());
    for (int i = 0; i < 61; ++i) EXPECT_TRUE(p.fork().has_value());  // count 62 = SWAP_MAP_MAX
    return p;
  };
  bool retried = false, failed_cleanly = false;
  for (std::uint64_t n = 1; n < 64 && !(retried && failed_cleanly); ++n) {
    for (std::uint64_t times : {1ull, 2ull}) {
      Machine mm(swap_machine());
      Process& p = build(mm);
      const std::uint64_t free_before = mm.free_pages();
      mm.fail_nth_allocation(n, times);
      auto r = p.fork();
      mm.fail_nth_allocation(0);
      mm.check_invariants();
      const VmStat s = mm.vmstat();
      if (r && s.fork_swap_retries == 1 && s.swap_cont_pages == 1 && times == 1) {
        retried = true;
        for (int i = 0; i < 8; ++i) EXPECT_EQ(*(*r)->load(kBase + i * kPage), pattern(10, i));
      }
      if (!r && s.fork_swap_retries == 1 && times == 2) {
        EXPECT_EQ(r.error(), Errno::nomem);
        EXPECT_EQ(mm.free_pages(), free_before) << "a failed fork leaks nothing";
        EXPECT_EQ(s.swap_cont_pages, 0u);
        failed_cleanly = true;
      }
      mm.check_invariants();
    }
  }
  EXPECT_TRUE(retried) << "no injected failure reached the -EIO retry";
  EXPECT_TRUE(failed_cleanly) << "no injected failure made the retry fail";
}

INSTANTIATE_TEST_SUITE_P(ClassicAndSeed, SwapCount, ::testing::Values("classic", "seed"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- memory pressure: direct reclaim, the OOM killer, the accessed-bit harvest ----

namespace pressure {

// Store into f's pages at kFill until no frame is free. The first page is kept for last: its
// table exists by then, so the last free frame can always be used up by one store.
void fill_memory(Machine& m, Process& f) {
  ASSERT_TRUE(f.mmap(kFill, 256ull << 20, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  for (vaddr_t a = kFill + kPage; m.free_pages() > 0; a += kPage) {
    if (m.free_pages() == 1 && a % (2ull << 20) == 0) {
      ASSERT_TRUE(f.store(kFill, 1).has_value());
      break;
    }
    ASSERT_TRUE(f.store(a, a).has_value());
  }
  ASSERT_EQ(m.free_pages(), 0u);
  m.check_invariants();
}

}  // namespace pressure

class Pressure : public ScenarioTest, public ::testing::WithParamInterface<std::string> {
 protected:
  Pressure() : ScenarioTest(swap_machine(4ull << 20, 32ull << 20)) {}
};

// A process writes twice the machine's memory: direct reclaim swaps its older pages out, and
// every page reads back as written.
TEST_P(Pressure, DirectReclaimSwapsOutWhenMemoryRunsOut) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const std::uint64_t pages = 2 * m.total_pages();
  const vaddr_t a = *p.mmap(0, pages * kPage, kRWProt, kPrivAnon);
  for (std::uint64_t i = 0; i < pages; ++i) store(p, a + i * kPage, pattern(11, i));
  const VmStat s = m.vmstat();
  EXPECT_GT(s.pgsteal, pages / 2);
  EXPECT_GE(s.pswpout, s.pgsteal);
  EXPECT_EQ(s.oom_kill, 0u);
  Process& c = fork(p);  // fork meets the swap entries, and needs frames too
  for (std::uint64_t i = 0; i < pages; i += 7) EXPECT_EQ(load(c, a + i * kPage), pattern(11, i));
  for (std::uint64_t i = 0; i < pages; i += 5) EXPECT_EQ(load(p, a + i * kPage), pattern(11, i));
  EXPECT_EQ(m.vmstat().oom_kill, 0u);
  exit(c);
  exit(p);
  const VmStat e = m.vmstat();
  EXPECT_EQ(e.nr_swap_free, e.nr_swap_pages);
  if (e.swap_cont_pages) ok(m.swapoff(), "swapoff");
  finish();
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, Pressure, ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// Under COW PTE, munmap of one page of a shared span needs a frame for the break. When memory
// is full, that allocation reclaims like any other: with swap, another process's pages go out
// and the munmap succeeds.
TEST(PressureCowPte, MunmapInASharedSpanReclaims) {
  Machine m(swap_machine(4ull << 20, 32ull << 20));
  Process& p = m.spawn();
  ASSERT_TRUE(p.set_cow_pte("seed").has_value());
  ASSERT_TRUE(p.mmap(kBase, 8 * kPage, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(p.store(kBase + i * kPage, pattern(12, i)).has_value());
  Process& c = **p.fork();
  ASSERT_EQ(m.walk(p, kBase).table[3], m.walk(c, kBase).table[3]) << "the table is shared";
  Process& f = m.spawn();
  pressure::fill_memory(m, f);
  ASSERT_TRUE(p.munmap(kBase + 3 * kPage, kPage).has_value());
  m.check_invariants();
  EXPECT_GT(m.vmstat().pswpout, 0u) << "the filler's pages went to swap";
  EXPECT_EQ(m.vmstat().oom_kill, 0u);
  EXPECT_TRUE(f.alive());
  EXPECT_EQ(*c.load(kBase + 3 * kPage), pattern(12, 3)) << "the child keeps its page";
  EXPECT_EQ(*f.load(kFill + kPage), kFill + kPage) << "the filler's data came back";
  m.check_invariants();
}

// The same without swap: nothing can be reclaimed, so the OOM killer kills the largest process
// (the filler), and the munmap succeeds. The victim's calls return ESRCH afterwards.
TEST(PressureCowPte, MunmapInASharedSpanOomKillsWithoutSwap) {
  Machine m(MachineConfig{.memory_bytes = 4ull << 20});
  Process& p = m.spawn();
  ASSERT_TRUE(p.set_cow_pte("seed").has_value());
  ASSERT_TRUE(p.mmap(kBase, 8 * kPage, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(p.store(kBase + i * kPage, pattern(13, i)).has_value());
  Process& c = **p.fork();
  Process& f = m.spawn();
  pressure::fill_memory(m, f);
  const int victim = f.pid();
  ASSERT_TRUE(p.munmap(kBase + 3 * kPage, kPage).has_value());
  m.check_invariants();
  EXPECT_EQ(m.vmstat().oom_kill, 1u);
  EXPECT_FALSE(f.alive());
  EXPECT_EQ(m.find(victim), nullptr);
  EXPECT_EQ(f.load(kFill).error(), Errno::srch);
  EXPECT_EQ(f.store(kFill, 1).error(), Errno::srch);
  const std::vector<std::string> log = m.dmesg();
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.back().find("Killed process " + std::to_string(victim)), std::string::npos)
      << log.back();
  EXPECT_TRUE(p.alive());
  EXPECT_EQ(*c.load(kBase + 3 * kPage), pattern(13, 3));
  EXPECT_EQ(p.load(kBase + 3 * kPage).error(), Errno::fault) << "unmapped";
  m.check_invariants();
}

// The OOM killer picks the allocating process itself when it is the largest: its access fails
// with ENOMEM, and it is dead once the call returns; the others live on.
TEST(PressureOom, TheAllocatingProcessDiesOnItsWayOut) {
  Machine m(MachineConfig{.memory_bytes = 4ull << 20});
  Process& small = m.spawn();
  ASSERT_TRUE(small.mmap(kBase, 4 * kPage, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(small.store(kBase + i * kPage, i).has_value());
  Process& big = m.spawn();
  ASSERT_TRUE(big.mmap(kFill, 64ull << 20, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  Result<void> r;
  vaddr_t a = kFill;
  for (; (r = big.store(a, 1)); a += kPage) m.check_invariants();
  EXPECT_EQ(r.error(), Errno::nomem);
  EXPECT_FALSE(big.alive()) << "killed on its way out of the faulting store";
  EXPECT_EQ(big.load(kFill).error(), Errno::srch);
  EXPECT_EQ(m.vmstat().oom_kill, 1u);
  EXPECT_TRUE(small.alive());
  EXPECT_EQ(*small.load(kBase + 3 * kPage), 3u);
  m.check_invariants();
  EXPECT_GT(m.free_pages(), m.total_pages() / 2) << "the victim's memory is free again";
}

// The accessed-bit harvest (folio_referenced) clears the A bits of a shared table without
// breaking it (v4, Barry Song's point): reclaim takes the cold pages of another process first,
// and the young pages' shared table stays shared, its bits cleared once for both holders.
TEST(PressureCowPte, AccessedBitHarvestDoesNotBreakSharedTables) {
  Machine m(swap_machine(64ull << 20, 16ull << 20));
  Process& p = m.spawn();
  ASSERT_TRUE(p.set_cow_pte("seed").has_value());
  ASSERT_TRUE(p.mmap(kBase, 8 * kPage, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(p.store(kBase + i * kPage, pattern(14, i)).has_value());
  Process& c = **p.fork();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(*c.load(kBase + i * kPage), pattern(14, i));  // A set
  const pfn_t shared = m.walk(p, kBase).table[3];
  ASSERT_EQ(m.walk(c, kBase).table[3], shared);
  ASSERT_TRUE(m.walk(p, kBase).entry[3] & kA) << "the child's loads set A in the shared table";
  Process& q = m.spawn();  // cold pages, allocated after p's (the clock reaches p's first)
  ASSERT_TRUE(q.mmap(kFill, 16 * kPage, kRWProt, kPrivAnon | MapFlags::fixed).has_value());
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(q.store(kFill + i * kPage, i).has_value());
  ASSERT_TRUE(q.madvise(kFill, 16 * kPage, Advice::cold).has_value());
  EXPECT_EQ(m.reclaim(4), 4u);
  m.check_invariants();
  const VmStat s = m.vmstat();
  EXPECT_EQ(s.referenced_shared_ptes, 16u) << "8 shared PTEs, seen from both holders";
  EXPECT_EQ(s.rmap_cow_pte_breaks, 0u);
  EXPECT_EQ(m.walk(p, kBase).table[3], shared) << "still shared";
  EXPECT_EQ(m.walk(c, kBase).table[3], shared);
  for (int i = 0; i < 8; ++i) EXPECT_FALSE(m.walk(p, kBase + i * kPage).entry[3] & kA) << i;
  EXPECT_EQ(s.pswpout, 4u) << "q's cold pages went instead";
  // The next reclaim finds the shared pages old: unmapping them breaks the table (patch 04).
  EXPECT_EQ(m.reclaim(64), 20u);
  m.check_invariants();
  EXPECT_GT(m.vmstat().rmap_cow_pte_breaks, 0u);
  EXPECT_NE(m.walk(p, kBase).table[3], m.walk(c, kBase).table[3]);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(*p.load(kBase + i * kPage), pattern(14, i));
    EXPECT_EQ(*c.load(kBase + i * kPage), pattern(14, i));
  }
  m.check_invariants();
}

// ---- migration (Machine::migrate_page, as compaction does) ----

class Migrate : public Swap {
 protected:
  Result<pfn_t> migrate(pfn_t pfn, const loc_t& loc = loc_t::current()) {
    auto r = m.migrate_page(pfn);
    inv(loc);
    return r;
  }
};

// A page two processes map (through a table fork shared, under COW PTE) moves to a new frame:
// both map the new frame with the same bits, read the same data, and the old frame is free.
TEST_P(Migrate, MovesASharedPageEverywhere) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = map_anon(p, 4, kBase);
  populate(p, a, 4, 15);
  Process& c = fork(p);
  EXPECT_EQ(load(c, a + kPage), pattern(15, 1));  // A set, and (ODF) the child's table copied
  const pfn_t old = pfn_of(p, a + kPage);
  const std::uint64_t pbits = pte_flags(pte(p, a + kPage)), cbits = pte_flags(pte(c, a + kPage));
  auto r = migrate(old);
  ASSERT_TRUE(r.has_value()) << to_string(r.error());
  const pfn_t nw = *r;
  EXPECT_NE(nw, old);
  EXPECT_EQ(pfn_of(p, a + kPage), nw);
  EXPECT_EQ(pfn_of(c, a + kPage), nw);
  EXPECT_EQ(pte_flags(pte(p, a + kPage)), pbits);
  EXPECT_EQ(pte_flags(pte(c, a + kPage)), cbits);
  EXPECT_TRUE(page(old).free);
  EXPECT_TRUE(AnonPage(page(nw), 2, 2, false));
  EXPECT_EQ(load(p, a + kPage), pattern(15, 1));
  store(c, a + kPage, 1);  // COW still separates them
  EXPECT_EQ(load(p, a + kPage), pattern(15, 1));
  EXPECT_EQ(m.vmstat().pgmigrate_success, 1u);
  finish_swap();
}

// An exclusive, writable, dirty page stays so: the next store writes it in place.
TEST_P(Migrate, KeepsAWritableExclusivePageWritable) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = map_anon(p, 2, kBase);
  populate(p, a, 2, 16);
  const std::uint64_t bits = pte_flags(pte(p, a));
  ASSERT_TRUE(PteBits(bits, kRW | kD | kA, 0));
  auto r = migrate(pfn_of(p, a));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(pte_flags(pte(p, a)), bits);
  EXPECT_TRUE(AnonPage(page(*r), 1, 1, true));
  store(p, a, 2);
  EXPECT_EQ(pfn_of(p, a), *r) << "written in place";
  EXPECT_EQ(load(p, a + kPage), pattern(16, 1));
  finish_swap();
}

// A page in the swap cache (swapped out, read back) moves with its slot.
TEST_P(Migrate, MovesASwapCachePageWithItsSlot) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = map_anon(p, 2, kBase);
  populate(p, a, 2, 17);
  STEP(p.madvise(a, 2 * kPage, Advice::pageout));
  EXPECT_EQ(load(p, a), pattern(17, 0));
  const pfn_t old = pfn_of(p, a);
  ASSERT_TRUE(page(old).swapcache);
  auto r = migrate(old);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(page(*r).swapcache);
  EXPECT_TRUE(page(old).free);
  EXPECT_EQ(m.vmstat().nr_swapcached, 1u);
  STEP(p.madvise(a, 2 * kPage, Advice::pageout));  // out again, from the new frame
  EXPECT_EQ(load(p, a), pattern(17, 0));
  finish_swap();
}

// What cannot move fails and changes nothing: a pinned page and one GUP holds (EBUSY), no free
// frame (ENOMEM), frames that are no anonymous page in use (EINVAL).
TEST_P(Migrate, RefusesWhatCannotMove) {
  Process& p = spawn();
  STEP(p.set_cow_pte(GetParam()));
  const vaddr_t a = map_anon(p, 3, kBase);
  populate(p, a, 3, 18);
  STEP(p.pin(a, kPage, PinFlags::write | PinFlags::longterm));
  const pfn_t pinned = pfn_of(p, a);
  EXPECT_EQ(migrate(pinned).error(), Errno::busy);
  EXPECT_EQ(pfn_of(p, a), pinned);
  STEP(p.gup_get(a + kPage, kPage));
  const pfn_t held = pfn_of(p, a + kPage);
  EXPECT_EQ(migrate(held).error(), Errno::busy);
  EXPECT_EQ(pfn_of(p, a + kPage), held);
  EXPECT_EQ(read_gup(p, a + kPage), pattern(18, 1));
  m.fail_nth_allocation(1);
  EXPECT_EQ(migrate(pfn_of(p, a + 2 * kPage)).error(), Errno::nomem);
  EXPECT_EQ(load(p, a + 2 * kPage), pattern(18, 2));
  EXPECT_EQ(migrate(m.zero_pfn()).error(), Errno::inval);
  EXPECT_EQ(migrate(pte_table(p, a)).error(), Errno::inval);
  EXPECT_EQ(migrate(m.total_pages()).error(), Errno::inval);
  EXPECT_EQ(migrate(m.total_pages() - 1).error(), Errno::inval) << "never handed out";
  EXPECT_EQ(m.vmstat().pgmigrate_success, 0u);
  STEP(p.unpin(a, kPage));
  STEP(p.gup_put(a + kPage, kPage));
  finish_swap();
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, Migrate, ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace cowpte::scen
