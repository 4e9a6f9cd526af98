// The lock model: spinlocks (split page-table locks, mm->page_table_lock) and the mmap_lock
// rw-semaphore. A Machine's kernel paths run one at a time, so a lock is its held state (the tag
// of its holder); taking a lock one holds is a self-deadlock in the modelled kernel and is
// reported as a LockViolation. Under the concurrency explorer (interleave.hpp) a lock held by
// another task makes the taker wait until it is released.
// With COWPTE_LOCK_CHECKS, every page-table entry write checks the lock that guards it
// (include/cowpte/model/pgtable.hpp).
#pragma once

#include <cstdint>
#include <stdexcept>

#include "cowpte/model/interleave.hpp"

namespace cowpte {

class LockViolation : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

[[noreturn]] void lock_violation(const char* what);

#if defined(COWPTE_LOCK_CHECKS)
inline constexpr bool kLockChecks = true;
#else
inline constexpr bool kLockChecks = false;
#endif

// The timing model's view of locks. On a timed Machine every acquire and release a kernel path
// makes is reported, so that simulated time can make one CPU wait for a lock that another CPU's
// path held until later (src/mmu/timing.cpp, TimedLocks). Each mm carries its Machine's
// LockTiming (MmStruct::lock_timing, null when timing is off: one branch), and the lock helpers
// that take a lock for a kernel path (pte_lockptr(mm, ...), MmapReadGuard(mm), ...) pass it on,
// so that Machines on different threads never share it.
struct LockTiming {
  virtual void acquire(const void* lock, bool exclusive) = 0;
  virtual void release(const void* lock, bool exclusive) = 0;
  virtual ~LockTiming() = default;
};

// spinlock_t: 4 bytes, so that it fits the struct page of a table frame (ptlock_init with
// !ALLOC_SPLIT_PTLOCKS embeds the lock in struct page).
class SpinLock {
 public:
  void lock() {
    if (current_interleaver) [[unlikely]]
      return lock_interleaved();
    if (held_) lock_violation("spin_lock: lock already held (self-deadlock)");
    held_ = current_lock_owner;
  }
  void unlock() {
    if (!held_by_me()) lock_violation("spin_unlock: lock not held by this CPU");
    held_ = 0;
    if (current_interleaver) [[unlikely]]
      current_interleaver->wake(this);
  }
  bool is_locked() const noexcept { return held_ != 0; }
  bool held_by_me() const noexcept { return held_ == current_lock_owner; }

 private:
  void lock_interleaved() {
    current_interleaver->point(Point::lock, this);
    while (held_) {
      if (held_by_me()) lock_violation("spin_lock: lock already held (self-deadlock)");
      current_interleaver->wait_for(this);
    }
    held_ = current_lock_owner;
  }
  std::uint32_t held_ = 0;  // the holder's tag (current_lock_owner), 0 when free
};

// struct rw_semaphore for mmap_lock: readers share, a writer excludes everyone.
class RwSem {
 public:
  void down_read() {
    if (current_interleaver) [[unlikely]]
      wait_until_free(false);
    if (writer_) lock_violation("mmap_read_lock: held for write");
    ++readers_;
  }
  void up_read() {
    if (readers_ == 0) lock_violation("mmap_read_unlock: not held");
    --readers_;
    if (current_interleaver) [[unlikely]]
      current_interleaver->wake(this);
  }
  void down_write() {
    if (current_interleaver) [[unlikely]]
      wait_until_free(true);
    if (writer_ || readers_) lock_violation("mmap_write_lock: already held");
    writer_ = current_lock_owner;
  }
  void up_write() {
    if (writer_ != current_lock_owner) lock_violation("mmap_write_unlock: not held for write");
    writer_ = 0;
    if (current_interleaver) [[unlikely]]
      current_interleaver->wake(this);
  }
  void downgrade_write() {  // mmap_write_downgrade: no writer can get in between
    if (writer_ != current_lock_owner) lock_violation("mmap_write_downgrade: not held for write");
    writer_ = 0;
    ++readers_;
    if (current_interleaver) [[unlikely]]
      current_interleaver->wake(this);
  }
  bool is_locked() const noexcept { return writer_ || readers_; }
  bool is_write_locked() const noexcept { return writer_ != 0; }

 private:
  // Under the explorer: a point, then wait while another task holds the semaphore against us.
  void wait_until_free(bool write) {
    current_interleaver->point(Point::lock, this);
    while (writer_ || (write && readers_)) {
      if (writer_ == current_lock_owner) lock_violation("mmap_lock: already held for write");
      current_interleaver->wait_for(this);
    }
  }
  std::uint32_t readers_ = 0;
  std::uint32_t writer_ = 0;  // the writer's tag, 0 when none
};

// A spinlock as a kernel path takes it: the lock, and the LockTiming of the Machine whose mm it
// guards (null when timing is off). The lock helpers (pte_lockptr, pmd_lockptr, pud_lockptr in
// pgtable.hpp) return one; spin_lock and spin_unlock go through it.
class SpinLockRef {
 public:
  SpinLockRef(SpinLock& lock, LockTiming* timing) noexcept : lock_(&lock), timing_(timing) {}
  void lock() {
    lock_->lock();
    if (timing_) [[unlikely]]
      timing_->acquire(lock_, true);
  }
  void unlock() {
    lock_->unlock();
    if (timing_) [[unlikely]]
      timing_->release(lock_, true);
  }
  SpinLock& get() const noexcept { return *lock_; }
  bool is_locked() const noexcept { return lock_->is_locked(); }

 private:
  SpinLock* lock_;
  LockTiming* timing_;
};

// spin_lock(ptl) ... spin_unlock(ptl) as a scope.
class SpinGuard {
 public:
  explicit SpinGuard(SpinLockRef l) : l_(l) { l_.lock(); }
  ~SpinGuard() { l_.unlock(); }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  SpinLockRef l_;
};

}  // namespace cowpte
