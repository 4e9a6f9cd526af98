// Randomized differential test: the simulator against the flat reference model (flat_model.hpp).
//
// Each run drives a small Machine with a weighted random mix of facade calls over up to six
// processes (mmap/munmap/mprotect/madvise/load/store/fork/exit/pin/unpin, and set_cow_pte in
// the COW-PTE runs) and asks the flat model what Linux would answer. Every Result (success or
// errno) and every loaded value must agree, and check_invariants() must hold after every
// operation. Pins are checked through read_gup(): while a FOLL_LONGTERM pin holds a page its
// process still maps, read_gup() must read what load() reads (COW must never split a pinned
// page away from its process); once the process unmapped or zapped the page, the pin must
// still read the page as it was (or its shmem object). At the end every process exits and all
// frames must be free again.
//
// Reproduce a failure with the command line it prints:
//   COWPTE_DIFF_SEED=<seed> COWPTE_DIFF_OPS=<n> ./cowpte_tests --gtest_filter='<test>'
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "cowpte/cowpte.hpp"
#include "flat_model.hpp"

namespace cowpte {
namespace {

using flat::FlatModel;
using flat::FlatVma;
using flat::kOk;
using flat::kPageSize;
using flat::Outcome;

constexpr std::uint64_t kDefaultOps = 10000;
constexpr std::uint64_t kMachineBytes = 64ull << 20;
constexpr std::size_t kMaxLive = 6;
constexpr std::size_t kMaxPinnedPagesPerProc = 48;
// 16 MiB of address space straddling a 1 GiB (PUD) boundary, so that regions share 2 MiB
// spans (one PTE table) and some cross PMD and PUD boundaries.
constexpr vaddr_t kArenaBase = 0x7f0040000000ull - (8ull << 20);
constexpr std::uint64_t kArenaPages = 4096;
constexpr std::uint64_t kSpanPages = 512;  // one PTE table
// Keep the model's worst-case footprint well below the 16384 frames of the machine.
constexpr std::uint64_t kFootprintCap = 6000;

// splitmix64: deterministic on every platform, unlike the std distributions.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::uint64_t below(std::uint64_t n) { return n ? next() % n : 0; }
  std::uint64_t range(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(unsigned percent) { return below(100) < percent; }
  template <std::size_t N>
  std::size_t weighted(const unsigned (&w)[N]) {
    unsigned total = 0;
    for (unsigned x : w) total += x;
    unsigned r = static_cast<unsigned>(below(total));
    for (std::size_t i = 0; i < N; ++i) {
      if (r < w[i]) return i;
      r -= w[i];
    }
    return N - 1;
  }

 private:
  std::uint64_t s_;
};

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

std::string errname(Errno e) {
  if (e == Errno{0}) return "ok";
  return std::string(cowpte::to_string(e));
}

std::string prot_name(Prot p) {
  if (p == Prot::none) return "NONE";
  std::string s;
  if (flat::has(p, Prot::read)) s += "R";
  if (flat::has(p, Prot::write)) s += "W";
  if (flat::has(p, Prot::exec)) s += "X";
  return s;
}

std::string map_flags_name(MapFlags f) {
  std::string s;
  auto add = [&](MapFlags bit, const char* n) {
    if (flat::has(f, bit)) s += s.empty() ? n : std::string("|") + n;
  };
  add(MapFlags::shared, "SHARED");
  add(MapFlags::private_, "PRIVATE");
  add(MapFlags::anonymous, "ANON");
  add(MapFlags::fixed, "FIXED");
  add(MapFlags::fixed_noreplace, "FIXED_NOREPLACE");
  add(MapFlags::populate, "POPULATE");
  return s.empty() ? "0" : s;
}

std::string advice_name(Advice a) {
  switch (a) {
    case Advice::dontneed:
      return "DONTNEED";
    case Advice::dontfork:
      return "DONTFORK";
    case Advice::dofork:
      return "DOFORK";
    case Advice::pageout:
      return "PAGEOUT";
    case Advice::populate_read:
      return "POPULATE_READ";
    case Advice::populate_write:
      return "POPULATE_WRITE";
  }
  return "?";
}

std::string pin_flags_name(PinFlags f) {
  std::string s;
  if (flat::has(f, PinFlags::write)) s += "WRITE";
  if (flat::has(f, PinFlags::longterm)) s += s.empty() ? "LONGTERM" : "|LONGTERM";
  return s.empty() ? "NONE" : s;
}

std::string self_exe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "cowpte_tests";
}

std::uint64_t env_u64(const char* name, bool* set) {
  const char* v = std::getenv(name);
  *set = v && *v;
  return *set ? std::strtoull(v, nullptr, 0) : 0;
}

class DifferentialRun;
DifferentialRun* g_current_run = nullptr;  // for the crash handler

struct RunConfig {
  std::uint64_t seed = 1;
  std::uint64_t ops = kDefaultOps;
  bool cow_pte = false;  // prctl(PR_SET_COW_PTE) on every spawned process
};

class DifferentialRun {
 public:
  explicit DifferentialRun(const RunConfig& cfg)
      : cfg_(cfg), m_(MachineConfig{.memory_bytes = kMachineBytes}), rng_(cfg.seed) {}

