// cowpte-trace: print, summarise, cut and assemble cowpte traces (docs/traces.md).
//
//   cowpte-trace print TRACE [--limit N]          one event a line (text.hpp)
//   cowpte-trace summary TRACE [--json]           events by kind, steps, pages touched
//   cowpte-trace cut TRACE -o OUT [--from-step A] [--to-step B] [--pid P]...
//   cowpte-trace assemble TEXT -o OUT             the text form back into a trace
//
// Exit codes: 0 done; 1 a malformed trace or an I/O error; 2 bad arguments.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "trace/text.hpp"

namespace {

using namespace cowpte;
using nlohmann::json;

int print(const std::string& path, std::uint64_t limit) {
  TraceReader r(path);
  std::printf("# cowpte trace v%u, metadata %s\n", r.version(), r.metadata().c_str());
  TraceEvent e;
  for (std::uint64_t n = 0; r.next(e); ++n) {
    if (limit && n == limit) {
      std::printf("# ... (--limit %llu)\n", static_cast<unsigned long long>(limit));
      return 0;
    }
    std::printf("%s\n", tracetool::to_text(e).c_str());
  }
  return 0;
}

int summary(const std::string& path, bool as_json) {
  TraceReader r(path);
  const TraceSummary s = summarize_trace(r);
  json j = {{"version", r.version()},
            {"metadata", json::parse(r.metadata(), nullptr, false)},
            {"bytes", r.file_size()},
            {"events", s.events},
            {"steps", s.steps},
            {"duration_ns", s.duration_ns},
            {"processes", s.processes},
            {"pages_read", s.pages_read},
            {"pages_written", s.pages_written},
            {"mapped_bytes_max", s.mapped_bytes_max}};
  if (j["metadata"].is_discarded()) j["metadata"] = r.metadata();
  if (as_json) {
    std::printf("%s\n", j.dump(1).c_str());
    return 0;
  }
  std::printf("%s: cowpte trace v%u, %llu bytes\n  metadata: %s\n", path.c_str(), r.version(),
              static_cast<unsigned long long>(r.file_size()), r.metadata().c_str());
  std::printf("  %llu steps over %.3f s, %llu processes, at most %.1f MiB mapped\n",
              static_cast<unsigned long long>(s.steps), double(s.duration_ns) / 1e9,
              static_cast<unsigned long long>(s.processes),
              double(s.mapped_bytes_max) / double(1 << 20));
  std::printf("  pages touched: %llu read, %llu written (summed over steps)\n",
              static_cast<unsigned long long>(s.pages_read),
              static_cast<unsigned long long>(s.pages_written));
  for (const auto& [k, n] : s.events)
    std::printf("  %-9s %llu\n", k.c_str(), static_cast<unsigned long long>(n));
  return 0;
}

// Keeps the steps [from, to] (step records counted from 1; events before the first step
// belong to step 0) of the chosen pids. Before `from`, process and mapping events are kept so
// that the cut replays (the processes and their mappings exist when the kept steps begin); the
// accesses are dropped. A fork of a chosen pid chooses its child too.
int cut(const std::string& in, const std::string& out, std::uint64_t from, std::uint64_t to,
        const std::vector<std::uint32_t>& pids) {
  TraceReader r(in);
  json meta = json::parse(r.metadata(), nullptr, false);
  if (!meta.is_object()) meta = json::object();
  meta["cut"] = {{"from", in}, {"from_step", from}, {"to_step", to}, {"pids", pids}};
  TraceWriter w(out, meta.dump());
  std::set<std::uint32_t> chosen(pids.begin(), pids.end());
  const bool all = chosen.empty();
  TraceEvent e;
  std::uint64_t step = 0;
  while (r.next(e)) {
    if (e.kind == TraceKind::step) {
      if (++step > to) break;
      if (step >= from) w.write(e);
      continue;
    }
    if ((e.kind == TraceKind::fork || e.kind == TraceKind::clone) && chosen.count(e.pid))
      chosen.insert(e.child);
    if (!all && !chosen.count(e.pid)) continue;
    const bool access =
        e.kind == TraceKind::load || e.kind == TraceKind::store || e.kind == TraceKind::touch;
    if (step < from && access) continue;
    w.write(e);
  }
  w.close();
  std::fprintf(stderr, "cowpte-trace: wrote %llu events, %llu bytes to %s\n",
               static_cast<unsigned long long>(w.events()),
               static_cast<unsigned long long>(w.bytes()), out.c_str());
  return 0;
}

int assemble(const std::string& in, const std::string& out) {
  std::ifstream f(in);
  if (!f) throw TraceError("cannot open '" + in + "'");
  TraceWriter w(out, json{{"assembled_from", in}}.dump());
  std::string line;
  for (std::uint64_t n = 1; std::getline(f, line); ++n) {
    const auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      w.write(tracetool::from_text(line));
    } catch (const std::invalid_argument& e) {
      throw TraceError(in + ":" + std::to_string(n) + ": " + e.what());
    }
  }
  w.close();
  std::fprintf(stderr, "cowpte-trace: wrote %llu events, %llu bytes to %s\n",
               static_cast<unsigned long long>(w.events()),
               static_cast<unsigned long long>(w.bytes()), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cowpte-trace: print, summarise, cut and assemble cowpte traces (docs/traces.md)"};
  app.name("cowpte-trace");
  app.require_subcommand(1);
  std::string path, out;
  std::uint64_t limit = 0, from = 0, to = ~0ull;
  bool as_json = false;
  std::vector<std::uint32_t> pids;

  CLI::App* p = app.add_subcommand("print", "print every event, one a line");
  p->add_option("trace", path, "the trace")->required()->check(CLI::ExistingFile);
  p->add_option("--limit", limit, "stop after this many events");
  CLI::App* s = app.add_subcommand("summary", "what the trace holds");
  s->add_option("trace", path, "the trace")->required()->check(CLI::ExistingFile);
  s->add_flag("--json", as_json, "as JSON");
  CLI::App* c = app.add_subcommand("cut", "keep some steps and processes, in a new trace");
  c->add_option("trace", path, "the trace")->required()->check(CLI::ExistingFile);
  c->add_option("-o,--out", out, "the new trace")->required();
  c->add_option("--from-step", from, "the first step kept (1 = the first step record)");
  c->add_option("--to-step", to, "the last step kept");
  c->add_option("--pid", pids, "keep this process and its descendants (repeatable)");
  CLI::App* a = app.add_subcommand("assemble", "turn the text form (print's) into a trace");
  a->add_option("text", path, "the text file")->required()->check(CLI::ExistingFile);
  a->add_option("-o,--out", out, "the trace to write")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (from > to) {
    std::fprintf(stderr, "cowpte-trace: --from-step %llu is after --to-step %llu\n",
                 static_cast<unsigned long long>(from), static_cast<unsigned long long>(to));
    return 2;
  }
  try {
    if (p->parsed()) return print(path, limit);
    if (s->parsed()) return summary(path, as_json);
    if (c->parsed()) return cut(path, out, from, to, pids);
    return assemble(path, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cowpte-trace: %s\n", e.what());
    return 1;
  }
}
