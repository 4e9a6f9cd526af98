// The differential test against this machine's real kernel: random sequences of mmap, munmap,
// mprotect, madvise, loads, stores, fork and exit run in real processes and on cowpte side by
// side, and after every step the two must agree on
//   - every result and errno, and every loaded value;
//   - the VMAs inside the test's arena (/proc/PID/maps against Process::smaps());
// and, with the classic fork (which the real kernel runs), on the structure:
//   - which pages are present (bit 63 of /proc/PID/pagemap) and which processes map the same
//     frame (pagemap PFNs, grouped; root only), and each VMA's Rss and Anonymous (smaps).
// With a COW PTE policy the real kernel still forks classically; a policy must match it in what
// a process can observe (results, values, VMAs), not in its page tables.
//
// Real processes ("agents") are forked from the test; each waits on its slot of a mailbox in
// MAP_SHARED memory (inherited across fork) for a call to make in its own address space:
// mmap, munmap, mprotect, madvise, a load or a store (a SIGSEGV or SIGBUS answers EFAULT),
// fork (the child takes another slot), exit. (process_vm_readv would not do: its FOLL_PIN
// unshares a COW-shared anonymous page, which a load never does.) Every mapping is MAP_FIXED inside
// the arena, so that both sides use the same addresses; THP is off in the agents
// (PR_SET_THP_DISABLE), and the Machine has the zero page only if the host maps it.
//
// RealKernelSwap runs the same with a swap file on the host (swapon, root only; skipped where the
// machine refuses it) and a swap device in the Machine: MADV_PAGEOUT then swaps on both sides,
// and with the classic fork each VMA's Swap (smaps) and each page's swapped bit (pagemap bit 62)
// must agree too (Swap in private VMAs: the model does not swap shmem).
//
// The host may move the agents' pages on its own (compaction migrates them; see
// host_migrations()): a sequence that diverges while /proc/vmstat says it did runs again with
// the same seed, up to three attempts, and is dropped and counted if every attempt met such a
// move; a divergence while the host stayed still fails at once. At most half the seeds may be
// dropped.
//
// Environment: COWPTE_REAL_SEQUENCES (20 per policy), COWPTE_REAL_STEPS (400), COWPTE_REAL_SEED
// (the first seed). A divergence prints the step log and a one-line reproducer.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cowpte/cowpte.hpp"

namespace cowpte {
namespace {

constexpr vaddr_t kPage = 4096;
constexpr vaddr_t kArena = 0x500000000000;      // free, also under ASan (its heap: 0x6000...)
constexpr std::uint64_t kArenaPages = 8 * 512;  // 16 MiB: eight 2 MiB spans
constexpr vaddr_t kArenaEnd = kArena + kArenaPages * kPage;
constexpr std::uint64_t kSpan = 2ull << 20;
constexpr unsigned kMaxAgents = 64;
constexpr unsigned kMaxLive = 6;

std::uint64_t env_or(const char* name, std::uint64_t def) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : def;
}

// ---- the agents ----

enum class Op : std::uint32_t {
  none,
  mmap,
  munmap,
  mprotect,
  madvise,
  mremap,
  load,
  store,
  fork,
  exit
};

struct Slot {
  std::atomic<std::uint32_t> seq{0};  // the test posts a command by bumping it
  std::atomic<std::uint32_t> ack{0};  // the agent answers by setting it to seq
  Op op = Op::none;
  std::uint64_t a = 0, b = 0, c = 0, d = 0, e = 0;
  std::int64_t ret = 0;
  int err = 0;
  std::atomic<pid_t> pid{0};  // set by the agent once it waits on this slot
};

struct Mailbox {
  Slot slots[kMaxAgents];
  bool thp = false;  // the agents keep THP (the RealKernelThp runs)
};

// A load or store is the agent's own access (not process_vm_readv, whose FOLL_PIN unshares a
// COW-shared anonymous page): SIGSEGV or SIGBUS jumps back and answers EFAULT.
sigjmp_buf g_access_env;
extern "C" void on_access_fault(int) { siglongjmp(g_access_env, 1); }

long agent_access(Slot& s) {
  if (sigsetjmp(g_access_env, 1)) {
    errno = EFAULT;
    return -1;
  }
  auto* p = reinterpret_cast<volatile std::uint64_t*>(s.a);
  if (s.op == Op::store) {
    *p = s.b;
  } else {
    s.d = *p;
  }
  return 0;
}

// Wait while w == old, at most `seconds`; false on the timeout.
bool futex_wait(std::atomic<std::uint32_t>& w, std::uint32_t old, long seconds = 30) {
  timespec t{seconds, 0};
  const long r =
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&w), FUTEX_WAIT, old, &t, nullptr, 0);
  return !(r == -1 && errno == ETIMEDOUT);
}
void futex_wake(std::atomic<std::uint32_t>& w) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&w), FUTEX_WAKE, 1, nullptr, nullptr, 0);
}

