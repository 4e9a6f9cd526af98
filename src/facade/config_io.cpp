// MachineConfig <-> JSON with nlohmann-json.
#include "cowpte/config_io.hpp"
#include "cowpte/model/fork_policy.hpp"

#include <algorithm>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace cowpte {

namespace {
using nlohmann::json;

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw std::invalid_argument("cowpte config: " + path + " " + what);
}

// The checked readers: obj[key], if present, must have the right JSON type and lie in the
// allowed range; the error names the JSON path. Mark the key as known.
void get_value(const json& v, const std::string& path, bool& out) {
  if (!v.is_boolean()) bad(path, std::string("must be true or false, not ") + v.type_name());
  out = v.get<bool>();
}
void get_value(const json& v, const std::string& path, double& out) {
  if (!v.is_number()) bad(path, std::string("must be a number, not ") + v.type_name());
  out = v.get<double>();
}
// The range of an integer field (the same as check_machine_config's), else its type's.
std::pair<std::uint64_t, std::uint64_t> int_range(const std::string& path, std::uint64_t type_max) {
  auto ends_with = [&](const char* tail) {
    const std::string t(tail);
    return path.size() >= t.size() && path.compare(path.size() - t.size(), t.size(), t) == 0;
  };
  if (path == "memory_bytes") return {kMinMemoryBytes, kMaxMemoryBytes};
  if (path == "cpus") return {1, kMaxCpus};
  if (path == "swap_bytes") return {0, kMaxSwapBytes};
  if (path.starts_with("timing.") && ends_with(".sets")) return {1, kMaxSets};
  if (path.starts_with("timing.") && ends_with(".ways")) return {1, kMaxWays};
  return {0, type_max};
}

template <class T>
requires std::is_unsigned_v<T>
void get_value(const json& v, const std::string& path, T& out) {
  const auto [lo, hi] = int_range(path, std::numeric_limits<T>::max());
  const std::string range = std::to_string(lo) + ".." + std::to_string(hi);
  if (!v.is_number_integer()) bad(path, "must be an integer in " + range + ", not " + v.dump());
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() < lo || v.get<std::uint64_t>() > hi)
    bad(path, "is " + v.dump() + ", out of range " + range);
  out = static_cast<T>(v.get<std::uint64_t>());
}

template <class T>
void get(const json& obj, const char* key, T& v, std::vector<std::string>& known,
         const std::string& where) {
  known.emplace_back(key);
  if (auto it = obj.find(key); it != obj.end())
    get_value(*it, where.empty() ? key : where + "." + key, v);
}

void require_object(const json& j, const std::string& path) {
  if (!j.is_object()) bad(path, std::string("must be a JSON object, not ") + j.type_name());
}

