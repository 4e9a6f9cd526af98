// This machine's real fork, measured the way the simulator's is set up: a process with `bytes`
// of private anonymous memory in 4 KiB pages (THP off for the range), or 2 MiB-aligned with
// MADV_HUGEPAGE (THP-backed where the kernel finds 2 MiB pages), every page written, then
// fork() timed in the parent until it returns; the child exits at once.
#pragma once

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace cowpte::bench {

// The first "<key> N kB" line of a /proc file, in bytes (0 if there is none).
inline std::uint64_t proc_kb_field(const char* path, const char* format) {
  std::FILE* f = std::fopen(path, "r");
  char line[256];
  unsigned long kb = 0;
  while (f && std::fgets(line, sizeof line, f))
    if (std::sscanf(line, format, &kb) == 1) break;
  if (f) std::fclose(f);
  return std::uint64_t(kb) << 10;
}

// This process's resident memory (code, libraries, heap, stack): its real fork copies the
// page tables of that too, beside the memory under test.
inline std::uint64_t own_rss_bytes() { return proc_kb_field("/proc/self/status", "VmRSS: %lu kB"); }

class RealProcessMemory {
 public:
  explicit RealProcessMemory(std::uint64_t bytes, bool huge = false)
      : map_bytes_(bytes + (huge ? kHugeBytes : 0)) {
    void* p =
        ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("real mmap failed");
    map_ = static_cast<char*>(p);
    base_ = map_;
    if (huge) {  // the first 2 MiB boundary inside the mapping
      const auto a = reinterpret_cast<std::uintptr_t>(map_);
      base_ = map_ + ((kHugeBytes - a % kHugeBytes) % kHugeBytes);
    }
    // 4 KiB PTEs, as the simulated process has; or THPs, as the simulated one with THP "always".
    ::madvise(base_, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (std::uint64_t off = 0; off < bytes; off += 4096) base_[off] = 1;
  }
  ~RealProcessMemory() { ::munmap(map_, map_bytes_); }
  RealProcessMemory(const RealProcessMemory&) = delete;
  RealProcessMemory& operator=(const RealProcessMemory&) = delete;

  // One fork, in nanoseconds from the call to its return in the parent.
  double fork_ns() const {
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    const auto t1 = std::chrono::steady_clock::now();
    if (pid < 0) throw std::runtime_error("real fork failed");
    int status = 0;
    ::waitpid(pid, &status, 0);
    return std::chrono::duration<double, std::nano>(t1 - t0).count();
  }
  double median_fork_ns(int runs) const {
    std::vector<double> v;
    for (int i = 0; i < runs; ++i) v.push_back(fork_ns());
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }

  // AnonHugePages of this process, in bytes (/proc/self/smaps_rollup): what the kernel gave.
  static std::uint64_t anon_huge_bytes() {
    return proc_kb_field("/proc/self/smaps_rollup", "AnonHugePages: %lu kB");
  }

 private:
  static constexpr std::uint64_t kHugeBytes = 2ull << 20;
  std::uint64_t map_bytes_;
  char* map_ = nullptr;
  char* base_ = nullptr;
};

}  // namespace cowpte::bench