// The agent's loop: make each posted syscall in this address space, answer, repeat.
[[noreturn]] void agent_main(Mailbox* mb, unsigned slot) {
  signal(SIGCHLD, SIG_IGN);  // children are reaped by the kernel
  struct sigaction sa {};
  sa.sa_handler = on_access_fault;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
  if (!mb->thp) prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
  Slot* s = &mb->slots[slot];
  std::uint32_t seen = 0;  // a fresh slot: the test posts its first command as seq 1
  s->pid.store(getpid());
  for (;;) {
    std::uint32_t now;
    // An agent left waiting by a test that died goes away on its own.
    while ((now = s->seq.load()) == seen)
      if (!futex_wait(s->seq, seen) && s->seq.load() == seen) _exit(1);
    seen = now;
    long r = 0;
    errno = 0;
    switch (s->op) {
      case Op::mmap: {
        void* p = ::mmap(reinterpret_cast<void*>(s->a), s->b, static_cast<int>(s->c),
                         static_cast<int>(s->d), -1, 0);
        r = p == MAP_FAILED ? -1 : static_cast<long>(reinterpret_cast<std::uintptr_t>(p));
        break;
      }
      case Op::munmap:
        r = ::munmap(reinterpret_cast<void*>(s->a), s->b);
        break;
      case Op::mprotect:
        r = ::mprotect(reinterpret_cast<void*>(s->a), s->b, static_cast<int>(s->c));
        break;
      case Op::madvise:
        r = ::madvise(reinterpret_cast<void*>(s->a), s->b, static_cast<int>(s->c));
        break;
      case Op::mremap: {
        void* p = ::mremap(reinterpret_cast<void*>(s->a), s->b, s->c, static_cast<int>(s->d),
                           reinterpret_cast<void*>(s->e));
        r = p == MAP_FAILED ? -1 : static_cast<long>(reinterpret_cast<std::uintptr_t>(p));
        break;
      }
      case Op::load:
      case Op::store:
        r = agent_access(*s);
        break;
      case Op::fork: {
        const unsigned child_slot = static_cast<unsigned>(s->a);
        const pid_t pid = ::fork();
        if (pid == 0) agent_main(mb, child_slot);
        r = pid;
        break;
      }
      case Op::exit:
        s->ret = 0;
        s->ack.store(seen);
        futex_wake(s->ack);
        _exit(0);
      case Op::none:
        break;
    }
    s->ret = r;
    s->err = r == -1 ? errno : 0;
    s->ack.store(seen);
    futex_wake(s->ack);
  }
}

// ---- reading a real process ----

struct RealVma {
  vaddr_t start, end;
  std::string perms;
  std::uint64_t rss = 0, anon = 0, swap = 0, anon_huge = 0;  // bytes
};

// The VMAs of pid inside the arena, with Rss and Anonymous from smaps.
std::vector<RealVma> real_vmas(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  std::vector<RealVma> out;
  std::string line;
  bool ours = false;
  while (std::getline(in, line)) {
    unsigned long s, e;
    char perms[8];
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &s, &e, perms) == 3 &&
        line.find('-') < line.find(' ')) {
      ours = s >= kArena && e <= kArenaEnd;
      if (ours) out.push_back({s, e, perms});
      continue;
    }
    if (!ours) continue;
    unsigned long kb;
    if (std::sscanf(line.c_str(), "Rss: %lu kB", &kb) == 1) out.back().rss = kb << 10;
    if (std::sscanf(line.c_str(), "Anonymous: %lu kB", &kb) == 1) out.back().anon = kb << 10;
    if (std::sscanf(line.c_str(), "Swap: %lu kB", &kb) == 1) out.back().swap = kb << 10;
    if (std::sscanf(line.c_str(), "AnonHugePages: %lu kB", &kb) == 1)
      out.back().anon_huge = kb << 10;
  }
  return out;
}

// /proc/pid/pagemap words for [start, end).
std::vector<std::uint64_t> real_pagemap(pid_t pid, vaddr_t start, vaddr_t end) {
  std::vector<std::uint64_t> w((end - start) / kPage);
  const int fd = open(("/proc/" + std::to_string(pid) + "/pagemap").c_str(), O_RDONLY);
  if (fd < 0) return w;
  const ssize_t n = pread(fd, w.data(), w.size() * 8, static_cast<off_t>(start / kPage * 8));
  close(fd);
  if (n != static_cast<ssize_t>(w.size() * 8)) w.assign(w.size(), 0);
  return w;
}

