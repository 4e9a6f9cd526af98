// The fork-latency comparison (issue 5): every registered fork policy (fork_policy_names():
// classic, seed, on_demand_fork, rfc_v2, ...) on the timing model, with this machine's real fork
// beside them in the same run.
//
//   cowpte_bench_policies [--cowpte_sweep=smoke|short|full] [Google Benchmark flags]
//
// Benchmark names say what ran, as key:value path elements that scripts/report.py parses:
//   fork/layout:L/policy:P/mib:N/timed:T   one fork of N MiB populated (host time per fork)
//   real_fork/mib:N                        this machine's kernel forking N MiB populated
//   write_after_fork/policy:P/pattern:S    the parent writes after a fork of 512 MiB
//   fork_server/policy:P/mib:N/touch:K     AFL's loop: fork, the child writes K pages, exits
//   snapshot/policy:P/mib:N/every:E        BGSAVE: the child reads all, the parent writes a
//                                          page every E pages the child reads
//   swapped_fork/policy:P/mib:N/swapped:S  one fork of N MiB of which S% is swapped out
//   pressure_snapshot/policy:P/mib:N/every:E  the snapshot on a machine with 75% of the memory
//                                          it needs (parent and copies) and a swap device
//   thp_fork/policy:P/mib:N                one fork of N MiB of 2 MiB-aligned memory, THP
//                                          "always" (copy_huge_pmd per 2 MiB)
//   real_thp_fork/mib:N                    this machine's kernel forking N MiB, MADV_HUGEPAGE
//   thp_write_after_fork/policy:P/pattern:S/mib:N  the parent's writes after a THP fork (the
//                                          first in each 2 MiB splits the PMD and copies 4 KiB)
//   khugepaged/policy:P/mib:N              one khugepaged pass over a parent whose 4 KiB memory
//                                          a live child shares (COW PTE: a break per table)
//   trace/policy:P/trace:T                 a recorded trace of docs/traces/ replayed (Redis's
//                                          BGSAVE: the fork, the parent's writes meanwhile)
// Simulated time comes as counters (sim_ns, sim_cycles, *_ns); the benchmark's own time is the
// host time the simulator took.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_main.hpp"
#include "real_fork.hpp"
#include "sweep.hpp"
#include "workloads.hpp"

using namespace cowpte;
using namespace cowpte::bench;

