// Which sizes the comparison runs: `smoke` (seconds; the test suite runs it), `short` (the
// README's first command, half a minute on this project's machine) and `full` (1 MiB to
// 64 GiB, about three minutes).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "workloads.hpp"

namespace cowpte::bench {

struct ForkPoint {
  Layout layout;
  std::uint64_t mib;
  bool timed;
};
struct ForkServerPoint {
  std::uint64_t mib, touch, execs;
};

struct Sweep {
  std::vector<ForkPoint> forks;
  std::vector<std::uint64_t> real_mib;  // this machine's fork, sizes that fit in its memory
  std::uint64_t real_runs = 10;
  std::uint64_t write_mib = 512, random_writes = 1'000'000;  // the series' page-fault table
  std::vector<ForkServerPoint> fork_servers;
  std::vector<std::uint64_t> snapshot_mib;
  // The parent writes a random page every E pages the child reads: busy (16: it touches every
  // 2 MiB span before the child is done) and quiet (1024: a fraction of the spans).
  std::vector<std::uint64_t> snapshot_every{16, 1024};
  // Swap: fork of a parent with 0, 50 and 100% of its memory swapped out; a snapshot on a
  // machine whose memory is 75% of the parent's plus the child's copies (reclaim meanwhile).
  std::vector<std::uint64_t> swapped_fork_mib;
  std::vector<std::uint64_t> pressure_snapshot_mib;
  // THP "always": fork of 2 MiB-aligned THP-backed memory under every policy, with this
  // machine's fork of MADV_HUGEPAGE memory (real_thp_mib); the parent's writes after a fork of
  // thp_write_mib; a khugepaged pass over a parent that shares its 4 KiB memory with a child.
  std::vector<std::uint64_t> thp_fork_mib, real_thp_mib;
  std::uint64_t thp_write_mib = 0;
  std::vector<std::uint64_t> khugepaged_mib;
  // Threads (clone_vm), each on a CPU of its own: fork of a multithreaded parent (the
  // shootdowns grow with the CPUs), and the parent's threads writing into shared tables after a
  // fork (contention on one table's split lock).
  std::vector<std::uint64_t> threaded_fork_mib, threaded_write_mib;
  std::vector<unsigned> threads{1, 2, 4, 8};
};

inline std::string fmt_fork(const ForkPoint& f, const Policy& p) {
  return std::string("fork/layout:") + name(f.layout) + "/policy:" + name(p) +
         "/mib:" + std::to_string(f.mib) + "/timed:" + (f.timed ? "1" : "0");
}

// Enough forks for a stable host time (about 0.3 s of host time at the model's measured speed,
// 10 ns per page without the timing model and 170 ns with it), at least one, at most 100.
inline std::int64_t fork_iterations(const ForkPoint& f) {
  const double pages = double(f.mib) * 256, ns_per_page = f.timed ? 170 : 10;
  return std::clamp<std::int64_t>(std::int64_t(3e8 / (pages * ns_per_page)), 1, 100);
}

// The memory this process may still use: free memory, or less under a cgroup v2 limit.
inline double usable_memory_bytes() {
  double avail = double(sysconf(_SC_AVPHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  if (std::FILE* f = std::fopen("/sys/fs/cgroup/memory.max", "r")) {
    unsigned long long max = 0;  // "max" when unlimited: no number
    if (std::fscanf(f, "%llu", &max) == 1) avail = std::min(avail, double(max));
    std::fclose(f);
  }
  return avail;
}

// Real forks only of sizes that leave this machine a quarter of its memory free.
inline std::vector<std::uint64_t> fitting(std::vector<std::uint64_t> mib) {
  const double avail = usable_memory_bytes();
  std::erase_if(mib, [&](std::uint64_t m) { return double(m << 20) > 0.75 * avail; });
  return mib;
}

inline void add_forks(Sweep& s, Layout l, bool timed, const std::vector<std::uint64_t>& mib) {
  for (std::uint64_t m : mib) s.forks.push_back({l, m, timed});
}

inline Sweep make_sweep(const std::string& which) {
  Sweep s;
  if (which == "smoke") {
    add_forks(s, Layout::plain, true, {1, 4});
    add_forks(s, Layout::plain, false, {4});
    add_forks(s, Layout::aligned, true, {4});
    add_forks(s, Layout::small_vmas, true, {4});
    s.real_mib = fitting({1, 4}), s.real_runs = 3;
    s.write_mib = 8, s.random_writes = 5000;
    s.fork_servers = {{8, 16, 5}};
    s.snapshot_mib = {8};
    s.swapped_fork_mib = {4};
    s.pressure_snapshot_mib = {8};
    s.thp_fork_mib = {4}, s.real_thp_mib = fitting({4});
    s.thp_write_mib = 8;
    s.khugepaged_mib = {8};
    s.threaded_fork_mib = {8}, s.threaded_write_mib = {4}, s.threads = {1, 2};
  } else if (which == "short") {
    const std::vector<std::uint64_t> sizes{1, 4, 16, 64, 256, 512, 1024};
    add_forks(s, Layout::plain, true, sizes);
    add_forks(s, Layout::plain, false, {64, 1024});
    add_forks(s, Layout::aligned, true, {16, 256, 1024});
    add_forks(s, Layout::small_vmas, true, {16, 256});
    s.real_mib = fitting(sizes);
    s.fork_servers = {{256, 16, 40}, {256, 256, 40}};
    s.snapshot_mib = {256};
    s.swapped_fork_mib = {256};
    s.pressure_snapshot_mib = {64};
    s.thp_fork_mib = {1, 4, 16, 64, 256, 1024}, s.real_thp_mib = fitting(s.thp_fork_mib);
    s.thp_write_mib = 512;
    s.khugepaged_mib = {256};
    s.threaded_fork_mib = {1024}, s.threaded_write_mib = {64};
  } else if (which == "full") {
    std::vector<std::uint64_t> sizes;  // every power of two from 1 MiB to 64 GiB
    for (std::uint64_t m = 1; m <= 65536; m *= 2) sizes.push_back(m);
    add_forks(s, Layout::plain, true, sizes);
    add_forks(s, Layout::plain, false, sizes);
    add_forks(s, Layout::aligned, true, {1, 16, 256, 1024, 4096, 16384});
    add_forks(s, Layout::small_vmas, true, {16, 256, 1024, 2048});
    s.real_mib = fitting(sizes);
    s.fork_servers = {{64, 16, 40},    {64, 256, 40},  {1024, 16, 20},
                      {1024, 256, 20}, {4096, 16, 10}, {4096, 256, 10}};
    s.snapshot_mib = {1024, 4096, 16384};
    s.swapped_fork_mib = {1024};
    s.pressure_snapshot_mib = {256, 1024};
    s.thp_fork_mib = sizes, s.real_thp_mib = fitting(sizes);
    s.thp_write_mib = 512;
    s.khugepaged_mib = {256, 4096};
    s.threaded_fork_mib = {1024, 4096}, s.threaded_write_mib = {64, 1024};
  }
  return s;
}

}  // namespace cowpte::bench
