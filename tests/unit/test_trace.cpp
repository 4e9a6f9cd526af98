// The trace format and its replay (include/cowpte/trace.hpp): every event kind survives a
// round trip; every truncation and random corruption of a file is a TraceError, never a crash
// or a wrong event; the writer refuses what the format cannot hold; a replay does what the same
// calls made by hand do (values, COW after fork, the statistics), under every sound policy, and
// is deterministic; a warm-up resets the statistics; refused calls are counted.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace cowpte {
namespace {

constexpr vaddr_t kBase = 0x7f0000000000ull;
constexpr std::uint64_t kPage = 4096;

// A file name of this test's own, removed at the end.
class TempFile {
 public:
  explicit TempFile(const std::string& tag)
      : path_(::testing::TempDir() + "cowpte_trace_" + tag + "_" + std::to_string(::getpid()) +
              ".cptr") {}
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}
void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TraceEvent ev(TraceKind k, std::uint32_t pid = 0) {
  TraceEvent e;
  e.kind = k;
  e.pid = pid;
  return e;
}

// One event of every kind, with fields that exercise the encoding (large pids, values, gaps).
std::vector<TraceEvent> every_kind() {
  std::vector<TraceEvent> v;
  TraceEvent e = ev(TraceKind::step);
  e.time_ns = 0;
  v.push_back(e);
  v.push_back(ev(TraceKind::spawn, 4000000000u));
  e = ev(TraceKind::mmap, 4000000000u);
  e.addr = kBase, e.length = 64 * kPage, e.prot = Prot::read | Prot::write;
  e.flags = MapFlags::private_ | MapFlags::anonymous;
  v.push_back(e);
  e = ev(TraceKind::touch, 4000000000u);
  e.write = true;
  for (std::uint64_t i = 0; i < 64; i += (i % 3) + 1) e.pages.push_back(kBase + i * kPage);
  v.push_back(e);
  e = ev(TraceKind::step);
  e.time_ns = 123456789012ull;
  v.push_back(e);
  e = ev(TraceKind::fork, 4000000000u);
  e.child = 7;
  v.push_back(e);
  e = ev(TraceKind::clone, 7);
  e.child = 8;
  v.push_back(e);
  e = ev(TraceKind::store, 7);
  e.addr = kBase + 8, e.value = ~0ull;
  v.push_back(e);
  e = ev(TraceKind::load, 8);
  e.addr = kBase + 4088;
  v.push_back(e);
  e = ev(TraceKind::mprotect, 7);
  e.addr = kBase, e.length = kPage, e.prot = Prot::read;
  v.push_back(e);
  e = ev(TraceKind::madvise, 7);
  e.addr = kBase + kPage, e.length = 2 * kPage, e.advice = Advice::pageout;
  v.push_back(e);
  e = ev(TraceKind::touch, 8);
  e.write = false;
  e.pages = {kBase, kBase + 63 * kPage};
  v.push_back(e);
  e = ev(TraceKind::munmap, 7);
  e.addr = kBase + 32 * kPage, e.length = 32 * kPage;
  v.push_back(e);
  v.push_back(ev(TraceKind::exit, 8));
  v.push_back(ev(TraceKind::exit, 7));
  return v;
}

void write_all(const std::string& path, const std::vector<TraceEvent>& evs,
               const std::string& meta = "{\"t\":1}") {
  TraceWriter w(path, meta);
  for (const TraceEvent& e : evs) w.write(e);
  w.close();
}

TEST(Trace, RoundTripEveryKind) {
  TempFile f("roundtrip");
  const std::vector<TraceEvent> evs = every_kind();
  write_all(f.path(), evs);
  TraceReader r(f.path());
  EXPECT_EQ(r.metadata(), "{\"t\":1}");
  EXPECT_EQ(r.version(), kTraceVersion);
  TraceEvent e;
  for (const TraceEvent& want : evs) {
    ASSERT_TRUE(r.next(e)) << to_string(want.kind);
    EXPECT_EQ(e.kind, want.kind);
    EXPECT_EQ(e.pid, want.pid) << to_string(want.kind);
    switch (want.kind) {
      case TraceKind::step:
        EXPECT_EQ(e.time_ns, want.time_ns);
        break;
      case TraceKind::fork:
      case TraceKind::clone:
        EXPECT_EQ(e.child, want.child);
        break;
      case TraceKind::mmap:
        EXPECT_EQ(e.flags, want.flags);
        [[fallthrough]];
      case TraceKind::mprotect:
        EXPECT_EQ(e.prot, want.prot);
        [[fallthrough]];
      case TraceKind::munmap:
        EXPECT_EQ(e.addr, want.addr);
        EXPECT_EQ(e.length, want.length);
        break;
      case TraceKind::madvise:
        EXPECT_EQ(e.advice, want.advice);
        EXPECT_EQ(e.addr, want.addr);
        break;
      case TraceKind::store:
        EXPECT_EQ(e.value, want.value);
        [[fallthrough]];
      case TraceKind::load:
        EXPECT_EQ(e.addr, want.addr);
        break;
      case TraceKind::touch:
        EXPECT_EQ(e.write, want.write);
        EXPECT_EQ(e.pages, want.pages);
        break;
      default:
        break;
    }
  }
  EXPECT_FALSE(r.next(e));
  EXPECT_FALSE(r.next(e));  // stays at the end
  EXPECT_EQ(r.events_read(), evs.size());
  EXPECT_EQ(r.offset(), r.file_size());
}

TEST(Trace, ContiguousTouchesCostAboutAByteAPage) {
  TempFile f("compact");
  TraceEvent t = ev(TraceKind::touch, 1);
  t.write = true;
  for (std::uint64_t i = 0; i < 100000; ++i) t.pages.push_back(kBase + i * kPage);
  write_all(f.path(), {ev(TraceKind::spawn, 1), t});
  const std::size_t size = slurp(f.path()).size();
  EXPECT_LT(size, 100000u + 64);
  EXPECT_GE(size, 100000u);
}

// Every proper prefix of a valid trace is refused with a TraceError (the end record is what
// tells a complete file from a truncated one).
TEST(Trace, EveryTruncationIsAnError) {
  TempFile f("full"), g("cut");
  write_all(f.path(), every_kind());
  const std::string bytes = slurp(f.path());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    spit(g.path(), bytes.substr(0, n));
    bool threw = false;
    try {
      TraceReader r(g.path());
      TraceEvent e;
      while (r.next(e)) {
      }
    } catch (const TraceError&) {
      threw = true;
    }
    EXPECT_TRUE(threw) << "a prefix of " << n << " of " << bytes.size() << " bytes was accepted";
  }
}

