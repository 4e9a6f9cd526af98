// The processes of a Machine by pid (kernel/pid.c's alloc_pid and find_vpid, simplified): pids
// are handed out densely from 1 and never reused, so that a pid names one process for the whole
// run (statistics and traces stay unambiguous); an exited process keeps its slot, without an mm.
#pragma once

#include <boost/iterator/indirect_iterator.hpp>
#include <cstddef>
#include <memory>
#include <vector>

#include "cowpte/machine.hpp"

namespace cowpte {

class PidTable {
 public:
  using const_iterator =
      boost::indirect_iterator<std::vector<std::unique_ptr<Process>>::const_iterator, Process&>;

  // alloc_pid: the pid the next process gets.
  int next_pid() const noexcept { return static_cast<int>(procs_.size()) + 1; }
  // Attach a process made with next_pid().
  Process& add(std::unique_ptr<Process> p) {
    procs_.push_back(std::move(p));
    return *procs_.back();
  }
  // find_vpid: the process with this pid, alive or exited; nullptr for a pid never handed out.
  Process* find(int pid) const noexcept {
    if (pid < 1 || pid > static_cast<int>(procs_.size())) return nullptr;
    return procs_[static_cast<std::size_t>(pid - 1)].get();
  }
  std::size_t size() const noexcept { return procs_.size(); }
  // Room for n processes without moving the table (the explorer: a fork on one task must not
  // invalidate another task's walk over the processes).
  void reserve(std::size_t n) { procs_.reserve(n); }
  // Every process ever made, in pid order (exited ones too: check alive() or mm).
  const_iterator begin() const noexcept { return const_iterator(procs_.begin()); }
  const_iterator end() const noexcept { return const_iterator(procs_.end()); }
  // Destroy every process (the Kernel's destructor, before the memory they refer to goes).
  void clear() noexcept { procs_.clear(); }

 private:
  std::vector<std::unique_ptr<Process>> procs_;  // index pid - 1
};

}  // namespace cowpte
