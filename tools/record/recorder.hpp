// cowpte-record's recorder: every interval, each recorded process's VMA changes and the pages
// it wrote or touched for the first time, page-granular, into a trace (docs/traces.md).
//
// Writes are seen one of two ways, whichever the host kernel allows:
//   soft_dirty    clear_refs 4, then pagemap bit 55 (CONFIG_MEM_SOFT_DIRTY), as CRIU does: every
//                 page written since the last interval;
//   frame_change  the page's frame number changed since the last interval (pagemap, as root):
//                 a COW copy after a fork, a page moved in by swap-in or migration. Writes to a
//                 page that keeps its frame are invisible: before a fork only first touches show.
// Reads: with the idle-page bitmap, a page that keeps its frame and whose frame is no longer idle
// since the last interval was read (every frame seen is marked idle after each interval's
// scans); without it, reads are first touches only.
// A page present now and not at the last interval is a first touch: a write under
// frame_change (without the zero page, as on this project's hosts, a read fault allocates too,
// so the two cannot be told apart), a read unless soft-dirty under soft_dirty. In a VMA without
// write permission every touch is a read.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cowpte/trace.hpp"
#include "record/proc.hpp"

namespace cowpte::record {

enum class WriteMethod { soft_dirty, frame_change };
const char* to_string(WriteMethod);

struct Stats {
  std::uint64_t intervals = 0, pages_scanned = 0, late_intervals = 0;
  double scan_s_total = 0, scan_s_max = 0, cpu_s = 0;
  std::uint64_t processes = 0, pages_written = 0, pages_first_touched = 0;
};

class Recorder {
 public:
  // idle: the idle-page bitmap, to see reads of pages already present; null: reads are first
  // touches only.
  Recorder(pid_t root, TraceWriter& out, WriteMethod method, bool follow_children,
           std::chrono::milliseconds interval, IdleBitmap* idle = nullptr);
  // One interval: a step record, then forks, each process's VMA changes and touches, exits.
  // False once the root process is gone (its exit and its descendants' are written).
  bool step();
  // Exits for every process still recorded (the recording stops while they run).
  void finish();
  const Stats& stats() const { return stats_; }

 private:
  // A page seen at the last scan: its number and its pagemap entry.
  struct Seen {
    std::uint64_t page;
    PageBits bits;
    bool writable;  // its VMA's: a page of a read-only VMA is read, never written
  };
  struct Proc {
    pid_t pid = 0;
    std::vector<Vma> maps;
    std::vector<Seen> seen;  // ascending page numbers
  };

  void discover();
  void diff_maps(Proc& p, const std::vector<Vma>& now);
  void scan(Proc& p);
  void emit_range(TraceKind k, pid_t pid, vaddr_t a, vaddr_t b, const Vma* v = nullptr);
  void emit_exit(pid_t pid);

  pid_t root_;
  TraceWriter& out_;
  WriteMethod method_;
  IdleBitmap* idle_;
  std::vector<std::uint64_t> to_mark_;  // frames to mark idle once every process is scanned
  bool follow_;
  std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point start_;
  std::map<pid_t, std::unique_ptr<Proc>> procs_;  // recorded, by pid
  std::vector<pid_t> order_;                      // in the order they were found
  // Exited processes still listed as their parent's children (exiting, or zombies not yet
  // reaped): not new children. Dropped once /proc no longer has them (the pid may be reused).
  std::set<pid_t> ended_;
  bool first_ = true;
  Stats stats_;
};

}  // namespace cowpte::record
