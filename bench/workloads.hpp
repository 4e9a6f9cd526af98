// The workloads of the fork-latency comparison (issue 5), as plain functions on the facade so
// that the benchmarks (bench_policies.cpp) and the tests (tests/scenarios/test_workloads.cpp) run
// the same code: a populated parent under one fork policy, fork, and the cost moved to later
// (writes after fork, a fuzzer's fork server, a Redis-style snapshot). Every latency is in
// simulated cycles of the timing model, read from Machine::busy_cycles() of the CPU that ran it.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace cowpte::bench {

// A fork policy by its registry name ("classic", "seed", "on_demand_fork", "rfc_v2", ...).
using Policy = std::string;
// Every registered policy: a policy added to src/fork/policies/builtin.def is benchmarked too.
inline std::vector<Policy> policies() { return sound_fork_policy_names(); }
inline const char* name(const Policy& p) { return p.c_str(); }

// Where the populated memory lies: one mmap(NULL) VMA placed top-down (its ends are not
// 2 MiB-aligned, as a program's large malloc), one VMA on 2 MiB boundaries, or 60 KiB VMAs on a
// 64 KiB stride (32 VMAs per PTE table; a table no single VMA covers is never shared by
// On-demand-fork, while the seed shares the whole 2 MiB span).
enum class Layout { plain, aligned, small_vmas };
inline const char* name(Layout l) {
  return l == Layout::plain ? "plain" : l == Layout::aligned ? "aligned" : "small_vmas";
}

inline constexpr std::uint64_t kPage = 4096, kSpan = 2ull << 20;
inline constexpr std::uint64_t kSmallStride = 64 << 10, kSmallVma = 60 << 10;
inline constexpr vaddr_t kAlignedBase = 0x7e0000000000ull;

// The populated pages of a layout, by index.
struct Region {
  Layout layout = Layout::plain;
  vaddr_t start = 0;
  std::uint64_t pages = 0;
  vaddr_t page(std::uint64_t i) const {
    if (layout != Layout::small_vmas) return start + i * kPage;
    constexpr std::uint64_t per_vma = kSmallVma / kPage;
    return start + (i / per_vma) * kSmallStride + (i % per_vma) * kPage;
  }
};

// A machine with room for len bytes populated, the same again copied, and the tables. One CPU
// unless a workload runs parent and child at the same time: a parent that forks again after its
// child exited has waited for that exit (waitpid), and on two CPUs the timing model would
// charge that wait to the next fork, as a wait for the locks of the child's freed tables.
inline MachineConfig machine_config(std::uint64_t len, bool timed, unsigned cpus = 1) {
  MachineConfig cfg{.memory_bytes = 2 * len + (256ull << 20), .cpus = cpus};
  cfg.timing.enabled = timed;
  return cfg;
}

// Map and populate len bytes (private anonymous, read-write, 4 KiB pages) in the layout.
inline Region populate(Process& p, std::uint64_t len, Layout layout) {
  const Prot rw = Prot::read | Prot::write;
  const MapFlags flags = MapFlags::private_ | MapFlags::anonymous | MapFlags::populate;
  Region r{layout, 0, len / kPage};
  if (layout == Layout::plain) {
    r.start = p.mmap(0, len, rw, flags).value();
  } else if (layout == Layout::aligned) {
    r.start = p.mmap(kAlignedBase, len, rw, flags | MapFlags::fixed).value();
  } else {
    r.start = kAlignedBase;
    const std::uint64_t vmas = len / kSmallStride;
    for (std::uint64_t i = 0; i < vmas; ++i)
      p.mmap(r.start + i * kSmallStride, kSmallVma, rw, flags | MapFlags::fixed).value();
    r.pages = vmas * (kSmallVma / kPage);
  }
  return r;
}

// prctl(PR_SET_COW_PTE) for the chosen policy; classic fork leaves the process alone.
inline void arm(Process& p, const Policy& policy) {
  if (policy != "classic") p.set_cow_pte(policy).value();
}