void reject_unknown(const json& obj, const std::vector<std::string>& known, const char* where) {
  for (auto it = obj.begin(); it != obj.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      throw std::invalid_argument(std::string("cowpte config: unknown key \"") + it.key() +
                                  "\" in " + where);
}

void from(const json& j, ArrayGeometry& g, const char* where) {
  require_object(j, where);
  std::vector<std::string> known;
  get(j, "sets", g.sets, known, where);
  get(j, "ways", g.ways, known, where);
  get(j, "latency", g.latency, known, where);
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
  X(struct_pages_cached) \
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
  X(fork_base) \
  X(swap_in) \
  X(swap_out)
// clang-format on

void from(const json& j, TimingConfig& t) {
  require_object(j, "timing");
  std::vector<std::string> known;
#define X(m) get(j, #m, t.m, known, "timing");
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

namespace {
void check_range(const std::string& path, std::uint64_t v, std::uint64_t lo, std::uint64_t hi) {
  if (v < lo || v > hi)
    bad(path, "is " + std::to_string(v) + ", out of range " + std::to_string(lo) + ".." +
                  std::to_string(hi));
}
void check_geometry(const ArrayGeometry& g, const std::string& path) {
  check_range(path + ".sets", g.sets, 1, kMaxSets);
  if (g.sets & (g.sets - 1))
    bad(path + ".sets", "is " + std::to_string(g.sets) + ", not a power of two (1.." +
                            std::to_string(kMaxSets) + ")");
  check_range(path + ".ways", g.ways, 1, kMaxWays);
  check_range(path + ".sets * " + path + ".ways", std::uint64_t(g.sets) * g.ways, 1, kMaxEntries);
}
// For errors: the names a cow_pte_policy may take.
std::string policy_list() {
  std::string names;
  for (const std::string& n : fork_policy_names()) names += (names.empty() ? "" : ", ") + n;
  return "not a fork policy (" + names + ")";
}

}  // namespace

void check_machine_config(const MachineConfig& cfg) {
  check_range("memory_bytes", cfg.memory_bytes, kMinMemoryBytes, kMaxMemoryBytes);
  check_range("cpus", cfg.cpus, 1, kMaxCpus);
  check_range("swap_bytes", cfg.swap_bytes, 0, kMaxSwapBytes);
  if (cfg.swap_bytes && cfg.swap_bytes < kMinSwapBytes)
    bad("swap_bytes", "is " + std::to_string(cfg.swap_bytes) + ", below mkswap's minimum " +
                          std::to_string(kMinSwapBytes) + " (or 0: no swap)");
  if (!find_fork_policy(cfg.cow_pte_policy))
    bad("cow_pte_policy", "\"" + cfg.cow_pte_policy.str() + "\" is " + policy_list());
  // The khugepaged sysfs files refuse a value above HPAGE_PMD_NR - 1.
  check_range("khugepaged_max_ptes_none", cfg.khugepaged_max_ptes_none, 0, 511);
  check_range("khugepaged_max_ptes_swap", cfg.khugepaged_max_ptes_swap, 0, 511);
  check_range("khugepaged_max_ptes_shared", cfg.khugepaged_max_ptes_shared, 0, 511);
  const TimingConfig& t = cfg.timing;
  if (!(t.ghz >= kMinGhz && t.ghz <= kMaxGhz))  // also rejects NaN
    bad("timing.ghz", "is " + std::to_string(t.ghz) + ", out of range " + std::to_string(kMinGhz) +
                          ".." + std::to_string(kMaxGhz));
#define X(m) check_geometry(t.m, "timing." #m);
  COWPTE_TIMING_GEOMETRY(X)
#undef X
}

MachineConfig machine_config_from_json(const std::string& text) {
  MachineConfig cfg;
  try {
    const json j = json::parse(text);
    if (!j.is_object())
      bad("the machine", std::string("must be a JSON object, not ") + j.type_name());
    std::vector<std::string> known;
    get(j, "memory_bytes", cfg.memory_bytes, known, "");
    get(j, "cpus", cfg.cpus, known, "");
    get(j, "swap_bytes", cfg.swap_bytes, known, "");
    get(j, "trace", cfg.trace, known, "");
    get(j, "zero_page", cfg.zero_page, known, "");
    get(j, "thp_use_zero_page", cfg.thp_use_zero_page, known, "");
    get(j, "khugepaged_max_ptes_none", cfg.khugepaged_max_ptes_none, known, "");
    get(j, "khugepaged_max_ptes_swap", cfg.khugepaged_max_ptes_swap, known, "");
    get(j, "khugepaged_max_ptes_shared", cfg.khugepaged_max_ptes_shared, known, "");
    known.emplace_back("thp");
    if (auto it = j.find("thp"); it != j.end()) {
      if (!it->is_string()) bad("thp", std::string("must be a string, not ") + it->type_name());
      const std::string m = it->get<std::string>();
      bool found = false;
      for (ThpMode t : {ThpMode::always, ThpMode::madvise, ThpMode::never})
        if (m == to_string(t)) cfg.thp = t, found = true;
      if (!found) bad("thp", "\"" + m + "\" is not a THP mode (always, madvise, never)");
    }
    known.emplace_back("cow_pte_policy");
    if (auto it = j.find("cow_pte_policy"); it != j.end()) {
      if (!it->is_string())
        bad("cow_pte_policy", std::string("must be a string, not ") + it->type_name());
      const std::string p = it->get<std::string>();
      if (!find_fork_policy(p)) bad("cow_pte_policy", "\"" + p + "\" is " + policy_list());
      cfg.cow_pte_policy = p;
    }
    known.emplace_back("timing");
    if (auto it = j.find("timing"); it != j.end()) from(*it, cfg.timing);
    reject_unknown(j, known, "the machine");
  } catch (const json::exception& e) {
    throw std::invalid_argument(std::string("cowpte config: ") + e.what());
  }
  check_machine_config(cfg);  // the ranges, named by the same paths
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
  j["swap_bytes"] = cfg.swap_bytes;
  j["trace"] = cfg.trace;
  j["zero_page"] = cfg.zero_page;
  j["thp"] = std::string(to_string(cfg.thp));
  j["thp_use_zero_page"] = cfg.thp_use_zero_page;
  j["khugepaged_max_ptes_none"] = cfg.khugepaged_max_ptes_none;
  j["khugepaged_max_ptes_swap"] = cfg.khugepaged_max_ptes_swap;
  j["khugepaged_max_ptes_shared"] = cfg.khugepaged_max_ptes_shared;
  j["cow_pte_policy"] = cfg.cow_pte_policy.str();
  j["timing"] = to(cfg.timing);
  return j.dump(2);
}

}  // namespace cowpte
