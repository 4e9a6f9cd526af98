// cowpte-sim's runs (run.hpp): the built-in workloads of the fork comparison
// (bench/workloads.hpp), round by round, and trace replay (replay_trace).
#include "sim/run.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>

namespace cowpte::sim {

namespace {

using bench::Latencies;

const char* kind_name(WorkloadKind k) { return kWorkloadNames[std::size_t(k)]; }

void put_latencies(json& j, const std::string& prefix, Latencies& l) {
  j[prefix + "count"] = l.size();
  j[prefix + "mean"] = l.mean();
  j[prefix + "p50"] = l.quantile(0.5);
  j[prefix + "p99"] = l.quantile(0.99);
  j[prefix + "max"] = l.quantile(1.0);
}

void put_fork(json& j, const bench::ForkOutcome& f) {
  j["fork_cycles"] = f.cycles;
  j["fork_frames"] = f.frames;
  j["fork_table_frames"] = f.table_frames;
}

// The child's exit ends every round, so that the next round forks the same parent again.
void exit_child(Machine& m, Process* child, json& j) {
  j["exit_cycles"] = bench::cycles_of(m, child->cpu(), [&] { child->exit(); });
}

json round_of(const Workload& w, Process& parent, const bench::Region& r, std::uint64_t round) {
  Machine& m = parent.machine();
  json j = json::object();
  switch (w.kind) {
    case WorkloadKind::fork: {
      const bench::ForkOutcome f = bench::fork_once(parent);
      put_fork(j, f);
      exit_child(m, f.child, j);
      break;
    }
    case WorkloadKind::write_after_fork: {
      bench::WriteAfterFork wf =
          bench::write_after_fork(parent, r, w.pattern, w.random_writes, w.seed + round);
      put_fork(j, wf.fork);
      put_latencies(j, "write_", wf.access);
      put_latencies(j, "first_in_span_", wf.first_in_span);
      j["faults"] = wf.faults;
      j["breaks"] = wf.breaks;
      j["break_cycles"] = wf.break_cycles;
      j["frames"] = wf.frames;
      j["table_frames"] = wf.table_frames;
      exit_child(m, wf.fork.child, j);
      break;
    }
    case WorkloadKind::fork_server: {
      std::mt19937_64 rng(w.seed + round);
      Latencies exec, fork, child, exit;
      for (std::uint64_t i = 0; i < w.execs; ++i) {
        const bench::Exec e = bench::fork_server_exec(parent, r, w.pages_per_exec, rng);
        exec.add(e.total()), fork.add(e.fork), child.add(e.child), exit.add(e.exit);
      }
      put_latencies(j, "exec_", exec);
      j["fork_mean"] = fork.mean();
      j["child_mean"] = child.mean();
      j["exit_mean"] = exit.mean();
      break;
    }
    case WorkloadKind::snapshot: {
      bench::Snapshot s = bench::snapshot(parent, r, w.write_every, w.seed + round);
      put_fork(j, s.fork);
      put_latencies(j, "write_", s.parent_write);
      j["child_read_cycles"] = s.child_read_cycles;
      j["extra_frames"] = s.extra_frames;
      j["extra_table_frames"] = s.extra_table_frames;
      j["copied_pages"] = s.extra_frames - s.extra_table_frames;
      j["copied_tables"] = s.copied_tables;
      exit_child(m, s.fork.child, j);
      break;
    }
    case WorkloadKind::trace:
      break;
  }
  return j;
}

// Each figure's median over the measured rounds (the lower middle one for an even count).
json medians(const json& rounds) {
  json out = json::object();
  if (rounds.empty()) return out;
  for (const auto& [k, v] : rounds[0].items()) {
    std::vector<double> xs;
    for (const json& r : rounds) xs.push_back(r[k].get<double>());
    std::sort(xs.begin(), xs.end());
    out[k] = xs[(xs.size() - 1) / 2];
  }
  return out;
}

json builtin(const Scenario& s, Machine& m, Progress& progress) {
  const Workload& w = s.workload;
  Process& parent = m.spawn();
  progress.update(0, 1, "populating");
  const bench::Region r = bench::populate(parent, w.mib << 20, w.layout);
  bench::arm(parent, s.policy);
  json rounds = json::array();
  const std::uint64_t total = s.warmup + s.iterations;
  for (std::uint64_t i = 0; i < total; ++i) {
    progress.update(i, total,
                    fmt::format("{} round {}/{}", i < s.warmup ? "warm-up" : "measured",
                                i < s.warmup ? i + 1 : i - s.warmup + 1,
                                i < s.warmup ? s.warmup : s.iterations));
    if (i == s.warmup && s.warmup) m.reset_stats();
    json j = round_of(w, parent, r, i);
    if (i >= s.warmup) rounds.push_back(std::move(j));
  }
  progress.update(total, total);
  json out;
  out["pages"] = r.pages;
  out["rounds"] = rounds;
  out["median"] = medians(rounds);
  out["parent"] = json::parse(parent.hw_stats_json());
  return out;
}

json cycle_stats(const CycleStats& c) {
  return {{"count", c.count}, {"total", c.total}, {"p50", c.p50}, {"p99", c.p99}, {"max", c.max}};
}

json replay(const Scenario& s, Machine& m, Progress& progress) {
  TraceReader r(s.workload.trace.string());
  ReplayOptions o;
  o.policy = s.policy;
  o.warmup_steps = s.warmup;
  o.max_steps = s.iterations;
  const std::uint64_t size = std::max<std::uint64_t>(r.file_size(), 1);
  const std::uint64_t steps = s.workload.summary.steps;
  o.on_step = [&](std::uint64_t step, std::uint64_t bytes) {
    progress.update(bytes, size, fmt::format("step {}/{}", step, steps));
  };
  const ReplayResult res = replay_trace(m, r, o);
  json out;
  out["metadata"] = json::parse(r.metadata(), nullptr, false);
  if (out["metadata"].is_discarded()) out["metadata"] = r.metadata();
  const TraceSummary& t = s.workload.summary;
  out["trace"] = {{"events", t.events},
                  {"steps", t.steps},
                  {"duration_ns", t.duration_ns},
                  {"pages_read", t.pages_read},
                  {"pages_written", t.pages_written},
                  {"processes", t.processes},
                  {"mapped_bytes_max", t.mapped_bytes_max}};
  out["steps"] = res.steps;
  out["events"] = res.events;
  out["errors"] = res.errors;
  out["fork"] = cycle_stats(res.fork);
  out["exit"] = cycle_stats(res.exit);
  out["mmap"] = cycle_stats(res.mmap);
  out["munmap"] = cycle_stats(res.munmap);
  out["loads"] = cycle_stats(res.loads);
  out["stores"] = cycle_stats(res.stores);
  out["pgtable_frames_max"] = res.pgtable_frames_max;
  out["used_frames_max"] = res.used_frames_max;
  json procs = json::array();
  for (const ReplayResult::PerProcess& p : res.processes) {
    json hw = json::parse(p.hw_stats_json);
    procs.push_back({{"pid", p.pid},
                     {"parent", p.parent},
                     {"loads", cycle_stats(p.loads)},
                     {"stores", cycle_stats(p.stores)},
                     {"rss_max_pages",
                      {{"anon", p.rss_max.anon},
                       {"file", p.rss_max.file},
                       {"shmem", p.rss_max.shmem},
                       {"swapents", p.rss_max.swapents}}},
                     {"hw_stats", hw}});
  }
  out["processes"] = procs;
  json forks = json::array();
  for (const ReplayResult::Fork& f : res.forks)
    forks.push_back({{"parent", f.parent},
                     {"child", f.child},
                     {"step", f.step},
                     {"cycles", f.cycles},
                     {"frames", f.frames},
                     {"table_frames", f.table_frames},
                     {"extra_frames_max", f.extra_frames_max},
                     {"extra_table_frames_max", f.extra_table_frames_max},
                     {"parent_stores", cycle_stats(f.parent_stores)},
                     {"lifetime_steps", f.lifetime_steps},
                     {"child_exited", f.child_exited}});
  out["forks"] = forks;
  return out;
}

}  // namespace

json run_scenario(const Scenario& s, Progress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  Machine m(s.machine);
  json out;
  out["schema"] = "cowpte-sim/1";
  out["scenario"] = s.doc;
  out["workload"] = kind_name(s.workload.kind);
  out["policy"] = s.policy;
  out["timed"] = m.timed();
  out["ghz"] = s.machine.timing.ghz;
  out["result"] =
      s.workload.kind == WorkloadKind::trace ? replay(s, m, progress) : builtin(s, m, progress);
  out["machine"] = {{"total_pages", m.total_pages()},
                    {"free_pages", m.free_pages()},
                    {"pgtable_frames", m.pgtable_frames()}};
  out["hw_stats"] = json::parse(m.hw_stats_json());
  m.check_invariants();  // a run that broke the model must not report figures
  out["host"] = {
      {"wall_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
  return out;
}

std::string summarize(const json& out) {
  const double ghz = out["ghz"].get<double>();
  auto us = [ghz](const json& cycles) { return cycles.get<double>() / ghz / 1000.0; };
  std::string s = fmt::format("cowpte-sim: {} under {}{}\n", out["workload"].get<std::string>(),
                              out["policy"].get<std::string>(),
                              out["timed"].get<bool>() ? "" : " (functional: no cycles)");
  const json& r = out["result"];
  if (out["workload"] == "trace") {
    s += fmt::format("  replayed {} steps, {} events; {} processes\n",
                     r["steps"].get<std::uint64_t>(), r["events"].get<std::uint64_t>(),
                     r["processes"].size());
    for (const char* k : {"fork", "exit", "loads", "stores"}) {
      const json& c = r[k];
      if (c["count"].get<std::uint64_t>() == 0) continue;
      s += fmt::format(
          "  {:<7} {:>10} calls   p50 {:>10.2f} us   p99 {:>10.2f} us   max {:>10.2f} us\n", k,
          c["count"].get<std::uint64_t>(), us(c["p50"]), us(c["p99"]), us(c["max"]));
    }
    for (const json& f : r["forks"])
      s += fmt::format(
          "  fork {} -> {}: {:.2f} us, {} frames; while the child lived: the parent's stores p50 "
          "{:.2f} us, p99 {:.2f} us ({}), up to {:.1f} MiB more memory\n",
          f["parent"].get<std::uint64_t>(), f["child"].get<std::uint64_t>(), us(f["cycles"]),
          f["frames"].get<std::uint64_t>(), us(f["parent_stores"]["p50"]),
          us(f["parent_stores"]["p99"]), f["parent_stores"]["count"].get<std::uint64_t>(),
          double(f["extra_frames_max"].get<std::uint64_t>()) * 4096 / double(1 << 20));
    s += fmt::format("  page tables at most {} frames; memory in use at most {} MiB\n",
                     r["pgtable_frames_max"].get<std::uint64_t>(),
                     r["used_frames_max"].get<std::uint64_t>() * 4096 >> 20);
    for (const auto& [k, v] : r["errors"].items())
      s += fmt::format("  refused by the model: {} x {}\n", v.get<std::uint64_t>(), k);
    return s;
  }
  const json& med = r["median"];
  s += fmt::format("  {} pages populated; medians of {} measured round(s):\n",
                   r["pages"].get<std::uint64_t>(), r["rounds"].size());
  for (const auto& [k, v] : med.items()) {
    const bool cycles = k.find("cycles") != std::string::npos || k.ends_with("_mean") ||
                        k.ends_with("_p50") || k.ends_with("_p99") || k.ends_with("_max");
    if (cycles)
      s += fmt::format("    {:<28} {:>14.0f} cycles  {:>12.2f} us\n", k, v.get<double>(), us(v));
    else
      s += fmt::format("    {:<28} {:>14.0f}\n", k, v.get<double>());
  }
  return s;
}

}  // namespace cowpte::sim
