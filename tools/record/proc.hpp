// What cowpte-record reads of a real process on this host: its VMAs (/proc/PID/maps), its
// pages (/proc/PID/pagemap: present, swapped, soft-dirty, exclusively mapped, the frame), its
// children (/proc/PID/task/*/children), and the soft-dirty reset (/proc/PID/clear_refs).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cowpte/types.hpp"

namespace cowpte::record {

inline constexpr std::uint64_t kPage = 4096;
inline constexpr vaddr_t kUserTop = 0x800000000000ull;  // above: [vsyscall]

struct Vma {
  vaddr_t start = 0, end = 0;
  Prot prot = Prot::none;
  bool shared = false;
  std::string name;  // the path, [heap], [stack], or empty
  friend bool operator==(const Vma&, const Vma&) = default;
};

// The VMAs a trace records: user space below 47 bits, without [vvar] and [vdso] (the kernel's,
// not the program's). Empty when the process is gone.
std::vector<Vma> read_maps(pid_t pid);

// One pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
struct PageBits {
  std::uint64_t raw = 0;
  bool present() const { return raw >> 63 & 1; }
  bool swapped() const { return raw >> 62 & 1; }
  bool exclusive() const { return raw >> 56 & 1; }
  bool soft_dirty() const { return raw >> 55 & 1; }
  std::uint64_t pfn() const { return raw & ((1ull << 55) - 1); }  // 0 without CAP_SYS_ADMIN
};

// pagemap is read in large preads; an entry per page of [start, end).
class Pagemap {
 public:
  explicit Pagemap(pid_t pid);
  ~Pagemap();
  Pagemap(const Pagemap&) = delete;
  Pagemap& operator=(const Pagemap&) = delete;
  bool ok() const { return fd_ >= 0; }
  // False when the process went away meanwhile.
  bool read(vaddr_t start, vaddr_t end, std::vector<PageBits>& out);

 private:
  int fd_ = -1;
};

// echo 4 > /proc/PID/clear_refs: soft-dirty bits cleared (write-protecting the PTEs).
bool clear_soft_dirty(pid_t pid);
// Whether this kernel keeps soft-dirty bits (CONFIG_MEM_SOFT_DIRTY): a page of our own, cleared
// then written, must show bit 55.
bool soft_dirty_supported();
// Whether pagemap shows frame numbers to us (root).
bool pfns_visible();

// The idle-page bitmap (Documentation/admin-guide/mm/idle_page_tracking.rst): one bit per
// frame, in 64-bit words; writing 1 marks a frame idle, and the kernel clears the bit when the
// frame is accessed (through any mapping). Reads and writes are whole 8-byte words.
class IdleBitmap {
 public:
  explicit IdleBitmap(const std::string& path);
  ~IdleBitmap();
  IdleBitmap(const IdleBitmap&) = delete;
  IdleBitmap& operator=(const IdleBitmap&) = delete;
  bool ok() const { return fd_ >= 0; }
  // Marks the frames idle (pfns sorted ascending).
  void mark_idle(const std::vector<std::uint64_t>& pfns);
  // For each frame (sorted ascending): whether it is still idle (not accessed since marked).
  std::vector<bool> still_idle(const std::vector<std::uint64_t>& pfns);

 private:
  int fd_ = -1;
};
inline constexpr const char* kIdleBitmap = "/sys/kernel/mm/page_idle/bitmap";

// The pids of pid's children (every thread's), and whether pid is a live process (not a
// zombie); its parent's pid.
std::vector<pid_t> children(pid_t pid);
bool alive(pid_t pid);

}  // namespace cowpte::record
