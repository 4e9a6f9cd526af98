// MachineConfig <-> JSON with nlohmann-json.
#include "cowpte/config_io.hpp"
#include "cowpte/model/fork_policy.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace cowpte {

namespace {
using nlohmann::json;

// Read obj[key] into v if present, and mark the key as known.
template <class T>
void get(const json& obj, const char* key, T& v, std::vector<std::string>& known) {
  known.emplace_back(key);
  if (auto it = obj.find(key); it != obj.end()) it->get_to(v);
}

void reject_unknown(const json& obj, const std::vector<std::string>& known, const char* where) {
  for (auto it = obj.begin(); it != obj.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      throw std::invalid_argument(std::string("cowpte config: unknown key \"") + it.key() +
                                  "\" in " + where);
}

void from(const json& j, ArrayGeometry& g, const char* where) {
  std::vector<std::string> known;
  get(j, "sets", g.sets, known);
  get(j, "ways", g.ways, known);
  get(j, "latency", g.latency, known);
  reject_unknown(j, known, where);
}
json to(const ArrayGeometry& g) {
  return {{"sets", g.sets}, {"ways", g.ways}, {"latency", g.latency}};
}

// The timing members, in one table for both directions.
#define COWPTE_TIMING_GEOMETRY(X) \
  X(dtlb_4k) X(dtlb_2m) X(dtlb_1g) X(stlb) X(pwc_pml4e) X(pwc_pdpte) X(pwc_pde) X(l1d) X(l2) X(llc)
// One scalar a line: clang-format is not stable on this list.
// clang-format off
#define COWPTE_TIMING_SCALARS(X) \
  X(enabled) \
  X(ghz) \
  X(dram_latency) \
  X(next_line_prefetch) \
  X(atomic_rmw) \
  X(lock_acquire) \
  X(lock_release) \
  X(page_zero) \
  X(page_copy) \
  X(page_alloc) \
  X(invlpg) \
  X(full_flush) \
  X(flush_ceiling) \
  X(ipi_send) \
  X(ipi_handle) \
  X(exception) \
  X(syscall) \
  X(pte_op) \
  X(vma_op) \
  X(fork_base)
// clang-format on

void from(const json& j, TimingConfig& t) {
  std::vector<std::string> known;
#define X(m) get(j, #m, t.m, known);
  COWPTE_TIMING_SCALARS(X)
#undef X
#define X(m)              \
  known.emplace_back(#m); \
  if (auto it = j.find(#m); it != j.end()) from(*it, t.m, "timing." #m);
  COWPTE_TIMING_GEOMETRY(X)
#undef X
  reject_unknown(j, known, "timing");
}
json to(const TimingConfig& t) {
  json j;
#define X(m) j[#m] = t.m;
  COWPTE_TIMING_SCALARS(X)
#undef X
#define X(m) j[#m] = to(t.m);
  COWPTE_TIMING_GEOMETRY(X)
#undef X
  return j;
}
}  // namespace

MachineConfig machine_config_from_json(const std::string& text) {
  MachineConfig cfg;
  try {
    const json j = json::parse(text);
    std::vector<std::string> known;
    get(j, "memory_bytes", cfg.memory_bytes, known);
    get(j, "cpus", cfg.cpus, known);
    get(j, "trace", cfg.trace, known);
    known.emplace_back("cow_pte_policy");
    if (auto it = j.find("cow_pte_policy"); it != j.end()) {
      const std::string p = it->get<std::string>();
      if (!find_fork_policy(p)) {
        std::string names;
        for (const std::string& n : fork_policy_names()) names += (names.empty() ? "" : ", ") + n;
        throw std::invalid_argument("cowpte config: cow_pte_policy \"" + p +
                                    "\" is not a fork policy (" + names + ")");
      }
      cfg.cow_pte_policy = p;
    }
    known.emplace_back("timing");
    if (auto it = j.find("timing"); it != j.end()) from(*it, cfg.timing);
    reject_unknown(j, known, "the machine");
  } catch (const json::exception& e) {
    throw std::invalid_argument(std::string("cowpte config: ") + e.what());
  }
  return cfg;
}

MachineConfig load_machine_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cowpte config: cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return machine_config_from_json(text.str());
}

std::string to_json(const MachineConfig& cfg) {
  json j;
  j["memory_bytes"] = cfg.memory_bytes;
  j["cpus"] = cfg.cpus;
  j["trace"] = cfg.trace;
  j["cow_pte_policy"] = cfg.cow_pte_policy.str();
  j["timing"] = to(cfg.timing);
  return j.dump(2);
}

}  // namespace cowpte