inline std::uint64_t phase_cycles(const Process& p, Phase ph) {
  return p.hw_stats().phase[std::size_t(ph)].cycles;
}
inline std::uint64_t phase_count(const Process& p, Phase ph) {
  return p.hw_stats().phase[std::size_t(ph)].count;
}

// Latencies of one kind of event, in cycles: mean and percentiles.
class Latencies {
 public:
  void add(std::uint64_t c) {
    v_.push_back(c);
    sorted_ = false;
  }
  std::size_t size() const { return v_.size(); }
  double mean() const {
    double s = 0;
    for (std::uint64_t c : v_) s += double(c);
    return v_.empty() ? 0 : s / double(v_.size());
  }
  // The q-quantile (0 <= q <= 1) by nearest rank: the smallest sample with at least q of all
  // samples at or below it (the minimum for q = 0).
  std::uint64_t quantile(double q) {
    if (v_.empty()) return 0;
    if (!sorted_) std::sort(v_.begin(), v_.end());
    sorted_ = true;
    const auto rank = static_cast<std::size_t>(std::ceil(q * double(v_.size())));
    return v_[std::clamp<std::size_t>(rank, 1, v_.size()) - 1];
  }

 private:
  std::vector<std::uint64_t> v_;
  bool sorted_ = true;
};

// The simulated cycles f() takes on CPU cpu: the busy cycles, not the idle ones before f()
// could start (on two CPUs an operation waits for the other CPU's latest start).
template <class F>
std::uint64_t cycles_of(Machine& m, unsigned cpu, F&& f) {
  const std::uint64_t before = m.busy_cycles(cpu);
  f();
  return m.busy_cycles(cpu) - before;
}

// One fork, seen from the parent: the child, the cycles the fork took, the frames it
// allocated and the table frames among them.
struct ForkOutcome {
  Process* child = nullptr;
  std::uint64_t cycles = 0, frames = 0, table_frames = 0;
};
inline ForkOutcome fork_once(Process& parent) {
  Machine& m = parent.machine();
  ForkOutcome o;
  const std::uint64_t free_before = m.free_pages(), tables_before = m.pgtable_frames();
  const std::uint64_t fork_before = phase_cycles(parent, Phase::fork);
  o.child = parent.fork().value();
  o.cycles = phase_cycles(parent, Phase::fork) - fork_before;
  o.frames = free_before - m.free_pages();
  o.table_frames = m.pgtable_frames() - tables_before;
  return o;
}

// --- The cost moved to later: the parent writes after a fork, the child stays alive -------

enum class Pattern { sequential, random };  // every page once in order, or n random pages
inline const char* name(Pattern p) { return p == Pattern::sequential ? "sequential" : "random"; }

struct WriteAfterFork {
  ForkOutcome fork;
  Latencies access;          // every store, faulting or not
  Latencies first_in_span;   // the first store into each 2 MiB span (break + page copy)
  std::uint64_t faults = 0;  // stores that faulted
  std::uint64_t breaks = 0, break_cycles = 0;  // break_cow_pte / tfork_one_pte_table
  std::uint64_t frames = 0, table_frames = 0;  // allocated by the writes
};