namespace {

constexpr auto kCounterAvg = benchmark::Counter::kAvgIterations;

double ns(const Machine& m, double cycles) { return cycles / m.config().timing.ghz; }

void fork_latency(benchmark::State& state, Layout layout, Policy policy, std::uint64_t mib,
                  bool timed, ThpMode thp = ThpMode::never) {
  guarded(state, [&] {
    MachineConfig cfg = machine_config(mib << 20, timed);
    cfg.thp = thp;
    Machine m(cfg);
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, layout);
    arm(parent, policy);
    // One untimed fork first: the first fork after populating differs from the ones after it
    // (On-demand-fork write-protects the parent's PMDs once; caches start cold), so the mean
    // below is of warm forks whatever the iteration count, and the cold one is its own counter.
    const ForkOutcome cold = fork_once(parent);
    cold.child->exit();
    double cycles = 0, frames = 0, tables = 0;
    RssStat prss{}, crss{};
    std::uint64_t ppte = 0, cpte = 0, tables_in_use = 0;
    for (auto _ : state) {
      const ForkOutcome o = fork_once(parent);
      state.PauseTiming();
      cycles += double(o.cycles), frames += double(o.frames), tables += double(o.table_frames);
      prss = parent.rss(), crss = o.child->rss();
      ppte = parent.pgtables_bytes(), cpte = o.child->pgtables_bytes();
      tables_in_use = m.pgtable_frames();
      o.child->exit();
      state.ResumeTiming();
    }
    auto& c = state.counters;
    c["pages"] = double(r.pages);
    c["sim_cycles"] = benchmark::Counter(cycles, kCounterAvg);
    c["sim_ns"] = benchmark::Counter(ns(m, cycles), kCounterAvg);
    c["cold_sim_ns"] = ns(m, double(cold.cycles));
    c["host_s_per_page"] =
        benchmark::Counter(double(r.pages) * double(state.iterations()),
                           benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    c["frames_allocated"] = benchmark::Counter(frames, kCounterAvg);
    c["table_frames_allocated"] = benchmark::Counter(tables, kCounterAvg);
    c["table_frames_in_use"] = double(tables_in_use);
    c["parent_VmPTE_kB"] = double(ppte >> 10);
    c["child_VmPTE_kB"] = double(cpte >> 10);
    c["parent_rss_kB"] = double((prss.anon + prss.file + prss.shmem) * 4);
    c["child_rss_kB"] = double((crss.anon + crss.file + crss.shmem) * 4);
    c["anon_thp"] = double(m.vmstat().nr_anon_thp);
  });
}

void real_fork(benchmark::State& state, std::uint64_t mib, bool huge = false) {
  guarded(state, [&] {
    const std::uint64_t own = own_rss_bytes();
    RealProcessMemory mem(mib << 20, huge);
    // The kernel may not find 2 MiB pages: the counter says how much it gave.
    if (huge) state.counters["anon_huge_MiB"] = double(RealProcessMemory::anon_huge_bytes() >> 20);
    Latencies lat;
    for (auto _ : state) {
      const double t = mem.fork_ns();
      lat.add(static_cast<std::uint64_t>(t));
      state.SetIterationTime(t / 1e9);
    }
    state.counters["median_ns"] = double(lat.quantile(0.5));
    state.counters["min_ns"] = double(lat.quantile(0));
    state.counters["own_rss_MiB"] = double(own) / double(1 << 20);
  });
}

// Mean and percentiles of a latency sample, in simulated nanoseconds, as counters.
void latency_counters(benchmark::State& state, const Machine& m, const std::string& prefix,
                      Latencies& l) {
  auto& c = state.counters;
  c[prefix + "mean_ns"] = ns(m, l.mean());
  for (auto [q, key] : {std::pair{0.5, "p50_ns"},
                        {0.9, "p90_ns"},
                        {0.99, "p99_ns"},
                        {0.999, "p999_ns"},
                        {1.0, "max_ns"}})
    c[prefix + key] = ns(m, double(l.quantile(q)));
}

void write_after_fork_bench(benchmark::State& state, Policy policy, Pattern pattern,
                            std::uint64_t mib, std::uint64_t random_writes,
                            ThpMode thp = ThpMode::never) {
  guarded(state, [&] {
    MachineConfig cfg = machine_config(mib << 20, true);
    cfg.thp = thp;
    Machine m(cfg);
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::aligned);
    arm(parent, policy);
    WriteAfterFork w;
    for (auto _ : state) w = write_after_fork(parent, r, pattern, random_writes, 1);
    auto& c = state.counters;
    c["fork_ns"] = ns(m, double(w.fork.cycles));
    c["writes"] = double(w.access.size());
    c["faults"] = double(w.faults);
    latency_counters(state, m, "", w.access);
    c["first_in_span_mean_ns"] = ns(m, w.first_in_span.mean());
    c["first_in_span_cycles"] = w.first_in_span.mean();
    c["breaks"] = double(w.breaks);
    c["break_mean_cycles"] = w.breaks ? double(w.break_cycles) / double(w.breaks) : 0;
    c["frames_allocated"] = double(w.frames);
    c["table_frames_allocated"] = double(w.table_frames);
    c["thp_split_pmd"] = double(m.vmstat().thp_split_pmd);
  });
}

// One khugepaged pass (every page of the parent and its child) after a fork of N MiB of 4 KiB
// pages that asked for THPs (MADV_HUGEPAGE) after they were populated: the child stays alive, so
// every page is shared and no span collapses (max_ptes_shared); under COW PTE the pass first
// breaks each table it scans (the series' patch 05), which is the cost it adds.
void khugepaged_bench(benchmark::State& state, Policy policy, std::uint64_t mib) {
  guarded(state, [&] {
    MachineConfig cfg = machine_config(mib << 20, true);
    cfg.thp = ThpMode::madvise;
    Machine m(cfg);
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::aligned);
    parent.madvise(r.start, mib << 20, Advice::hugepage).value();
    arm(parent, policy);
    const ForkOutcome f = fork_once(parent);
    std::uint64_t cycles = 0, collapsed = 0, tables = 0;
    for (auto _ : state) {
      const std::uint64_t tables_before = m.pgtable_frames();
      cycles = cycles_of(m, 0, [&] { collapsed = m.khugepaged_scan(2 * r.pages + 1024); });
      tables = m.pgtable_frames() - tables_before;
    }
    auto& c = state.counters;
    c["fork_ns"] = ns(m, double(f.cycles));
    c["pass_ns"] = ns(m, double(cycles));
    const double spans = 2.0 * double(std::max<std::uint64_t>(r.pages / 512, 1));  // both mms
    c["pass_ns_per_span"] = ns(m, double(cycles)) / spans;
    c["collapsed"] = double(collapsed);
    c["table_frames_allocated"] = double(tables);
    f.child->exit();
  });
}