// Random corruption: a TraceError or a well-formed sequence, never a crash or a hang; with the
// end record's count, a corrupted file that still parses is rare, and any event it yields
// satisfies the format's own rules (aligned, ascending pages).
TEST(Trace, CorruptionIsCaught) {
  TempFile f("full2"), g("bad");
  write_all(f.path(), every_kind());
  const std::string bytes = slurp(f.path());
  std::mt19937_64 rng(42);
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string b = bytes;
    const int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= char(1 + rng() % 255);
    spit(g.path(), b);
    try {
      TraceReader r(g.path());
      TraceEvent e;
      while (r.next(e)) {
        if (e.kind == TraceKind::touch)
          for (std::size_t j = 0; j < e.pages.size(); ++j) {
            ASSERT_EQ(e.pages[j] % kPage, 0u);
            if (j) {
              ASSERT_GT(e.pages[j], e.pages[j - 1]);
            }
          }
      }
    } catch (const TraceError&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 1000);
}

TEST(Trace, ReadsFromMemoryAsFromAFile) {
  TempFile f("mem");
  write_all(f.path(), every_kind());
  const std::string bytes = slurp(f.path());
  TraceReader file(f.path()), mem(bytes.data(), bytes.size(), "mem");
  TraceEvent a, b;
  while (file.next(a)) {
    ASSERT_TRUE(mem.next(b));
    EXPECT_EQ(a.kind, b.kind);
    EXPECT_EQ(a.pid, b.pid);
    EXPECT_EQ(a.pages, b.pages);
  }
  EXPECT_FALSE(mem.next(b));
  EXPECT_EQ(mem.file_size(), bytes.size());
  EXPECT_THROW(TraceReader r(bytes.data(), 0), TraceError);
  EXPECT_THROW(TraceReader r(bytes.data(), 11), TraceError);
}

