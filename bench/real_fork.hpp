// This machine's real fork, measured the way the simulator's is set up: a process with `bytes`
// of private anonymous memory in 4 KiB pages (THP off for the range), every page written, then
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

// This process's resident memory (code, libraries, heap, stack): its real fork copies the
// page tables of that too, beside the memory under test.
inline std::uint64_t own_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  unsigned long kb = 0;
  while (f && std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmRSS: %lu kB", &kb) == 1) break;
  if (f) std::fclose(f);
  return std::uint64_t(kb) << 10;
}

class RealProcessMemory {
 public:
  explicit RealProcessMemory(std::uint64_t bytes) : bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("real mmap failed");
    base_ = static_cast<char*>(p);
    ::madvise(base_, bytes, MADV_NOHUGEPAGE);  // 4 KiB PTEs, as the simulated process has
    for (std::uint64_t off = 0; off < bytes; off += 4096) base_[off] = 1;
  }
  ~RealProcessMemory() { ::munmap(base_, bytes_); }
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

 private:
  std::uint64_t bytes_;
  char* base_ = nullptr;
};

}  // namespace cowpte::bench
