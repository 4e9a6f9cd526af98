// Host time of the model's classic fork per PTE copied (no timing model), against populated
// 4 KiB anonymous memory. Reported counters: ns per PTE, PTEs, VmPTE of the child.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cowpte/cowpte.hpp>
#include <cstdio>
#include <string>

#include "real_fork.hpp"

using namespace cowpte;

static void BM_ClassicFork(benchmark::State& state) {
  const std::uint64_t len = static_cast<std::uint64_t>(state.range(0)) << 20;
  Machine m(MachineConfig{.memory_bytes = 2 * len + (256ull << 20)});
  Process& parent = m.spawn();
  auto addr = parent.mmap(0, len, Prot::read | Prot::write,
                          MapFlags::private_ | MapFlags::anonymous | MapFlags::populate);
  if (!addr) {
    state.SkipWithError("mmap failed");
    return;
  }
  std::uint64_t child_pte = 0;
  for (auto _ : state) {
    auto child = parent.fork();
    state.PauseTiming();
    child_pte = (*child)->pgtables_bytes();
    (*child)->exit();
    state.ResumeTiming();
  }
  const double ptes = static_cast<double>(len >> 12);
  state.counters["ptes"] = ptes;
  state.counters["ns_per_pte"] = benchmark::Counter(
      ptes * state.iterations(), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["child_VmPTE_kB"] = static_cast<double>(child_pte >> 10);
}
BENCHMARK(BM_ClassicFork)
    ->Arg(64)
    ->Arg(256)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Map and populate len bytes of private anonymous memory at a 2 MiB-aligned address (so that
// On-demand-fork can share every table); false, with the benchmark marked, if mmap fails.
static bool populate_aligned(Process& p, std::uint64_t len, benchmark::State& state) {
  const MapFlags flags =
      MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate;
  if (p.mmap(0x7e0000000000ull, len, Prot::read | Prot::write, flags)) return true;
  state.SkipWithError("mmap failed");
  return false;
}

// The same fork under every registered fork policy, in one run so that their ratio is what
// counts: BM_Fork/policy:NAME/mib:N. Counters: ns per populated page, the child's VmPTE, and the
// table frames the fork allocated.
static void BM_Fork(benchmark::State& state, const std::string& policy, std::uint64_t mib) {
  const std::uint64_t len = mib << 20;
  Machine m(MachineConfig{.memory_bytes = 2 * len + (256ull << 20)});
  Process& parent = m.spawn();
  if (!populate_aligned(parent, len, state)) return;
  if (policy != "classic" && !parent.set_cow_pte(policy)) {
    state.SkipWithError("set_cow_pte failed");
    return;
  }
  std::uint64_t child_pte = 0, frames = 0;
  for (auto _ : state) {
    const std::uint64_t free_before = m.free_pages();
    auto child = parent.fork();
    state.PauseTiming();
    frames = free_before - m.free_pages();
    child_pte = (*child)->pgtables_bytes();
    (*child)->exit();
    state.ResumeTiming();
  }
  const double pages = static_cast<double>(len >> 12);
  state.counters["ns_per_page"] = benchmark::Counter(
      pages * state.iterations(), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["child_VmPTE_kB"] = static_cast<double>(child_pte >> 10);
  state.counters["frames_allocated"] = static_cast<double>(frames);
}
[[maybe_unused]] static const bool kForkRegistered = [] {
  for (const std::string& policy : sound_fork_policy_names())
    for (std::uint64_t mib : {64, 1024})
      benchmark::RegisterBenchmark(
          ("BM_Fork/policy:" + policy + "/mib:" + std::to_string(mib)).c_str(),
          [policy, mib](benchmark::State& s) { BM_Fork(s, policy, mib); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  return true;
}();

// Simulator speed against this machine's kernel, in one run: the host time of a simulated
// classic fork with the full timing model (TLBs, caches, every kernel path charged), and the
// time the real kernel takes to fork a process with the same memory populated.
static void BM_TimedFork(benchmark::State& state) {
  const std::uint64_t len = static_cast<std::uint64_t>(state.range(0)) << 20;
  MachineConfig cfg{.memory_bytes = 2 * len + (256ull << 20)};
  cfg.timing.enabled = true;
  Machine m(cfg);
  Process& parent = m.spawn();
  if (!populate_aligned(parent, len, state)) return;
  double sim_cycles = 0;
  for (auto _ : state) {
    const std::uint64_t before = parent.hw_stats().phase[std::size_t(Phase::fork)].cycles;
    auto child = parent.fork();
    state.PauseTiming();
    sim_cycles = double(parent.hw_stats().phase[std::size_t(Phase::fork)].cycles - before);
    (*child)->exit();
    state.ResumeTiming();
  }
  state.counters["sim_ms"] = sim_cycles / cfg.timing.ghz / 1e6;
  state.counters["host_ns_per_pte"] =
      benchmark::Counter(double(len >> 12) * state.iterations(),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_TimedFork)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

static void BM_RealFork(benchmark::State& state) {
  cowpte::bench::RealProcessMemory mem(static_cast<std::uint64_t>(state.range(0)) << 20);
  for (auto _ : state) state.SetIterationTime(mem.fork_ns() / 1e9);
}
BENCHMARK(BM_RealFork)->Arg(1024)->Unit(benchmark::kMillisecond)->UseManualTime();

// User accesses that hit the DTLB, with the timing model: sequential 8-byte loads over 32 pages
// (the DTLB holds 64), so every access is a TLB hit; one in eight starts a new cache line (an
// L1 miss and an L2 hit once the 128 KiB have been read once).
static void BM_TimedTlbHitLoads(benchmark::State& state) {
  MachineConfig cfg{.memory_bytes = 64ull << 20};
  cfg.timing.enabled = true;
  Machine m(cfg);
  Process& p = m.spawn();
  const vaddr_t base = 0x7e0000000000ull;
  if (!p.mmap(base, 32 * 4096, Prot::read | Prot::write,
              MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate)) {
    state.SkipWithError("mmap failed");
    return;
  }
  std::uint64_t sum = 0, i = 0;
  for (auto _ : state) {
    sum += *p.load(base + (i & (32 * 512 - 1)) * 8);
    ++i;
  }
  benchmark::DoNotOptimize(sum);
  state.counters["accesses_per_s"] =
      benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["dtlb_hit_ratio"] =
      double(p.hw_stats().dtlb_hits) / double(std::max<std::uint64_t>(1, state.iterations()));
}
BENCHMARK(BM_TimedTlbHitLoads);

// Host memory per simulated populated page: map and populate N GiB, fork, and read the
// process's peak RSS. Page contents are never stored (zero pages cost no host memory), so
// this is the model's own overhead: struct page, PTEs of parent and child, tables.
static std::uint64_t vm_hwm_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  std::uint64_t kb = 0;
  while (f && std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %lu kB", &kb) == 1) break;
  if (f) std::fclose(f);
  return kb << 10;
}

static void BM_Footprint(benchmark::State& state) {
  const std::uint64_t len = static_cast<std::uint64_t>(state.range(0)) << 30;
  for (auto _ : state) {
    const std::uint64_t before = vm_hwm_bytes();
    Machine m(MachineConfig{.memory_bytes = len + (1ull << 30)});
    Process& parent = m.spawn();
    auto addr = parent.mmap(0, len, Prot::read | Prot::write,
                            MapFlags::private_ | MapFlags::anonymous | MapFlags::populate);
    if (!addr) {
      state.SkipWithError("mmap failed");
      return;
    }
    auto child = parent.fork();
    if (!child) {
      state.SkipWithError("fork failed");
      return;
    }
    const double pages = static_cast<double>(len >> 12);
    state.counters["host_bytes_per_page_after_fork"] =
        static_cast<double>(vm_hwm_bytes() - before) / pages;
    state.counters["pages"] = pages;
  }
}
BENCHMARK(BM_Footprint)->Arg(1)->Arg(64)->Iterations(1)->Unit(benchmark::kSecond);

// BENCHMARK_MAIN, with exit status 2 for an argument Google Benchmark does not know.
int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
