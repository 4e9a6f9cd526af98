// The timing model: the LRU arrays, TLBs with PCIDs, the paging-structure caches, D-bit
// re-walks, flushes and shootdowns, lock waits in simulated time, fork cycles, and the JSON
// configuration. Each test asserts something a wrong model gets wrong; check_invariants()
// (which compares every cached translation with the tables) runs after the steps.
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <list>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include "mmu/set_assoc.hpp"

namespace cowpte {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr vaddr_t kBase = 0x7e0000000000ull;  // 2 MiB (and 1 GiB) aligned
constexpr Prot kRW = Prot::read | Prot::write;
constexpr MapFlags kPrivFixed = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;

MachineConfig timed(unsigned cpus = 1) {
  MachineConfig cfg{.memory_bytes = 256ull << 20, .cpus = cpus};
  cfg.timing.enabled = true;
  return cfg;
}

void ok(const Result<void>& r) {
  if (!r)
    throw std::runtime_error(std::string("call failed: ") + std::string(to_string(r.error())));
}

TEST(SetAssoc, EvictsTheLeastRecentlyUsedWay) {
  SetAssoc<> s(1, 4);
  for (std::uint64_t k = 1; k <= 4; ++k) EXPECT_FALSE(s.insert(k).has_value());
  EXPECT_NE(s.lookup(1), nullptr);  // 1 becomes the most recent: 2 is now the oldest
  EXPECT_EQ(s.insert(5), std::optional<std::uint64_t>(2));
  EXPECT_EQ(s.insert(6), std::optional<std::uint64_t>(3));
  EXPECT_EQ(s.lookup(2), nullptr);
  EXPECT_NE(s.lookup(1), nullptr);
  EXPECT_TRUE(s.invalidate(4));
  EXPECT_FALSE(s.insert(7).has_value()) << "an invalid way is used before any eviction";
}

TEST(SetAssoc, KeysMapToSetsByTheirLowBits) {
  SetAssoc<> s(4, 1);
  EXPECT_FALSE(s.insert(0).has_value());
  EXPECT_FALSE(s.insert(1).has_value()) << "another set";
  EXPECT_EQ(s.insert(4), std::optional<std::uint64_t>(0)) << "the same set, one way";
}

// The plain definition SetAssoc must match: per set, its ways in recency order (a list), the
// victim the lowest-numbered invalid way, else the least recently used one.
class LruReference {
 public:
  LruReference(std::uint32_t sets, std::uint32_t ways)
      : ways_(ways), key_(std::size_t(sets) * ways, kInvalid), value_(key_.size()), order_(sets) {}
  std::size_t find(std::uint64_t key) {
    const std::size_t set = key % order_.size();
    for (std::uint32_t w = 0; w < ways_; ++w)
      if (key_[set * ways_ + w] == key) return touch(set, w);
    return SetAssoc<int>::npos;
  }
  std::size_t insert(std::uint64_t key, int value, std::optional<std::uint64_t>* evicted) {
    std::size_t slot = find(key);
    if (slot == SetAssoc<int>::npos) {
      const std::size_t set = key % order_.size();
      std::uint32_t w = 0;
      while (w < ways_ && key_[set * ways_ + w] != kInvalid) ++w;
      if (w == ways_) w = order_[set].back();
      if (key_[set * ways_ + w] != kInvalid) *evicted = key_[set * ways_ + w];
      key_[set * ways_ + w] = key;
      slot = touch(set, w);
    }
    value_[slot] = value;
    return slot;
  }
  bool invalidate(std::uint64_t key) {
    const std::size_t slot = find(key);
    if (slot == SetAssoc<int>::npos) return false;
    key_[slot] = kInvalid;
    order_[slot / ways_].remove(std::uint32_t(slot % ways_));
    return true;
  }
  // Whether key is its set's most recently used valid way.
  bool is_mru(std::uint64_t key) const {
    const std::size_t set = key % order_.size();
    return !order_[set].empty() && key_[set * ways_ + order_[set].front()] == key;
  }
  std::uint64_t key_at(std::size_t slot) const { return key_[slot]; }
  int value_at(std::size_t slot) const { return value_[slot]; }
  void set_value(std::size_t slot, int v) { value_[slot] = v; }
  std::size_t slots() const { return key_.size(); }

