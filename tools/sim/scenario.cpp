// cowpte-sim's scenario file: parsing and checking (scenario.hpp).
#include "sim/scenario.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

namespace cowpte::sim {

namespace {

// "a, b, c" (appending piecewise: GCC 12's -Wrestrict misfires on `"" + string` at -O3).
template <class Range>
std::string join(const Range& names) {
  std::string list;
  for (const auto& n : names) {
    if (!list.empty()) list += ", ";
    list += n;
  }
  return list;
}

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw ScenarioError(path + ": " + what);
}

void check_keys(const json& obj, const std::string& path, const std::set<std::string>& known) {
  if (!obj.is_object()) bad(path, std::string("must be a JSON object, not ") + obj.type_name());
  for (const auto& [k, v] : obj.items())
    if (!known.count(k))
      bad(path.empty() ? k : path + "." + k, "unknown key (known: " + join(known) + ")");
}

std::uint64_t uint_at(const json& obj, const std::string& path, const char* key, std::uint64_t def,
                      std::uint64_t lo, std::uint64_t hi) {
  if (!obj.contains(key)) return def;
  const json& v = obj[key];
  const std::string where = path.empty() ? key : path + "." + key;
  if (!v.is_number_unsigned())
    bad(where, std::string("must be an unsigned integer, not ") + v.dump());
  const auto n = v.get<std::uint64_t>();
  if (n < lo || n > hi)
    bad(where,
        std::to_string(n) + " is out of range " + std::to_string(lo) + ".." + std::to_string(hi));
  return n;
}

std::string string_at(const json& obj, const std::string& path, const char* key,
                      const std::string& def) {
  if (!obj.contains(key)) return def;
  const json& v = obj[key];
  if (!v.is_string()) bad(path + "." + key, std::string("must be a string, not ") + v.dump());
  return v.get<std::string>();
}

template <class E, std::size_t N>
E enum_at(const json& obj, const std::string& path, const char* key, E def,
          const char* const (&names)[N]) {
  const std::string s = string_at(obj, path, key, names[std::size_t(def)]);
  for (std::size_t i = 0; i < N; ++i)
    if (s == names[i]) return E(i);
  bad(path + "." + key, "'" + s + "' is not one of " + join(names));
}

constexpr const char* kLayouts[] = {"plain", "aligned", "small_vmas"};
constexpr const char* kPatterns[] = {"sequential", "random"};
constexpr std::uint64_t kMaxMib = 1ull << 26;  // 64 TiB: beyond any simulated machine

Workload parse_workload(const json& w, const std::filesystem::path& base) {
  const std::string p = "workload";
  if (!w.is_object()) bad(p, "must be a JSON object with a \"kind\"");
  Workload wl;
  if (!w.contains("kind")) bad(p + ".kind", "missing (one of fork, write_after_fork, ...)");
  wl.kind = enum_at(w, p, "kind", WorkloadKind::fork, kWorkloadNames);
  if (wl.kind == WorkloadKind::trace) {
    check_keys(w, p, {"kind", "path"});
    if (!w.contains("path")) bad(p + ".path", "missing: the trace file");
    wl.trace = string_at(w, p, "path", "");
    if (wl.trace.is_relative()) wl.trace = base / wl.trace;
    try {  // read once now: a bad file fails before any simulation, and sizes the machine
      TraceReader r(wl.trace.string());
      wl.summary = summarize_trace(r);
    } catch (const TraceError& e) {
      bad(p + ".path", e.what());
    }
    wl.mib = std::max<std::uint64_t>(1, (wl.summary.mapped_bytes_max + (1 << 20) - 1) >> 20);
    return wl;
  }
  std::set<std::string> known = {"kind", "mib", "layout"};
  switch (wl.kind) {
    case WorkloadKind::write_after_fork:
      known.insert({"pattern", "random_writes", "seed"});
      break;
    case WorkloadKind::fork_server:
      known.insert({"pages_per_exec", "execs", "seed"});
      break;
    case WorkloadKind::snapshot:
      known.insert({"write_every", "seed"});
      break;
    default:
      break;
  }
  check_keys(w, p, known);
  wl.mib = uint_at(w, p, "mib", wl.mib, 1, kMaxMib);
  wl.layout = enum_at(w, p, "layout", wl.layout, kLayouts);
  wl.pattern = enum_at(w, p, "pattern", wl.pattern, kPatterns);
  const std::uint64_t pages = wl.mib << 8;
  wl.random_writes = uint_at(w, p, "random_writes", pages / 8, 1, 1ull << 40);
  wl.pages_per_exec = uint_at(w, p, "pages_per_exec", wl.pages_per_exec, 0, pages);
  wl.execs = uint_at(w, p, "execs", wl.execs, 1, 1u << 30);
  wl.write_every = uint_at(w, p, "write_every", wl.write_every, 1, 1ull << 40);
  wl.seed = uint_at(w, p, "seed", wl.seed, 0, ~0ull);
  if (wl.layout == bench::Layout::small_vmas && wl.mib * 1024 < 64)
    bad(p + ".mib", "small_vmas needs at least 1 MiB");
  return wl;
}

// The machine: the workload's default (room for the parent, a full copy and the tables, one
// CPU; two for a snapshot, whose child runs beside the parent) with the scenario's keys on top.
MachineConfig parse_machine(const json& doc, const Workload& wl) {
  const unsigned cpus = wl.kind == WorkloadKind::snapshot ? 2 : 1;
  const MachineConfig def = bench::machine_config(wl.mib << 20, /*timed=*/true, cpus);
  json m = json::parse(to_json(def));
  if (doc.contains("machine")) {
    if (!doc["machine"].is_object()) bad("machine", "must be a JSON object");
    m.merge_patch(doc["machine"]);
  }
  try {
    return machine_config_from_json(m.dump());
  } catch (const std::invalid_argument& e) {
    throw ScenarioError(std::string("machine: ") + e.what());
  }
}

json parse_value(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::parse_error&) {
    return json(text);  // a bare word: a string
  }
}

}  // namespace

