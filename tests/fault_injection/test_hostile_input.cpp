// Hostile input and misuse (issue 17): one regression test per crash or leak that fuzzing the
// facade and the configuration loader found. Each test fails (or crashes) on the code before
// the fix: a configuration out of range, spawn at the PCID limit or out of memory, a page's
// refcount under millions of pins, a huge shared anonymous mapping, the JSON loader's types and
// ranges, the trace logger built on two threads, a Process handed to another Machine.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using cowpte::Errno;
using cowpte::Machine;
using cowpte::MachineConfig;
using cowpte::MapFlags;
using cowpte::PinFlags;
using cowpte::Process;
using cowpte::Prot;
using cowpte::vaddr_t;

constexpr std::uint64_t kPage = 4096;
constexpr Prot kRW = Prot::read | Prot::write;
constexpr MapFlags kPriv = MapFlags::private_ | MapFlags::anonymous;
constexpr MapFlags kShared = MapFlags::shared | MapFlags::anonymous;

// The message of the std::invalid_argument that f throws, or a failure.
template <class F>
std::string InvalidArgument(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw something else than std::invalid_argument: " << e.what();
    return {};
  }
  ADD_FAILURE() << "did not throw";
  return {};
}

std::string LoadError(const std::string& json) {
  return InvalidArgument([&] { cowpte::machine_config_from_json(json); });
}

// ---- item 1: cpus = 0 ----

TEST(HostileInput, CpusZeroIsRejectedWhenTheMachineIsBuilt) {
  const std::string what = InvalidArgument([] {
    Machine m({.memory_bytes = 1 << 20, .cpus = 0});
    (void)m.spawn().fork();  // divided by cfg.cpus before the fix: SIGFPE
  });
  EXPECT_NE(what.find("cpus"), std::string::npos) << what;
  EXPECT_NE(what.find("1..64"), std::string::npos) << what;
  EXPECT_NE(InvalidArgument([] { Machine m({.memory_bytes = 1 << 20, .cpus = 65}); }).find("cpus"),
            std::string::npos);
  // The limits themselves are fine, and fork spreads children over the CPUs.
  Machine m({.memory_bytes = 1 << 20, .cpus = 64});
  auto c = m.spawn().fork();
  ASSERT_TRUE(c);
  EXPECT_EQ((*c)->cpu(), 1u);
}

TEST(HostileInput, CpusThatDoNotFitAreNotTruncatedByTheLoader) {
  for (const char* json :
       {R"({"cpus": 4294967296})", R"({"cpus": 0})", R"({"cpus": -1})", R"({"cpus": 65})"}) {
    const std::string what = LoadError(json);
    EXPECT_NE(what.find("cpus"), std::string::npos) << json << ": " << what;
  }
}

// ---- item 2: spawn leaks nothing, try_spawn ----

TEST(HostileInput, SpawnAtThePcidLimitLeaksNothing) {
  Machine m({.memory_bytes = 64ull << 20});
  for (int i = 0; i < 4095; ++i) ASSERT_TRUE(m.try_spawn()) << i;
  const std::uint64_t free = m.free_pages();
  auto r = m.try_spawn();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errno::again);
  EXPECT_THROW(m.spawn(), std::runtime_error);
  EXPECT_EQ(m.free_pages(), free);  // the pgd was allocated before the check and never freed
  EXPECT_NO_THROW(m.check_invariants());
  // An exit gives a PCID back.
  m.processes().back()->exit();
  EXPECT_TRUE(m.try_spawn());
  EXPECT_NO_THROW(m.check_invariants());
}

TEST(HostileInput, SpawnOutOfMemoryLeaksNoPcid) {
  Machine m({.memory_bytes = 64ull << 20});
  // 5,000 failed spawns: try_spawn takes the PCID before the pgd, and must give it back when
  // the pgd allocation fails (a guard for the new order; the old code passed this one).
  for (int i = 0; i < 5000; ++i) {
    m.fail_nth_allocation(1);
    auto r = m.try_spawn();
    ASSERT_FALSE(r);
    ASSERT_EQ(r.error(), Errno::nomem);
  }
  m.fail_nth_allocation(0);
  m.fail_nth_allocation(1);
  EXPECT_THROW(m.spawn(), std::runtime_error);
  m.fail_nth_allocation(0);
  EXPECT_TRUE(m.processes().empty());
  EXPECT_NO_THROW(m.check_invariants());
  for (int i = 0; i < 4095; ++i) ASSERT_TRUE(m.try_spawn()) << i;
  EXPECT_NO_THROW(m.check_invariants());
}