 private:
  static constexpr std::uint64_t kInvalid = ~0ull;
  std::size_t touch(std::size_t set, std::uint32_t w) {
    order_[set].remove(w);
    order_[set].push_front(w);
    return set * ways_ + w;
  }
  std::uint32_t ways_;
  std::vector<std::uint64_t> key_;
  std::vector<int> value_;
  std::vector<std::list<std::uint32_t>> order_;
};

// Random lookups, inserts, inserts of missed keys, cache accesses and invalidations on SetAssoc
// and on the reference, comparing every answer and slot. Per set, keys come from 200 tags (some
// with high bits set), so that many share a signature byte and a lookup must compare full keys.
// For two geometries every other cache access, MRU test and inline hit check goes through the
// compiled-geometry versions (access_fixed, is_mru_fixed, hit_recent_fixed). is_mru may answer
// false for the most recent valid way (after the front way was invalidated) but never true for
// another.
TEST(SetAssoc, MatchesAPlainLruListOnRandomOperations) {
  const std::pair<std::uint32_t, std::uint32_t> geometries[] = {{1, 4}, {4, 8},  {16, 12}, {2, 16},
                                                                {8, 3}, {2, 20}, {1, 1}};
  std::mt19937_64 rng(20261204);
  for (auto [sets, ways] : geometries) {
    SetAssoc<int> s(sets, ways);
    LruReference ref(sets, ways);
    const std::uint32_t tags = ways * 3 + 200 * (ways >= 8);
    auto any_key = [&] {
      const std::uint64_t tag = rng() % tags;
      return (rng() % sets) + sets * (tag % 7 == 0 ? tag | (tag << 33) : tag);
    };
    // access, or on odd steps for the geometries compiled here, access_fixed; the same for is_mru.
    auto cache_access = [&](std::uint64_t key, int step) {
      if (step % 2 && sets == 4 && ways == 8) return s.access_fixed<4, 8>(key);
      if (step % 2 && sets == 2 && ways == 16) return s.access_fixed<2, 16>(key);
      return s.access(key);
    };
    auto is_mru = [&](std::uint64_t key, int step) {
      if (step % 2 && sets == 4 && ways == 8) return s.is_mru_fixed<4, 8>(key);
      if (step % 2 && sets == 2 && ways == 16) return s.is_mru_fixed<2, 16>(key);
      return s.is_mru(key);
    };
    // hit_recent, or on odd steps for the geometries compiled here, hit_recent_fixed.
    auto hit_recent = [&](std::uint64_t key, int step) {
      if (step % 2 && sets == 4 && ways == 8) return s.hit_recent_fixed<4, 8>(key);
      if (step % 2 && sets == 2 && ways == 16) return s.hit_recent_fixed<2, 16>(key);
      return s.hit_recent(key);
    };
    std::uint64_t mru_hits = 0, recent_hits = 0;
    for (int step = 0; step < 200'000; ++step) {
      const std::uint64_t key = any_key();
      if (is_mru(key, step)) {
        ASSERT_TRUE(ref.is_mru(key)) << sets << "x" << ways << " step " << step;
        ++mru_hits;
      }
      const int value = int(rng() % 1000);
      SCOPED_TRACE(::testing::Message()
                   << sets << "x" << ways << " step " << step << " key " << key);
      switch (rng() % 6) {
        case 0:
          ASSERT_EQ(s.find(key), ref.find(key));
          break;
        case 1: {
          std::optional<std::uint64_t> ev_s, ev_r;
          ASSERT_EQ(s.insert_slot(key, value, &ev_s), ref.insert(key, value, &ev_r));
          ASSERT_EQ(ev_s, ev_r);
          break;
        }
        case 2:
          if (!s.peek(key)) {
            std::optional<std::uint64_t> ev;
            ASSERT_EQ(s.insert_absent(key, value), ref.insert(key, value, &ev));
          }
          break;
        case 3: {
          const bool hit = ref.find(key) != SetAssoc<int>::npos;
          std::optional<std::uint64_t> ev;
          const std::size_t slot = hit ? 0 : ref.insert(key, 0, &ev);
          ASSERT_EQ(cache_access(key, step), hit);
          if (!hit) ref.set_value(slot, s.value_at(slot));  // access fills no payload
          break;
        }
        case 4:
          ASSERT_EQ(s.invalidate(key), ref.invalidate(key));
          break;
        default:
          // The caches' inline check: a hit it answers is a hit, now the most recent (the
          // reference's find makes it so); a false answer changes nothing.
          if (hit_recent(key, step)) {
            ASSERT_NE(ref.find(key), SetAssoc<int>::npos);
            ++recent_hits;
          }
      }
      if (step % 64 == 0) {
        bool any = false;
        for (std::size_t i = 0; i < ref.slots(); ++i) any |= ref.key_at(i) != ~0ull;
        ASSERT_EQ(s.any_valid(), any);
      }
    }
    if (ways <= 16) {
      EXPECT_GT(mru_hits, 0u) << sets << "x" << ways << ": is_mru never answered true";
    }
    if (ways >= 2 && ways <= 16) {
      EXPECT_GT(recent_hits, 0u) << sets << "x" << ways << ": hit_recent never answered true";
    }
    for (std::size_t i = 0; i < ref.slots(); ++i) {
      ASSERT_EQ(s.key_at(i), ref.key_at(i)) << sets << "x" << ways << " slot " << i;
      if (ref.key_at(i) != ~0ull) {
        ASSERT_EQ(s.value_at(i), ref.value_at(i));
      }
    }
  }
}

class Timing : public ::testing::Test {
 protected:
  explicit Timing(unsigned cpus = 1) : m(timed(cpus)) {}
  Process& mapped(std::uint64_t pages, vaddr_t at = kBase) {
    Process& p = m.spawn();
    auto r = p.mmap(at, pages * kPage, kRW, kPrivFixed);
    if (!r) throw std::runtime_error("mmap");
    return p;
  }
  HwStats stats(const Process& p) { return p.hw_stats(); }
  Machine m;
};

TEST_F(Timing, TlbHitAfterAWalk) {
  Process& p = mapped(4);
  ok(p.store(kBase, 1));
  const HwStats s0 = stats(p);
  EXPECT_EQ(*p.load(kBase), 1u);
  const HwStats s1 = stats(p);
  EXPECT_EQ(s1.walks, s0.walks) << "the translation came from the DTLB";
  EXPECT_EQ(s1.dtlb_hits, s0.dtlb_hits + 1);
  // Another page, not mapped yet: a miss, a walk that faults, the fault, a walk that fills.
  EXPECT_EQ(*p.load(kBase + kPage), 0u);
  EXPECT_EQ(stats(p).walks, s1.walks + 2);
  EXPECT_EQ(stats(p).tlb_misses, s1.tlb_misses + 2);
  m.check_invariants();
}

TEST_F(Timing, MissAfterInvlpgAndAfterARangeFlush) {
  Process& p = mapped(64);
  for (std::uint64_t i = 0; i < 64; ++i) ok(p.store(kBase + i * kPage, i));
  const HwStats s0 = stats(p);
  ok(p.mprotect(kBase, kPage, Prot::read));  // one page: INVLPG
  EXPECT_EQ(stats(p).invlpg, s0.invlpg + 1);
  EXPECT_EQ(*p.load(kBase), 0u);
  EXPECT_EQ(stats(p).walks, s0.walks + 1) << "the flushed page walks again";
  EXPECT_EQ(*p.load(kBase + kPage), 1u);
  EXPECT_EQ(stats(p).walks, s0.walks + 1) << "a page INVLPG did not name still hits";
  ok(p.mprotect(kBase + kPage, 40 * kPage, Prot::read));  // above the 33-page ceiling
  const HwStats s1 = stats(p);
  EXPECT_EQ(s1.full_flushes, s0.full_flushes + 1);
  EXPECT_EQ(*p.load(kBase + 50 * kPage), 50u);
  EXPECT_EQ(stats(p).walks, s1.walks + 1) << "a full flush drops pages outside the range too";
  m.check_invariants();
}

TEST_F(Timing, PcidsKeepProcessesApartInOneTlb) {
  Process& p = mapped(1);
  ok(p.store(kBase, 1));
  auto c = p.fork();  // write-protects the parent's PTEs: its TLB entries go
  ASSERT_TRUE(c);
  ok((*c)->set_cpu(0));
  EXPECT_EQ(*p.load(kBase), 1u);  // the parent's entry, PCID 1
  ok((*c)->store(kBase, 2));      // the child's own copy, its own PCID
  const HwStats sp = stats(p), sc = stats(**c);
  EXPECT_EQ(*p.load(kBase), 1u);
  EXPECT_EQ(*(*c)->load(kBase), 2u);
  EXPECT_EQ(stats(p).dtlb_hits, sp.dtlb_hits + 1) << "the parent's entry survived the child's";
  EXPECT_EQ(stats(**c).dtlb_hits, sc.dtlb_hits + 1);
  m.check_invariants();
}

TEST_F(Timing, OnlyAWriteSetsDAndAReadFilledEntryWalksAgainForIt) {
  Process& p = m.spawn();
  auto a = p.mmap(kBase, kPage, kRW, MapFlags::shared | MapFlags::anonymous | MapFlags::fixed);
  ASSERT_TRUE(a);
  EXPECT_EQ(*p.load(kBase), 0u);  // shmem read fault maps the page writable and clean
  EXPECT_FALSE(m.walk(p, kBase).entry[3] & 0x40) << "a read sets A, not D";
  EXPECT_TRUE(m.walk(p, kBase).entry[3] & 0x20);
  const HwStats s0 = stats(p);
  ok(p.store(kBase, 7));
  EXPECT_TRUE(m.walk(p, kBase).entry[3] & 0x40) << "the write set D";
  EXPECT_EQ(stats(p).walk_dirty_rewalks, s0.walk_dirty_rewalks + 1);
  const HwStats s1 = stats(p);
  ok(p.store(kBase + 8, 8));
  EXPECT_EQ(stats(p).walks, s1.walks) << "now the entry is dirty: no walk";
  m.check_invariants();
}

TEST_F(Timing, PagingStructureCachesShortenTheWalk) {
  // 2048 pages: more than the STLB's 1536 entries, in 4 of the PDE cache's 32 regions. Page 0's
  // translation is evicted (LRU), its region's PDE is not.
  Process& p = mapped(2048);
  for (std::uint64_t i = 0; i < 2048; ++i) ok(p.store(kBase + i * kPage, i));
  const HwStats s0 = stats(p);
  EXPECT_EQ(*p.load(kBase), 0u);
  const HwStats s1 = stats(p);
  EXPECT_EQ(s1.tlb_misses, s0.tlb_misses + 1);
  EXPECT_EQ(s1.walks, s0.walks + 1);
  EXPECT_EQ(s1.pwc_pde_hits, s0.pwc_pde_hits + 1);
  const auto accesses = [](const HwStats& s) {
    return s.l1d_hits + s.l2_hits + s.llc_hits + s.dram_accesses;
  };
  EXPECT_EQ(accesses(s1), accesses(s0) + 2) << "the PTE and the data: no upper level was read";
  m.check_invariants();
}

TEST_F(Timing, ForkCyclesGrowLinearlyWithThePopulatedSize) {
  auto fork_cycles = [](std::uint64_t mib) {
    MachineConfig cfg = timed();
    cfg.memory_bytes = (2 * mib + 64) << 20;
    cfg.timing.l2 = {256, 16, 10};  // 256 KiB and a 1 MiB LLC: every size below outgrows them
    cfg.timing.llc = {1024, 16, 20};
    Machine mm(cfg);
    Process& p = mm.spawn();
    auto a = p.mmap(kBase, mib << 20, kRW, kPrivFixed | MapFlags::populate);
    if (!a) throw std::runtime_error("mmap");
    const std::uint64_t before = p.hw_stats().phase[std::size_t(Phase::fork)].cycles;
    auto c = p.fork();
    if (!c) throw std::runtime_error("fork");
    return p.hw_stats().phase[std::size_t(Phase::fork)].cycles - before;
  };
  // Once the struct page records and tables outgrow the caches, the cost per PTE is constant:
  // doubling the size doubles the cycles.
  const double c128 = double(fork_cycles(128)), c256 = double(fork_cycles(256)),
               c512 = double(fork_cycles(512));
  EXPECT_NEAR(c256 / c128, 2.0, 0.2);
  EXPECT_NEAR(c512 / c256, 2.0, 0.2);
}

// timing.struct_pages_cached false: a struct page access skips the caches and costs an L1 miss
// that hits L2. Without the next-line prefetch, with a 32 KiB L2 and a 64 KiB LLC (the 2,048
// struct page lines take 128 KiB), the exact model's fork takes each of them from DRAM; the
// approximation takes none of them there, charges the same number of accesses, and each of
// them as an L2 hit.
TEST(TimingStructPages, OutsideTheCachesEachIsAnL2Hit) {
  struct Fork {
    HwStats d;  // the parent's counters over the fork
    std::uint64_t cycles;
  };
  auto fork_stats = [](bool cached) {
    MachineConfig cfg = timed();
    cfg.timing.next_line_prefetch = false;
    cfg.timing.l2 = {64, 8, 10};
    cfg.timing.llc = {64, 16, 20};
    cfg.timing.struct_pages_cached = cached;
    Machine m(cfg);
    Process& p = m.spawn();
    if (!p.mmap(kBase, 2048 * kPage, kRW, kPrivFixed | MapFlags::populate))
      throw std::runtime_error("mmap");
    const HwStats s0 = p.hw_stats();
    if (!p.fork()) throw std::runtime_error("fork");
    const HwStats s1 = p.hw_stats();
    m.check_invariants();
    const auto ph = std::size_t(Phase::fork);
    HwStats d;
    d.l1d_hits = s1.l1d_hits - s0.l1d_hits;
    d.l2_hits = s1.l2_hits - s0.l2_hits;
    d.llc_hits = s1.llc_hits - s0.llc_hits;
    d.dram_accesses = s1.dram_accesses - s0.dram_accesses;
    return Fork{d, s1.phase[ph].cycles - s0.phase[ph].cycles};
  };
  const Fork exact = fork_stats(true), approx = fork_stats(false);
  const auto accesses = [](const HwStats& s) {
    return s.l1d_hits + s.l2_hits + s.llc_hits + s.dram_accesses;
  };
  EXPECT_EQ(accesses(approx.d), accesses(exact.d)) << "every access charged once either way";
  EXPECT_GE(exact.d.dram_accesses, 2048u) << "the exact model: each struct page line from DRAM";
  // The approximation: only the 256 + 256 PTE lines of parent and child (and a few upper-level
  // entries) can miss L1; none of the 2,048 struct page accesses reaches the LLC or DRAM.
  EXPECT_GE(approx.d.l2_hits, 2048u);
  EXPECT_LT(approx.d.llc_hits + approx.d.dram_accesses, 600u);
  ASSERT_GT(exact.cycles, approx.cycles);
  EXPECT_GE(exact.cycles - approx.cycles, 2048 * std::uint64_t(20 + TimingConfig{}.dram_latency))
      << "DRAM latency saved on each struct page line";
}

TEST_F(Timing, MunmapOfASharedSpanDropsItsTranslations) {
  Process& p = mapped(512);
  ASSERT_TRUE(p.mmap(kBase + (4 << 20), 4 * kPage, kRW, kPrivFixed));  // keeps the PMD table
  ok(p.store(kBase, 1));
  ok(p.set_cow_pte(CowPtePolicy::seed));
  auto c = p.fork();
  ASSERT_TRUE(c);
  EXPECT_EQ(*p.load(kBase), 1u);  // the parent's DTLB now holds the shared page
  ok(p.munmap(kBase, 512 * kPage));
  m.check_invariants();
  EXPECT_EQ(p.load(kBase).error(), Errno::fault) << "no stale translation may survive munmap";
  EXPECT_EQ(*(*c)->load(kBase), 1u);
  m.check_invariants();
}

TEST_F(Timing, LiveProcessesNeverShareAPcid) {
  Process& p = mapped(1);
  ok(p.store(kBase, 7));
  // 4095 children come and go; the next is pid 4097, which pid mod 4096 would have given the
  // parent's PCID (1).
  for (int i = 0; i < 4095; ++i) {
    auto c = p.fork();
    ASSERT_TRUE(c);
    (*c)->exit();
  }
  auto c = p.fork();
  ASSERT_TRUE(c);
  ok((*c)->set_cpu(0));
  ok(p.store(kBase, 8));  // the parent's COW copy, in its own TLB entry
  EXPECT_EQ(*(*c)->load(kBase), 7u) << "the child must not use the parent's translation";
  m.check_invariants();
}

class TimingTwoCpus : public Timing {
 protected:
  TimingTwoCpus() : Timing(2) {}
};

TEST_F(TimingTwoCpus, AFlushReachesTheOtherCpuAsAShootdown) {
  Process& p = mapped(4);
  ok(p.store(kBase, 1));  // runs on CPU 0
  ok(p.set_cpu(1));
  ok(p.store(kBase + kPage, 2));  // and now on CPU 1: mm_cpumask has both
  const std::uint64_t cpu0 = m.cycles(0);
  const HwStats s0 = stats(p);
  ok(p.munmap(kBase, kPage));
  EXPECT_GT(m.cycles(0), cpu0) << "CPU 0 handled the shootdown IPI";
  EXPECT_EQ(stats(p).shootdowns_sent, s0.shootdowns_sent + 1);
  EXPECT_EQ(p.set_cpu(2).error(), Errno::inval);
  m.check_invariants();
}

// One simulated time (issue 14): a CPU's clock is the machine's time on that CPU.
std::uint64_t idle_cycles(const Machine& m, unsigned cpu) {
  return nlohmann::json::parse(m.hw_stats_json())["cpus"][cpu]["idle_cycles"].get<std::uint64_t>();
}

// The child of a fork is runnable when its parent's fork ends: CPU 1, idle until then, starts
// it there, and the table lock the parent released during the fork is no wait for it. (Before,
// CPU 1's clock started at 0 and the child "waited" 19-24 million cycles for that lock.)
TEST_F(TimingTwoCpus, AForkedChildStartsWhenItsParentsForkEnds) {
  Process& p = mapped(512);
  for (std::uint64_t i = 0; i < 512; ++i) ok(p.store(kBase + i * kPage, i));  // CPU 0 runs ahead
  ok(p.set_cow_pte(CowPtePolicy::seed));
  auto c = p.fork();  // the child goes on CPU 1
  ASSERT_TRUE(c);
  ASSERT_EQ((*c)->cpu(), 1u);
  const std::uint64_t fork_end = m.cycles(0);
  EXPECT_EQ(m.cycles(1), 0u) << "CPU 1 has not run yet";
  ok((*c)->store(kBase, 5));  // breaks the shared table (refcount 2: a copy)
  const HwStats s = stats(**c);
  EXPECT_EQ(s.lock_waits, 0u) << "the parent let the lock go before the child could run";
  EXPECT_EQ(s.lock_wait_cycles, 0u);
  EXPECT_GE(idle_cycles(m, 1), fork_end) << "CPU 1 idled until the child was runnable";
  EXPECT_LE(idle_cycles(m, 1), fork_end + 1000) << "... and not much longer";
  EXPECT_EQ(stats(p).idle_cycles, 0u) << "idle time belongs to a CPU, not to a process";
  EXPECT_LT(m.cycles(1) - idle_cycles(m, 1), 1'000'000u) << "the first store's own cost";
  EXPECT_EQ(*(*c)->load(kBase), 5u);
  EXPECT_EQ(*p.load(kBase), 0u);
  m.check_invariants();
}

// A wait needs a holder whose interval really contains the moment the lock is asked for: the
// parent and the child write into their shared table at the same moment (one call after the
// other, nothing between), so the child asks while the parent's break holds the table's lock.
// Called after the parent has gone on, the child's store finds the lock long free.
TEST_F(TimingTwoCpus, ALockWaitNeedsAHolderThatOverlapped) {
  for (const bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlapping" : "later");
    Machine mm(timed(2));
    Process& p = mm.spawn();
    ASSERT_TRUE(p.mmap(kBase, 512 * kPage, kRW, kPrivFixed));
    for (std::uint64_t i = 0; i < 512; ++i) ok(p.store(kBase + i * kPage, i));
    ok(p.set_cow_pte(CowPtePolicy::seed));
    Process& c = **p.fork();
    ASSERT_TRUE(c.load(kBase));     // CPU 1 catches up with the fork's end (a TLB-missing read)
    ok(p.store(kBase + kPage, 7));  // the parent breaks the shared table, holding its lock
    if (!overlap)
      for (std::uint64_t i = 2; i < 64; ++i) ok(p.store(kBase + i * kPage, i + 100));
    ok(c.store(kBase + 2 * kPage, 9));  // the child's fault takes the table's lock
    const HwStats s = c.hw_stats();
    if (overlap) {
      EXPECT_GE(s.lock_waits, 1u);
      EXPECT_GT(s.lock_wait_cycles, 0u);
    } else {
      EXPECT_EQ(s.lock_waits, 0u);
    }
    EXPECT_EQ(*c.load(kBase + 2 * kPage), 9u);
    EXPECT_EQ(*p.load(kBase + kPage), 7u);
    mm.check_invariants();
  }
}

// A CPU with nothing to run is idle until work arrives, and the work cannot start before the
// machine's time: the latest call's start.
TEST_F(TimingTwoCpus, AnIdleCpuWaitsForTheMachinesTime) {
  Process& p = mapped(64);
  for (std::uint64_t i = 0; i < 63; ++i) ok(p.store(kBase + i * kPage, i));
  const std::uint64_t last_start = m.cycles(0);
  ok(p.store(kBase + 63 * kPage, 1));  // starts at last_start (a fault: not a TLB hit)
  Process& q = m.spawn();
  ok(q.set_cpu(1));
  ASSERT_TRUE(q.mmap(kBase + (1ull << 30), 4 * kPage, kRW, kPrivFixed));  // on CPU 1
  EXPECT_EQ(idle_cycles(m, 1), last_start) << "CPU 1 idled from 0 until the machine's time";
  ok(q.store(kBase + (1ull << 30), 1));
  EXPECT_EQ(idle_cycles(m, 0), 0u);
  // Now q runs ahead on CPU 1; p's next access on CPU 0 starts no earlier than q's did.
  const std::uint64_t q_start = m.cycles(1);
  ok(q.store(kBase + (1ull << 30) + kPage, 2));
  ASSERT_GT(q_start, m.cycles(0));
  const std::uint64_t cpu0_before = m.cycles(0);
  ok(p.store(kBase + 63 * kPage, 3));  // a TLB hit, but CPU 0 is behind the machine's time
  EXPECT_EQ(idle_cycles(m, 0), q_start - cpu0_before);
  EXPECT_EQ(m.busy_cycles(0), m.cycles(0) - idle_cycles(m, 0));
  EXPECT_EQ(m.busy_cycles(1), m.cycles(1) - idle_cycles(m, 1));
  m.check_invariants();
}

// A task moved to another CPU arrives there when it left the old one, not at the new CPU's
// earlier time; a shootdown IPI reaches an idle CPU at the sender's time.
TEST_F(TimingTwoCpus, MigrationAndShootdownsKeepOneTime) {
  Process& p = mapped(64);
  for (std::uint64_t i = 0; i < 64; ++i) ok(p.store(kBase + i * kPage, i));
  const std::uint64_t left = m.cycles(0);
  ok(p.set_cpu(1));
  ok(p.store(kBase, 7));  // a TLB miss on CPU 1
  EXPECT_EQ(idle_cycles(m, 1), left);
  const std::uint64_t cpu0 = m.cycles(0);
  ok(p.munmap(kBase, 64 * kPage));  // flushes CPU 0 too (mm_cpumask): an IPI
  EXPECT_GT(idle_cycles(m, 0), 0u) << "CPU 0 idled until the IPI arrived";
  EXPECT_GT(m.cycles(0), cpu0);
  EXPECT_GE(m.cycles(0), left);
  m.check_invariants();
}

// One CPU: nothing is ever idle and no lock waits (every holder ended before the next began).
TEST_F(Timing, OneCpuIsNeverIdle) {
  Process& p = mapped(512);
  for (std::uint64_t i = 0; i < 512; ++i) ok(p.store(kBase + i * kPage, i));
  ok(p.set_cow_pte(CowPtePolicy::seed));
  Process& c = **p.fork();
  ok(c.store(kBase, 1));
  ok(p.store(kBase + kPage, 2));
  c.exit();
  EXPECT_EQ(idle_cycles(m, 0), 0u);
  EXPECT_EQ(stats(p).lock_waits, 0u);
  m.check_invariants();
}

// reset_stats after a warm-up: every counter of every CPU and process starts from zero, the
// clocks go on, and the JSON says how far each CPU ran since.
TEST_F(Timing, ResetStatsStartsTheCountersAgain) {
  Process& p = mapped(8);
  for (int i = 0; i < 8; ++i) ok(p.store(kBase + i * kPage, i));
  auto c = p.fork();
  ASSERT_TRUE(c.has_value());
  const std::uint64_t clock = m.cycles(0);
  ASSERT_GT(stats(p).phase[std::size_t(Phase::fork)].count, 0u);
  m.reset_stats();
  EXPECT_EQ(m.cycles(0), clock) << "time goes on";
  for (const Process* q : {&p, *c}) {
    const HwStats s = stats(*q);
    for (const PhaseStat& ph : s.phase) EXPECT_EQ(ph.count + ph.cycles, 0u);
    EXPECT_EQ(s.dtlb_hits + s.stlb_hits + s.tlb_misses + s.walks + s.l1d_hits + s.dram_accesses,
              0u);
  }
  nlohmann::json j = nlohmann::json::parse(m.hw_stats_json());
  EXPECT_EQ(j["cpus"][0]["cycles_since_reset"], 0u);
  EXPECT_EQ(j["cpus"][0]["cycles"], clock);
  EXPECT_EQ(*p.load(kBase + kPage), 1u);
  const HwStats after = stats(p);
  EXPECT_EQ(after.dtlb_hits + after.stlb_hits + after.tlb_misses, 1u) << "one access since";
  j = nlohmann::json::parse(m.hw_stats_json());
  EXPECT_EQ(j["cpus"][0]["cycles_since_reset"], m.cycles(0) - clock);
  EXPECT_GT(m.cycles(0), clock);
}

// One process's statistics as JSON, with the schema of hw_stats_json's "processes" entries.
TEST_F(Timing, ProcessStatisticsAsJson) {
  Process& p = mapped(2);
  ok(p.store(kBase, 1));
  const nlohmann::json j = nlohmann::json::parse(p.hw_stats_json());
  EXPECT_EQ(j["pid"], p.pid());
  EXPECT_EQ(j["cpu"], p.cpu());
  EXPECT_EQ(j["phases"]["fault_anonymous"]["count"], 1u);
  EXPECT_EQ(j["tlb"]["misses"], stats(p).tlb_misses);
  for (const char* k : {"phases", "tlb", "pwc", "cache", "flush", "locks"})
    EXPECT_TRUE(j.contains(k)) << k;
  const nlohmann::json all = nlohmann::json::parse(m.hw_stats_json());
  EXPECT_EQ(all["processes"][0]["phases"], j["phases"]);
}

// Tracepoints carry the simulated time of the CPU the path runs on, not the host's clock.
TEST(TimingTrace, TracepointsCarrySimulatedCycles) {
  MachineConfig cfg = timed(1);
  cfg.trace = true;
  Machine m(cfg);
  auto logger = spdlog::get("cowpte");
  ASSERT_TRUE(logger);
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  logger->sinks().push_back(sink);
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, kPage, kRW, kPrivFixed));
  ASSERT_TRUE(p.store(kBase, 1));
  const std::uint64_t before_fork = m.cycles(0);
  ASSERT_TRUE(p.fork().has_value());
  logger->sinks().pop_back();
  const std::string text = out.str();
  const auto at = text.find("fork: pid 1 start");
  ASSERT_NE(at, std::string::npos) << text;
  const auto line = text.rfind('\n', at) + 1;
  unsigned long long cycle = 0;
  unsigned cpu = 9;
  ASSERT_EQ(std::sscanf(text.c_str() + line, "cycle %llu cpu %u:", &cycle, &cpu), 2) << text;
  EXPECT_EQ(cpu, 0u);
  EXPECT_GE(cycle, before_fork);
  EXPECT_LE(cycle, m.cycles(0));
}