void fork_server_bench(benchmark::State& state, Policy policy, std::uint64_t mib,
                       std::uint64_t touch) {
  guarded(state, [&] {
    Machine m(machine_config(mib << 20, true));
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::plain);
    arm(parent, policy);
    std::mt19937_64 rng(1);
    Exec sum;
    for (auto _ : state) {
      const Exec e = fork_server_exec(parent, r, touch, rng);
      sum.fork += e.fork, sum.child += e.child, sum.exit += e.exit;
    }
    const double n = double(state.iterations());
    auto& c = state.counters;
    c["execs_per_sim_s"] = n * 1e9 / ns(m, double(sum.total()));
    c["fork_ns"] = ns(m, double(sum.fork)) / n;
    c["child_ns"] = ns(m, double(sum.child)) / n;
    c["exit_ns"] = ns(m, double(sum.exit)) / n;
  });
}

void snapshot_bench(benchmark::State& state, Policy policy, std::uint64_t mib,
                    std::uint64_t every) {
  guarded(state, [&] {
    Machine m(machine_config(mib << 20, true, 2));  // the child reads on a CPU of its own
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::plain);
    arm(parent, policy);
    Snapshot s;
    for (auto _ : state) s = snapshot(parent, r, every, 1);
    auto& c = state.counters;
    c["fork_ns"] = ns(m, double(s.fork.cycles));
    c["writes"] = double(s.parent_write.size());
    latency_counters(state, m, "write_", s.parent_write);
    c["child_read_ns_per_page"] = ns(m, double(s.child_read_cycles)) / double(r.pages);
    c["parent_writes_per_sim_s"] =
        double(s.parent_write.size()) * 1e9 / ns(m, double(s.child_read_cycles));
    c["extra_MiB"] = double(s.extra_frames) * 4096 / double(1 << 20);
    c["extra_table_kB"] = double(s.extra_table_frames) * 4;
    c["copied_pages"] = double(s.extra_frames - s.extra_table_frames);
    c["copied_tables"] = double(s.copied_tables);
  });
}

// Fork of a parent whose first S% pages were paged out (MADV_PAGEOUT) before it forked: fork
// duplicates each swap entry (swap_duplicate) where it would share a page.
void swapped_fork_bench(benchmark::State& state, Policy policy, std::uint64_t mib,
                        unsigned swapped_pct) {
  guarded(state, [&] {
    MachineConfig cfg = machine_config(mib << 20, true);
    cfg.swap_bytes = (mib << 20) + (16ull << 20);
    Machine m(cfg);
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::aligned);
    if (const std::uint64_t out = r.pages * swapped_pct / 100)
      parent.madvise(r.start, out * kPage, Advice::pageout).value();
    arm(parent, policy);
    const ForkOutcome cold = fork_once(parent);
    cold.child->exit();
    double cycles = 0;
    for (auto _ : state) {
      const ForkOutcome o = fork_once(parent);
      state.PauseTiming();
      cycles += double(o.cycles);
      o.child->exit();
      state.ResumeTiming();
    }
    auto& c = state.counters;
    c["pages"] = double(r.pages);
    c["swapped_pages"] = double(parent.rss().swapents);
    c["sim_ns"] = benchmark::Counter(ns(m, cycles), kCounterAvg);
    c["cold_sim_ns"] = ns(m, double(cold.cycles));
  });
}

// The snapshot under memory pressure: memory is 75% of what the parent and the child's copies
// need, so populating the parent already swaps, and the child's reads swap in while the
// parent's writes reclaim. Swap-ins and swap-outs are charged at the device's latencies.
void pressure_snapshot_bench(benchmark::State& state, Policy policy, std::uint64_t mib,
                             std::uint64_t every) {
  guarded(state, [&] {
    const std::uint64_t need = (mib << 20) + (mib << 20) / every;
    MachineConfig cfg = machine_config(mib << 20, true, 2);
    cfg.memory_bytes = need / 4 * 3;
    cfg.swap_bytes = 2 * (mib << 20);
    Machine m(cfg);
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::plain);
    arm(parent, policy);
    const VmStat before = m.vmstat();
    Snapshot s;
    for (auto _ : state) s = snapshot(parent, r, every, 1);
    const VmStat after = m.vmstat();
    auto& c = state.counters;
    c["fork_ns"] = ns(m, double(s.fork.cycles));
    c["writes"] = double(s.parent_write.size());
    latency_counters(state, m, "write_", s.parent_write);
    c["child_read_ns_per_page"] = ns(m, double(s.child_read_cycles)) / double(r.pages);
    c["swap_ins"] = double(after.pswpin - before.pswpin);
    c["swap_outs"] = double(after.pswpout - before.pswpout);
    c["reclaimed"] = double(after.pgsteal - before.pgsteal);
    c["rmap_breaks"] = double(after.rmap_cow_pte_breaks - before.rmap_cow_pte_breaks);
    c["oom_kills"] = double(after.oom_kill);
  });
}

