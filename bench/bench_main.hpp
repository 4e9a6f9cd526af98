// What the Google Benchmark programs of bench/ share: a workload that throws marks its benchmark
// failed instead of ending the run, and a main() with one option of the program's own.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace cowpte::bench {

// Runs body; a workload that fails (an mmap, a fork) marks the benchmark instead of aborting
// the whole run.
inline void guarded(benchmark::State& state, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// main() of a benchmark program with one option of its own, --OPTION=VALUE (value: its
// default). --help prints usage (a printf format taking the program's name) before Google
// Benchmark's flags. setup(value) registers the benchmarks, or says on stderr why value is bad
// and returns false. Exits 2 for a bad value or an argument Google Benchmark does not know; the
// value goes into the JSON's context under OPTION.
template <class Setup>
int benchmark_main(int argc, char** argv, const std::string& option, std::string value,
                   const char* usage, Setup&& setup) {
  const std::string prefix = "--" + option + "=";
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      value = argv[i] + prefix.size();
      continue;
    }
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf(usage, argv[0]);  // ours first; Google Benchmark then prints its flags
      std::fflush(stdout);
    }
    args.push_back(argv[i]);
  }
  if (!setup(value)) return 2;
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 2;
  benchmark::AddCustomContext(option, value);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace cowpte::bench
