// cowpte-record: record what a real process on this host does to its memory, page-granular,
// over time, into a cowpte trace (docs/traces.md).
//
//   cowpte-record -o out.cptr --pid PID            attach to a running process
//   cowpte-record -o out.cptr -- COMMAND ARGS...   start a command and record it
//
// Exit codes: 0 done; 1 the recording failed (the process cannot be read, the trace cannot be
// written); 2 bad arguments.
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>

#include "record/recorder.hpp"

namespace {

using namespace cowpte;
using namespace cowpte::record;
using nlohmann::json;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// fork and exec the command; returns its pid once it runs the command's program (its memory is
// the command's, not a copy of ours), or -1.
pid_t start_command(const std::vector<std::string>& cmd) {
  char self[4096] = {};
  if (::readlink("/proc/self/exe", self, sizeof self - 1) < 0) return -1;
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    std::vector<char*> argv;
    for (const std::string& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    std::fprintf(stderr, "cowpte-record: cannot run '%s': %s\n", argv[0], std::strerror(errno));
    ::_exit(127);
  }
  const std::string exe = "/proc/" + std::to_string(pid) + "/exe";
  for (int i = 0; i < 10000; ++i) {  // at most a second
    char now[4096] = {};
    if (::readlink(exe.c_str(), now, sizeof now - 1) > 0 && std::strcmp(now, self) != 0) break;
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return -1;  // exec failed
    ::usleep(100);
  }
  return pid;
}

std::string now_iso() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

void report(const Stats& s, const TraceWriter& w, std::chrono::milliseconds interval, double wall) {
  const double n = double(std::max<std::uint64_t>(s.intervals, 1));
  std::fprintf(
      stderr,
      "cowpte-record: %llu intervals of %lld ms over %.1f s, %llu processes\n"
      "  scanned %.0f pages per interval; a scan took %.2f ms on average, %.2f ms at "
      "most (%.1f%% of the interval); %llu scans took longer than the interval\n"
      "  the recorder's CPU time: %.2f s (%.1f%% of one core)\n"
      "  pages written %llu, first touched %llu; trace %llu events, %llu bytes\n",
      static_cast<unsigned long long>(s.intervals), static_cast<long long>(interval.count()), wall,
      static_cast<unsigned long long>(s.processes), double(s.pages_scanned) / n,
      s.scan_s_total / n * 1e3, s.scan_s_max * 1e3,
      100.0 * s.scan_s_total / n / (double(interval.count()) / 1e3),
      static_cast<unsigned long long>(s.late_intervals), s.cpu_s,
      100.0 * s.cpu_s / std::max(wall, 1e-9), static_cast<unsigned long long>(s.pages_written),
      static_cast<unsigned long long>(s.pages_first_touched),
      static_cast<unsigned long long>(w.events()), static_cast<unsigned long long>(w.bytes()));
}

// One interval's scan, warning (once: the summary counts them all) when it overran the interval:
// the steps are then farther apart than asked, and more accesses merge into each.
bool timed_step(Recorder& rec, std::chrono::milliseconds interval, bool quiet) {
  static bool warned = false;
  const std::uint64_t late = rec.stats().late_intervals;
  const auto t0 = std::chrono::steady_clock::now();
  const bool running = rec.step();
  if (!quiet && !warned && rec.stats().late_intervals > late) {
    warned = true;
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr,
                 "cowpte-record: warning: a scan took %.0f ms, longer than the %lld ms interval "
                 "(the next step comes late; a longer --interval avoids it)\n",
                 ms, static_cast<long long>(interval.count()));
  }
  return running;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "cowpte-record: record what a real process does to its memory (VMAs, pages written and\n"
      "first touched, its children's forks and exits), every interval, into a cowpte trace.\n"
      "Needs root (pagemap's frame numbers, clear_refs). docs/traces.md."};
  app.name("cowpte-record");
  pid_t pid = 0;
  std::string out;
  int interval_ms = 100;
  double duration = 0;
  bool no_children = false, quiet = false;
  std::string method_name = "auto", reads = "auto", idle_path = kIdleBitmap;
  std::vector<std::string> command;
  auto* pid_opt = app.add_option("--pid,-p", pid, "attach to this running process")
                      ->check(CLI::Range(1, 1 << 22));
  app.add_option("-o,--out", out, "the trace to write")->required();
  app.add_option("--interval", interval_ms, "milliseconds between scans")
      ->check(CLI::Range(1, 3600000));
  app.add_option("--duration", duration, "seconds to record (0: until the process exits)")
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--writes", method_name,
                 "how writes are seen: soft-dirty (clear_refs 4, pagemap bit 55), frame-change "
                 "(the page's frame changed: COW copies), or auto (soft-dirty where the kernel "
                 "has it)")
      ->check(CLI::IsMember({"auto", "soft-dirty", "frame-change"}));
  app.add_option("--reads", reads,
                 "how reads are seen: page-idle (the idle-page bitmap: every page read each "
                 "interval), first-touch (pages that became present), or auto (page-idle where "
                 "the kernel has it)")
      ->check(CLI::IsMember({"auto", "page-idle", "first-touch"}));
  app.add_option("--idle-bitmap", idle_path, "the idle-page bitmap (for tests)")
      ->group("");  // hidden
  app.add_flag("--no-children", no_children, "record the process only, not its descendants");
  app.add_flag("--quiet,-q", quiet, "no overhead report");
  auto* cmd_opt = app.add_option("command", command, "a command to start and record (after --)");
  pid_opt->excludes(cmd_opt);
  try {
    app.parse(argc, argv);
    if (!pid && command.empty())
      throw CLI::ValidationError("cowpte-record", "give --pid PID or -- COMMAND");
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  WriteMethod method = WriteMethod::frame_change;
  const bool sd = soft_dirty_supported();
  if (method_name == "soft-dirty" && !sd) {
    std::fprintf(stderr,
                 "cowpte-record: this kernel keeps no soft-dirty bits "
                 "(CONFIG_MEM_SOFT_DIRTY); use --writes frame-change\n");
    return 1;
  }
  if (method_name == "soft-dirty" || (method_name == "auto" && sd))
    method = WriteMethod::soft_dirty;
  if (method == WriteMethod::frame_change && !pfns_visible()) {
    std::fprintf(stderr,
                 "cowpte-record: pagemap hides frame numbers from this user: run as "
                 "root (without soft-dirty bits, writes are seen as frame changes)\n");
    return 1;
  }

  std::unique_ptr<IdleBitmap> idle;
  if (reads != "first-touch") {
    idle = std::make_unique<IdleBitmap>(idle_path);
    if (!idle->ok()) {
      if (reads == "page-idle") {
        std::fprintf(stderr,
                     "cowpte-record: cannot open %s (CONFIG_IDLE_PAGE_TRACKING, root): "
                     "use --reads first-touch\n",
                     idle_path.c_str());
        return 1;
      }
      idle.reset();
    }
    if (idle && !pfns_visible()) {
      std::fprintf(stderr,
                   "cowpte-record: the idle-page bitmap needs frame numbers: run as "
                   "root\n");
      return 1;
    }
  }
  if (!command.empty()) {
    pid = start_command(command);
    if (pid < 0) {
      std::fprintf(stderr, "cowpte-record: cannot start the command: %s\n", std::strerror(errno));
      return 1;
    }
  } else if (!alive(pid) || read_maps(pid).empty()) {
    std::fprintf(stderr, "cowpte-record: no process %d to read (or not allowed to)\n", int(pid));
    return 1;
  }

  utsname u{};
  ::uname(&u);
  json meta = {{"recorder", "cowpte-record"},
               {"version", 1},
               {"interval_ms", interval_ms},
               {"writes", to_string(method)},
               {"reads", idle ? "page-idle" : "first-touch"},
               {"root_pid", pid},
               {"host_kernel", u.release},
               {"started_at", now_iso()},
               {"follow_children", !no_children}};
  if (!command.empty()) meta["command"] = command;

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const auto interval = std::chrono::milliseconds(interval_ms);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    TraceWriter w(out, meta.dump());
    Recorder rec(pid, w, method, !no_children, interval, idle.get());
    bool running = timed_step(rec, interval, quiet);
    auto next = std::chrono::steady_clock::now() + interval;
    while (running && !g_stop) {
      std::this_thread::sleep_until(next);
      next += interval;
      if (std::chrono::steady_clock::now() > next) next = std::chrono::steady_clock::now();
      running = timed_step(rec, interval, quiet);
      if (duration > 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= duration)
        break;
    }
    if (running) rec.finish();
    w.close();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!quiet) report(rec.stats(), w, interval, wall);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cowpte-record: %s\n", e.what());
    if (!command.empty()) ::kill(pid, SIGTERM);
    return 1;
  }
  if (!command.empty()) {  // a command we started: stopped early, it is stopped too
    if (g_stop || duration > 0) ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  return 0;
}