// A parent with `threads` threads, each on a CPU of its own (cpus = threads), each having
// written a slice of the memory: fork from the main thread write-protects the parent's PTEs and
// shoots its TLB entries down on every other CPU the mm ran on (an IPI each).
void threaded_fork_bench(benchmark::State& state, Policy policy, std::uint64_t mib,
                         unsigned threads) {
  guarded(state, [&] {
    Machine m(machine_config(mib << 20, true, threads));
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::aligned);
    arm(parent, policy);
    std::vector<Process*> tasks{&parent};
    for (unsigned i = 1; i < threads; ++i) tasks.push_back(tasks.back()->clone_vm().value());
    auto touch = [&] {  // each thread runs: its CPU joins mm_cpumask and caches translations
      for (std::uint64_t i = 0; i < std::min<std::uint64_t>(r.pages, 4096); ++i)
        (void)tasks[i % threads]->load(r.page(i)).value();
    };
    touch();
    fork_once(parent).child->exit();  // the cold fork, as fork_latency
    double cycles = 0, sent = 0;
    for (auto _ : state) {
      state.PauseTiming();
      touch();
      const std::uint64_t sent0 = parent.hw_stats().shootdowns_sent;
      state.ResumeTiming();
      const ForkOutcome o = fork_once(parent);
      state.PauseTiming();
      cycles += double(o.cycles);
      sent += double(parent.hw_stats().shootdowns_sent - sent0);
      o.child->exit();
      state.ResumeTiming();
    }
    auto& c = state.counters;
    c["sim_ns"] = benchmark::Counter(ns(m, cycles), kCounterAvg);
    c["shootdowns_sent"] = benchmark::Counter(sent, kCounterAvg);
  });
}

// After a fork (the child stays), `threads` threads of the parent write into the same PTE
// tables at once: thread t writes pages t, t + T, t + 2T, ... of each 2 MiB span, one store per
// thread in turn, so their faults contend on each table's split lock (and, under COW PTE, on the
// break of the shared table). Throughput in simulated time: writes over the span from the
// first store's start to the last store's end on any CPU.
void threaded_writes_bench(benchmark::State& state, Policy policy, std::uint64_t mib,
                           unsigned threads) {
  guarded(state, [&] {
    Machine m(machine_config(mib << 20, true, threads));
    Process& parent = m.spawn();
    const Region r = populate(parent, mib << 20, Layout::aligned);
    arm(parent, policy);
    std::vector<Process*> tasks{&parent};
    for (unsigned i = 1; i < threads; ++i) tasks.push_back(tasks.back()->clone_vm().value());
    Process* child = nullptr;
    std::uint64_t start = 0, end = 0, waits = 0, wait_cycles = 0;
    for (auto _ : state) {
      child = parent.fork().value();
      for (unsigned t = 0; t < threads; ++t) start = std::max(start, m.cycles(tasks[t]->cpu()));
      std::vector<HwStats> before;
      for (Process* t : tasks) before.push_back(t->hw_stats());
      for (std::uint64_t i = 0; i < r.pages; ++i) tasks[i % threads]->store(r.page(i), i).value();
      for (unsigned t = 0; t < threads; ++t) {
        end = std::max(end, m.cycles(tasks[t]->cpu()));
        const HwStats s = tasks[t]->hw_stats();
        waits += s.lock_waits - before[t].lock_waits;
        wait_cycles += s.lock_wait_cycles - before[t].lock_wait_cycles;
      }
    }
    auto& c = state.counters;
    c["writes"] = double(r.pages);
    c["writes_per_sim_s"] = double(r.pages) * 1e9 / ns(m, double(end - start));
    c["makespan_ns"] = ns(m, double(end - start));
    c["lock_waits"] = double(waits);
    c["lock_wait_ns"] = ns(m, double(wait_cycles));
    child->exit();
  });
}

