// Interleaving points: where a kernel path running on one CPU can let another CPU's path run
// (the concurrency explorer, <cowpte/explore.hpp>, src/explore/). On an ordinary Machine no
// Interleaver is installed and each point is one thread-local load and an untaken branch. Under
// the explorer every simulated task runs on its own host thread, one at a time; at each point
// the scheduler may hand the CPU to another task, and a lock held by another task really
// blocks (spinlock.hpp asks the Interleaver to wait).
#pragma once

#include <cstdint>
#include <type_traits>

namespace cowpte {

// What a kernel path is about to do at a point.
enum class Point : std::uint8_t {
  lock,         // take a spinlock or mmap_lock
  entry_read,   // a lockless read of an entry (the fault path's PMD and PTE, a GUP-fast walk)
  entry_write,  // an entry write (set_pte_at, set_pmd_at, ...)
  atomic,       // a refcount atomic (get_page, put_page, a shared table's count)
  alloc,        // an allocation that may sleep (GFP_KERNEL)
  user_access,  // a user load or store: the hardware walk and the data access, as one step
};

class Interleaver {
 public:
  // A point: the scheduler may run other tasks before this one goes on.
  virtual void point(Point kind, const void* what) = 0;
  // The calling task waits for the lock at `lock` (held by another task) to be released.
  virtual void wait_for(const void* lock) = 0;
  // The lock at `lock` was released: tasks waiting for it may run again.
  virtual void wake(const void* lock) noexcept = 0;

 protected:
  ~Interleaver() = default;
};

// The interleaver of the calling host thread's task; null outside the explorer.
inline thread_local Interleaver* current_interleaver = nullptr;
// The tag a lock taken by the calling task holds: 1 outside the explorer, the task's own tag
// (2, 3, ...) inside it, so that the lock checker can tell whose lock it is.
inline thread_local std::uint32_t current_lock_owner = 1;

// Hooks false: a copy of a hot loop compiled without the point (see with_hooks).
template <bool Hooks = true>
inline void interleave_point(Point kind, const void* what) {
  if (Hooks && current_interleaver) [[unlikely]]
    current_interleaver->point(kind, what);
}

// Run f(std::true_type{}) when a kernel path's hooks can act (on: the timing model charges the
// path, or the explorer interleaves it), f(std::false_type{}) otherwise. A loop over one table's
// entries is written once and compiled twice this way; the helpers it calls take the constant as
// their Hooks argument. The copy without hooks has no call on its common path, so the compiler
// keeps what the loop loaded in registers instead of reloading it after every possible call: a
// functional classic fork about a quarter faster on the host, an exit about a sixth.
template <class F>
[[gnu::always_inline]] inline decltype(auto) with_hooks(bool on, F&& f) {
  if (on) [[unlikely]]
    return f(std::true_type{});
  return f(std::false_type{});
}

}  // namespace cowpte
