// MachineConfig to and from JSON: the whole machine (memory, CPUs, COW PTE policy, timing
// model) in one file, so that an experiment's machine is written down next to its results.
// Keys are the member names; a key left out keeps its default; an unknown key is an error
// (a typo must not silently run the default machine).
// Every value is checked for its JSON type and its range when loaded; an error is a
// std::invalid_argument naming the JSON path (e.g. "timing.l1d.ways") and the allowed range.
#pragma once

#include <cstdint>
#include <string>

#include "cowpte/machine.hpp"

namespace cowpte {

// The allowed ranges. memory_bytes: 64 KiB up to 2^46 (MAX_PHYSMEM_BITS with 4-level paging);
// cpus: 1..64; swap_bytes: 0, or 40 KiB up to 2^40 (1 TiB: its swap_map is one byte per 4 KiB slot
// in host memory; slot offsets stay within page->private's 32 bits); timing.ghz: 0.001..1000; each
// timing geometry: sets a power of two up to 65536, ways 1..64, at most 2^20 entries in all.
inline constexpr std::uint64_t kMinMemoryBytes = 64ull << 10;
inline constexpr std::uint64_t kMaxMemoryBytes = 1ull << 46;
inline constexpr std::uint64_t kMaxCpus = 64;
inline constexpr std::uint64_t kMinSwapBytes = 40ull << 10;  // mkswap: 10 pages
inline constexpr std::uint64_t kMaxSwapBytes = 1ull
                                               << 40;  // mm_cpumask is one word (MmStruct::cpumask)
inline constexpr double kMinGhz = 0.001, kMaxGhz = 1000;
inline constexpr std::uint64_t kMaxSets = 65536, kMaxWays = 64, kMaxEntries = 1ull << 20;

// Throws std::invalid_argument naming the first field out of range; Machine's constructor
// calls it, so a MachineConfig built in code is held to the same ranges as one loaded.
void check_machine_config(const MachineConfig& cfg);

MachineConfig machine_config_from_json(const std::string& json);  // throws std::invalid_argument
MachineConfig load_machine_config(const std::string& path);       // the same, from a file
std::string to_json(const MachineConfig& cfg);                    // every key, with its value

}  // namespace cowpte
