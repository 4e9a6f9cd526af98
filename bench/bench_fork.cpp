// Host time of the model's classic fork per PTE copied (no timing model), against populated
// 4 KiB anonymous memory. Reported counters: ns per PTE, PTEs, VmPTE of the child.
#include <benchmark/benchmark.h>

#include <cowpte/cowpte.hpp>

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
  state.counters["ns_per_pte"] =
      benchmark::Counter(ptes * state.iterations(), benchmark::Counter::kIsRate |
                                                        benchmark::Counter::kInvert);
  state.counters["child_VmPTE_kB"] = static_cast<double>(child_pte >> 10);
}
BENCHMARK(BM_ClassicFork)->Arg(64)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