  // Runs the operations; returns false (after printing the reproducer) on the first mismatch.
  bool run() {
    CrashGuard guard(this);
    try {
      free_at_start_ = m_.free_pages();
      spawn();
      for (op_ = 0; op_ < cfg_.ops; ++op_) {
        model_.set_stamp(op_ + 1);
        step();
        if (!failed_) check_invariants();
        min_free_ = std::min(min_free_, m_.free_pages());
        if (!failed_ && !tolerated_ && rng_.chance(30)) check_random_pin();
        if (failed_) break;
        if (tolerated_) {  // the model no longer knows the state: stop, but still tear down
          ++op_;
          break;
        }
      }
      if (!failed_) teardown();
    } catch (const std::exception& e) {
      fail(std::string("exception: ") + e.what());
    }
    if (failed_) report();
    return !failed_;
  }

  std::uint64_t ops_done() const { return op_; }

  // The reproducer, when the simulator crashes (SIGSEGV, SIGABRT, ...): best effort from a
  // signal handler, so that a crash is as easy to replay as a mismatch.
  void crash_report(int sig) {
    auto put = [](const std::string& s) {
      std::size_t off = 0;
      while (off < s.size()) {
        ssize_t n = ::write(2, s.data() + off, s.size() - off);
        if (n <= 0) return;
        off += static_cast<std::size_t>(n);
      }
    };
    put("\ndifferential run crashed with signal " + std::to_string(sig) + ": seed " +
        std::to_string(cfg_.seed) + ", operation " + std::to_string(op_) +
        (cfg_.cow_pte ? " (COW-PTE on)" : "") + "\noperation log up to the crash:\n");
    for (const auto& l : log_) put("  " + l + "\n");
    put("rerun: " + rerun_command() + "\n");
  }

  // "kind ok/errors" for every kind of call made.
  std::string summary() const {
    std::string out = std::string(tolerated_ ? "STOPPED EARLY on ENOMEM; " : "") +
                      "min free pages " + std::to_string(min_free_) + "/" +
                      std::to_string(m_.total_pages()) + "; stores to shared private pages " +
                      std::to_string(cow_stores_) + "; read_gup checks live " +
                      std::to_string(gup_live_) + ", detached " + std::to_string(gup_detached_) +
                      "; ";
    for (const auto& [k, v] : tally_)
      out += k + " " + std::to_string(v.first) + "/" + std::to_string(v.second) + "  ";
    return out;
  }

 private:
  struct Live {
    int mid;  // model process id
    Process* proc;
  };

  // ---------------------------------------------------------------- bookkeeping
  void log(std::string line) { log_.push_back(std::to_string(op_) + ": " + std::move(line)); }

  // Log a call and count it by kind ("madvise" calls by advice) and outcome.
  void note(const std::string& d, Errno e, const std::string& shown) {
    log(d + " -> " + shown);
    const auto dot = d.find('.');
    std::string kind = d.substr(dot + 1, d.find('(', dot) - dot - 1);
    if (kind == "madvise") kind += ":" + d.substr(d.rfind(", ") + 2, d.size() - d.rfind(", ") - 3);
    if (d.find("(exited)") != std::string::npos) kind = "exited." + kind;
    auto& [ok, err] = tally_[kind];
    ++(e == kOk ? ok : err);
  }

  void fail(std::string what) {
    if (failed_) return;
    failed_ = true;
    failure_ = std::move(what);
    log("MISMATCH: " + failure_);
  }

  std::string pname(const Live& l) const { return "p" + std::to_string(l.proc->pid()); }

  std::string rerun_command() const {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string filter =
        info ? std::string(info->test_suite_name()) + "." + info->name() : "Differential*";
    return "COWPTE_DIFF_SEED=" + std::to_string(cfg_.seed) +
           " COWPTE_DIFF_OPS=" + std::to_string(op_ + 1) + " " + self_exe() + " --gtest_filter='" +
           filter + "'";
  }

