// The explorer's scheduler (scheduler.hpp): one baton, handed between the host threads of a
// Machine's simulated tasks at the kernel paths' interleaving points.
#include "explore/scheduler.hpp"

#include <algorithm>
#include <thread>

#include <fmt/format.h>

namespace cowpte::explore_detail {

void Scheduler::save(KernelContext& c) noexcept {
  c.busy_mm = k_.busy_mm;
  c.tables_in_hand = std::move(k_.tables_in_hand);
  k_.tables_in_hand.clear();
  c.forking_mm = k_.forking_mm;
  c.in_reclaim = k_.in_reclaim;
  c.direct_reclaim = k_.direct_reclaim;
}

void Scheduler::load(KernelContext& c) noexcept {
  k_.busy_mm = c.busy_mm;
  k_.tables_in_hand = std::move(c.tables_in_hand);
  c.tables_in_hand.clear();
  k_.forking_mm = c.forking_mm;
  k_.in_reclaim = c.in_reclaim;
  k_.direct_reclaim = c.direct_reclaim;
}

std::vector<unsigned> Scheduler::runnable() const {
  std::vector<unsigned> r;
  for (unsigned i = 0; i < tasks_.size(); ++i)
    if (tasks_[i].state == State::runnable) r.push_back(i);
  return r;
}

int Scheduler::decide(int current) {
  const std::vector<unsigned> r = runnable();
  if (r.empty()) return -1;
  if (r.size() == 1) return static_cast<int>(r[0]);
  const std::uint64_t step = steps_++;
  const unsigned fallback = current >= 0 ? static_cast<unsigned>(current) : r[0];
  unsigned c = choose_(step, current, r);
  if (std::find(r.begin(), r.end(), c) == r.end()) c = fallback;
  if (c != fallback) deviations_.emplace_back(step, c);
  return static_cast<int>(c);
}

void Scheduler::switch_to(unsigned me, int next) {
  save(tasks_[me].ctx);
  load(tasks_[static_cast<unsigned>(next)].ctx);
  cur_ = static_cast<unsigned>(next);
  std::unique_lock l(m_);
  running_ = next;
  cv_.notify_all();
  if (tasks_[me].state == State::done) return;
  cv_.wait(l, [&] { return running_ == static_cast<int>(me); });
}

void Scheduler::hand_off(unsigned me) {
  int next = decide(-1);
  if (next < 0) {
    auto waiting = [&](const Task& t) { return t.state == State::waiting; };
    if (std::none_of(tasks_.begin(), tasks_.end(), waiting)) {  // every task has ended
      std::lock_guard l(m_);
      running_ = kAllDone;
      cv_.notify_all();
      return;
    }
    // Every task that has not ended waits for a lock: a deadlock. Unwind the waiters one by
    // one (their wait throws ScheduleAborted); the schedule is reported as failed.
    if (deadlock_.empty()) {
      deadlock_ = "deadlock:";
      for (unsigned i = 0; i < tasks_.size(); ++i)
        if (waiting(tasks_[i]))
          deadlock_ += fmt::format(" task {} waits for {};", i, tasks_[i].waits_for);
    }
    aborting_ = true;
    const auto t =
        static_cast<unsigned>(std::find_if(tasks_.begin(), tasks_.end(), waiting) - tasks_.begin());
    tasks_[t].abort = true;
    tasks_[t].state = State::runnable;
    next = static_cast<int>(t);
  }
  if (next == static_cast<int>(me)) return;
  switch_to(me, next);
}

void Scheduler::point(Point, const void*) {
  if (aborting_) return;  // an abandoned schedule unwinds without switching
  const unsigned me = cur_;
  const int next = decide(static_cast<int>(me));
  if (next != static_cast<int>(me)) switch_to(me, next);
}

void Scheduler::wait_for(const void* lock) {
  const unsigned me = cur_;
  if (aborting_ || tasks_[me].abort) throw ScheduleAborted{};
  tasks_[me].state = State::waiting;
  tasks_[me].waits_for = lock;
  hand_off(me);
  if (tasks_[me].abort) throw ScheduleAborted{};
}

void Scheduler::wake(const void* lock) noexcept {
  for (Task& t : tasks_) {
    if (t.state == State::waiting && t.waits_for == lock) {
      t.state = State::runnable;
      t.waits_for = nullptr;
    }
  }
}

void Scheduler::body(unsigned i, const std::function<void()>& fn) {
  current_interleaver = this;
  current_lock_owner = i + 2;
  {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return running_ == static_cast<int>(i); });
  }
  try {
    fn();
  } catch (const ScheduleAborted&) {
  }
  tasks_[i].state = State::done;
  tasks_[i].waits_for = nullptr;
  current_interleaver = nullptr;
  current_lock_owner = 1;
  hand_off(i);
}

void Scheduler::run(const std::vector<std::function<void()>>& bodies) {
  tasks_.assign(bodies.size(), Task{});
  steps_ = 0;
  deviations_.clear();
  deadlock_.clear();
  aborting_ = false;
  KernelContext outside;
  save(outside);
  std::vector<std::thread> threads;
  threads.reserve(bodies.size());
  for (unsigned i = 0; i < bodies.size(); ++i)
    threads.emplace_back([this, i, &bodies] { body(i, bodies[i]); });
  {
    const int first = decide(-1);
    load(tasks_[static_cast<unsigned>(first)].ctx);
    cur_ = static_cast<unsigned>(first);
    std::unique_lock l(m_);
    running_ = first;
    cv_.notify_all();
    cv_.wait(l, [&] { return running_ == kAllDone; });
  }
  for (std::thread& t : threads) t.join();
  load(outside);
}

}  // namespace cowpte::explore_detail