inline WriteAfterFork write_after_fork(Process& parent, const Region& r, Pattern pattern,
                                       std::uint64_t random_writes, std::uint64_t seed) {
  Machine& m = parent.machine();
  WriteAfterFork w;
  w.fork = fork_once(parent);
  const HwStats before = parent.hw_stats();
  const std::uint64_t free_before = m.free_pages(), tables_before = m.pgtable_frames();
  const vaddr_t span0 = r.start & ~(kSpan - 1);
  std::vector<bool> span_seen((r.page(r.pages - 1) - span0) / kSpan + 1);
  std::mt19937_64 rng(seed);
  const std::uint64_t n = pattern == Pattern::sequential ? r.pages : random_writes;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t page = pattern == Pattern::sequential ? i : rng() % r.pages;
    const vaddr_t va = r.page(page);
    const std::uint64_t c = cycles_of(m, parent.cpu(), [&] { parent.store(va, i + 1).value(); });
    w.access.add(c);
    const std::uint64_t span = (va - span0) / kSpan;
    if (!span_seen[span]) w.first_in_span.add(c);
    span_seen[span] = true;
  }
  HwStats d = parent.hw_stats();
  d -= before;
  auto ph = [&](Phase p) { return d.phase[std::size_t(p)]; };
  w.faults = ph(Phase::fault_wp).count + ph(Phase::fault_anonymous).count;
  w.breaks = ph(Phase::break_cow_pte).count + ph(Phase::tfork_one_pte_table).count;
  w.break_cycles = ph(Phase::break_cow_pte).cycles + ph(Phase::tfork_one_pte_table).cycles;
  w.frames = free_before - m.free_pages();
  w.table_frames = m.pgtable_frames() - tables_before;
  return w;
}

// --- A fuzzer's fork server (AFL): fork, the child writes k pages and exits ----------------

struct Exec {
  std::uint64_t fork = 0, child = 0, exit = 0;  // cycles of each part
  std::uint64_t total() const { return fork + child + exit; }
};

// One execution, on one CPU (AFL binds the target to one core; the parent waits for the
// child), so the parts add up.
inline Exec fork_server_exec(Process& parent, const Region& r, std::uint64_t k,
                             std::mt19937_64& rng) {
  Machine& m = parent.machine();
  Exec e;
  Process* child = nullptr;
  e.fork = cycles_of(m, parent.cpu(), [&] { child = parent.fork().value(); });
  e.child = cycles_of(m, child->cpu(), [&] {
    for (std::uint64_t i = 0; i < k; ++i) child->store(r.page(rng() % r.pages), i + 1).value();
  });
  e.exit = cycles_of(m, child->cpu(), [&] { child->exit(); });
  return e;
}

// --- A snapshot as Redis's BGSAVE takes it ------------------------------------------------

// The child (on its own CPU) reads one word of every page, in order, while the parent writes
// one random page every write_every pages the child reads. Extra memory is what the two
// processes hold at the end beyond what the parent held before the fork.
struct Snapshot {
  ForkOutcome fork;
  Latencies parent_write;  // each of the parent's stores
  std::uint64_t child_read_cycles = 0, parent_write_cycles = 0;
  std::uint64_t extra_frames = 0, extra_table_frames = 0;
  std::uint64_t copied_tables = 0;  // break_cow_pte / tfork_one_pte_table that allocated
};

inline Snapshot snapshot(Process& parent, const Region& r, std::uint64_t write_every,
                         std::uint64_t seed) {
  Machine& m = parent.machine();
  Snapshot s;
  const std::uint64_t free_before = m.free_pages(), tables_before = m.pgtable_frames();
  s.fork = fork_once(parent);
  Process& child = *s.fork.child;
  std::mt19937_64 rng(seed);
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < r.pages; ++i) {
    s.child_read_cycles += cycles_of(m, child.cpu(), [&] { sum += child.load(r.page(i)).value(); });
    if (i % write_every) continue;
    const vaddr_t va = r.page(rng() % r.pages);
    const std::uint64_t c = cycles_of(m, parent.cpu(), [&] { parent.store(va, i + 1).value(); });
    s.parent_write.add(c);
    s.parent_write_cycles += c;
  }
  if (sum == ~0ull) throw std::logic_error("unreachable: keeps the loads");
  s.extra_frames = free_before - m.free_pages();
  s.extra_table_frames = m.pgtable_frames() - tables_before;
  s.copied_tables = s.extra_table_frames - s.fork.table_frames;
  return s;
}

}  // namespace cowpte::bench