  struct CrashGuard {
    explicit CrashGuard(DifferentialRun* r) {
      g_current_run = r;
      for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, on_crash);
    }
    ~CrashGuard() {
      for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, SIG_DFL);
      g_current_run = nullptr;
    }
    static void on_crash(int sig) {
      std::signal(sig, SIG_DFL);
      if (DifferentialRun* r = g_current_run) {
        g_current_run = nullptr;
        r->crash_report(sig);
      }
      std::raise(sig);
    }
  };

  void report() {
    std::ostringstream os;
    os << "differential mismatch: seed " << cfg_.seed << ", operation " << op_
       << (cfg_.cow_pte ? " (COW-PTE on)" : "") << "\n  " << failure_ << "\noperation log ("
       << log_.size() << " lines):\n";
    for (const auto& l : log_) os << "  " << l << "\n";
    os << "rerun: " << rerun_command() << "\n";
    const std::string path = "/tmp/cowpte_diff_seed" + std::to_string(cfg_.seed) +
                             (cfg_.cow_pte ? "_cowpte" : "") + ".log";
    std::ofstream(path) << os.str();
    ADD_FAILURE() << os.str() << "(also written to " << path << ")";
  }

  void check_invariants() {
    try {
      m_.check_invariants();
    } catch (const InvariantViolation& e) {
      fail(std::string("check_invariants: ") + e.what());
    }
  }

  // Compare an errno; on mismatch record it. `desc` is the already-logged call.
  bool expect_err(const std::string& desc, Errno got, Errno want) {
    if (got == want) return true;
    // ENOMEM from a fault-driven call is tolerated only when memory is really gone.
    if (got == Errno::nomem && want == kOk && m_.free_pages() < 64) {
      log("  (tolerated ENOMEM: " + std::to_string(m_.free_pages()) +
          " free pages; the run stops here)");
      tolerated_ = true;
      return false;
    }
    fail(desc + ": simulator returned " + errname(got) + ", model expects " + errname(want));
    return false;
  }

  std::uint64_t footprint() const { return model_.footprint_pages(); }
  std::uint64_t private_pages(int mid) const {
    std::uint64_t n = 0;
    for (const auto& [s, v] : model_.proc(mid).vmas)
      if (!v.shared) n += (v.end - v.start) / kPageSize;
    return n;
  }

  void spawn() {
    Process& p = m_.spawn();
    Live l{model_.spawn(), &p};
    live_.push_back(l);
    log("spawn -> " + pname(l));
    if (cfg_.cow_pte) set_cow_pte(l);
  }

  void set_cow_pte(const Live& l) {
    auto r = l.proc->set_cow_pte();
    note(pname(l) + ".set_cow_pte()", r.error(), errname(r.error()));
    expect_err(pname(l) + ".set_cow_pte()", r.error(), model_.set_cow_pte(l.mid).err);
  }

  // ---------------------------------------------------------------- choosing arguments
  Live& pick_live() { return live_[rng_.below(live_.size())]; }

  std::vector<const FlatVma*> vmas_of(int mid) const {
    std::vector<const FlatVma*> out;
    for (const auto& [s, v] : model_.proc(mid).vmas) out.push_back(&v);
    return out;
  }

  std::uint64_t random_pages(std::uint64_t max = 64) {
    switch (rng_.weighted({50, 35, 15})) {
      case 0:
        return rng_.range(1, std::min<std::uint64_t>(8, max));
      case 1:
        return rng_.range(std::min<std::uint64_t>(9, max), std::min<std::uint64_t>(32, max));
      default:
        return rng_.range(std::min<std::uint64_t>(33, max), max);
    }
  }

  // A page-aligned address for a new region of `pages` pages: anywhere in the arena, across a
  // 2 MiB boundary, or next to / over an existing VMA.
  vaddr_t place(int mid, std::uint64_t pages) {
    auto vs = vmas_of(mid);
    switch (rng_.weighted({40, 30, vs.empty() ? 0u : 30u})) {
      case 0:
        return kArenaBase + rng_.below(kArenaPages - pages) * kPageSize;
      case 1: {
        std::uint64_t boundary = rng_.range(1, kArenaPages / kSpanPages - 1) * kSpanPages;
        std::uint64_t back = rng_.range(pages > 1 ? 1 : 0, pages > 1 ? pages - 1 : 0);
        return kArenaBase + (boundary - back) * kPageSize;
      }
      default: {
        const FlatVma* v = vs[rng_.below(vs.size())];
        switch (rng_.below(3)) {
          case 0:
            return v->end;
          case 1:
            if (v->start >= kArenaBase + pages * kPageSize) return v->start - pages * kPageSize;
            return v->end;
          default:
            return v->start + rng_.below((v->end - v->start) / kPageSize) * kPageSize;
        }
      }
    }
  }

  // A range for munmap/mprotect/madvise/pin: inside a VMA, a whole VMA, from a VMA across its
  // neighbours (possibly holes), or anywhere in the arena.
  std::pair<vaddr_t, std::uint64_t> pick_range(int mid, std::uint64_t max_pages = 64) {
    if (hot_count_ && rng_.chance(20)) {  // a few pages around a recently used address
      const std::uint64_t before = rng_.below(4),
                          pages = rng_.range(1, std::min<std::uint64_t>(8, max_pages));
      const vaddr_t page = hot_addr() & ~(kPageSize - 1);
      const vaddr_t start = page >= before * kPageSize ? page - before * kPageSize : page;
      return {start, pages * kPageSize};
    }
    auto vs = vmas_of(mid);
    if (vs.empty() || rng_.chance(15)) {
      std::uint64_t pages = random_pages(max_pages);
      return {kArenaBase + rng_.below(kArenaPages - pages) * kPageSize, pages * kPageSize};
    }
    const FlatVma* v = vs[rng_.below(vs.size())];
    const std::uint64_t vpages = (v->end - v->start) / kPageSize;
    switch (rng_.weighted({45, 25, 30})) {
      case 0: {
        std::uint64_t off = rng_.below(vpages);
        std::uint64_t pages = rng_.range(1, std::min(vpages - off, max_pages));
        return {v->start + off * kPageSize, pages * kPageSize};
      }
      case 1:
        if (vpages <= max_pages) return {v->start, vpages * kPageSize};
        [[fallthrough]];
      default: {
        std::uint64_t off = rng_.below(vpages);
        return {v->start + off * kPageSize, random_pages(max_pages) * kPageSize};
      }
    }
  }

  // Remember an address an operation used: later operations (in any process, since forked
  // processes share layouts) come back to it, so that multi-step sequences such as "write,
  // fork, mprotect RO/RW, write, read in the child" happen often.
  void touch(vaddr_t a) {
    hot_[hot_next_++ % hot_.size()] = a;
    hot_count_ = std::min(hot_count_ + 1, hot_.size());
  }
  vaddr_t hot_addr() { return hot_[rng_.below(hot_count_)]; }

  // An 8-byte aligned address for a load or store, mostly inside a VMA, mostly on a few hot
  // words so that stores and loads meet.
  vaddr_t pick_word_addr(int mid) {
    if (hot_count_ && rng_.chance(35)) {
      static constexpr std::uint64_t kNear[] = {0, 8, 56, 2048, 4088};
      return (hot_addr() & ~(kPageSize - 1)) + kNear[rng_.below(5)];
    }
    auto vs = vmas_of(mid);
    vaddr_t page;
    if (vs.empty() || rng_.chance(12)) {
      page = kArenaBase + rng_.below(kArenaPages) * kPageSize;
    } else {
      const FlatVma* v = vs[rng_.below(vs.size())];
      page = v->start + rng_.below((v->end - v->start) / kPageSize) * kPageSize;
    }
    static constexpr std::uint64_t kHot[] = {0, 1, 7, 256, 511};
    std::uint64_t w = rng_.chance(75) ? kHot[rng_.below(5)] : rng_.below(flat::kWordsPerPage);
    return page + w * 8;
  }

  Prot random_prot() {
    static constexpr Prot kProts[] = {Prot::read | Prot::write,
                                      Prot::read,
                                      Prot::none,
                                      Prot::write,
                                      Prot::read | Prot::exec,
                                      Prot::exec,
                                      Prot::read | Prot::write | Prot::exec};
    return kProts[rng_.weighted({62, 13, 6, 5, 5, 3, 6})];
  }

  std::uint64_t random_value() {
    switch (rng_.weighted({15, 25, 60})) {
      case 0:
        return 0;
      case 1:
        return rng_.range(1, 0xffff);
      default:
        return rng_.next();
    }
  }

  // Length in bytes for a call taking a page count; now and then not a page multiple (Linux
  // rounds up).
  std::uint64_t maybe_ragged(std::uint64_t len) {
    if (len >= kPageSize && rng_.chance(4)) return len - rng_.range(1, kPageSize - 1);
    return len;
  }

  // ---------------------------------------------------------------- operations
  void step() {
    enum Op {
      kStore,
      kLoad,
      kMmap,
      kMunmap,
      kMprotect,
      kMadvise,
      kFork,
      kExit,
      kPin,
      kUnpin,
      kPinCheck,
      kDead,
      kCowPte,
      kCount
    };
    static const unsigned kWeights[kCount] = {260, 220, 90, 50, 60, 80, 40, 28, 50, 40, 30, 6, 0};
    static const unsigned kWeightsCowPte[kCount] = {260, 220, 90, 50, 60, 80, 40,
                                                    28,  50,  40, 30, 6,  10};
    Op op = static_cast<Op>(rng_.weighted(cfg_.cow_pte ? kWeightsCowPte : kWeights));
    if (op == kDead && dead_.empty()) op = kLoad;
    if (op == kFork && live_.size() >= kMaxLive) op = kExit;
    if (op == kMmap && footprint() > kFootprintCap - 64) op = kMunmap;
    Live& l = pick_live();
    if (op == kFork && footprint() + private_pages(l.mid) > kFootprintCap) op = kExit;
    switch (op) {
      case kStore:
        return do_store(l, pick_word_addr(l.mid), random_value());
      case kLoad:
        do_load(l, pick_word_addr(l.mid));
        return;
      case kMmap:
        return do_mmap(l);
      case kMunmap:
        return do_munmap(l);
      case kMprotect:
        return do_mprotect(l);
      case kMadvise:
        return do_madvise(l);
      case kFork:
        return do_fork(l);
      case kExit:
        return do_exit(rng_.below(live_.size()));
      case kPin:
        return do_pin(l);
      case kUnpin:
        return do_unpin(l);
      case kPinCheck:
        return check_random_pin();
      case kDead:
        return do_dead();
      case kCowPte:
        return set_cow_pte(l);
      case kCount:
        break;
    }
  }

  void do_store(Live& l, vaddr_t a, std::uint64_t v) {
    std::string d = pname(l) + ".store(" + hex(a) + ", " + hex(v) + ")";
    // Coverage only: a store to a private page mapped by more than one PTE must COW.
    if (const FlatVma* vma = model_.vma_at(l.mid, a); vma && !vma->shared) {
      const PagemapEntry pm = l.proc->pagemap(a);
      if (pm.present && !pm.exclusive) ++cow_stores_;
    }
    auto r = l.proc->store(a, v);
    note(d, r.error(), errname(r.error()));
    Outcome want = model_.store(l.mid, a, v);
    expect_err(d, r.error(), want.err);
    if (r) touch(a);
    if (!failed_ && model_.expected_gup(l.mid, a)) check_pin(l, a);
  }

  // Returns the value loaded (valid only when the load succeeded and matched).
  std::uint64_t do_load(Live& l, vaddr_t a) {
    std::string d = pname(l) + ".load(" + hex(a) + ")";
    auto r = l.proc->load(a);
    note(d, r.error(), r ? hex(*r) : errname(r.error()));
    Outcome want = model_.load(l.mid, a);
    if (!expect_err(d, r.error(), want.err) || !r) return 0;
    if (*r != want.value)
      fail(d + ": simulator loaded " + hex(*r) + ", model expects " + hex(want.value));
    return *r;
  }

  void do_mmap(Live& l) {
    std::uint64_t pages = random_pages();
    std::uint64_t len = pages * kPageSize;
    Prot prot = random_prot();
    MapFlags type = rng_.chance(30) ? MapFlags::shared : MapFlags::private_;
    vaddr_t addr = place(l.mid, pages);
    MapFlags flags = type | MapFlags::anonymous;
    switch (rng_.weighted({48, 27, 8, 6, 3, 2, 2})) {
      case 0:
        flags = flags | MapFlags::fixed;
        break;
      case 1:
        break;  // hint
      case 2:
        addr = 0;
        break;
      case 3:
        flags = flags | MapFlags::fixed_noreplace;
        break;
      case 4:
        len = 0;
        flags = flags | MapFlags::fixed;
        break;
      case 5:
        addr += rng_.range(1, kPageSize - 1);
        flags = flags | MapFlags::fixed;
        break;
      default:
        flags = MapFlags::anonymous;  // neither MAP_SHARED nor MAP_PRIVATE
        break;
    }
    if (rng_.chance(20)) flags = flags | MapFlags::populate;
    len = maybe_ragged(len);
    std::string d = pname(l) + ".mmap(" + hex(addr) + ", " + hex(len) + ", " + prot_name(prot) +
                    ", " + map_flags_name(flags) + ")";
    auto r = l.proc->mmap(addr, len, prot, flags);
    note(d, r.error(), r ? hex(*r) : errname(r.error()));
    FlatModel::MmapPlan plan = model_.plan_mmap(l.mid, addr, len, prot, flags);
    if (!expect_err(d, r.error(), plan.err) || !r) return;
    vaddr_t got = *r;
    const std::uint64_t alen = flat::page_align(len);
    if (plan.exact && got != plan.addr) {
      return fail(d + ": simulator mapped at " + hex(got) + ", Linux maps at " + hex(plan.addr));
    }
    if (!plan.exact && (got % kPageSize || got < flat::kMmapMinAddr ||
                        got > flat::kTaskSize - alen || !model_.range_free(l.mid, got, alen))) {
      return fail(d + ": simulator mapped at " + hex(got) +
                  ", which is not a free range of the address space");
    }
    model_.apply_mmap(l.mid, got, len, prot, flags);
    touch(got + rng_.below(flat::page_align(len) / kPageSize) * kPageSize);
  }

  // Mostly a well-formed range; sometimes a zero length or an unaligned start.
  void spoil_range(vaddr_t& a, std::uint64_t& len) {
    switch (rng_.weighted({94, 3, 3})) {
      case 1:
        len = 0;
        break;
      case 2:
        a += rng_.range(1, kPageSize - 1);
        break;
      default:
        len = maybe_ragged(len);
    }
  }

  void do_munmap(Live& l) {
    auto [a, len] = pick_range(l.mid);
    spoil_range(a, len);
    std::string d = pname(l) + ".munmap(" + hex(a) + ", " + hex(len) + ")";
    auto r = l.proc->munmap(a, len);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.munmap(l.mid, a, len).err);
  }

  void do_mprotect(Live& l) {
    auto [a, len] = pick_range(l.mid);
    spoil_range(a, len);
    // Mostly RO <-> RW flips, the mprotect write-upgrade path of A02 and K20; a third of the
    // time both at once, RO then RW on the same range.
    const bool flip = rng_.chance(30);
    Prot prot = flip || rng_.chance(50)
                    ? Prot::read
                    : (rng_.chance(50) ? Prot::read | Prot::write : random_prot());
    mprotect_once(l, a, len, prot);
    if (flip && !failed_) mprotect_once(l, a, len, Prot::read | Prot::write);
  }

  void mprotect_once(Live& l, vaddr_t a, std::uint64_t len, Prot prot) {
    std::string d =
        pname(l) + ".mprotect(" + hex(a) + ", " + hex(len) + ", " + prot_name(prot) + ")";
    auto r = l.proc->mprotect(a, len, prot);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.mprotect(l.mid, a, len, prot).err);
    if (len) touch(a);
  }

  void do_madvise(Live& l) {
    static constexpr Advice kAdvice[] = {Advice::dontneed, Advice::dontfork, Advice::dofork,
                                         Advice::populate_read, Advice::populate_write};
    Advice adv = kAdvice[rng_.weighted({35, 14, 14, 17, 20})];
    auto [a, len] = pick_range(l.mid);
    spoil_range(a, len);
    std::string d =
        pname(l) + ".madvise(" + hex(a) + ", " + hex(len) + ", " + advice_name(adv) + ")";
    auto r = l.proc->madvise(a, len, adv);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.madvise(l.mid, a, len, adv).err);
    if (len && a % kPageSize == 0) touch(a);
  }

  void do_fork(Live& l) {
    std::string d = pname(l) + ".fork()";
    auto r = l.proc->fork();
    note(d, r.error(), r ? "p" + std::to_string((*r)->pid()) : errname(r.error()));
    if (!expect_err(d, r.error(), kOk) || !r) return;
    Process* child = *r;
    if (!child || !child->alive() || m_.find(child->pid()) != child || child == l.proc)
      return fail(d + ": the child is not a new live process");
    for (const auto& o : live_)
      if (o.proc->pid() == child->pid()) return fail(d + ": the child reuses a live pid");
    const int mid = model_.fork(l.mid);
    live_.push_back({mid, child});
  }

  void do_exit(std::size_t idx) {
    Live l = live_[idx];
    log(pname(l) + ".exit()");
    const int pid = l.proc->pid();
    l.proc->exit();
    model_.exit(l.mid);
    live_.erase(live_.begin() + static_cast<std::ptrdiff_t>(idx));
    dead_.push_back(l.proc);
    if (l.proc->alive() || m_.find(pid) != nullptr)
      return fail("p" + std::to_string(pid) + ".exit(): the process is still alive/findable");
    if (live_.empty()) spawn();
  }

  void do_pin(Live& l) {
    if (model_.proc(l.mid).pins.size() >= kMaxPinnedPagesPerProc) return do_unpin(l);
    auto [a, len] = pick_range(l.mid, 16);
    const auto& calls = model_.proc(l.mid).pin_calls;
    if (!calls.empty() && rng_.chance(15)) {
      std::tie(a, len) = calls[rng_.below(calls.size())];  // pin the same pages again
    }
    static constexpr PinFlags kFlags[] = {PinFlags::none, PinFlags::write, PinFlags::longterm,
                                          PinFlags::write | PinFlags::longterm};
    PinFlags flags = kFlags[rng_.weighted({15, 15, 35, 35})];
    std::string d =
        pname(l) + ".pin(" + hex(a) + ", " + hex(len) + ", " + pin_flags_name(flags) + ")";
    auto r = l.proc->pin(a, len, flags);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.pin(l.mid, a, len, flags).err);
    if (r) touch(a);
    if (!failed_ && r) {
      // A fresh long-term pin must read what the process reads.
      vaddr_t probe = a + rng_.below(len / kPageSize) * kPageSize + rng_.below(4) * 8;
      if (model_.expected_gup(l.mid, probe)) check_pin(l, probe);
    }
  }

  void do_unpin(Live& l) {
    const auto& fp = model_.proc(l.mid);
    if (fp.pins.empty() && rng_.chance(70)) return do_pin(l);
    vaddr_t a;
    std::uint64_t len;
    if (!fp.pin_calls.empty() && rng_.chance(80)) {
      // A range pinned before (whole, or part of it).
      std::tie(a, len) = fp.pin_calls[rng_.below(fp.pin_calls.size())];
      if (rng_.chance(25)) {
        const std::uint64_t pages = len / kPageSize;
        const std::uint64_t off = rng_.below(pages);
        a += off * kPageSize;
        len = rng_.range(1, pages - off) * kPageSize;
      }
    } else {
      std::tie(a, len) = pick_range(l.mid, 16);
    }
    std::string d = pname(l) + ".unpin(" + hex(a) + ", " + hex(len) + ")";
    auto r = l.proc->unpin(a, len);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.unpin(l.mid, a, len).err);
  }

  // read_gup(a) where the model knows what the pin holds: while the process maps the pinned
  // page, what load(a) reads (COW must never split a FOLL_LONGTERM pin from its process); after
  // munmap/DONTNEED/MAP_FIXED, the page as it was then (the pin keeps it alive and nobody
  // writes it), or the shmem page.
  void check_pin(Live& l, vaddr_t a) {
    const auto want = model_.expected_gup(l.mid, a);
    if (!want) return;
    const bool live = model_.pin_coherent(l.mid, a);
    ++(live ? gup_live_ : gup_detached_);
    std::string d = pname(l) + ".read_gup(" + hex(a) + ")";
    auto g = l.proc->read_gup(a);
    note(d, g.error(), g ? hex(*g) : errname(g.error()));
    if (!g) return fail(d + ": " + errname(g.error()) + " on a page held by a FOLL_LONGTERM pin");
    if (live && model_.load(l.mid, a).ok()) {
      const std::uint64_t loaded = do_load(l, a);
      if (failed_) return;
      if (*g != loaded) {
        return fail(d + " = " + hex(*g) + " but load = " + hex(loaded) +
                    ": the FOLL_LONGTERM pin and the process see different pages (COW broke "
                    "the pin)");
      }
    }
    if (*g != *want) {
      fail(d + " = " + hex(*g) + ", model expects " + hex(*want) +
           (live ? " (the page the process maps)"
                 : " (the pinned page after the process unmapped it: it must stay alive and "
                   "unchanged, or follow its shmem object)"));
    }
  }

  void check_random_pin() {
    std::vector<std::pair<std::size_t, vaddr_t>> sites;
    for (std::size_t i = 0; i < live_.size(); ++i) {
      for (const auto& pin : model_.proc(live_[i].mid).pins) {
        static constexpr std::uint64_t kHot[] = {0, 1, 7, 256, 511};
        const vaddr_t a = pin.vpn * kPageSize + kHot[rng_.below(5)] * 8;
        if (model_.expected_gup(live_[i].mid, a)) sites.push_back({i, a});
      }
    }
    if (sites.empty()) return;
    auto [i, a] = sites[rng_.below(sites.size())];
    check_pin(live_[i], a);
  }

  // Every call on an exited process answers ESRCH.
  void do_dead() {
    Process* p = dead_[rng_.below(dead_.size())];
    const std::string n = "p" + std::to_string(p->pid()) + "(exited)";
    const vaddr_t a = kArenaBase + rng_.below(kArenaPages) * kPageSize;
    Errno got;
    std::string d;
    switch (rng_.below(6)) {
      case 0:
        d = n + ".load(" + hex(a) + ")";
        got = p->load(a).error();
        break;
      case 1:
        d = n + ".store(" + hex(a) + ", 0x1)";
        got = p->store(a, 1).error();
        break;
      case 2:
        d = n + ".mmap(" + hex(a) + ", 0x1000, RW, PRIVATE|ANON|FIXED)";
        got = p->mmap(a, kPageSize, Prot::read | Prot::write,
                      MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed)
                  .error();
        break;
      case 3:
        d = n + ".munmap(" + hex(a) + ", 0x1000)";
        got = p->munmap(a, kPageSize).error();
        break;
      case 4:
        d = n + ".fork()";
        got = p->fork().error();
        break;
      default:
        d = n + ".pin(" + hex(a) + ", 0x1000, LONGTERM)";
        got = p->pin(a, kPageSize, PinFlags::longterm).error();
        break;
    }
    note(d, got, errname(got));
    expect_err(d, got, Errno::srch);
  }

  void teardown() {
    log("teardown: exit all");
    while (!live_.empty() && !failed_) {
      Live l = live_.back();
      live_.pop_back();
      log(pname(l) + ".exit()");
      l.proc->exit();
      model_.exit(l.mid);
      check_invariants();
    }
    if (failed_) return;
    if (m_.free_pages() != free_at_start_) {
      fail("after every process exited, free_pages() = " + std::to_string(m_.free_pages()) +
           ", but it was " + std::to_string(free_at_start_) + " right after construction (" +
           std::to_string(static_cast<std::int64_t>(free_at_start_ - m_.free_pages())) +
           " frames leaked)");
    }
  }

  RunConfig cfg_;
  Machine m_;
  FlatModel model_;
  Rng rng_;
  std::vector<Live> live_;
  std::vector<Process*> dead_;
  std::vector<std::string> log_;
  std::uint64_t op_ = 0;
  std::uint64_t free_at_start_ = 0;
  std::uint64_t min_free_ = ~0ull;
  std::uint64_t cow_stores_ = 0, gup_live_ = 0, gup_detached_ = 0;
  std::array<vaddr_t, 24> hot_{};
  std::size_t hot_next_ = 0, hot_count_ = 0;
  bool failed_ = false;
  bool tolerated_ = false;
  std::string failure_;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> tally_;
};