// ---- item 3: pins refuse to overflow a refcount ----

TEST(HostileInput, PinsRefuseToOverflowTheRefcount) {
  Machine m({.memory_bytes = 1 << 20});
  Process& p = m.spawn();
  const vaddr_t a = *p.mmap(0, 2 * kPage, kRW, kPriv);
  ASSERT_TRUE(p.store(a, 7));
  ASSERT_TRUE(p.store(a + kPage, 8));
  const vaddr_t b = a + kPage;  // the page pinned to the limit
  const auto pfn = p.pagemap(b).pfn;
  std::uint64_t pins = 0;
  Errno err{};
  for (;;) {
    auto r = p.pin(b, kPage, PinFlags::write);
    if (!r) {
      err = r.error();
      break;
    }
    ASSERT_LT(++pins, 1u << 21) << "the 2,097,152nd pin wraps a 32-bit refcount";
  }
  EXPECT_EQ(err, Errno::nomem);  // try_grab_page: -ENOMEM
  EXPECT_GT(pins, (1u << 21) - 4096);
  EXPECT_GT(m.page_info(pfn).refcount, 0);
  // A two-page pin whose second page is full: the first page's pin is given back.
  const auto first = m.page_info(p.pagemap(a).pfn).refcount;
  auto r = p.pin(a, 2 * kPage, PinFlags::write);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errno::nomem);
  EXPECT_EQ(m.page_info(p.pagemap(a).pfn).refcount, first);
  // FOLL_GET references stop at the same limit.
  std::uint64_t gets = 0;
  while (p.gup_get(b, kPage)) ASSERT_LT(++gets, 2048u);
  auto g = p.gup_get(b, kPage);
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error(), Errno::nomem);
  EXPECT_GT(m.page_info(pfn).refcount, 0);
  EXPECT_NO_THROW(m.check_invariants());
  // Reading through a pin still works; dropping everything brings the count back.
  EXPECT_EQ(*p.read_gup(b), 8u);
  for (std::uint64_t i = 0; i < gets; ++i) ASSERT_TRUE(p.gup_put(b, kPage));
  for (std::uint64_t i = 0; i < pins; ++i) ASSERT_TRUE(p.unpin(b, kPage));
  EXPECT_EQ(m.page_info(pfn).refcount, 1);
  EXPECT_NO_THROW(m.check_invariants());
}

// ---- item 4: shared anonymous memory costs what is touched ----

TEST(HostileInput, HugeSharedAnonymousMappingIsSparse) {
  Machine m({.memory_bytes = 16ull << 20});
  Process& p = m.spawn();
  // 16 TiB - 4 KiB: the largest shmem the model indexes (page->index is 32 bits). Before the
  // fix a 4 TiB mapping took 80 s and 8.4 GB of host memory.
  const std::uint64_t len = (1ull << 44) - kPage;
  const auto t0 = std::chrono::steady_clock::now();
  auto a = p.mmap(0, len, kRW, kShared);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(a) << cowpte::to_string(a.error());
  EXPECT_LT(took, std::chrono::milliseconds(200));
  const vaddr_t last = *a + len - kPage;
  ASSERT_TRUE(p.store(last, 42));
  ASSERT_TRUE(p.store(*a, 41));
  auto c = p.fork();
  ASSERT_TRUE(c);
  EXPECT_EQ(*(*c)->load(last), 42u);
  ASSERT_TRUE((*c)->store(last + 8, 43));  // shared: the parent sees it
  EXPECT_EQ(*p.load(last + 8), 43u);
  EXPECT_EQ(*p.load(last - kPage), 0u);  // fault-around near the end of the file
  EXPECT_NO_THROW(m.check_invariants());
  (*c)->exit();
  ASSERT_TRUE(p.munmap(*a, len));
  EXPECT_NO_THROW(m.check_invariants());
  // Beyond what page->index holds: ENOMEM, not bad_alloc.
  auto big = p.mmap(0, 32ull << 40, kRW, kShared);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error(), Errno::nomem);
}