TEST(Trace, BadFilesAreNamed) {
  TempFile f("magic");
  spit(f.path(), "not a trace at all");
  EXPECT_THROW(TraceReader r(f.path()), TraceError);
  EXPECT_THROW(TraceReader r("/nonexistent/x.cptr"), TraceError);
  // A newer version than this library reads.
  write_all(f.path(), {ev(TraceKind::spawn, 1)});
  std::string b = slurp(f.path());
  b[8] = char(kTraceVersion + 1);
  spit(f.path(), b);
  try {
    TraceReader r(f.path());
    FAIL() << "a version " << kTraceVersion + 1 << " trace was accepted";
  } catch (const TraceError& e) {
    EXPECT_NE(std::string(e.what()).find("version"), std::string::npos) << e.what();
  }
}

TEST(Trace, WriterRefusesWhatTheFormatCannotHold) {
  TempFile f("refuse");
  TraceWriter w(f.path());
  TraceEvent e = ev(TraceKind::mmap, 1);
  e.addr = kBase + 1, e.length = kPage;
  EXPECT_THROW(w.write(e), std::invalid_argument);
  e.addr = kBase, e.length = 100;
  EXPECT_THROW(w.write(e), std::invalid_argument);
  e = ev(TraceKind::touch, 1);
  e.pages = {kBase + kPage, kBase};
  EXPECT_THROW(w.write(e), std::invalid_argument);
  e.pages = {kBase, kBase};
  EXPECT_THROW(w.write(e), std::invalid_argument);
  e = ev(TraceKind::store, 1);
  e.addr = kBase + 4;
  EXPECT_THROW(w.write(e), std::invalid_argument);
  e = ev(TraceKind::step);
  e.time_ns = 10;
  w.write(e);
  e.time_ns = 9;
  EXPECT_THROW(w.write(e), std::invalid_argument);
  EXPECT_THROW(w.write(ev(TraceKind::end)), std::invalid_argument);
  w.close();
  // Only the step was written: the file reads back as one event.
  TraceReader r(f.path());
  TraceEvent got;
  ASSERT_TRUE(r.next(got));
  EXPECT_EQ(got.kind, TraceKind::step);
  EXPECT_FALSE(r.next(got));
}

// A parent writes 64 pages, forks; the child reads them all; the parent rewrites 32 of them;
// the child stores into one page.
std::vector<TraceEvent> cow_trace() {
  std::vector<TraceEvent> v;
  TraceEvent s = ev(TraceKind::step);
  v.push_back(s);
  v.push_back(ev(TraceKind::spawn, 10));
  TraceEvent m = ev(TraceKind::mmap, 10);
  m.addr = kBase, m.length = 64 * kPage, m.prot = Prot::read | Prot::write;
  v.push_back(m);
  TraceEvent t = ev(TraceKind::touch, 10);
  t.write = true;
  for (std::uint64_t i = 0; i < 64; ++i) t.pages.push_back(kBase + i * kPage);
  v.push_back(t);
  s.time_ns = 1000;
  v.push_back(s);
  TraceEvent f = ev(TraceKind::fork, 10);
  f.child = 11;
  v.push_back(f);
  TraceEvent r = t;
  r.pid = 11, r.write = false;
  v.push_back(r);
  t.pages.resize(32);
  v.push_back(t);
  TraceEvent st = ev(TraceKind::store, 11);
  st.addr = kBase + 40 * kPage + 8, st.value = 99;
  v.push_back(st);
  return v;
}

