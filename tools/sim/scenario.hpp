// cowpte-sim's scenario file (docs/cowpte-sim.md): the machine, the fork policy, one workload
// and its phases, as JSON. Every key is checked: an unknown key or a value of the wrong type or
// range is a ScenarioError naming its JSON path, so that a typo never runs a default.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "cowpte/config_io.hpp"
#include "cowpte/trace.hpp"
#include "workloads.hpp"

namespace cowpte::sim {

using nlohmann::json;

class ScenarioError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class WorkloadKind { fork, write_after_fork, fork_server, snapshot, trace };
inline constexpr const char* kWorkloadNames[] = {"fork", "write_after_fork", "fork_server",
                                                 "snapshot", "trace"};

struct Workload {
  WorkloadKind kind = WorkloadKind::fork;
  std::uint64_t mib = 64;  // the populated parent (built-in workloads)
  bench::Layout layout = bench::Layout::plain;
  bench::Pattern pattern = bench::Pattern::sequential;  // write_after_fork
  std::uint64_t random_writes = 0;  // write_after_fork, random: stores (0: pages / 8)
  std::uint64_t pages_per_exec = 16, execs = 100;  // fork_server: the child's stores, per round
  std::uint64_t write_every = 64;                  // snapshot: one parent store per N child loads
  std::uint64_t seed = 1;
  std::filesystem::path trace;  // trace: the file, relative to the scenario file
  TraceSummary summary;         // trace: what it holds (its largest mapped size sizes the machine)
};

struct Scenario {
  json doc;  // the scenario as run (overrides applied), echoed in the output
  MachineConfig machine;
  std::string policy = "classic";
  Workload workload;
  // Built-in workloads: rounds (a fork and what follows it) run before reset_stats() and
  // rounds measured. A trace: steps replayed before reset_stats() and steps measured (0: all).
  std::uint64_t warmup = 0, iterations = 1;
};

// --set key.path=value: value as JSON if it parses (numbers, true, "text", [..]), else as a
// string; objects along the path are created.
void apply_override(json& doc, const std::string& assignment);

// The scenario from its JSON (after overrides); base is the scenario file's directory.
Scenario parse_scenario(json doc, const std::filesystem::path& base);

// The file, parsed, with the overrides applied in order.
Scenario load_scenario(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace cowpte::sim
