// The simulator's own speed and host memory (issue 16), against this machine's real fork in the
// same run, so that every figure can be read as a ratio to it:
//
//   cowpte_bench_speed [--cowpte_speed=quick|full] [Google Benchmark flags]
//
//   speed/real_fork/mib:M                       this machine's fork of M MiB populated
//   speed/host_anchor                           this machine's core speed (a fixed loop)
//   speed/fork_exit/policy:P/mib:M/timed:T      fork of M MiB populated, then the child's exit
//   speed/fork_exit/policy:P/mib:M/timed:1/struct_pages:uncached
//                                               the same, timed with timing.struct_pages_cached
//                                               false (the approximation for speed)
//   speed/write_after_fork/policy:P/mib:M/timed:T  the parent's first store into every page
//   speed/walk/pattern:S/mib:M                  timed loads that miss the TLBs and walk
//   speed/load_untimed/pattern:S/mib:M          the same loads on the functional model alone
//   speed/footprint/mib:M/timed:T               host bytes per populated page, parent + child
//   speed/give_back/mib:M                       host memory after storing M MiB and exiting
//
// Every figure is a median over the iterations of one benchmark (counters *_ns_per_page,
// loads_per_s, bytes_per_page, *_MiB); scripts/speed_check.py divides them by the real fork's
// ns_per_page of the same run, and by the host anchor's, and compares the ratios with
// bench/speed-baseline.json.
// "quick" is test.sh's guard (seconds), "full" the sizes (1 GiB to 64 GiB, minutes).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_main.hpp"
#include "real_fork.hpp"
#include "workloads.hpp"

using namespace cowpte;
using namespace cowpte::bench;