TEST(TimingOff, KeepsNoStatistics) {
  Machine m(MachineConfig{.memory_bytes = 64ull << 20});
  Process& p = m.spawn();
  ASSERT_TRUE(p.mmap(kBase, kPage, kRW, kPrivFixed));
  ASSERT_TRUE(p.store(kBase, 1));
  EXPECT_FALSE(m.timed());
  EXPECT_EQ(m.cycles(0), 0u);
  EXPECT_EQ(m.hw_stats_json(), "{}");
  EXPECT_EQ(p.hw_stats_json(), "{}");
  m.reset_stats();  // nothing to reset
}

TEST(TimingConfigJson, RoundTripsAndRejectsTypos) {
  MachineConfig cfg = timed(4);
  cfg.timing.stlb = {256, 8, 9};
  cfg.cow_pte_policy = CowPtePolicy::on_demand_fork;
  cfg.zero_page = false;
  const std::string j = to_json(cfg);
  const MachineConfig back = machine_config_from_json(j);
  EXPECT_EQ(to_json(back), j);
  EXPECT_FALSE(back.zero_page);
  EXPECT_TRUE(machine_config_from_json("{}").zero_page);
  EXPECT_EQ(back.timing.stlb.entries(), 2048u);
  EXPECT_EQ(back.cpus, 4u);
  const MachineConfig partial = machine_config_from_json(R"({"timing": {"dram_latency": 300}})");
  EXPECT_EQ(partial.timing.dram_latency, 300u);
  EXPECT_TRUE(partial.timing.struct_pages_cached) << "exact unless asked";
  EXPECT_FALSE(machine_config_from_json(R"({"timing": {"struct_pages_cached": false}})")
                   .timing.struct_pages_cached);
  EXPECT_EQ(partial.timing.l1d.ways, TimingConfig{}.l1d.ways) << "left out: the default";
  EXPECT_THROW(machine_config_from_json(R"({"timing": {"dram_latncy": 1}})"),
               std::invalid_argument);
  EXPECT_THROW(machine_config_from_json(R"({"cow_pte_policy": "fast"})"), std::invalid_argument);
  EXPECT_THROW(machine_config_from_json("{"), std::invalid_argument);
}

}  // namespace
}  // namespace cowpte
