// Traces: what processes did to their memory, over time, in a compact binary file that replays
// through the facade (docs/trace-format.md has the byte layout).
//
// A trace is a sequence of events: time steps, process events (spawn, mmap, munmap, mprotect,
// madvise, fork, clone, exit) and memory accesses, either one 8-byte load or store at a time
// (a synthetic or instrumented program) or the set of pages a process read or wrote during one
// step (what cowpte-record sees of a real program through soft-dirty bits). Pids are the
// recorded ones; replay maps each to a simulated Process. TraceWriter and TraceReader read and
// write the format; replay_trace() drives a Machine with it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cowpte/machine.hpp"
#include "cowpte/types.hpp"

namespace cowpte {

// The file starts with these 8 bytes, then the version (u32, little-endian).
inline constexpr char kTraceMagic[8] = {'C', 'O', 'W', 'P', 'T', 'R', 'C', '\n'};
inline constexpr std::uint32_t kTraceVersion = 1;

// Record kinds, as stored (one byte each). New kinds take new numbers; a reader rejects a kind
// it does not know, with the file offset.
enum class TraceKind : std::uint8_t {
  end = 0,  // the last record: the number of events before it (a truncated file lacks it)
  step = 1,
  spawn = 2,
  mmap = 3,
  munmap = 4,
  mprotect = 5,
  madvise = 6,
  fork = 7,
  clone = 8,
  exit = 9,
  load = 10,
  store = 11,
  touch = 12,
};
std::string_view to_string(TraceKind);

// One event. Which fields mean something depends on the kind:
//   step                time_ns: the step's start, nanoseconds since the trace began
//   spawn, exit         pid
//   fork, clone         pid (the parent), child
//   mmap                pid, addr, length, prot, flags (the address the mapping got: replay
//                       maps it there with MAP_FIXED)
//   munmap              pid, addr, length
//   mprotect            pid, addr, length, prot
//   madvise             pid, addr, length, advice
//   load, store         pid, addr (8-byte aligned); store: value
//   touch               pid, write, pages: addresses of the pages read (write false) or
//                       written (write true) during the current step, ascending
// Addresses of mmap, munmap, mprotect, madvise and touch are page-aligned, lengths are whole
// pages (the writer checks).
struct TraceEvent {
  TraceKind kind = TraceKind::step;
  std::uint32_t pid = 0;
  std::uint32_t child = 0;
  std::uint64_t time_ns = 0;
  vaddr_t addr = 0;
  std::uint64_t length = 0;
  Prot prot = Prot::none;
  MapFlags flags = MapFlags::private_ | MapFlags::anonymous;
  Advice advice = Advice::dontneed;
  std::uint64_t value = 0;
  bool write = false;
  std::vector<vaddr_t> pages;
};

// A malformed, truncated or unsupported trace file; what() names the file offset.
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Writes a trace. The metadata is a JSON object (a string) stored in the header: what recorded
// the trace, from what, at which interval. close() (or the destructor) writes the end record.
class TraceWriter {
 public:
  // Throws TraceError if the file cannot be created.
  explicit TraceWriter(const std::string& path, const std::string& metadata_json = "{}");
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // Throws std::invalid_argument for an event the format cannot hold (unaligned address,
  // pages out of order, a step earlier than the last), TraceError for a write error.
  void write(const TraceEvent&);
  void close();
  std::uint64_t events() const noexcept { return events_; }
  std::uint64_t bytes() const noexcept { return bytes_; }

 private:
  void write_header(const std::string& metadata_json);
  void put_byte(std::uint8_t);
  void put_varint(std::uint64_t);
  void put_raw(const void*, std::size_t);
  std::FILE* f_ = nullptr;
  std::string path_;
  std::uint64_t events_ = 0, bytes_ = 0, last_step_ns_ = 0;
};

// Reads a trace, one event at a time.
class TraceReader {
 public:
  // Throws TraceError if the file is missing, is not a trace, or has a newer version.
  explicit TraceReader(const std::string& path);
  // A trace held in memory (bytes must outlive the reader); name is used in error messages.
  TraceReader(const void* bytes, std::size_t size, const std::string& name = "<memory>");
  ~TraceReader();
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  const std::string& metadata() const noexcept { return metadata_; }
  std::uint32_t version() const noexcept { return version_; }
  // The next event, or false after the end record. Throws TraceError (with the offset) for a
  // malformed record or a file that ends without its end record.
  bool next(TraceEvent&);
  std::uint64_t offset() const noexcept { return offset_; }   // bytes read so far
  std::uint64_t file_size() const noexcept { return size_; }  // for progress
  std::uint64_t events_read() const noexcept { return events_; }