namespace {

using Clock = std::chrono::steady_clock;

template <class F>
double host_ns(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

// The median of host times in ns (Latencies: nearest rank, as every latency of bench/).
double median(const std::vector<double>& ns) {
  Latencies l;
  for (double t : ns) l.add(static_cast<std::uint64_t>(t));
  return double(l.quantile(0.5));
}

// This process's resident memory now (VmRSS), in bytes.
double rss_bytes() { return double(own_rss_bytes()); }

// A machine with room for a populated parent of mib MiB at 2 MiB-aligned addresses, under policy.
// cached: timing.struct_pages_cached.
MachineConfig speed_config(std::uint64_t mib, bool timed, bool cached) {
  MachineConfig cfg = machine_config(mib << 20, timed);
  cfg.timing.struct_pages_cached = cached;
  return cfg;
}
struct Parent {
  Machine m;
  Process* p;
  Region r;
  Parent(std::uint64_t mib, bool timed, const Policy& policy, bool cached = true)
      : m(speed_config(mib, timed, cached)),
        p(&m.spawn()),
        r(populate(*p, mib << 20, Layout::aligned)) {
    arm(*p, policy);
    p->fork().value()->exit();  // the first fork differs (On-demand-fork's PMDs, cold caches)
  }
};

// Host ns per page of fork, and of the child's exit right after it.
void fork_exit(benchmark::State& state, const Policy& policy, std::uint64_t mib, bool timed,
               bool cached = true) {
  guarded(state, [&] {
    Parent pa(mib, timed, policy, cached);
    std::vector<double> fork_ns, exit_ns;
    for (auto _ : state) {
      Process* child = nullptr;
      const double f = host_ns([&] { child = pa.p->fork().value(); });
      const double e = host_ns([&] { child->exit(); });
      fork_ns.push_back(f), exit_ns.push_back(e);
      state.SetIterationTime((f + e) / 1e9);
    }
    const double pages = double(pa.r.pages);
    state.counters["pages"] = pages;
    state.counters["fork_ns_per_page"] = median(fork_ns) / pages;
    state.counters["exit_ns_per_page"] = median(exit_ns) / pages;
  });
}

// Host ns per page of the parent's first store into each page after a fork (the COW fault, and
// under COW PTE the break of each table), the child alive meanwhile.
void write_after_fork(benchmark::State& state, const Policy& policy, std::uint64_t mib,
                      bool timed) {
  guarded(state, [&] {
    Parent pa(mib, timed, policy);
    std::vector<double> write_ns;
    for (auto _ : state) {
      Process* child = pa.p->fork().value();
      const double w = host_ns([&] {
        for (std::uint64_t i = 0; i < pa.r.pages; ++i) pa.p->store(pa.r.page(i), i + 1).value();
      });
      child->exit();
      write_ns.push_back(w);
      state.SetIterationTime(w / 1e9);
    }
    state.counters["write_ns_per_page"] = median(write_ns) / double(pa.r.pages);
  });
}

// Timed loads: one per page, in order (each misses the TLBs and walks; the paging-structure
// caches and the cache hierarchy help), at random pages over the whole region, or, for the
// anchor, sequential words within 32 pages that the DTLB holds (every load a TLB hit).
enum class Walk { sequential, random, tlb_hit };
const char* name(Walk w) {
  return w == Walk::sequential ? "sequential" : w == Walk::random ? "random" : "tlb_hit";
}

void walk(benchmark::State& state, Walk pattern, std::uint64_t mib, bool timed) {
  guarded(state, [&] {
    Parent pa(mib, timed, "classic");
    std::mt19937_64 rng(1);
    std::vector<double> per_s;
    std::uint64_t sum = 0, walks = 0;
    const std::uint64_t n = pa.r.pages;
    for (auto _ : state) {
      const std::uint64_t walks_before = pa.p->hw_stats().walks;
      const double t = host_ns([&] {
        for (std::uint64_t i = 0; i < n; ++i) {
          const vaddr_t va = pattern == Walk::sequential ? pa.r.page(i)
                             : pattern == Walk::random   ? pa.r.page(rng() % n)
                                                         : pa.r.start + (i & (32 * 512 - 1)) * 8;
          sum += pa.p->load(va).value();
        }
      });
      walks += pa.p->hw_stats().walks - walks_before;
      per_s.push_back(double(n) * 1e9 / t);
      state.SetIterationTime(t / 1e9);
    }
    benchmark::DoNotOptimize(sum);
    state.counters["loads_per_s"] = median(per_s);
    if (timed) state.counters["walks_per_load"] = double(walks) / double(n * state.iterations());
  });
}

// Host memory per populated page with parent and child alive after a fork: struct pages, the
// tables of both, the timing model's state. Page contents are zero, so they take no memory.
void footprint(benchmark::State& state, std::uint64_t mib, bool timed) {
  guarded(state, [&] {
    for (auto _ : state) {
      const double before = rss_bytes();
      Parent pa(mib, timed, "classic");
      Process* child = pa.p->fork().value();
      state.counters["bytes_per_page"] = (rss_bytes() - before) / double(pa.r.pages);
      state.SetIterationTime(1e-9);
      child->exit();
    }
  });
}

// Memory given back: a machine of 4x mib stores a word into each of mib MiB, the process exits,
// and this process's resident memory should fall back near where it was with the empty Machine.
void give_back(benchmark::State& state, std::uint64_t mib) {
  guarded(state, [&] {
    for (auto _ : state) {
      Machine m(MachineConfig{.memory_bytes = 4 * (mib << 20)});
      const double empty = rss_bytes();
      Process& p = m.spawn();
      const Region r = populate(p, mib << 20, Layout::aligned);
      for (std::uint64_t i = 0; i < r.pages; ++i) p.store(r.page(i), i + 1).value();
      const double full = rss_bytes();
      p.exit();
      const double after = rss_bytes();
      state.counters["stored_host_MiB"] = (full - empty) / double(1 << 20);
      state.counters["after_exit_host_MiB"] = (after - empty) / double(1 << 20);
      state.SetIterationTime(1e-9);
    }
  });
}

void real_fork(benchmark::State& state, std::uint64_t mib) {
  guarded(state, [&] {
    RealProcessMemory mem(mib << 20);
    std::vector<double> ns;
    for (auto _ : state) {
      const double t = mem.fork_ns();
      ns.push_back(t);
      state.SetIterationTime(t / 1e9);
    }
    const double pages = double((mib << 20) / kPage);
    state.counters["ns_per_page"] = median(ns) / pages;
    // The fastest fork: what scripts/speed_check.py divides by (a busy neighbour on a shared
    // machine slows some forks down; none speeds one up).
    state.counters["min_ns_per_page"] = *std::min_element(ns.begin(), ns.end()) / pages;
  });
}

// The host's own speed, beside the real fork: scripts/speed_check.py holds each time figure to
// it too, since the real fork alone moved 4x between VMs (24-125 ns per page) where the
// simulator did not. cpu_ns_per_op: one step of a loop of integer operations (a xorshift
// generator) with a load and a store at the index it gives into a 512 KiB table (in the host's
// L2): the kind of work the simulator does, bound by the core's instructions and its caches,
// not by the kernel. The fastest of the iterations, as for the real fork.
double host_cpu_ns_per_op() {
  constexpr std::uint64_t kOps = 1 << 22, kSlots = 1 << 16;
  std::vector<std::uint64_t> table(kSlots, 1);
  std::uint64_t x = 88172645463325252ull, sum = 0;
  const double t = host_ns([&] {
    for (std::uint64_t i = 0; i < kOps; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
      std::uint64_t& e = table[x & (kSlots - 1)];
      sum += e;
      e = x;
    }
  });
  benchmark::DoNotOptimize(sum);
  return t / double(kOps);
}

void host_anchor(benchmark::State& state) {
  guarded(state, [&] {
    std::vector<double> ns;
    for (auto _ : state) {
      ns.push_back(host_cpu_ns_per_op());
      state.SetIterationTime(ns.back() * 1e-9);
    }
    state.counters["cpu_ns_per_op"] = *std::min_element(ns.begin(), ns.end());
  });
}

struct Sizes {
  std::uint64_t real_mib, real_runs;
  std::vector<std::uint64_t> fork_mib, timed_mib;  // fork_exit and write_after_fork
  std::vector<std::uint64_t> walk_mib, footprint_mib;
  std::uint64_t give_back_mib, iterations;
};

Sizes sizes(const std::string& which) {
  if (which == "quick") return {256, 15, {256}, {64}, {256}, {256}, 256, 5};
  if (which == "full")
    return {1024, 15, {64, 1024, 16384, 65536}, {64, 1024, 16384, 65536}, {1024}, {65536}, 1024, 5};
  return {0, 0, {}, {}, {}, {}, 0, 0};
}

template <class F>
void reg(const std::string& name, std::uint64_t iterations, F fn) {
  benchmark::RegisterBenchmark(name.c_str(), fn)
      ->UseManualTime()
      ->Iterations(std::int64_t(iterations))
      ->Unit(benchmark::kMillisecond);
}

void register_all(const Sizes& s) {
  // The real fork first, while this process is small (its own tables are copied too).
  reg("speed/real_fork/mib:" + std::to_string(s.real_mib), s.real_runs,
      [m = s.real_mib](benchmark::State& st) { real_fork(st, m); });
  reg("speed/host_anchor", 9, [](benchmark::State& st) { host_anchor(st); });
  // Then the footprints, before anything else has grown this process's heap: memory the
  // simulator keeps after a Machine is gone would hide the next Machine's (give_back measures
  // how much it keeps).
  for (std::uint64_t mib : s.footprint_mib)
    for (bool timed : {false, true})
      reg("speed/footprint/mib:" + std::to_string(mib) + "/timed:" + (timed ? "1" : "0"), 1,
          [=](benchmark::State& st) { footprint(st, mib, timed); });
  for (bool timed : {false, true})
    for (const Policy& p : policies())
      for (std::uint64_t mib : timed ? s.timed_mib : s.fork_mib) {
        const std::string tail =
            "/policy:" + p + "/mib:" + std::to_string(mib) + "/timed:" + (timed ? "1" : "0");
        const std::uint64_t it = mib > 4096 ? 3 : s.iterations;
        reg("speed/fork_exit" + tail, it,
            [=](benchmark::State& st) { fork_exit(st, p, mib, timed); });
        if (mib <= 1024)  // it stores into every page: host memory for each page's contents
          reg("speed/write_after_fork" + tail, it,
              [=](benchmark::State& st) { write_after_fork(st, p, mib, timed); });
      }
  // The timed fork and exit with struct pages outside the simulated caches (classic and the
  // seed): what the approximation buys.
  for (const Policy p : {"classic", "seed"})
    for (std::uint64_t mib : s.timed_mib)
      reg("speed/fork_exit/policy:" + p + "/mib:" + std::to_string(mib) +
              "/timed:1/struct_pages:uncached",
          mib > 4096 ? 3 : s.iterations,
          [=](benchmark::State& st) { fork_exit(st, p, mib, true, false); });
  for (std::uint64_t mib : s.walk_mib)
    for (Walk w : {Walk::sequential, Walk::random, Walk::tlb_hit})
      reg(std::string("speed/walk/pattern:") + name(w) + "/mib:" + std::to_string(mib), 3,
          [=](benchmark::State& st) { walk(st, w, mib, true); });
  // The same loads without the timing model: what the functional model's walk and the host's
  // memory cost alone (the bound of what the timing model's speed can reach).
  for (std::uint64_t mib : s.walk_mib)
    for (Walk w : {Walk::sequential, Walk::random})
      reg(std::string("speed/load_untimed/pattern:") + name(w) + "/mib:" + std::to_string(mib), 3,
          [=](benchmark::State& st) { walk(st, w, mib, false); });
  reg("speed/give_back/mib:" + std::to_string(s.give_back_mib), 1,
      [m = s.give_back_mib](benchmark::State& st) { give_back(st, m); });
}

}  // namespace

int main(int argc, char** argv) {
  return benchmark_main(
      argc, argv, "cowpte_speed", "full",
      "usage: %s [--cowpte_speed=quick|full] [Google Benchmark flags]\n"
      "  --cowpte_speed=NAME  quick (the guard of scripts/test.sh, seconds) or full\n"
      "                       (default: 64 MiB to 64 GiB, minutes)\n\n",
      [](const std::string& which) {
        const Sizes s = sizes(which);
        if (s.fork_mib.empty()) {
          std::fprintf(stderr, "cowpte_bench_speed: unknown size set '%s' (quick, full)\n",
                       which.c_str());
          return false;
        }
        register_all(s);
        return true;
      });
}
