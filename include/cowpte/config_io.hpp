// MachineConfig to and from JSON: the whole machine (memory, CPUs, COW PTE policy, timing
// model) in one file, so that an experiment's machine is written down next to its results.
// Keys are the member names; a key left out keeps its default; an unknown key is an error
// (a typo must not silently run the default machine).
#pragma once

#include <string>

#include "cowpte/machine.hpp"

namespace cowpte {

MachineConfig machine_config_from_json(const std::string& json);  // throws std::invalid_argument
MachineConfig load_machine_config(const std::string& path);       // the same, from a file
std::string to_json(const MachineConfig& cfg);                    // every key, with its value

}  // namespace cowpte