 private:
  void open_checked();
  void read_header();
  int get_byte();  // -1 at the end of the file
  std::uint8_t byte();
  std::uint64_t varint();
  [[noreturn]] void fail(const std::string& what) const;
  std::FILE* f_ = nullptr;
  std::string path_, metadata_;
  std::uint32_t version_ = 0;
  std::uint64_t offset_ = 0, size_ = 0, events_ = 0, last_step_ns_ = 0;
  bool ended_ = false;
};

// What a trace holds, without replaying it (cowpte-trace summary).
struct TraceSummary {
  std::map<std::string, std::uint64_t> events;  // by kind
  std::uint64_t steps = 0, duration_ns = 0;
  std::uint64_t pages_read = 0, pages_written = 0;  // touched pages, summed over steps
  std::uint64_t processes = 0;                      // spawned, forked or cloned
  std::uint64_t mapped_bytes_max = 0;               // the largest total of live mappings
};
TraceSummary summarize_trace(TraceReader&);

struct ReplayOptions {
  // The fork policy every spawned process is armed with (Process::set_cow_pte; the children
  // inherit it); "classic" arms nothing.
  std::string policy = "classic";
  // Steps replayed before Machine::reset_stats() (a warm-up), then at most max_steps measured
  // steps (0: to the end). Steps are counted by step records; events before the first step
  // belong to step 0.
  std::uint64_t warmup_steps = 0, max_steps = 0;
  // Called after each step with the events read so far (for a progress bar).
  std::function<void(std::uint64_t steps, std::uint64_t bytes_read)> on_step;
};

// Simulated cycles of one kind of event (zero without the timing model).
struct CycleStats {
  std::uint64_t count = 0, total = 0, p50 = 0, p99 = 0, max = 0;
};

struct ReplayResult {
  std::uint64_t steps = 0, events = 0;
  // Calls the model refused, by "kind:errno" (a real program's failed call, or a trace that
  // does not fit the simulated machine); replay goes on.
  std::map<std::string, std::uint64_t> errors;
  // Measured phase only (after the warm-up): per event kind, and per process for accesses.
  CycleStats fork, exit, mmap, munmap, loads, stores;
  struct PerProcess {
    std::uint32_t pid = 0;      // the recorded pid
    std::uint32_t parent = 0;   // 0 for a spawned process
    CycleStats loads, stores;   // the measured touches' cycles
    std::string hw_stats_json;  // Process::hw_stats_json() when it exited (or at the end)
    RssStat rss_max{};          // largest RSS seen at a step's end
  };
  std::vector<PerProcess> processes;  // in order of appearance
  // Each fork of the measured phase, and what it cost while the child lived (a BGSAVE: the
  // fork, the parent's stores during the snapshot, the memory the copies took).
  struct Fork {
    std::uint32_t parent = 0, child = 0;
    std::uint64_t step = 0;                      // the measured step it happened in (1: the first)
    std::uint64_t cycles = 0;                    // the fork's own
    std::uint64_t frames = 0, table_frames = 0;  // allocated by the fork
    // The most frames (and page-table frames) in use beyond what was in use before the fork,
    // seen at a step's end or just before the child exited.
    std::uint64_t extra_frames_max = 0, extra_table_frames_max = 0;
    CycleStats parent_stores;          // the parent's stores while the child lived
    std::uint64_t lifetime_steps = 0;  // steps from the fork to the child's exit (or the end)
    bool child_exited = false;
  };
  std::vector<Fork> forks;
  std::uint64_t pgtable_frames_max = 0;  // Machine::pgtable_frames(), largest at a step's end
  std::uint64_t used_frames_max = 0;     // total_pages - free_pages, largest at a step's end
};

// Replays the trace on m from where the reader is. Throws TraceError for a malformed trace or
// one that refers to a pid it never introduced; calls that fail in the model are counted in
// ReplayResult::errors.
ReplayResult replay_trace(Machine& m, TraceReader& r, const ReplayOptions& = {});

}  // namespace cowpte