// Any length the address space allows maps at once, private or shared, and goes away at once.
TEST(HostileInput, MappingsAsLongAsTheAddressSpaceAreCheap) {
  Machine m({.memory_bytes = 16ull << 20});
  Process& p = m.spawn();
  constexpr vaddr_t kTaskSize = 0x7ffffffff000;
  const auto t0 = std::chrono::steady_clock::now();
  auto a = p.mmap(0, kTaskSize - (1ull << 30), kRW, kPriv);
  ASSERT_TRUE(a);
  ASSERT_TRUE(p.store(*a + (1ull << 46), 6));
  auto c = p.fork();
  ASSERT_TRUE(c);
  EXPECT_EQ(*(*c)->load(*a + (1ull << 46)), 6u);
  ASSERT_TRUE(p.munmap(*a, kTaskSize - (1ull << 30)));
  auto s = p.mmap(0, (1ull << 44) - kPage, kRW, kShared | MapFlags::populate);
  ASSERT_TRUE(s);  // populating 16 TiB stops when memory runs out (errors ignored, as Linux)
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_NO_THROW(m.check_invariants());
}

// Range calls over such a mapping walk the tables that exist, not every 2 MiB of the range
// (found by the facade fuzzer: smaps of a 4 TiB mapping ran for 39 s under ASan, one
// walk_to_pmd per PMD). smaps, mprotect, madvise and clear_refs over ~128 TiB with two pages
// populated, each checked for its result.
TEST(HostileInput, RangeCallsOverHugeMappingsWalkOnlyTheTablesThatExist) {
  Machine m({.memory_bytes = 16ull << 20});
  Process& p = m.spawn();
  constexpr vaddr_t kTaskSize = 0x7ffffffff000;
  const std::uint64_t len = kTaskSize - (1ull << 30);
  const auto t0 = std::chrono::steady_clock::now();
  auto a = p.mmap(0, len, kRW, kPriv);
  ASSERT_TRUE(a);
  const vaddr_t x = *a + (1ull << 46), y = *a + len - kPage;
  ASSERT_TRUE(p.store(x, 6));
  ASSERT_TRUE(p.store(y, 7));
  for (int i = 0; i < 3; ++i) {
    const std::vector<cowpte::SmapsEntry> sm = p.smaps();
    ASSERT_EQ(sm.size(), 1u);
    EXPECT_EQ(sm[0].rss, 2 * kPage);
    EXPECT_EQ(sm[0].anonymous, 2 * kPage);
  }
  ASSERT_TRUE(p.clear_soft_dirty());
  EXPECT_FALSE(p.pagemap(x).soft_dirty);
  ASSERT_TRUE(p.mprotect(*a, len, cowpte::Prot::read));
  EXPECT_EQ(p.store(x, 1).error(), cowpte::Errno::fault);
  EXPECT_EQ(*p.load(y), 7u);
  ASSERT_TRUE(p.mprotect(*a, len, kRW));
  ASSERT_TRUE(p.madvise(*a, len, cowpte::Advice::dontfork));
  ASSERT_TRUE(p.madvise(*a, len, cowpte::Advice::dofork));
  ASSERT_TRUE(p.set_cow_pte("seed"));
  auto c = p.fork();
  ASSERT_TRUE(c);
  ASSERT_TRUE((*c)->mprotect(*a, len, cowpte::Prot::read));  // breaks the two shared tables first
  EXPECT_EQ(*(*c)->load(x), 6u);
  ASSERT_TRUE(p.madvise(*a, len, cowpte::Advice::dontneed));
  EXPECT_EQ(*p.load(x), 0u);
  EXPECT_EQ(*(*c)->load(y), 7u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_NO_THROW(m.check_invariants());
}

// Found by the facade fuzzer (second one-hour run): under "seed", a fork that falls back
// (recover_pte_range, for a possibly pinned page in the span) and then runs out of memory on a
// later VMA of the same span (vm_area_dup or anon_vma_fork) left that VMA's entries, charged to
// the child, in the child's private table, and exit_mmap threw "Bad rss-counter state" out of
// fork(). Every allocation of such a fork fails in turn: ENOMEM, nothing leaked, invariants hold.
TEST(HostileInput, SeedForkThatFallsBackThenFailsLeaksNothing) {
  constexpr vaddr_t a = 0x7f0000000000;  // one 2 MiB span: three VMAs
  bool failed_after_fallback = false;
  for (std::uint64_t n = 1; n <= 40; ++n) {
    SCOPED_TRACE(n);
    Machine m({.memory_bytes = 16ull << 20});
    Process& p = m.spawn();
    ASSERT_TRUE(p.set_cow_pte("seed"));
    ASSERT_TRUE(p.mmap(a, 16 * kPage, kRW, kPriv | MapFlags::fixed | MapFlags::populate));
    ASSERT_TRUE(p.mprotect(a + 4 * kPage, 4 * kPage, cowpte::Prot::read));
    for (vaddr_t x = a; x < a + 16 * kPage; x += kPage) {
      if (x >= a + 4 * kPage && x < a + 8 * kPage) continue;  // the read-only VMA
      ASSERT_TRUE(p.store(x, x));
    }
    ASSERT_TRUE(p.pin(a + 12 * kPage, kPage, cowpte::PinFlags::write | cowpte::PinFlags::longterm));
    const std::uint64_t free_before = m.free_pages();
    m.fail_nth_allocation(n);
    cowpte::Result<cowpte::Process*> r = cowpte::Errno::inval;
    EXPECT_NO_THROW(r = p.fork());
    m.fail_nth_allocation(0);
    EXPECT_NO_THROW(m.check_invariants());
    if (r) {
      EXPECT_EQ(*(*r)->load(a + 9 * kPage), a + 9 * kPage);
      (*r)->exit();
      EXPECT_NO_THROW(m.check_invariants());
    } else {
      EXPECT_EQ(r.error(), cowpte::Errno::nomem);
      failed_after_fallback |= n > 6;
    }
    EXPECT_EQ(m.free_pages(), free_before) << "a failed or finished fork leaks nothing";
    EXPECT_EQ(*p.load(a + 12 * kPage), a + 12 * kPage);
  }
  EXPECT_TRUE(failed_after_fallback);
}

// Found by a CI run of the facade fuzzer: the same fork with swap entries among the entries
// a later VMA's share of the recovered table holds. zap_unlinked_ptes zapped only present
// entries, so a swap entry charged to the child stayed, its slot kept the child's reference, and
// exit_mmap threw "Bad rss-counter state ... MM_SWAPENTS val:1" out of fork().
TEST(HostileInput, SeedForkThatFallsBackThenFailsLeaksNoSwapEntry) {
  constexpr vaddr_t a = 0x7f0000000000;  // one 2 MiB span: three VMAs
  bool failed_after_fallback = false;
  for (std::uint64_t n = 1; n <= 40; ++n) {
    SCOPED_TRACE(n);
    Machine m({.memory_bytes = 16ull << 20, .swap_bytes = 1ull << 20});
    Process& p = m.spawn();
    ASSERT_TRUE(p.set_cow_pte("seed"));
    ASSERT_TRUE(p.mmap(a, 16 * kPage, kRW, kPriv | MapFlags::fixed | MapFlags::populate));
    ASSERT_TRUE(p.mprotect(a + 4 * kPage, 4 * kPage, cowpte::Prot::read));
    for (vaddr_t x = a; x < a + 16 * kPage; x += kPage) {
      if (x >= a + 4 * kPage && x < a + 8 * kPage) continue;  // the read-only VMA
      ASSERT_TRUE(p.store(x, x));
    }
    // Out to swap: one entry in the read-only VMA, two in the third before the pinned page.
    ASSERT_TRUE(p.madvise(a + 5 * kPage, kPage, cowpte::Advice::pageout));
    ASSERT_TRUE(p.madvise(a + 9 * kPage, 2 * kPage, cowpte::Advice::pageout));
    ASSERT_TRUE(p.pagemap(a + 9 * kPage).swapped);
    ASSERT_TRUE(p.pagemap(a + 5 * kPage).swapped);
    ASSERT_TRUE(p.pin(a + 12 * kPage, kPage, cowpte::PinFlags::write | cowpte::PinFlags::longterm));
    const std::uint64_t free_before = m.free_pages();
    const std::uint64_t swap_free_before = m.vmstat().nr_swap_free;
    m.fail_nth_allocation(n);
    cowpte::Result<cowpte::Process*> r = cowpte::Errno::inval;
    EXPECT_NO_THROW(r = p.fork());
    m.fail_nth_allocation(0);
    EXPECT_NO_THROW(m.check_invariants());
    if (r) {
      // A present page: a swap-in would leave the page in the swap cache (the parent's slot).
      EXPECT_EQ(*(*r)->load(a + 8 * kPage), a + 8 * kPage);
      EXPECT_TRUE((*r)->pagemap(a + 9 * kPage).swapped);
      (*r)->exit();
      EXPECT_NO_THROW(m.check_invariants());
    } else {
      EXPECT_EQ(r.error(), cowpte::Errno::nomem);
      failed_after_fallback |= n > 6;
    }
    EXPECT_EQ(m.vmstat().nr_swap_free, swap_free_before) << "the child's slot references go";
    EXPECT_EQ(m.free_pages(), free_before) << "a failed or finished fork leaks nothing";
    EXPECT_EQ(*p.load(a + 12 * kPage), a + 12 * kPage);
  }
  EXPECT_TRUE(failed_after_fallback);
}

// The largest memory allowed builds: 2^46 bytes (threw std::bad_alloc from calloc before).
TEST(HostileInput, LargestMemoryBuilds) {
  Machine m({.memory_bytes = 1ull << 46});
  EXPECT_EQ(m.total_pages(), 1ull << 34);
  Process& p = m.spawn();
  const vaddr_t a = *p.mmap(0, 16 * kPage, kRW, kPriv);
  ASSERT_TRUE(p.store(a, 1));
  ASSERT_TRUE(p.fork());
  EXPECT_NO_THROW(m.check_invariants());
}

// ---- item 5: the JSON loader checks types and ranges ----

TEST(HostileInput, JsonValuesAreTypeAndRangeChecked) {
  struct Case {
    const char* json;
    const char* path;  // what the message must name
  };
  const Case cases[] = {
      {R"({"memory_bytes": 1e30})", "memory_bytes"},
      {R"({"memory_bytes": -1})", "memory_bytes"},
      {R"({"memory_bytes": 1.5})", "memory_bytes"},
      {R"({"memory_bytes": 18446744073709551615})", "memory_bytes"},
      {R"({"memory_bytes": 4096})", "memory_bytes"},
      {R"({"memory_bytes": "1G"})", "memory_bytes"},
      {R"({"cpus": -1})", "cpus"},
      {R"({"cpus": 2.0})", "cpus"},
      {R"({"trace": 1})", "trace"},
      {R"({"zero_page": "no"})", "zero_page"},
      {R"({"cow_pte_policy": 3})", "cow_pte_policy"},
      {R"({"timing": {"l1d": {"ways": -1}}})", "timing.l1d.ways"},
      {R"({"timing": {"l1d": {"ways": 0}}})", "timing.l1d.ways"},
      {R"({"timing": {"l2": {"sets": 3}}})", "timing.l2.sets"},
      {R"({"timing": {"llc": {"sets": 0}}})", "timing.llc.sets"},
      {R"({"timing": {"stlb": {"latency": 4294967296}}})", "timing.stlb.latency"},
      {R"({"timing": {"ghz": 0}})", "timing.ghz"},
      {R"({"timing": {"ghz": -1}})", "timing.ghz"},
      {R"({"timing": {"ghz": "fast"}})", "timing.ghz"},
      {R"({"timing": {"enabled": "yes"}})", "timing.enabled"},
      {R"({"timing": {"dram_latency": -5}})", "timing.dram_latency"},
      {R"(null)", "the machine"},
      {R"([])", "the machine"},
      {R"(3)", "the machine"},
      {R"("cpus")", "the machine"},
      {R"({"timing": null})", "timing"},
      {R"({"timing": []})", "timing"},
      {R"({"timing": {"l1d": []}})", "timing.l1d"},
      {R"({"timing": {"l1d": null}})", "timing.l1d"},
  };
  for (const Case& c : cases) {
    const std::string what = LoadError(c.json);
    EXPECT_NE(what.find(c.path), std::string::npos) << c.json << " -> " << what;
  }
  // The ranges are in the message.
  EXPECT_NE(LoadError(R"({"timing": {"l1d": {"ways": 0}}})").find("1..64"), std::string::npos);
  EXPECT_NE(LoadError(R"({"memory_bytes": -1})").find("65536..70368744177664"), std::string::npos);
  // Good values still load, and every default round-trips.
  const MachineConfig def = cowpte::machine_config_from_json(cowpte::to_json(MachineConfig{}));
  EXPECT_EQ(cowpte::to_json(def), cowpte::to_json(MachineConfig{}));
  const MachineConfig cfg = cowpte::machine_config_from_json(
      R"({"memory_bytes": 70368744177664, "cpus": 64, "timing": {"ghz": 3, "l1d": {"sets": 65536, "ways": 16}}})");
  EXPECT_EQ(cfg.memory_bytes, 1ull << 46);
  EXPECT_EQ(cfg.cpus, 64u);
  EXPECT_EQ(cfg.timing.ghz, 3.0);
  EXPECT_EQ(cfg.timing.l1d.sets, 65536u);
}

TEST(HostileInput, MachineChecksTheConfigurationWithTimingOff) {
  MachineConfig bad_ways{.memory_bytes = 1 << 20};
  bad_ways.timing.l1d.ways = 0;  // rejected only with timing on, without a name, before the fix
  EXPECT_NE(InvalidArgument([&] { Machine m(bad_ways); }).find("timing.l1d.ways"),
            std::string::npos);
  MachineConfig bad_sets{.memory_bytes = 1 << 20};
  bad_sets.timing.enabled = true;
  bad_sets.timing.stlb.sets = 96;
  EXPECT_NE(InvalidArgument([&] { Machine m(bad_sets); }).find("timing.stlb.sets"),
            std::string::npos);
  // memory_bytes = 2^64 - 1 threw std::bad_alloc from the Machine before the fix.
  EXPECT_NE(InvalidArgument([] { Machine m({.memory_bytes = ~0ull}); }).find("memory_bytes"),
            std::string::npos);
  MachineConfig nan{.memory_bytes = 1 << 20};
  nan.timing.ghz = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(InvalidArgument([&] { Machine m(nan); }).find("timing.ghz"), std::string::npos);
}

// ---- item 6: two Machines with trace on two threads ----

TEST(HostileInput, TracedMachinesBuiltOnSeveralThreads) {
  // The race is on the first registration of the "cowpte" logger: drop it before every round.
  // Probabilistic: before the fix the race hit 1 run in 400; this catches it in some runs only.
  constexpr int kRounds = 1000;
  std::atomic<int> failures{0};
  for (int round = 0; round < kRounds; ++round) {
    spdlog::drop("cowpte");
    constexpr int kThreads = 4;  // more threads, more chances to collide in one round
    std::barrier start(kThreads);
    auto build = [&] {
      start.arrive_and_wait();
      try {
        Machine m({.memory_bytes = 1 << 20, .trace = true});
      } catch (const std::exception&) {
        ++failures;
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) threads.emplace_back(build);
    for (std::thread& t : threads) t.join();
  }
  spdlog::drop("cowpte");
  EXPECT_EQ(failures.load(), 0);
}

// Different Machines on different threads: the thread-safety contract's allowed case (the TSan
// build runs tests/tsan/ with the same pattern).
TEST(HostileInput, TwoMachinesOnTwoThreads) {
  auto work = [](std::uint64_t seed, std::uint64_t* sum) {
    Machine m({.memory_bytes = 8 << 20});
    Process& p = m.spawn();
    const vaddr_t a = *p.mmap(0, 64 * kPage, kRW, kPriv);
    for (std::uint64_t i = 0; i < 64; ++i) (void)p.store(a + i * kPage, seed + i);
    ASSERT_TRUE(p.set_cow_pte());
    for (int round = 0; round < 20; ++round) {
      auto c = p.fork();
      ASSERT_TRUE(c);
      for (std::uint64_t i = 0; i < 64; i += 3) (void)(*c)->store(a + i * kPage, i);
      for (std::uint64_t i = 0; i < 64; ++i) *sum += *p.load(a + i * kPage);
      (*c)->exit();
    }
    m.check_invariants();
  };
  std::uint64_t s1 = 0, s2 = 0;
  std::thread t1(work, 1000, &s1), t2(work, 2000, &s2);
  t1.join();
  t2.join();
  EXPECT_EQ(s1, 20 * (64 * 1000 + 63 * 64 / 2));
  EXPECT_EQ(s2, 20 * (64 * 2000 + 63 * 64 / 2));
}

// ---- item 7: a Process of another Machine ----

TEST(HostileInput, ProcessOfAnotherMachineIsRefused) {
  Machine m1({.memory_bytes = 1 << 20}), m2({.memory_bytes = 1 << 20});
  Process& p1 = m1.spawn();
  Process& p2 = m2.spawn();
  const vaddr_t a = *p2.mmap(0, kPage, kRW, kPriv);
  ASSERT_TRUE(p2.store(a, 5));
  const std::uint64_t free1 = m1.free_pages();
  EXPECT_NE(InvalidArgument([&] { (void)m1.walk(p2, a); }).find("another Machine"),
            std::string::npos);
  EXPECT_NE(InvalidArgument([&] { (void)m1.ptdump(p2); }).find("another Machine"),
            std::string::npos);
  EXPECT_EQ(m1.free_pages(), free1);
  // Its own Machine still answers.
  EXPECT_EQ(m2.walk(p2, a).levels, 4);
  EXPECT_EQ(m1.walk(p1, a).levels, 1);
  EXPECT_NO_THROW(m1.check_invariants());
  EXPECT_NO_THROW(m2.check_invariants());
}

}  // namespace