// A recorded trace replayed under the policy (docs/traces.md): a real program's fork and what
// its processes touched afterwards, e.g. Redis's BGSAVE. The machine has room for twice the
// largest mapped total; parent and child run on CPUs of their own, as the snapshot's do.
// Counters: the first fork of the trace and, while its child lived, the parent's stores and the
// frames and tables the copies took.
void trace_bench(benchmark::State& state, Policy policy, const std::string& path) {
  guarded(state, [&] {
    TraceReader probe(path);
    const TraceSummary sum = summarize_trace(probe);
    MachineConfig cfg = machine_config(sum.mapped_bytes_max, true, 2);
    Machine m(cfg);
    ReplayResult res;
    for (auto _ : state) {
      TraceReader r(path);
      ReplayOptions o;
      o.policy = policy;
      res = replay_trace(m, r, o);
    }
    if (res.forks.empty()) throw std::runtime_error(path + ": the trace holds no fork");
    const ReplayResult::Fork& f = res.forks.front();
    auto& c = state.counters;
    c["fork_ns"] = ns(m, double(f.cycles));
    c["fork_table_frames"] = double(f.table_frames);
    c["writes"] = double(f.parent_stores.count);
    c["write_p50_ns"] = ns(m, double(f.parent_stores.p50));
    c["write_p99_ns"] = ns(m, double(f.parent_stores.p99));
    c["write_max_ns"] = ns(m, double(f.parent_stores.max));
    c["extra_MiB"] = double(f.extra_frames_max) * 4096 / double(1 << 20);
    c["extra_table_kB"] = double(f.extra_table_frames_max) * 4;
    c["copied_pages"] = double(f.extra_frames_max - f.extra_table_frames_max);
    c["copied_tables"] = double(f.extra_table_frames_max - f.table_frames);
    c["mapped_MiB"] = double(sum.mapped_bytes_max) / double(1 << 20);
    c["pages_written"] = double(sum.pages_written);
    std::uint64_t refused = 0;
    for (const auto& [k, n] : res.errors) refused += n;
    c["refused_calls"] = double(refused);
  });
}

