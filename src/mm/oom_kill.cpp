// The OOM killer: out_of_memory, oom_badness and the reaping of a victim (mm/oom_kill.c).
#include <fmt/format.h>

#include "mm/kernel.hpp"

namespace cowpte {

// oom_badness: what killing the process would free: its RSS, its swap entries and its page
// tables, in pages (oom_score_adj is 0 for every process in the model).
long Kernel::oom_badness(const MmStruct& mm) noexcept {
  const RssVec& r = mm.rss_stat;
  return static_cast<long>(r[MM_FILEPAGES] + r[MM_ANONPAGES] + r[MM_SHMEMPAGES] + r[MM_SWAPENTS] +
                           mm.pgtables_bytes / std::int64_t(PAGE_SIZE));
}

// out_of_memory: reclaim freed nothing; kill the process with the highest badness (the last
// of equals in pid order, as select_bad_process's scan keeps). A victim whose kernel path is
// running (the allocating process) dies when that path is done, and this allocation fails;
// any other one exits now. False when there is no process to kill.
bool Kernel::out_of_memory() {
  Process* victim = nullptr;
  long chosen = -1;
  for (Process& p : procs) {
    const MmStruct* mm = p.mm();
    if (!mm || (oom_pending && mm == oom_pending->mm())) continue;
    if (const long points = oom_badness(*mm); points >= chosen) {
      chosen = points;
      victim = &p;
    }
  }
  if (!victim) return false;
  ++vm_events.oom_kill;
  const RssVec& r = victim->mm()->rss_stat;
  kernel_log.push_back(fmt::format(
      "Out of memory: Killed process {} anon-rss:{}kB, file-rss:{}kB, shmem-rss:{}kB, swapents:{}, "
      "pgtables:{}kB",
      victim->tgid(), r[MM_ANONPAGES] * 4, r[MM_FILEPAGES] * 4, r[MM_SHMEMPAGES] * 4,
      r[MM_SWAPENTS], victim->mm()->pgtables_bytes / 1024));
  if (victim->mm() == busy_mm) {
    oom_pending = victim;
    return false;
  }
  exit_mm_tasks(*victim->mm());  // the whole thread group
  return true;
}

// The victim's kernel path is done: it exits (the OOM reaper's work, done at once).
void Kernel::oom_reap_pending() {
  Process* victim = oom_pending;
  oom_pending = nullptr;
  if (MmStruct* mm = victim->mm()) exit_mm_tasks(*mm);
}

}  // namespace cowpte
