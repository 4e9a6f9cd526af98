// The lock model: spinlocks (split page-table locks, mm->page_table_lock) and the mmap_lock
// rw-semaphore. The simulation runs on one host thread, so a lock is its held state; taking a
// held lock is a self-deadlock in the modelled kernel and is reported as a LockViolation.
// With COWPTE_LOCK_CHECKS, every page-table entry write checks the lock that guards it
// (include/cowpte/model/pgtable.hpp).
#pragma once

#include <cstdint>
#include <stdexcept>

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
    if (held_) lock_violation("spin_lock: lock already held (self-deadlock)");
    held_ = 1;
  }
  void unlock() {
    if (!held_) lock_violation("spin_unlock: lock not held");
    held_ = 0;
  }
  bool is_locked() const noexcept { return held_ != 0; }

 private:
  std::uint32_t held_ = 0;
};

// struct rw_semaphore for mmap_lock: readers share, a writer excludes everyone.
class RwSem {
 public:
  void down_read() {
    if (writer_) lock_violation("mmap_read_lock: held for write");
    ++readers_;
  }
  void up_read() {
    if (readers_ == 0) lock_violation("mmap_read_unlock: not held");
    --readers_;
  }
  void down_write() {
    if (writer_ || readers_) lock_violation("mmap_write_lock: already held");
    writer_ = true;
  }
  void up_write() {
    if (!writer_) lock_violation("mmap_write_unlock: not held for write");
    writer_ = false;
  }
  void downgrade_write() {  // mmap_write_downgrade
    up_write();
    down_read();
  }
  bool is_locked() const noexcept { return writer_ || readers_; }
  bool is_write_locked() const noexcept { return writer_; }

 private:
  std::uint32_t readers_ = 0;
  bool writer_ = false;
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