void apply_override(json& doc, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ScenarioError("--set '" + assignment + "': expected key.path=value");
  const std::string path = assignment.substr(0, eq);
  json* at = &doc;
  std::size_t start = 0;
  for (;;) {
    const auto dot = path.find('.', start);
    const std::string key = path.substr(start, dot - start);
    if (key.empty()) throw ScenarioError("--set '" + assignment + "': an empty key in the path");
    if (!at->is_object()) {
      if (!at->is_null())
        throw ScenarioError("--set '" + assignment + "': '" + path.substr(0, start - 1) +
                            "' is not an object");
      *at = json::object();
    }
    at = &(*at)[key];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  *at = parse_value(assignment.substr(eq + 1));
}

Scenario parse_scenario(json doc, const std::filesystem::path& base) {
  check_keys(doc, "", {"machine", "policy", "workload", "warmup", "iterations", "description"});
  Scenario s;
  if (!doc.contains("workload")) bad("workload", "missing");
  s.workload = parse_workload(doc["workload"], base);
  s.machine = parse_machine(doc, s.workload);
  s.policy = string_at(doc, "", "policy", s.policy);
  bool known = false;
  for (const std::string& n : fork_policy_names()) known = known || n == s.policy;
  if (!known)
    bad("policy", "'" + s.policy + "' is not a fork policy (" + join(fork_policy_names()) + ")");
  const bool trace = s.workload.kind == WorkloadKind::trace;
  s.warmup = uint_at(doc, "", "warmup", 0, 0, 1ull << 40);
  s.iterations = uint_at(doc, "", "iterations", trace ? 0 : 1, trace ? 0 : 1, 1ull << 40);
  if (doc.contains("description") && !doc["description"].is_string())
    bad("description", "must be a string");
  doc["machine"] = json::parse(to_json(s.machine));
  s.doc = std::move(doc);
  return s;
}

Scenario load_scenario(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw ScenarioError(path + ": cannot open the scenario file");
  std::stringstream text;
  text << in.rdbuf();
  json doc;
  try {
    doc = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw ScenarioError(path + ": not JSON: " + e.what());
  }
  for (const std::string& o : overrides) apply_override(doc, o);
  std::filesystem::path base = std::filesystem::path(path).parent_path();
  if (base.empty()) base = ".";
  return parse_scenario(std::move(doc), base);
}

}  // namespace cowpte::sim