// Does the host map the zero page for anonymous read faults? (This project's CI hosts boot
// without it.) Two pages read from fresh anonymous memory map one frame if it does.
bool host_maps_zero_page() {
  void* p = ::mmap(nullptr, 2 * kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  volatile const char* c = static_cast<const char*>(p);
  (void)c[0];
  (void)c[kPage];
  const auto w = real_pagemap(getpid(), reinterpret_cast<vaddr_t>(p),
                              reinterpret_cast<vaddr_t>(p) + 2 * kPage);
  ::munmap(p, 2 * kPage);
  const std::uint64_t pfn_mask = (1ull << 55) - 1;
  return (w[0] & pfn_mask) && (w[0] & pfn_mask) == (w[1] & pfn_mask);
}

// Counters of /proc/vmstat summed.
std::uint64_t vmstat_sum(std::initializer_list<const char*> keys) {
  std::ifstream in("/proc/vmstat");
  std::string key;
  std::uint64_t v = 0, n = 0;
  while (in >> key >> v)
    for (const char* k : keys)
      if (key == k) n += v;
  return n;
}

// The host moving pages on its own: compaction (kcompactd's proactive runs, the direct
// compaction of another process's THP allocation) isolates, locks and migrates the agents'
// pages. While it holds one, the host's fault-around skips it and pagemap shows a migration
// entry, so the host's Rss and frames differ from a deterministic model's for a reason that
// is not the model's. Seen on a fresh CI machine (2026-12-04: a shared VMA one page short of
// the model after a read fault) and reproduced here with compaction forced in a loop.
std::uint64_t host_migrations() {
  return vmstat_sum({"pgmigrate_success", "pgmigrate_fail", "compact_isolated"});
}

// The host's THP events that make a sequence's THP layout the host's own choice (a 2 MiB page
// it could not allocate, a collapse by its khugepaged), on top of its page migrations.
std::uint64_t host_thp_noise() {
  return host_migrations() + vmstat_sum({"thp_fault_fallback", "thp_collapse_alloc"});
}

// The host is one for every test process: ctest runs tests in parallel, and scripts/test.sh
// runs two builds' suites. A swap file that RealKernelSwap turned on makes another test's
// MADV_PAGEOUT really swap (the model of that test has no swap), and RealKernelThp's
// use_zero_page knob is global: two of them restoring it in the wrong order left it off. Every
// real-kernel test holds this lock, an flock on one file, for its whole run.
class HostLock {
 public:
  HostLock() : fd_(::open("/tmp/cowpte-real-kernel.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0666)) {
    if (fd_ < 0) return;  // no lock: run anyway, as before
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) continue;
  }
  ~HostLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  HostLock(const HostLock&) = delete;
  HostLock& operator=(const HostLock&) = delete;

 private:
  int fd_;
};

// A sysfs knob set for the test's duration and restored after it (root only).
class SysfsKnob {
 public:
  SysfsKnob(std::string path, const std::string& value) : path_(std::move(path)) {
    std::ifstream in(path_);
    if (!(in >> old_)) return;
    std::ofstream out(path_);
    ok_ = static_cast<bool>(out << value);
  }
  ~SysfsKnob() {
    if (ok_) std::ofstream(path_) << old_;
  }
  SysfsKnob(const SysfsKnob&) = delete;
  SysfsKnob& operator=(const SysfsKnob&) = delete;
  bool ok() const { return ok_; }

 private:
  std::string path_, old_;
  bool ok_ = false;
};

bool pfns_visible() {
  void* p = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  static_cast<volatile char*>(p)[0] = 1;
  const auto w =
      real_pagemap(getpid(), reinterpret_cast<vaddr_t>(p), reinterpret_cast<vaddr_t>(p) + kPage);
  ::munmap(p, kPage);
  return (w[0] >> 63) && (w[0] & ((1ull << 55) - 1));
}

// ---- one sequence ----

struct Agent {
  unsigned slot;
  pid_t pid;
  Process* proc;
};

class RealRun {
 public:
  RealRun(std::string policy, std::uint64_t seed, std::uint64_t steps, bool zero_page,
          bool structure, bool swap = false, bool thp = false)
      : policy_(std::move(policy)),
        seed_(seed),
        steps_(steps),
        structure_(structure && policy_ == "classic"),
        swap_(swap),
        thp_(thp),
        m_(MachineConfig{.memory_bytes = 512ull << 20,
                         .swap_bytes = swap ? 256ull << 20 : 0,
                         .zero_page = zero_page,
                         .thp = thp ? ThpMode::madvise : ThpMode::never,
                         .thp_use_zero_page = false}),
        rng_(seed) {}

  ~RealRun() {
    for (const Agent& a : live_) post(a, Op::exit);
    if (mb_) ::munmap(mb_, sizeof(Mailbox));
    if (first_pid_ > 0) waitpid(first_pid_, nullptr, 0);
  }

  bool run() {
    void* p =
        ::mmap(nullptr, sizeof(Mailbox), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return fail("mailbox mmap failed");
    mb_ = new (p) Mailbox;
    mb_->thp = thp_;
    // The arena must be free in the test process, whose address space the first agent inherits.
    if (const std::vector<RealVma> taken = real_vmas(getpid()); !taken.empty())
      return fail("the test process maps " + hex(taken[0].start) + "-" + hex(taken[0].end) +
                  " inside the arena");
    const pid_t pid = ::fork();
    if (pid == 0) agent_main(mb_, 0);
    first_pid_ = pid;
    wait_ready(mb_->slots[0]);
    Process& proc = m_.spawn();
    if (policy_ != "classic" && !proc.set_cow_pte(policy_))
      return fail("set_cow_pte(" + policy_ + ") failed");
    live_.push_back({0, pid, &proc});
    next_slot_ = 1;
    for (step_ = 0; step_ < steps_; ++step_) {
      if (!one_step()) return false;
      if (!compare()) return false;
    }
    return true;
  }

  const std::string& failure() const { return failure_; }
  std::uint64_t huge_seen() const { return huge_seen_; }
  std::uint64_t subpages_seen() const { return subpages_seen_; }
  // kind -> (ok, errors), over the run.
  const std::map<std::string, std::pair<std::uint64_t, std::uint64_t>>& tally() const {
    return tally_;
  }
  std::string report() const {
    std::ostringstream os;
    os << "real-kernel divergence: policy " << policy_ << ", seed " << seed_ << ", step " << step_
       << "\n  " << failure_ << "\nsteps:\n";
    for (const std::string& l : log_) os << "  " << l << "\n";
    os << "rerun: COWPTE_REAL_SEED=" << seed_
       << " COWPTE_REAL_SEQUENCES=1 COWPTE_REAL_STEPS=" << step_ + 1
       << " cowpte_tests --gtest_filter='"
       << (thp_    ? "RealKernelThp"
           : swap_ ? "RealKernelSwap"
                   : "RealKernel")
       << "/*" << policy_ << "*'\n";
    return os.str();
  }

 private:
  bool fail(const std::string& why) {
    failure_ = why;
    return false;
  }

  // The agent on slot s is up (it may have missed nothing: its first command is seq 1).
  static void wait_ready(const Slot& s) {
    for (int i = 0; s.pid.load() == 0; ++i) {
      if (i > 200000) {
        std::fprintf(stderr, "real-kernel test: an agent did not start in 20 s\n");
        std::abort();
      }
      usleep(100);
    }
  }

  void wait_ack(Slot& s, std::uint32_t want) {
    std::uint32_t now;
    while ((now = s.ack.load()) != want)
      if (!futex_wait(s.ack, now, 20) && s.ack.load() != want) {
        std::fprintf(stderr, "real-kernel test: an agent did not answer in 20 s\n");
        std::abort();
      }
  }
  void post(const Agent& a, Op op, std::uint64_t x = 0, std::uint64_t y = 0, std::uint64_t z = 0,
            std::uint64_t w = 0, std::uint64_t v = 0) {
    Slot& s = mb_->slots[a.slot];
    s.op = op;
    s.a = x;
    s.b = y;
    s.c = z;
    s.d = w;
    s.e = v;
    const std::uint32_t seq = s.seq.load() + 1;
    s.seq.store(seq);
    futex_wake(s.seq);
    if (op == Op::exit) {
      wait_ack(s, seq);
      return;
    }
    wait_ack(s, seq);
  }

  std::uint64_t below(std::uint64_t n) { return rng_() % n; }
  vaddr_t page_addr() { return kArena + below(kArenaPages) * kPage; }
  std::uint64_t length() {
    switch (below(4)) {
      case 0:
        return kPage;
      case 1:
        return (1 + below(16)) * kPage;
      case 2:
        return (1 + below(600)) * kPage;
      default:
        return (1 + below(64)) * kPage;
    }
  }
  // Keep [a, a + len) inside the arena.
  std::uint64_t clip(vaddr_t a, std::uint64_t len) { return std::min(len, kArenaEnd - a); }

  static const char* errname(int e) {
    switch (e) {
      case 0:
        return "ok";
      case EINVAL:
        return "EINVAL";
      case ENOMEM:
        return "ENOMEM";
      case EFAULT:
        return "EFAULT";
      case EEXIST:
        return "EEXIST";
      case EAGAIN:
        return "EAGAIN";
      case EACCES:
        return "EACCES";
      default:
        return "errno";
    }
  }
  template <class T>
  static int err_of(const Result<T>& r) {
    return r ? 0 : static_cast<int>(r.error());
  }
  static std::string hex(std::uint64_t v) {
    char b[32];
    std::snprintf(b, sizeof b, "%#" PRIx64, v);
    return b;
  }
  std::string who(const Agent& a) const { return "p" + std::to_string(a.proc->pid()); }

  bool same(const std::string& what, int real, int model) {
    const std::string kind = what.substr(what.find('.') + 1, what.find('(') - what.find('.') - 1);
    auto& t = tally_[kind];
    ++(real ? t.second : t.first);
    log_.push_back(what + " -> " + errname(real) +
                   (real == model ? "" : " / model " + std::string(errname(model))));
    if (real != model)
      return fail(what + ": the kernel says " + errname(real) + ", cowpte " + errname(model));
    return true;
  }

  bool one_step() {
    Agent& a = live_[below(live_.size())];
    const unsigned kind = static_cast<unsigned>(below(100));
    if (kind < 14) return do_mmap(a);
    if (kind < 20) return do_munmap(a);
    if (kind < 30) return do_mprotect(a);
    if (kind < 37) return do_madvise(a);
    if (kind < 43) return do_mremap(a);
    if (kind < 62) return do_store(a);
    if (kind < 88) return do_load(a);
    if (kind < 96) return do_fork(a);
    return do_exit(a);
  }

  bool do_mmap(const Agent& a) {
    vaddr_t addr = page_addr();
    std::uint64_t len = clip(addr, length());
    // THP runs: a third of the mappings are one or two whole 2 MiB spans, most of them asking
    // for THPs at once (as a program under "madvise" does). Only spans this process never
    // mapped before: where a PTE table outlived an earlier mapping, whether the new one may
    // take a huge PMD depends on when each kernel frees page tables, which v6.2 and the hosts'
    // 6.18 do differently.
    bool big = false;
    if (thp_ && below(3) == 0) {
      const unsigned span = static_cast<unsigned>(below(kArenaPages / 512 - 1));
      const unsigned n = 1 + static_cast<unsigned>(below(2));
      big = !touched(a, span) && (n == 1 || !touched(a, span + 1));
      if (big) addr = kArena + span * kSpan, len = n * kSpan;
    }
    mark_touched(a, addr, len);
    static constexpr int kProts[] = {PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE,
                                     PROT_READ | PROT_WRITE};
    const int prot = kProts[below(4)];
    int flags = MAP_FIXED | MAP_ANONYMOUS | (below(4) == 0 ? MAP_SHARED : MAP_PRIVATE);
    if (below(5) == 0) flags |= MAP_POPULATE;
    post(a, Op::mmap, addr, len, static_cast<std::uint64_t>(prot),
         static_cast<std::uint64_t>(flags));
    const Slot& s = mb_->slots[a.slot];
    auto r = a.proc->mmap(addr, len, static_cast<Prot>(prot), static_cast<MapFlags>(flags));
    const std::string what = who(a) + ".mmap(" + hex(addr) + ", " + hex(len) + ", prot " +
                             std::to_string(prot) + ", flags " + hex(flags) + ")";
    if (!same(what, s.err, err_of(r))) return false;
    if (r && static_cast<vaddr_t>(s.ret) != *r) return fail(what + ": address differs");
    if (big && r && below(4) != 0) {
      post(a, Op::madvise, addr, len, static_cast<std::uint64_t>(Advice::hugepage));
      return same(who(a) + ".madvise(" + hex(addr) + ", " + hex(len) + ", HUGEPAGE)",
                  mb_->slots[a.slot].err, err_of(a.proc->madvise(addr, len, Advice::hugepage)));
    }
    return true;
  }

  bool do_munmap(const Agent& a) {
    const vaddr_t addr = page_addr();
    const std::uint64_t len = clip(addr, length());
    post(a, Op::munmap, addr, len);
    return same(who(a) + ".munmap(" + hex(addr) + ", " + hex(len) + ")", mb_->slots[a.slot].err,
                err_of(a.proc->munmap(addr, len)));
  }

  // Half the time a range inside one VMA of the process (a random range mostly meets a hole).
  std::pair<vaddr_t, std::uint64_t> range(const Agent& a) {
    const std::vector<SmapsEntry> vmas = a.proc->smaps();
    if (vmas.empty() || below(2) == 0) {
      const vaddr_t addr = page_addr();
      return {addr, clip(addr, length())};
    }
    const SmapsEntry& v = vmas[below(vmas.size())];
    const vaddr_t addr = v.start + below((v.end - v.start) / kPage) * kPage;
    return {addr, std::min(length(), v.end - addr)};
  }

  bool do_mprotect(const Agent& a) {
    const auto [addr, len] = range(a);
    static constexpr int kProts[] = {PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE};
    const int prot = kProts[below(3)];
    post(a, Op::mprotect, addr, len, static_cast<std::uint64_t>(prot));
    return same(
        who(a) + ".mprotect(" + hex(addr) + ", " + hex(len) + ", " + std::to_string(prot) + ")",
        mb_->slots[a.slot].err, err_of(a.proc->mprotect(addr, len, static_cast<Prot>(prot))));
  }

  bool do_madvise(const Agent& a) {
    const auto [addr, len] = range(a);
    static constexpr Advice kAdvice[] = {
        Advice::dontneed,      Advice::dontneed,       Advice::dontfork, Advice::dofork,
        Advice::populate_read, Advice::populate_write, Advice::free_,    Advice::free_,
        Advice::pageout,       Advice::pageout,        Advice::cold,     Advice::remove,
        Advice::wipeonfork,    Advice::keeponfork};
    Advice adv = kAdvice[below(std::size(kAdvice))];
    if (thp_ && below(3) == 0) adv = below(4) ? Advice::hugepage : Advice::nohugepage;
    // THP runs leave out the advice that splits a THP itself (split_huge_page): since 6.12 the
    // hosts' split maps a zero-filled subpage to the zero page or drops it (Rss falls), where
    // v6.2 keeps all 512. MADV_DONTNEED and mprotect split the PMD only, as in v6.2.
    if (thp_ && (adv == Advice::pageout || adv == Advice::cold || adv == Advice::free_))
      adv = Advice::hugepage;
    post(a, Op::madvise, addr, len, static_cast<std::uint64_t>(static_cast<int>(adv)));
    return same(who(a) + ".madvise(" + hex(addr) + ", " + hex(len) + ", " +
                    std::to_string(static_cast<int>(adv)) + ")",
                mb_->slots[a.slot].err, err_of(a.proc->madvise(addr, len, adv)));
  }

  // mremap, inside the arena: mostly a range of one VMA, shrunk, kept or grown, in place or
  // moved with MREMAP_FIXED (to a 2 MiB boundary now and then, so that whole tables move), with
  // or without MREMAP_DONTUNMAP; sometimes bad flags or a random range. A move to an address of
  // the kernel's choosing would leave the arena, so MREMAP_MAYMOVE alone comes only where the
  // range can grow in place or shrinks. Linux 6.17+ moves a range across several VMAs where
  // v6.1 says EFAULT: the moves here stay inside one VMA.
  bool do_mremap(const Agent& a) {
    const std::vector<SmapsEntry> vmas = a.proc->smaps();
    vaddr_t addr = page_addr();
    std::uint64_t old_len = clip(addr, length());
    const SmapsEntry* v = nullptr;
    if (!vmas.empty() && below(10) != 0) {
      v = &vmas[below(vmas.size())];
      addr = v->start + below((v->end - v->start) / kPage) * kPage;
      if (below(5) == 0 && (addr & ~(kSpan - 1)) >= v->start) addr &= ~(kSpan - 1);
      old_len = std::min(length(), v->end - addr);
    }
    std::uint64_t new_len = old_len;
    const std::uint64_t pages = old_len / kPage;
    switch (below(3)) {
      case 0:
        if (pages > 1) new_len = (1 + below(pages - 1)) * kPage;
        break;
      case 1:
        break;
      default:
        new_len = old_len + (1 + below(32)) * kPage;
    }
    std::uint64_t flags = 0;  // MREMAP_MAYMOVE 1, MREMAP_FIXED 2, MREMAP_DONTUNMAP 4
    vaddr_t na = 0;
    const vaddr_t next = [&] {  // where the next VMA starts
      vaddr_t n = kArenaEnd;
      for (const SmapsEntry& e : vmas)
        if (e.start >= addr + old_len) n = std::min(n, e.start);
      return n;
    }();
    const bool in_place =
        new_len <= old_len || (v && addr + old_len == v->end && addr + new_len <= next);
    switch (v ? below(10) : 0) {
      case 0:
      case 1:
        new_len = std::min(new_len, kArenaEnd - addr);
        break;  // none: shrink, keep, grow in place or ENOMEM
      case 2:
        flags = in_place ? 1 : 0;
        new_len = std::min(new_len, kArenaEnd - addr);
        break;
      case 3:
        flags = below(2) ? 8 : 2;  // an unknown flag; MREMAP_FIXED without MREMAP_MAYMOVE
        na = page_addr();
        break;
      case 4:
        new_len = old_len;
        flags = 1 | 2 | 4;
        [[fallthrough]];
      default:
        flags |= 1 | 2;
        na = below(4) == 0 ? kArena + below(kArenaPages / 512) * kSpan : page_addr();
        new_len = std::min(new_len, kArenaEnd - na);
        if (flags & 4) new_len = old_len = std::min(old_len, new_len);
    }
    // old_len 0 duplicates a shared mapping (EINVAL for a private one): not with MAYMOVE alone,
    // which would place the copy outside the arena, and not with MREMAP_FIXED, whose unmap of
    // the destination v6.1 does before that EINVAL and 6.17+ (the hosts) not at all.
    if (below(40) == 0 && !(flags & 3)) old_len = 0;
    if (!new_len) new_len = kPage;
    mark_touched(a, (flags & 2) ? na : addr, (flags & 2) ? new_len : std::max(old_len, new_len));
    if (old_len == 0) mark_touched(a, kArena, kArenaPages * kPage);  // a duplicate lands anywhere
    post(a, Op::mremap, addr, old_len, new_len, flags, na);
    const Slot& s = mb_->slots[a.slot];
    auto r = a.proc->mremap(addr, old_len, new_len, static_cast<MremapFlags>(flags), na);
    const std::string what = who(a) + ".mremap(" + hex(addr) + ", " + hex(old_len) + ", " +
                             hex(new_len) + ", " + std::to_string(flags) + ", " + hex(na) + ")";
    if (!same(what, s.err, err_of(r))) return false;
    if (r && static_cast<vaddr_t>(s.ret) != *r) return fail(what + ": address differs");
    return true;
  }

  // Mostly an address inside a VMA of this process (a random one would mostly miss).
  vaddr_t access_addr(const Agent& a) {
    const std::vector<SmapsEntry> vmas = a.proc->smaps();
    if (vmas.empty() || below(8) == 0) return page_addr() + below(512) * 8;
    const SmapsEntry& v = vmas[below(vmas.size())];
    return v.start + below((v.end - v.start) / 8) * 8;
  }

  bool do_store(const Agent& a) {
    const vaddr_t addr = access_addr(a);
    const std::uint64_t v = rng_();
    post(a, Op::store, addr, v);
    return same(who(a) + ".store(" + hex(addr) + ")", mb_->slots[a.slot].err,
                err_of(a.proc->store(addr, v)));
  }

  bool do_load(const Agent& a) {
    const vaddr_t addr = access_addr(a);
    post(a, Op::load, addr);
    const int real = mb_->slots[a.slot].err;
    const std::uint64_t v = mb_->slots[a.slot].d;
    auto r = a.proc->load(addr);
    const std::string what = who(a) + ".load(" + hex(addr) + ")";
    if (!same(what, real, err_of(r))) return false;
    if (r && *r != v) return fail(what + ": the kernel read " + hex(v) + ", cowpte " + hex(*r));
    return true;
  }

  bool do_fork(const Agent& a) {
    if (live_.size() >= kMaxLive || next_slot_ >= kMaxAgents) return do_load(a);
    const unsigned slot = next_slot_++;
    post(a, Op::fork, slot);
    const Slot& s = mb_->slots[a.slot];
    if (s.ret <= 0) return fail(who(a) + ".fork(): the real fork failed");
    wait_ready(mb_->slots[slot]);
    auto r = a.proc->fork();
    if (!same(who(a) + ".fork()", 0, err_of(r))) return false;
    touched_[slot] = touched_[a.slot];  // before push_back, which may move `a`
    live_.push_back({slot, static_cast<pid_t>(s.ret), *r});
    return true;
  }

  // The 2 MiB spans of the arena an agent (or its ancestors) ever mapped something into.
  bool touched(const Agent& a, unsigned span) const {
    auto it = touched_.find(a.slot);
    return it != touched_.end() && it->second.count(span);
  }
  void mark_touched(const Agent& a, vaddr_t addr, std::uint64_t len) {
    if (addr < kArena || addr >= kArenaEnd || !len) return;
    const vaddr_t end = std::min<vaddr_t>(kArenaEnd, addr + len);
    for (vaddr_t s = (addr - kArena) / kSpan; s <= (end - 1 - kArena) / kSpan; ++s)
      touched_[a.slot].insert(static_cast<unsigned>(s));
  }

  bool do_exit(const Agent& a) {
    if (live_.size() < 2) return do_load(a);
    log_.push_back(who(a) + ".exit()");
    post(a, Op::exit);
    a.proc->exit();
    for (auto it = live_.begin(); it != live_.end(); ++it)
      if (it->slot == a.slot) {
        live_.erase(it);
        break;
      }
    return true;
  }

  // After every step: the VMAs (and with the classic fork the pages) agree.
  bool compare() {
    try {
      m_.check_invariants();
    } catch (const std::exception& e) {
      return fail(std::string("check_invariants: ") + e.what());
    }
    std::map<std::uint64_t, std::string> real_owner, model_owner;  // frame -> first mapper
    for (const Agent& a : live_) {
      const std::vector<RealVma> rv = real_vmas(a.pid);
      std::vector<SmapsEntry> mv;
      for (const SmapsEntry& e : a.proc->smaps())
        if (e.start >= kArena && e.end <= kArenaEnd) mv.push_back(e);
      auto show = [&] {
        std::string s = "\n    kernel:";
        for (const RealVma& v : rv) s += " " + hex(v.start) + "-" + hex(v.end) + " " + v.perms;
        s += "\n    cowpte:";
        for (const SmapsEntry& v : mv) s += " " + hex(v.start) + "-" + hex(v.end);
        return s;
      };
      if (rv.size() != mv.size()) return fail(who(a) + ": VMAs differ" + show());
      for (std::size_t i = 0; i < rv.size(); ++i) {
        if (rv[i].start != mv[i].start || rv[i].end != mv[i].end)
          return fail(who(a) + ": VMAs differ" + show());
        if (!structure_) continue;
        // The kernel swaps shmem too (its smaps counts a shared VMA's swapped file pages); the
        // model keeps shmem in memory, so Swap is compared in private VMAs only.
        const bool private_vma = rv[i].perms.size() > 3 && rv[i].perms[3] == 'p';
        if (rv[i].anon_huge != mv[i].anon_huge)
          return fail(who(a) + ": smaps of " + hex(rv[i].start) + ": kernel AnonHugePages " +
                      std::to_string(rv[i].anon_huge) + ", cowpte " +
                      std::to_string(mv[i].anon_huge));
        huge_seen_ += mv[i].anon_huge / kSpan;
        if (rv[i].rss != mv[i].rss || rv[i].anon != mv[i].anonymous ||
            (swap_ && private_vma && rv[i].swap != mv[i].swap))
          return fail(who(a) + ": smaps of " + hex(rv[i].start) + ": kernel Rss " +
                      std::to_string(rv[i].rss) + " Anonymous " + std::to_string(rv[i].anon) +
                      " Swap " + std::to_string(rv[i].swap) + ", cowpte " +
                      std::to_string(mv[i].rss) + " / " + std::to_string(mv[i].anonymous) + " / " +
                      std::to_string(mv[i].swap));
        const std::vector<std::uint64_t> words = real_pagemap(a.pid, rv[i].start, rv[i].end);
        for (std::size_t j = 0; j < words.size(); ++j) {
          const vaddr_t va = rv[i].start + j * kPage;
          const bool rp = words[j] >> 63;
          const PagemapEntry pm = a.proc->pagemap(va);
          if (rp != pm.present)
            return fail(who(a) + " pagemap(" + hex(va) + "): present " + std::to_string(rp) +
                        " in the kernel, " + std::to_string(pm.present) + " in cowpte");
          const bool rs = (words[j] >> 62) & 1;
          if (swap_ && rs != pm.swapped)
            return fail(who(a) + " pagemap(" + hex(va) + "): swapped " + std::to_string(rs) +
                        " in the kernel, " + std::to_string(pm.swapped) + " in cowpte");
          if (swap_ && rs) ++swapped_seen_;
          if (!rp) continue;
          const std::string here = who(a) + " " + hex(va);
          const std::uint64_t rpfn = words[j] & ((1ull << 55) - 1);
          // A THP's subpages are consecutive frames on both sides: where the previous page
          // maps the previous subpage of the same THP in cowpte, the kernel's frames follow too.
          if (j > 0 && (words[j - 1] >> 63) && m_.page_info(pm.pfn).compound_tail &&
              a.proc->pagemap(va - kPage).pfn + 1 == pm.pfn) {
            const std::uint64_t prev = words[j - 1] & ((1ull << 55) - 1);
            if (rpfn != prev + 1)
              return fail(here + ": a THP subpage in cowpte, but the kernel's frame " + hex(rpfn) +
                          " does not follow " + hex(prev));
            ++subpages_seen_;
          }
          const std::string& r1 = real_owner.try_emplace(rpfn, here).first->second;
          const std::string& m1 = model_owner.try_emplace(pm.pfn, here).first->second;
          if (r1 != m1)
            return fail(here + ": shares its frame with " + r1 + " in the kernel, with " + m1 +
                        " in cowpte (kernel pagemap " + hex(words[j]) + ", cowpte pfn " +
                        hex(pm.pfn) + (pm.pfn == m_.zero_pfn() ? " (zero page)" : "") +
                        (pm.file_or_shared_anon ? " shmem" : "") + ")");
        }
      }
    }
    return true;
  }

 public:
  std::uint64_t swapped_seen() const { return swapped_seen_; }

 private:
  std::string policy_;
  std::uint64_t seed_, steps_, step_ = 0;
  bool structure_;
  bool swap_;
  bool thp_;
  std::map<unsigned, std::set<unsigned>> touched_;  // agent slot -> spans (THP runs)
  std::uint64_t huge_seen_ = 0;                     // THPs compared (per VMA and step)
  std::uint64_t subpages_seen_ = 0;                 // THP subpages whose frames were compared
  std::uint64_t swapped_seen_ = 0;                  // swapped pages compared
  Machine m_;
  std::mt19937_64 rng_;
  Mailbox* mb_ = nullptr;
  pid_t first_pid_ = -1;
  std::vector<Agent> live_;
  unsigned next_slot_ = 0;
  std::vector<std::string> log_;
  std::string failure_;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> tally_;
};

// The sequences of one test against the host. The model is deterministic, and so is the host
// as long as it does not move pages on its own: a sequence that diverged while the host's noise
// counter moved runs again with the same seed, up to kAttempts in all, and a seed that met the
// host's moves in every attempt is dropped and counted. A divergence while the counter stayed
// still fails the test.
struct HostRuns {
  const char* noise;  // what the host did, for the summary
  std::uint64_t reruns = 0, dropped = 0;
  std::string summary() const {
    return std::to_string(reruns) + " reruns and " + std::to_string(dropped) +
           " seeds dropped after the host " + noise;
  }
};

constexpr int kAttempts = 3;

// Runs make(seed)'s sequence and calls matched(run) when it matched the host; false after a
// divergence that is the model's (reported with ADD_FAILURE).
template <class Make, class Matched>
bool run_against_host(std::uint64_t seed, std::uint64_t (*noise)(), HostRuns& runs, Make make,
                      Matched matched) {
  for (int attempt = 1;; ++attempt) {
    const std::uint64_t before = noise();
    RealRun run = make(seed);
    if (run.run()) {
      matched(run);
      return true;
    }
    if (noise() == before) {
      ADD_FAILURE() << run.report();
      return false;
    }
    std::printf("[ real     ] seed %" PRIu64
                ", attempt %d of %d: diverged while the host %s (%s)\n",
                seed, attempt, kAttempts, runs.noise, run.failure().c_str());
    if (attempt == kAttempts) {
      ++runs.dropped;
      return true;
    }
    ++runs.reruns;
  }
}

class RealKernel : public ::testing::TestWithParam<std::string> {};

TEST_P(RealKernel, MatchesTheHostKernel) {
  const HostLock host;
  if (geteuid() != 0) GTEST_SKIP() << "needs root: /proc/PID/pagemap hides PFNs otherwise";
  if (!pfns_visible()) GTEST_SKIP() << "/proc/self/pagemap shows no PFNs";
  const bool zero_page = host_maps_zero_page();
  const std::uint64_t sequences = env_or("COWPTE_REAL_SEQUENCES", 20);
  const std::uint64_t steps = env_or("COWPTE_REAL_STEPS", 400);
  const std::uint64_t first = env_or("COWPTE_REAL_SEED", 1000);
  std::uint64_t done = 0;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> tally;
  HostRuns runs{"moved pages"};
  for (std::uint64_t i = 0; i < sequences; ++i) {
    const bool ok = run_against_host(
        first + i, host_migrations, runs,
        [&](std::uint64_t seed) { return RealRun(GetParam(), seed, steps, zero_page, true); },
        [&](const RealRun& run) {
          done += steps;
          for (const auto& [k, v] : run.tally()) {
            tally[k].first += v.first;
            tally[k].second += v.second;
          }
        });
    if (!ok) return;
  }
  std::string kinds;
  for (const auto& [k, v] : tally)
    kinds += " " + k + " " + std::to_string(v.first) + "/" + std::to_string(v.second);
  std::printf("[ real     ] %s: %" PRIu64 " sequences, %" PRIu64
              " steps, zero divergences (host zero page: %s; %s); ok/errors:%s\n",
              GetParam().c_str(), sequences, done, zero_page ? "yes" : "no", runs.summary().c_str(),
              kinds.c_str());
  EXPECT_LE(2 * runs.dropped, sequences) << "the host moved pages through most sequences";
}

// A swap file on the host for the test's duration: fallocate, mkswap, swapon; swapoff and
// unlink at the end. ok() is false (with why()) where the machine does not allow it.
class HostSwapFile {
 public:
  HostSwapFile() {
    path_ = "/var/tmp/cowpte-test-" + std::to_string(getpid()) + ".swap";
    const std::string cmd = "fallocate -l 64M " + path_ + " && chmod 600 " + path_ + " && mkswap " +
                            path_ + " >/dev/null && swapon " + path_;
    if (std::system(cmd.c_str()) == 0) {
      on_ = true;
    } else {
      why_ = "'" + cmd + "' failed";
      std::remove(path_.c_str());
    }
  }
  ~HostSwapFile() {
    if (on_) (void)!std::system(("swapoff " + path_).c_str());
    std::remove(path_.c_str());
  }
  HostSwapFile(const HostSwapFile&) = delete;
  HostSwapFile& operator=(const HostSwapFile&) = delete;
  bool ok() const { return on_; }
  const std::string& why() const { return why_; }

 private:
  std::string path_, why_;
  bool on_ = false;
};

class RealKernelSwap : public ::testing::TestWithParam<std::string> {};

TEST_P(RealKernelSwap, MatchesTheHostKernelWithSwap) {
  const HostLock host;
  if (geteuid() != 0) GTEST_SKIP() << "needs root: swapon, and PFNs in /proc/PID/pagemap";
  if (!pfns_visible()) GTEST_SKIP() << "/proc/self/pagemap shows no PFNs";
  HostSwapFile swap;
  if (!swap.ok()) GTEST_SKIP() << "no swap file on this machine: " << swap.why();
  const bool zero_page = host_maps_zero_page();
  const std::uint64_t sequences = env_or("COWPTE_REAL_SEQUENCES", 10);
  const std::uint64_t steps = env_or("COWPTE_REAL_STEPS", 400);
  const std::uint64_t first = env_or("COWPTE_REAL_SEED", 5000);
  std::uint64_t swapped = 0;
  HostRuns runs{"moved pages"};
  for (std::uint64_t i = 0; i < sequences; ++i) {
    const bool ok = run_against_host(
        first + i, host_migrations, runs,
        [&](std::uint64_t seed) { return RealRun(GetParam(), seed, steps, zero_page, true, true); },
        [&](const RealRun& run) { swapped += run.swapped_seen(); });
    if (!ok) return;
  }
  std::printf("[ real     ] %s with swap: %" PRIu64 " sequences of %" PRIu64
              " steps, zero divergences (%s), %" PRIu64 " swapped pages compared\n",
              GetParam().c_str(), sequences, steps, runs.summary().c_str(), swapped);
  EXPECT_LE(2 * runs.dropped, sequences) << "the host moved pages through most sequences";
  if (GetParam() == "classic") {
    EXPECT_GT(swapped, 0u) << "MADV_PAGEOUT never swapped a page";
  }
}

INSTANTIATE_TEST_SUITE_P(RealKernelSwap, RealKernelSwap, ::testing::Values("classic", "seed"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// THP "madvise" on both sides (the host's mode): big aligned mappings, MADV_HUGEPAGE and
// MADV_NOHUGEPAGE; with the classic fork each VMA's AnonHugePages must agree and a THP's
// subpages must be consecutive frames in the kernel too. The host's huge zero page is turned
// off for the run (v6.2 splits it on a write fault; the hosts' 6.18 maps a new THP instead),
// as is the model's. A divergence after the host failed a 2 MiB allocation or its khugepaged
// collapsed something is the host's choice: it counts as the host's noise (run_against_host).
class RealKernelThp : public ::testing::TestWithParam<std::string> {};

TEST_P(RealKernelThp, MatchesTheHostKernelWithThp) {
  const HostLock host;
  if (geteuid() != 0) GTEST_SKIP() << "needs root: PFNs in /proc/PID/pagemap, THP sysfs knobs";
  if (!pfns_visible()) GTEST_SKIP() << "/proc/self/pagemap shows no PFNs";
  std::string enabled;
  std::getline(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"), enabled);
  if (enabled.find("[madvise]") == std::string::npos &&
      enabled.find("[always]") == std::string::npos)
    GTEST_SKIP() << "the host's THP is off: " << enabled;
  SysfsKnob no_huge_zero("/sys/kernel/mm/transparent_hugepage/use_zero_page", "0");
  if (!no_huge_zero.ok()) GTEST_SKIP() << "cannot turn off the host's huge zero page";
  const bool zero_page = host_maps_zero_page();
  const std::uint64_t sequences = env_or("COWPTE_REAL_SEQUENCES", 10);
  const std::uint64_t steps = env_or("COWPTE_REAL_STEPS", 400);
  const std::uint64_t first = env_or("COWPTE_REAL_SEED", 9000);
  std::uint64_t huge = 0, subpages = 0;
  HostRuns runs{"moved pages, fell back to small pages or collapsed"};
  for (std::uint64_t i = 0; i < sequences; ++i) {
    const bool ok = run_against_host(
        first + i, host_thp_noise, runs,
        [&](std::uint64_t seed) {
          return RealRun(GetParam(), seed, steps, zero_page, true, false, true);
        },
        [&](const RealRun& run) {
          huge += run.huge_seen();
          subpages += run.subpages_seen();
        });
    if (!ok) return;
  }
  std::printf("[ real     ] %s with THP: %" PRIu64 " sequences of %" PRIu64
              " steps, zero divergences (%s), %" PRIu64 " THPs and %" PRIu64
              " subpage frames compared\n",
              GetParam().c_str(), sequences, steps, runs.summary().c_str(), huge, subpages);
  EXPECT_LE(2 * runs.dropped, sequences) << "the host moved pages through most sequences";
  // A short run (the sanitizer builds run one sequence) may draw no THP-eligible span.
  if (GetParam() == "classic" && sequences - runs.dropped >= 5) {
    EXPECT_GT(huge, 0u) << "no THP was ever compared";
  }
}

INSTANTIATE_TEST_SUITE_P(RealKernelThp, RealKernelThp, ::testing::Values("classic", "seed"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// Every registered policy but "seed_exact", which is the series as posted, bugs included.
std::vector<std::string> policies() { return sound_fork_policy_names(); }

INSTANTIATE_TEST_SUITE_P(RealKernel, RealKernel, ::testing::ValuesIn(policies()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace cowpte
