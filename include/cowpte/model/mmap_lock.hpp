// mmap_lock as a kernel path takes it (include/linux/mmap_lock.h): mmap_read_lock(mm) and
// mmap_write_lock(mm) as scopes, reporting to the mm's LockTiming on a timed Machine.
#pragma once

#include "cowpte/model/mm_types.hpp"
#include "cowpte/model/spinlock.hpp"

namespace cowpte {

// mmap_read_lock(mm) ... mmap_read_unlock(mm).
class MmapReadGuard {
 public:
  explicit MmapReadGuard(MmStruct& mm) : mm_(mm) {
    mm_.mmap_lock.down_read();
    if (mm_.lock_timing) [[unlikely]]
      mm_.lock_timing->acquire(&mm_.mmap_lock, false);
  }
  ~MmapReadGuard() {
    mm_.mmap_lock.up_read();
    if (mm_.lock_timing) [[unlikely]]
      mm_.lock_timing->release(&mm_.mmap_lock, false);
  }
  MmapReadGuard(const MmapReadGuard&) = delete;
  MmapReadGuard& operator=(const MmapReadGuard&) = delete;

 private:
  MmStruct& mm_;
};

// mmap_write_lock(mm) ... mmap_write_unlock(mm), or mmap_read_unlock(mm) after downgrade()
// (mmap_write_downgrade).
class MmapWriteGuard {
 public:
  explicit MmapWriteGuard(MmStruct& mm) : mm_(mm) {
    mm_.mmap_lock.down_write();
    if (mm_.lock_timing) [[unlikely]]
      mm_.lock_timing->acquire(&mm_.mmap_lock, true);
  }
  ~MmapWriteGuard() {
    const bool write = mm_.mmap_lock.is_write_locked();
    if (write) {
      mm_.mmap_lock.up_write();
    } else {
      mm_.mmap_lock.up_read();  // downgraded on the way
    }
    if (mm_.lock_timing) [[unlikely]]
      mm_.lock_timing->release(&mm_.mmap_lock, write);
  }
  void downgrade() {
    mm_.mmap_lock.downgrade_write();
    if (mm_.lock_timing) [[unlikely]] {
      mm_.lock_timing->release(&mm_.mmap_lock, true);
      mm_.lock_timing->acquire(&mm_.mmap_lock, false);
    }
  }
  MmapWriteGuard(const MmapWriteGuard&) = delete;
  MmapWriteGuard& operator=(const MmapWriteGuard&) = delete;

 private:
  MmStruct& mm_;
};

}  // namespace cowpte
