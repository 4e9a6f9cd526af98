// /proc readers of cowpte-record (proc.hpp).
#include "record/proc.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace cowpte::record {

namespace {

std::string proc(pid_t pid, const char* what) {
  return "/proc/" + std::to_string(pid) + "/" + what;
}

}  // namespace

std::vector<Vma> read_maps(pid_t pid) {
  std::vector<Vma> v;
  std::ifstream in(proc(pid, "maps"));
  std::string line;
  while (std::getline(in, line)) {
    // start-end perms offset dev inode [name]
    std::istringstream s(line);
    std::string range, perms, offset, dev, inode, name;
    s >> range >> perms >> offset >> dev >> inode;
    std::getline(s >> std::ws, name);
    const auto dash = range.find('-');
    if (dash == std::string::npos || perms.size() < 4) continue;
    Vma m;
    m.start = std::stoull(range.substr(0, dash), nullptr, 16);
    m.end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (m.end > kUserTop || name == "[vvar]" || name == "[vdso]" || name == "[vvar_vclock]")
      continue;
    if (perms[0] == 'r') m.prot |= Prot::read;
    if (perms[1] == 'w') m.prot |= Prot::write;
    if (perms[2] == 'x') m.prot |= Prot::exec;
    m.shared = perms[3] == 's';
    m.name = name;
    v.push_back(std::move(m));
  }
  return v;
}

Pagemap::Pagemap(pid_t pid) { fd_ = ::open(proc(pid, "pagemap").c_str(), O_RDONLY | O_CLOEXEC); }
Pagemap::~Pagemap() {
  if (fd_ >= 0) ::close(fd_);
}

bool Pagemap::read(vaddr_t start, vaddr_t end, std::vector<PageBits>& out) {
  const std::size_t n = (end - start) / kPage;
  out.resize(n);
  constexpr std::size_t kChunk = 64 * 1024;  // entries per pread: 512 KiB
  for (std::size_t i = 0; i < n; i += kChunk) {
    const std::size_t m = std::min(kChunk, n - i);
    const off_t at = off_t((start / kPage + i) * 8);
    const ssize_t got = ::pread(fd_, &out[i], m * 8, at);
    if (got != ssize_t(m * 8)) return false;
  }
  return true;
}

IdleBitmap::IdleBitmap(const std::string& path) { fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC); }
IdleBitmap::~IdleBitmap() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {
// The 64-bit words holding the frames' bits, as runs of consecutive word indices; f(first word
// index, words) for each run, with the run's words (zero, or read in).
template <class F>
void for_each_run(const std::vector<std::uint64_t>& pfns, F&& f) {
  std::size_t i = 0;
  while (i < pfns.size()) {
    const std::uint64_t first = pfns[i] / 64;
    std::uint64_t last = first;
    std::size_t j = i;
    while (j < pfns.size() && pfns[j] / 64 <= last + 1) last = pfns[j++] / 64;
    f(first, last - first + 1, i, j);
    i = j;
  }
}
}  // namespace

void IdleBitmap::mark_idle(const std::vector<std::uint64_t>& pfns) {
  for_each_run(pfns, [&](std::uint64_t first, std::uint64_t n, std::size_t i, std::size_t j) {
    std::vector<std::uint64_t> w(n, 0);  // zero bits are ignored: only ours become idle
    for (std::size_t k = i; k < j; ++k) w[pfns[k] / 64 - first] |= 1ull << (pfns[k] % 64);
    if (::pwrite(fd_, w.data(), n * 8, off_t(first * 8)) != ssize_t(n * 8)) return;
  });
}

std::vector<bool> IdleBitmap::still_idle(const std::vector<std::uint64_t>& pfns) {
  std::vector<bool> idle(pfns.size(), false);
  for_each_run(pfns, [&](std::uint64_t first, std::uint64_t n, std::size_t i, std::size_t j) {
    std::vector<std::uint64_t> w(n, 0);
    if (::pread(fd_, w.data(), n * 8, off_t(first * 8)) != ssize_t(n * 8)) return;
    for (std::size_t k = i; k < j; ++k) idle[k] = w[pfns[k] / 64 - first] >> (pfns[k] % 64) & 1;
  });
  return idle;
}

bool clear_soft_dirty(pid_t pid) {
  const int fd = ::open(proc(pid, "clear_refs").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "4", 1) == 1;
  ::close(fd);
  return ok;
}

bool soft_dirty_supported() {
  void* p = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  static_cast<volatile char*>(p)[0] = 1;
  bool dirty = false;
  if (clear_soft_dirty(::getpid())) {
    static_cast<volatile char*>(p)[0] = 2;
    Pagemap pm(::getpid());
    std::vector<PageBits> b;
    const auto a = reinterpret_cast<vaddr_t>(p);
    dirty = pm.ok() && pm.read(a, a + kPage, b) && b[0].soft_dirty();
  }
  ::munmap(p, kPage);
  return dirty;
}

bool pfns_visible() {
  std::vector<PageBits> b;
  static volatile char probe[2 * kPage];
  probe[kPage] = 1;
  const auto a = reinterpret_cast<vaddr_t>(&probe[kPage]) & ~(kPage - 1);
  Pagemap pm(::getpid());
  return pm.ok() && pm.read(a, a + kPage, b) && b[0].present() && b[0].pfn() != 0;
}

std::vector<pid_t> children(pid_t pid) {
  std::vector<pid_t> v;
  DIR* d = ::opendir(proc(pid, "task").c_str());
  if (!d) return v;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + e->d_name + "/children");
    for (pid_t c; in >> c;) v.push_back(c);
  }
  ::closedir(d);
  return v;
}

bool alive(pid_t pid) {
  std::ifstream in(proc(pid, "stat"));
  std::string line;
  if (!std::getline(in, line)) return false;
  const auto paren = line.rfind(')');  // the command may hold spaces and parentheses
  if (paren == std::string::npos || paren + 2 >= line.size()) return false;
  const char state = line[paren + 2];
  return state != 'Z' && state != 'X';
}

}  // namespace cowpte::record
