// The explorer's scheduler: the simulated tasks of one Machine run on host threads, and a
// single baton decides which of them runs. Each kernel path's interleaving points
// (include/cowpte/model/interleave.hpp) ask the scheduler whether to go on; a lock held by
// another task parks the taker until its holder releases it. The Kernel's per-task state (the
// busy mm, the tables held across an allocation, the forking mm, reclaim flags) is saved and
// restored at every switch, as a CPU's `current` would be.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "mm/kernel.hpp"

namespace cowpte::explore_detail {

// Thrown at a lock wait of a schedule that is being abandoned (a deadlock), to unwind the task.
struct ScheduleAborted {};

class Scheduler final : public Interleaver {
 public:
  // chooser(step, current, runnable): the task to run at decision `step`. `current` is the task
  // that reached the point, or -1 when it cannot go on (it waits or ended); `runnable` is
  // sorted and has two tasks or more.
  using Chooser = std::function<unsigned(std::uint64_t step, int current,
                                         const std::vector<unsigned>& runnable)>;

  Scheduler(Kernel& k, Chooser choose) : k_(k), choose_(std::move(choose)) {}
  // Run bodies[i] as task i, one at a time, until every body has returned or been unwound.
  void run(const std::vector<std::function<void()>>& bodies);

  std::uint64_t steps() const noexcept { return steps_; }
  // The decisions that left the default (the current task, or the lowest runnable one).
  const std::vector<std::pair<std::uint64_t, unsigned>>& deviations() const noexcept {
    return deviations_;
  }
  const std::string& deadlock() const noexcept { return deadlock_; }

  void point(Point kind, const void* what) override;
  void wait_for(const void* lock) override;
  void wake(const void* lock) noexcept override;

 private:
  enum class State : std::uint8_t { runnable, waiting, done };
  // What a CPU's `current` carries of a kernel path in the model's Kernel.
  struct KernelContext {
    MmStruct* busy_mm = nullptr;
    std::vector<const Page*> tables_in_hand;
    MmStruct* forking_mm = nullptr;
    bool in_reclaim = false;
    bool direct_reclaim = false;
  };
  struct Task {
    State state = State::runnable;
    const void* waits_for = nullptr;
    bool abort = false;
    KernelContext ctx;
  };
  static constexpr int kAllDone = -2;

  std::vector<unsigned> runnable() const;
  // A decision among the runnable tasks; `current` as for Chooser.
  int decide(int current);
  // The calling task `me` hands the baton to `next` and waits for it to come back.
  void switch_to(unsigned me, int next);
  // The calling task `me` cannot go on (it waits or ended): run someone else.
  void hand_off(unsigned me);
  void save(KernelContext& c) noexcept;
  void load(KernelContext& c) noexcept;
  void body(unsigned i, const std::function<void()>& fn);

  Kernel& k_;
  Chooser choose_;
  std::vector<Task> tasks_;
  unsigned cur_ = 0;
  std::uint64_t steps_ = 0;
  std::vector<std::pair<std::uint64_t, unsigned>> deviations_;
  std::string deadlock_;
  bool aborting_ = false;

  std::mutex m_;
  std::condition_variable cv_;
  int running_ = -1;  // the task holding the baton; kAllDone at the end
};

}  // namespace cowpte::explore_detail
