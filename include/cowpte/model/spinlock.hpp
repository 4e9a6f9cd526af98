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

// The timing model's view of locks. While a timed kernel path runs, every acquire and release
// reports the lock, so that simulated time can make one CPU wait for a lock that another CPU's
// path held until later (src/mmu/timing.cpp, TimedLocks). Null otherwise: one branch.
struct LockTiming {
  virtual void acquire(const void* lock, bool exclusive) = 0;
  virtual void release(const void* lock, bool exclusive) = 0;
  virtual ~LockTiming() = default;
};
inline thread_local LockTiming* lock_timing = nullptr;

// spinlock_t: 4 bytes, so that it fits the struct page of a table frame (ptlock_init with
// !ALLOC_SPLIT_PTLOCKS embeds the lock in struct page).
class SpinLock {
 public:
  void lock() {
    if (held_) lock_violation("spin_lock: lock already held (self-deadlock)");
    held_ = 1;
    if (lock_timing) [[unlikely]]
      lock_timing->acquire(this, true);
  }
  void unlock() {
    if (!held_) lock_violation("spin_unlock: lock not held");
    held_ = 0;
    if (lock_timing) [[unlikely]]
      lock_timing->release(this, true);
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
    if (lock_timing) [[unlikely]]
      lock_timing->acquire(this, false);
  }
  void up_read() {
    if (readers_ == 0) lock_violation("mmap_read_unlock: not held");
    --readers_;
    if (lock_timing) [[unlikely]]
      lock_timing->release(this, false);
  }
  void down_write() {
    if (writer_ || readers_) lock_violation("mmap_write_lock: already held");
    writer_ = true;
    if (lock_timing) [[unlikely]]
      lock_timing->acquire(this, true);
  }
  void up_write() {
    if (!writer_) lock_violation("mmap_write_unlock: not held for write");
    writer_ = false;
    if (lock_timing) [[unlikely]]
      lock_timing->release(this, true);
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

// RAII guards named after the kernel helpers.
class SpinGuard {
 public:
  explicit SpinGuard(SpinLock& l) : l_(l) { l_.lock(); }
  ~SpinGuard() { l_.unlock(); }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  SpinLock& l_;
};

class MmapReadGuard {
 public:
  explicit MmapReadGuard(RwSem& s) : s_(s) { s_.down_read(); }
  ~MmapReadGuard() { s_.up_read(); }
  MmapReadGuard(const MmapReadGuard&) = delete;
  MmapReadGuard& operator=(const MmapReadGuard&) = delete;

 private:
  RwSem& s_;
};

class MmapWriteGuard {
 public:
  explicit MmapWriteGuard(RwSem& s) : s_(s) { s_.down_write(); }
  ~MmapWriteGuard() {
    if (s_.is_write_locked()) {
      s_.up_write();
    } else {
      s_.up_read();  // downgraded on the way
    }
  }
  void downgrade() { s_.downgrade_write(); }
  MmapWriteGuard(const MmapWriteGuard&) = delete;
  MmapWriteGuard& operator=(const MmapWriteGuard&) = delete;

 private:
  RwSem& s_;
};

}  // namespace cowpte
