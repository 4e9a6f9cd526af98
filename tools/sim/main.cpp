// cowpte-sim: one scenario file in (the machine, the fork policy, a workload: a built-in one of
// the fork comparison or a trace to replay), statistics out (a summary on the terminal, every
// figure as JSON). docs/cowpte-sim.md.
//
//   cowpte-sim scenario.json [--set key.path=value]... [--json out.json] [--progress auto]
//
// Exit codes: 0 done; 1 the simulation failed; 2 bad arguments or a bad scenario.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "sim/run.hpp"

namespace {

using namespace cowpte::sim;

int write_json(const json& out, const std::string& path) {
  const std::string text = out.dump(1) + "\n";
  if (path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  std::ofstream f(path);
  f << text;
  f.close();
  if (!f) {
    std::fprintf(stderr, "cowpte-sim: cannot write '%s'\n", path.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "cowpte-sim: run one scenario (machine, fork policy, workload) on the simulated machine\n"
      "and print its statistics. The scenario format: docs/cowpte-sim.md."};
  app.name("cowpte-sim");
  std::string scenario_path, json_path;
  std::vector<std::string> sets;
  std::string progress = "auto";
  bool quiet = false, print_scenario = false;
  app.add_option("scenario", scenario_path, "the scenario file (JSON)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--set", sets,
                 "override a key of the scenario, e.g. --set workload.mib=256 "
                 "--set machine.timing.l1d.ways=8 (repeatable; the value is JSON, or a string)");
  app.add_option("--json", json_path, "write every statistic as JSON to this file ('-': stdout)");
  app.add_option("--progress", progress,
                 "the progress bar on stderr: auto (on a terminal, after a second), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}));
  app.add_flag("--quiet,-q", quiet, "no summary on stdout");
  app.add_flag("--print-scenario", print_scenario,
               "print the scenario as it would run (defaults filled in, overrides applied), "
               "then exit without simulating");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  Scenario s;
  try {
    s = load_scenario(scenario_path, sets);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cowpte-sim: %s\n", e.what());
    return 2;
  }
  if (print_scenario) {
    std::printf("%s\n", s.doc.dump(2).c_str());
    return 0;
  }
  json out;
  try {
    Progress bar(progress == "always"  ? ProgressMode::always
                 : progress == "never" ? ProgressMode::never
                                       : ProgressMode::auto_,
                 "cowpte-sim");
    out = run_scenario(s, bar);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cowpte-sim: the simulation failed: %s\n", e.what());
    return 1;
  }
  if (!quiet && json_path != "-") std::fputs(summarize(out).c_str(), stdout);
  return json_path.empty() ? 0 : write_json(out, json_path);
}