TEST(TraceReplay, DoesWhatTheCallsDoUnderEveryPolicy) {
  TempFile f("cow");
  write_all(f.path(), cow_trace());
  for (const std::string& policy : sound_fork_policy_names()) {
    SCOPED_TRACE(policy);
    MachineConfig cfg{.memory_bytes = 64ull << 20};
    cfg.timing.enabled = true;
    Machine m(cfg);
    TraceReader r(f.path());
    ReplayOptions o;
    o.policy = policy;
    const ReplayResult res = replay_trace(m, r, o);
    m.check_invariants();
    EXPECT_TRUE(res.errors.empty());
    EXPECT_EQ(res.steps, 2u);
    EXPECT_EQ(res.fork.count, 1u);
    EXPECT_GT(res.fork.total, 0u);
    EXPECT_EQ(res.stores.count, 64u + 32 + 1);
    EXPECT_EQ(res.loads.count, 64u);
    ASSERT_EQ(res.processes.size(), 2u);
    EXPECT_EQ(res.processes[1].pid, 11u);
    EXPECT_EQ(res.processes[1].parent, 10u);
    EXPECT_EQ(res.processes[0].stores.count, 96u);
    // Touched pages take a running stamp, reads included: the parent's first pass stored
    // 1..64, the child's reads took 65..128, the parent's second pass stored 129..160 into
    // pages 0..31. The child sees the values from before the fork.
    std::vector<Process*> live = m.processes();
    ASSERT_EQ(live.size(), 2u);
    Process& parent = *live[0];
    Process& child = *live[1];
    for (std::uint64_t i = 0; i < 64; ++i) {
      const std::uint64_t before_fork = i + 1;
      EXPECT_EQ(child.load(kBase + i * kPage).value(), before_fork) << i;
      const std::uint64_t now = i < 32 ? 64 + 64 + i + 1 : before_fork;
      EXPECT_EQ(parent.load(kBase + i * kPage).value(), now) << i;
    }
    EXPECT_EQ(child.load(kBase + 40 * kPage + 8).value(), 99u);
    EXPECT_EQ(parent.load(kBase + 40 * kPage + 8).value(), 0u);
    EXPECT_EQ(child.rss().anon, 64);
    // The fork's record: the parent's 32 stores while the child lived, and the 33 pages the
    // COW faults copied (32 by the parent, 1 by the child) beyond the fork's own frames.
    ASSERT_EQ(res.forks.size(), 1u);
    const ReplayResult::Fork& fk = res.forks[0];
    EXPECT_EQ(fk.parent, 10u);
    EXPECT_EQ(fk.child, 11u);
    EXPECT_EQ(fk.step, 2u);
    EXPECT_EQ(fk.parent_stores.count, 32u);
    EXPECT_GT(fk.cycles, 0u);
    EXPECT_FALSE(fk.child_exited);
    EXPECT_GE(fk.extra_frames_max, fk.frames + 33);
    EXPECT_LE(fk.extra_frames_max, fk.frames + 33 + 2);  // + a table a COW PTE break may copy
    m.check_invariants();
  }
}

TEST(TraceReplay, IsDeterministic) {
  TempFile f("det");
  write_all(f.path(), cow_trace());
  std::string first;
  for (int i = 0; i < 2; ++i) {
    MachineConfig cfg{.memory_bytes = 64ull << 20};
    cfg.timing.enabled = true;
    Machine m(cfg);
    TraceReader r(f.path());
    ReplayOptions o;
    o.policy = "seed";
    replay_trace(m, r, o);
    if (i == 0)
      first = m.hw_stats_json();
    else
      EXPECT_EQ(m.hw_stats_json(), first);
  }
}