struct SeedParam {
  std::uint64_t seed;
  bool cow_pte;
};

void PrintTo(const SeedParam& p, std::ostream* os) {
  *os << "seed " << p.seed << (p.cow_pte ? " with COW-PTE" : "");
}

class RandomOps : public ::testing::TestWithParam<SeedParam> {};

TEST_P(RandomOps, MatchesFlatModel) {
  RunConfig cfg;
  cfg.seed = GetParam().seed;
  cfg.cow_pte = GetParam().cow_pte;
  bool set = false;
  if (std::uint64_t s = env_u64("COWPTE_DIFF_SEED", &set); set) cfg.seed = s;
  if (std::uint64_t n = env_u64("COWPTE_DIFF_OPS", &set); set) cfg.ops = n;
  if (cfg.cow_pte) {
    // Only meaningful once prctl(PR_SET_COW_PTE) works.
    Machine probe(MachineConfig{.memory_bytes = kMachineBytes});
    auto r = probe.spawn().set_cow_pte();
    if (!r) GTEST_SKIP() << "set_cow_pte() returns " << errname(r.error());
  }
  DifferentialRun run(cfg);
  EXPECT_TRUE(run.run());
  RecordProperty("ops", std::to_string(run.ops_done()));
  std::printf("[ calls    ] seed %" PRIu64 ", %" PRIu64 " ops (kind ok/errors): %s\n", cfg.seed,
              run.ops_done(), run.summary().c_str());
}

std::string seed_name(const ::testing::TestParamInfo<SeedParam>& info) {
  return "seed" + std::to_string(info.param.seed);
}

// 10 x 10,000 operations with the classic fork, and 5 x 10,000 with COW-PTE sharing.
INSTANTIATE_TEST_SUITE_P(Differential, RandomOps,
                         ::testing::Values(SeedParam{1, false}, SeedParam{2, false},
                                           SeedParam{3, false}, SeedParam{4, false},
                                           SeedParam{5, false}, SeedParam{6, false},
                                           SeedParam{7, false}, SeedParam{8, false},
                                           SeedParam{9, false}, SeedParam{10, false}),
                         seed_name);
INSTANTIATE_TEST_SUITE_P(DifferentialCowPte, RandomOps,
                         ::testing::Values(SeedParam{101, true}, SeedParam{102, true},
                                           SeedParam{103, true}, SeedParam{104, true},
                                           SeedParam{105, true}),
                         seed_name);

}  // namespace
}  // namespace cowpte
