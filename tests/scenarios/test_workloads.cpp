// The workloads of the fork comparison (bench/workloads.hpp) on small sizes: what each policy
// must do to the counters the benchmarks report, so that a wrong model or a wrong workload
// shows here before it shows as a wrong figure in the README.
#include <gtest/gtest.h>

#include <array>
#include <set>

#include "workloads.hpp"

using namespace cowpte;
using namespace cowpte::bench;

namespace {

// The policies these expectations are written for, by registry name (rfc_v2 and the registry
// as a whole: test_fork_policies.cpp and the differential test).
namespace P {
const Policy classic = "classic", cow_pte = "seed", odf = "on_demand_fork";
}
const std::array<Policy, 3> kPolicies{P::classic, P::cow_pte, P::odf};
int idx(const Policy& p) { return p == P::classic ? 0 : p == P::cow_pte ? 1 : 2; }

struct Populated {
  Machine m;
  Process& parent;
  Region r;
  Populated(std::uint64_t mib, Layout layout, Policy policy, bool timed = true, unsigned cpus = 1)
      : m(machine_config(mib << 20, timed, cpus)), parent(m.spawn()) {
    r = populate(parent, mib << 20, layout);
    arm(parent, policy);
    m.check_invariants();
  }
};

TEST(Workloads, LatencyQuantilesAreNearestRank) {
  Latencies l;
  for (std::uint64_t c : {50, 10, 40, 20, 30}) l.add(c);
  EXPECT_DOUBLE_EQ(l.mean(), 30);
  EXPECT_EQ(l.quantile(0), 10u);
  EXPECT_EQ(l.quantile(0.5), 30u);
  EXPECT_EQ(l.quantile(0.9), 50u);
  EXPECT_EQ(l.quantile(1), 50u);
  l.add(5);  // unsorted again; six samples: 5 10 20 30 40 50
  EXPECT_EQ(l.quantile(0), 5u);
  EXPECT_EQ(l.quantile(0.5), 20u);  // 3 of 6 at or below: the lower middle
  EXPECT_EQ(l.quantile(0.51), 30u);
  EXPECT_EQ(l.quantile(0.99), 50u);
}

TEST(Workloads, LayoutsMapWhatTheySay) {
  Populated s(4, Layout::small_vmas, P::classic, false);
  EXPECT_EQ(s.r.pages, 64u * 15);  // 64 VMAs of 15 pages
  EXPECT_EQ(s.parent.smaps().size(), 64u);
  EXPECT_EQ(s.r.page(15), kAlignedBase + kSmallStride);
  EXPECT_EQ(s.parent.rss().anon, 64 * 15);
  Populated a(4, Layout::aligned, P::classic, false);
  EXPECT_EQ(a.r.start % kSpan, 0u);
  Populated p(4, Layout::plain, P::classic, false);
  EXPECT_NE(p.r.start % kSpan, 0u);  // top-down below mmap_base: not on a table boundary
}

// PageTables counts each table frame once: a COW PTE child shares its parent's PTE tables, so
// only its pgd, PUD and PMD tables are new; its VmPTE still says four PTE tables under the
// seed's accounting (nr_ptes per process), not under On-demand-fork's owner rule.
TEST(Workloads, ForkAllocatesTablesByPolicy) {
  for (Policy policy : kPolicies) {
    SCOPED_TRACE(name(policy));
    Populated s(8, Layout::aligned, policy, false);
    const std::uint64_t tables = s.m.pgtable_frames();
    EXPECT_EQ(tables, 7u);  // the parent's pgd, PUD, PMD and 4 PTE tables
    const ForkOutcome o = fork_once(s.parent);
    s.m.check_invariants();
    EXPECT_EQ(o.table_frames, policy == P::classic ? 7u : 3u);
    EXPECT_EQ(o.frames, o.table_frames);  // fork copies no data page
    EXPECT_EQ(s.m.pgtable_frames(), tables + o.table_frames);
    EXPECT_EQ(o.child->pgtables_bytes(), (policy == P::odf ? 2u : 6u) * kPage);
    o.child->exit();
    s.m.check_invariants();
    EXPECT_EQ(s.m.pgtable_frames(), tables);
  }
}

// The seed's fork does the per-page work of a classic fork, so it costs about the same (v3's
// cover letter: "around 10 ms" both); On-demand-fork does none and costs per table.
TEST(Workloads, ForkCyclesByPolicy) {
  std::uint64_t cycles[3];
  for (Policy policy : kPolicies) {
    Populated s(64, Layout::aligned, policy);
    const ForkOutcome o = fork_once(s.parent);
    s.m.check_invariants();
    cycles[idx(policy)] = o.cycles;
  }
  EXPECT_NEAR(double(cycles[1]) / double(cycles[0]), 1.0, 0.15);
  EXPECT_LT(cycles[2] * 20, cycles[0]);
}

// After a fork the parent writes every page once: each write is a COW fault under every
// policy; the first in each 2 MiB span also copies the shared table (seed: break_cow_pte, the
// entries only; ODF: tfork_one_pte_table, with the per-page work fork skipped).
TEST(Workloads, WriteAfterForkMovesTheTableCopyToTheFirstWrite) {
  WriteAfterFork w[3];
  for (Policy policy : kPolicies) {
    Populated s(8, Layout::aligned, policy);
    w[idx(policy)] = write_after_fork(s.parent, s.r, Pattern::sequential, 0, 1);
    s.m.check_invariants();
    const WriteAfterFork& x = w[idx(policy)];
    EXPECT_EQ(x.access.size(), 2048u);
    EXPECT_EQ(x.faults, 2048u);
    EXPECT_EQ(x.first_in_span.size(), 4u);
    EXPECT_EQ(x.breaks, policy == P::classic ? 0u : 4u);
    EXPECT_EQ(x.table_frames, policy == P::classic ? 0u : 4u);
    EXPECT_EQ(x.frames, 2048u + x.table_frames);
  }
  Latencies& classic = w[0].access;
  for (int p = 1; p < 3; ++p)
    EXPECT_NEAR(double(w[p].access.quantile(0.5)), double(classic.quantile(0.5)),
                0.05 * double(classic.quantile(0.5)));
  const double first[3] = {w[0].first_in_span.mean(), w[1].first_in_span.mean(),
                           w[2].first_in_span.mean()};
  EXPECT_GT(first[1], first[0] + double(w[1].break_cycles) / 4 * 0.9);
  EXPECT_GT(first[2], first[1]);
  // Random writes: 3000 stores over 2048 pages fault on every distinct page once.
  Populated s(8, Layout::aligned, P::cow_pte);
  const WriteAfterFork r = write_after_fork(s.parent, s.r, Pattern::random, 3000, 7);
  s.m.check_invariants();
  std::mt19937_64 rng(7);
  std::set<std::uint64_t> distinct;
  for (int i = 0; i < 3000; ++i) distinct.insert(rng() % s.r.pages);
  EXPECT_EQ(r.faults, distinct.size());
  EXPECT_EQ(r.access.size(), 3000u);
}

// AFL's loop: a child that touches little makes On-demand-fork's per-table fork and exit win.
TEST(Workloads, ForkServerExecsByPolicy) {
  double per_exec[3];
  for (Policy policy : kPolicies) {
    Populated s(32, Layout::plain, policy);
    std::mt19937_64 rng(1);
    Exec sum;
    for (int i = 0; i < 3; ++i) {
      const Exec e = fork_server_exec(s.parent, s.r, 4, rng);
      s.m.check_invariants();
      EXPECT_GT(e.fork, 0u);
      EXPECT_GT(e.child, 0u);
      EXPECT_GT(e.exit, 0u);
      sum.fork += e.fork, sum.child += e.child, sum.exit += e.exit;
    }
    EXPECT_EQ(s.m.processes().size(), 1u);  // every child exited
    per_exec[idx(policy)] = double(sum.total()) / 3;
  }
  EXPECT_GT(per_exec[0], 3 * per_exec[2]);
  EXPECT_LE(per_exec[1], per_exec[0] * 1.1);
}

// A snapshot copies exactly the pages the parent wrote, under every policy; the seed and ODF
// also copy one table per span the parent wrote into, and classic fork copied them all up
// front.
TEST(Workloads, SnapshotCopiesWhatTheParentWrites) {
  Snapshot s[3];
  for (Policy policy : kPolicies) {
    Populated st(8, Layout::aligned, policy, true, 2);
    s[idx(policy)] = snapshot(st.parent, st.r, 4, 3);
    st.m.check_invariants();
    EXPECT_NE(st.parent.cpu(), s[idx(policy)].fork.child->cpu());
  }
  std::mt19937_64 rng(3);
  std::set<std::uint64_t> pages, spans;
  for (std::uint64_t i = 0; i < 2048; i += 4) {
    const std::uint64_t p = rng() % 2048;
    pages.insert(p), spans.insert(p / 512);
  }
  for (int p = 0; p < 3; ++p) {
    EXPECT_EQ(s[p].parent_write.size(), 512u);
    EXPECT_EQ(s[p].extra_frames - s[p].extra_table_frames, pages.size());
  }
  EXPECT_EQ(s[0].copied_tables, 0u);
  EXPECT_EQ(s[0].fork.table_frames, 7u);
  EXPECT_EQ(s[1].copied_tables, spans.size());
  EXPECT_EQ(s[2].copied_tables, spans.size());
  EXPECT_LT(s[2].fork.cycles * 5, s[0].fork.cycles);
}

}  // namespace