TEST(TraceReplay, WarmupResetsAndMaxStepsStops) {
  TempFile f("warm");
  write_all(f.path(), cow_trace());
  MachineConfig cfg{.memory_bytes = 64ull << 20};
  cfg.timing.enabled = true;
  Machine m(cfg);
  TraceReader r(f.path());
  ReplayOptions o;
  o.warmup_steps = 1;
  std::uint64_t calls = 0;
  o.on_step = [&](std::uint64_t, std::uint64_t) { ++calls; };
  const ReplayResult res = replay_trace(m, r, o);
  EXPECT_EQ(res.steps, 1u);
  EXPECT_EQ(res.stores.count, 33u);  // the first step's 64 were the warm-up's
  EXPECT_EQ(res.processes[0].stores.count, 32u);
  EXPECT_EQ(calls, 2u);
  // The machine's statistics restarted too: one fork since the reset.
  const HwStats hw = m.processes()[0]->hw_stats();
  EXPECT_EQ(hw.phase[std::size_t(Phase::fork)].count, 1u);
  EXPECT_EQ(hw.phase[std::size_t(Phase::fault_anonymous)].count, 0u);

  Machine m2(cfg);
  TraceReader r2(f.path());
  ReplayOptions only_first;
  only_first.max_steps = 1;
  const ReplayResult res2 = replay_trace(m2, r2, only_first);
  EXPECT_EQ(res2.steps, 1u);
  EXPECT_EQ(res2.fork.count, 0u);
  EXPECT_EQ(m2.processes().size(), 1u);
}

TEST(TraceReplay, RefusedCallsAreCountedAndBadPidsThrow) {
  TempFile f("err");
  TraceEvent l = ev(TraceKind::load, 5);
  l.addr = kBase;
  TraceEvent mp = ev(TraceKind::mprotect, 5);
  mp.addr = kBase, mp.length = kPage, mp.prot = Prot::read;
  write_all(f.path(), {ev(TraceKind::spawn, 5), l, l, mp});
  Machine m(MachineConfig{.memory_bytes = 64ull << 20});
  TraceReader r(f.path());
  const ReplayResult res = replay_trace(m, r);
  EXPECT_EQ(res.errors.at("load:EFAULT"), 2u);
  EXPECT_EQ(res.errors.at("mprotect:ENOMEM"), 1u);
  m.check_invariants();

  TempFile g("pid");
  write_all(g.path(), {ev(TraceKind::spawn, 5), l, ev(TraceKind::exit, 6)});
  Machine m2(MachineConfig{.memory_bytes = 64ull << 20});
  TraceReader r2(g.path());
  EXPECT_THROW(replay_trace(m2, r2), TraceError);
  write_all(g.path(), {ev(TraceKind::spawn, 5), ev(TraceKind::spawn, 5)});
  Machine m3(MachineConfig{.memory_bytes = 64ull << 20});
  TraceReader r3(g.path());
  EXPECT_THROW(replay_trace(m3, r3), TraceError);
}

TEST(TraceReplay, SummaryCountsWhatTheTraceHolds) {
  TempFile f("sum");
  write_all(f.path(), every_kind());
  TraceReader r(f.path());
  const TraceSummary s = summarize_trace(r);
  EXPECT_EQ(s.steps, 2u);
  EXPECT_EQ(s.duration_ns, 123456789012ull);
  EXPECT_EQ(s.processes, 3u);
  EXPECT_EQ(s.events.at("touch"), 2u);
  EXPECT_EQ(s.pages_read, 2u);
  EXPECT_EQ(s.mapped_bytes_max, 2 * 64 * kPage);  // the parent's and the forked child's
}

}  // namespace
}  // namespace cowpte