// The traces committed under docs/traces/, by name (the file name without .cptr).
std::vector<std::pair<std::string, std::string>> committed_traces() {
  std::vector<std::pair<std::string, std::string>> v;
  const std::filesystem::path dir = std::filesystem::path(COWPTE_SOURCE_DIR) / "docs" / "traces";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.path().extension() == ".cptr") v.emplace_back(e.path().stem(), e.path().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::string mib_name(std::uint64_t mib) { return std::to_string(mib); }

void register_all(const Sweep& sw) {
  auto reg = [&](const std::string& name, auto fn) {
    return benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime();
  };
  // This machine's real forks first, while this process is small: the heap that simulations
  // leave behind would make its own fork slower.
  for (std::uint64_t mib : sw.real_mib)
    benchmark::RegisterBenchmark(("real_fork/mib:" + mib_name(mib)).c_str(),
                                 [mib](benchmark::State& s) { real_fork(s, mib); })
        ->UseManualTime()
        ->Iterations(sw.real_runs)
        ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.real_thp_mib)
    benchmark::RegisterBenchmark(("real_thp_fork/mib:" + mib_name(mib)).c_str(),
                                 [mib](benchmark::State& s) { real_fork(s, mib, true); })
        ->UseManualTime()
        ->Iterations(sw.real_runs)
        ->Unit(benchmark::kMillisecond);
  for (const auto& f : sw.forks)
    for (const Policy& p : policies())
      reg(fmt_fork(f, p),
          [f, p](benchmark::State& s) { fork_latency(s, f.layout, p, f.mib, f.timed); })
          ->Iterations(fork_iterations(f))
          ->Unit(benchmark::kMillisecond);
  for (const Policy& p : policies())
    for (Pattern pat : {Pattern::sequential, Pattern::random})
      reg(std::string("write_after_fork/policy:") + name(p) + "/pattern:" + name(pat) +
              "/mib:" + mib_name(sw.write_mib),
          [p, pat, &sw](benchmark::State& s) {
            write_after_fork_bench(s, p, pat, sw.write_mib, sw.random_writes);
          })
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
  for (const auto& fs : sw.fork_servers)
    for (const Policy& p : policies())
      reg(std::string("fork_server/policy:") + name(p) + "/mib:" + mib_name(fs.mib) +
              "/touch:" + std::to_string(fs.touch),
          [p, fs](benchmark::State& s) { fork_server_bench(s, p, fs.mib, fs.touch); })
          ->Iterations(fs.execs)
          ->Unit(benchmark::kMicrosecond);
  for (std::uint64_t mib : sw.swapped_fork_mib)
    for (unsigned pct : {0u, 50u, 100u})
      for (const Policy& p : policies())
        reg(std::string("swapped_fork/policy:") + name(p) + "/mib:" + mib_name(mib) +
                "/swapped:" + std::to_string(pct),
            [p, mib, pct](benchmark::State& s) { swapped_fork_bench(s, p, mib, pct); })
            ->Iterations(fork_iterations({Layout::aligned, mib, true}))
            ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.pressure_snapshot_mib)
    for (const Policy& p : policies())
      reg(std::string("pressure_snapshot/policy:") + name(p) + "/mib:" + mib_name(mib) +
              "/every:16",
          [p, mib](benchmark::State& s) { pressure_snapshot_bench(s, p, mib, 16); })
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.thp_fork_mib)
    for (const Policy& p : policies())
      reg(std::string("thp_fork/policy:") + name(p) + "/mib:" + mib_name(mib),
          [p, mib](benchmark::State& s) {
            fork_latency(s, Layout::aligned, p, mib, true, ThpMode::always);
          })
          ->Iterations(fork_iterations({Layout::aligned, mib / 8 + 1, true}))
          ->Unit(benchmark::kMillisecond);
  if (sw.thp_write_mib)
    for (const Policy& p : policies())
      reg(std::string("thp_write_after_fork/policy:") + name(p) +
              "/pattern:sequential/mib:" + mib_name(sw.thp_write_mib),
          [p, &sw](benchmark::State& s) {
            write_after_fork_bench(s, p, Pattern::sequential, sw.thp_write_mib, sw.random_writes,
                                   ThpMode::always);
          })
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.khugepaged_mib)
    for (const Policy& p : policies())
      reg(std::string("khugepaged/policy:") + name(p) + "/mib:" + mib_name(mib),
          [p, mib](benchmark::State& s) { khugepaged_bench(s, p, mib); })
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.threaded_fork_mib)
    for (unsigned threads : sw.threads)
      for (const Policy& p : policies())
        reg(std::string("threaded_fork/policy:") + name(p) + "/mib:" + mib_name(mib) +
                "/tasks:" + std::to_string(threads),
            [p, mib, threads](benchmark::State& s) { threaded_fork_bench(s, p, mib, threads); })
            ->Iterations(fork_iterations({Layout::aligned, mib, true}))
            ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.threaded_write_mib)
    for (unsigned threads : sw.threads)
      for (const Policy& p : policies())
        reg(std::string("threaded_writes/policy:") + name(p) + "/mib:" + mib_name(mib) +
                "/tasks:" + std::to_string(threads),
            [p, mib, threads](benchmark::State& s) { threaded_writes_bench(s, p, mib, threads); })
            ->Iterations(1)
            ->Unit(benchmark::kMillisecond);
  for (const auto& [trace, path] : committed_traces())
    for (const Policy& p : policies())
      reg(std::string("trace/policy:") + name(p) + "/trace:" + trace,
          [p, path](benchmark::State& s) { trace_bench(s, p, path); })
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
  for (std::uint64_t mib : sw.snapshot_mib)
    for (std::uint64_t every : sw.snapshot_every)
      for (const Policy& p : policies())
        reg(std::string("snapshot/policy:") + name(p) + "/mib:" + mib_name(mib) +
                "/every:" + std::to_string(every),
            [p, mib, every](benchmark::State& s) { snapshot_bench(s, p, mib, every); })
            ->Iterations(1)
            ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  return benchmark_main(
      argc, argv, "cowpte_sweep", "short",
      "usage: %s [--cowpte_sweep=smoke|short|full] [Google Benchmark flags]\n"
      "  --cowpte_sweep=NAME  the sizes and workloads to run: smoke (CI), short (default),\n"
      "                       full (1 MiB to 64 GiB)\n\n",
      [](const std::string& name) {
        static const Sweep sw = make_sweep(name);  // the benchmarks keep references into it
        if (sw.forks.empty()) {
          std::fprintf(stderr, "cowpte_bench_policies: unknown sweep '%s' (smoke, short, full)\n",
                       name.c_str());
          return false;
        }
        register_all(sw);
        return true;
      });
}
