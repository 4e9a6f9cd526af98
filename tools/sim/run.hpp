// cowpte-sim's runs: one scenario on one Machine, its statistics as JSON (the schema:
// docs/schema/cowpte-sim.schema.json) and as a human summary.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "sim/progress.hpp"
#include "sim/scenario.hpp"

namespace cowpte::sim {

// Runs the scenario: builds the machine, populates (built-in workloads), runs the warm-up,
// resets the statistics and runs the measured phase. Throws std::exception when the
// simulation fails (a call the workload needs is refused, a malformed trace).
json run_scenario(const Scenario&, Progress&);

// The terminal summary of run_scenario's JSON.
std::string summarize(const json& out);

}  // namespace cowpte::sim
