// cowpte_explore: the concurrency explorer over its built-in scenarios (explore_scenarios),
// per fork policy and strategy, as a Markdown table: schedules run, how many failed, the first
// failure and its minimised, replayable trace.
//
//   cowpte_explore [--policies classic,seed,...] [--scenarios break_vs_fault,...]
//                  [--strategies random,pct,exhaustive] [--schedules N] [--seed N]
//                  [--replay TRACE] [--verbose] [--all]
#include <cowpte/cowpte.hpp>
#include <cstdio>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"

using namespace cowpte;

namespace {

constexpr const char* kUsage =
    "usage: %s [--policies P,...] [--scenarios S,...] [--strategies random,pct,exhaustive]\n"
    "          [--schedules N] [--seed N] [--replay TRACE] [--verbose] [--all]\n"
    "  --policies    fork policies (default classic,seed,seed_exact,on_demand_fork)\n"
    "  --scenarios   built-in scenarios (default all: break_vs_fault, break_vs_exit,\n"
    "                fork_vs_fault, fork_vs_pin_fast, munmap_vs_fault, dontneed_vs_break)\n"
    "  --strategies  schedule strategies (default random,pct,exhaustive)\n"
    "  --schedules   schedules per scenario, policy and strategy, 1..1000000 (default 300)\n"
    "  --seed        the random and PCT strategies' seed (default 1)\n"
    "  --replay      run one schedule (a trace such as \"3>1 17>0\") of one scenario and policy\n"
    "  --verbose     after each row, every distinct failure with what the operations returned\n"
    "  --all         run every schedule (default: stop at the first failing one)\n";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

[[noreturn]] void bad(const char* what, const std::string& v) {
  std::fprintf(stderr, "cowpte_explore: bad %s '%s' (see --help)\n", what, v.c_str());
  std::exit(2);
}

const char* name_of(ExploreStrategy s) {
  switch (s) {
    case ExploreStrategy::random:
      return "random";
    case ExploreStrategy::pct:
      return "pct";
    case ExploreStrategy::exhaustive:
      return "exhaustive";
  }
  return "?";
}

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cowpte_explore: %s\n", e.what());
    return 1;
  }
}

int run(int argc, char** argv) {
  std::vector<std::string> policies{"classic", "seed", "seed_exact", "on_demand_fork"};
  std::vector<std::string> wanted;
  std::vector<ExploreStrategy> strategies{ExploreStrategy::random, ExploreStrategy::pct,
                                          ExploreStrategy::exhaustive};
  ExploreOptions opts;
  opts.schedules = 300;
  std::optional<ExploreTrace> replay;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) bad("argument (a value is missing after)", arg);
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::printf(kUsage, argv[0]);
      return 0;
    } else if (arg == "--policies") {
      const std::string v = next();
      policies = split(v);
      const std::vector<std::string> known = fork_policy_names();
      if (policies.empty()) bad("--policies", v);
      for (const std::string& p : policies)
        if (std::find(known.begin(), known.end(), p) == known.end()) bad("--policies item", p);
    } else if (arg == "--scenarios") {
      const std::string v = next();
      wanted = split(v);
      if (wanted.empty()) bad("--scenarios", v);
      for (const std::string& w : wanted) {
        bool found = false;
        for (const ExploreScenario& s : explore_scenarios("classic")) found |= s.name == w;
        if (!found) bad("--scenarios item", w);
      }
    } else if (arg == "--strategies") {
      const std::string v = next();
      strategies.clear();
      for (const std::string& s : split(v)) {
        if (s == "random") {
          strategies.push_back(ExploreStrategy::random);
        } else if (s == "pct") {
          strategies.push_back(ExploreStrategy::pct);
        } else if (s == "exhaustive") {
          strategies.push_back(ExploreStrategy::exhaustive);
        } else {
          bad("--strategies item", s);
        }
      }
      if (strategies.empty()) bad("--strategies", v);
    } else if (arg == "--schedules") {
      opts.schedules = unsigned(bench::uint_arg("cowpte_explore", arg, next(), 1, 1000000));
    } else if (arg == "--seed") {
      opts.seed = bench::uint_arg("cowpte_explore", arg, next(), 0, ~0ull);
    } else if (arg == "--all") {
      opts.stop_at_first = false;
    } else if (arg == "--verbose") {
      verbose = true;
    } else if (arg == "--replay") {
      const std::string v = next();
      replay = ExploreTrace::parse(v);
      if (!replay) bad("--replay trace", v);
    } else {
      std::fprintf(stderr, "cowpte_explore: unknown argument '%s'\n", arg.c_str());
      std::fprintf(stderr, kUsage, argv[0]);
      return 2;
    }
  }
  if (replay && (policies.size() != 1 || wanted.size() != 1)) {
    std::fprintf(stderr, "cowpte_explore: --replay needs one --policies and one --scenarios\n");
    return 2;
  }

  if (!replay)
    std::printf(
        "| scenario | policy | strategy | schedules | failing | first failure | trace "
        "(minimised) |\n|---|---|---|---|---|---|---|\n");
  for (const std::string& policy : policies) {
    for (const ExploreScenario& s : explore_scenarios(policy)) {
      if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), s.name) == wanted.end())
        continue;
      if (replay) {
        const auto v = explore_replay(s, *replay);
        std::printf("%s under %s, trace %s: %s\n", s.name.c_str(), policy.c_str(),
                    replay->str().c_str(), v ? v->c_str() : "no violation");
        return v ? 1 : 0;
      }
      for (const ExploreStrategy st : strategies) {
        opts.strategy = st;
        const ExploreReport r = explore(s, opts);
        std::printf("| %s | %s | %s | %u%s | %u | %s | %s |\n", s.name.c_str(), policy.c_str(),
                    name_of(st), r.schedules, r.exhausted ? " (all)" : "", r.failing,
                    r.first ? r.first->what.c_str() : "-",
                    r.first ? r.first->minimized.str().c_str() : "-");
        if (verbose) {
          const bool stop = opts.stop_at_first;
          opts.stop_at_first = false;
          std::set<std::string> seen;
          for (const ExploreFailure& f : explore(s, opts).failures)
            if (seen.insert(f.what).second)
              std::printf("    schedule %llu, trace %s: %s\n      %s\n",
                          static_cast<unsigned long long>(f.schedule), f.trace.str().c_str(),
                          f.what.c_str(), f.outcome.c_str());
          opts.stop_at_first = stop;
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
