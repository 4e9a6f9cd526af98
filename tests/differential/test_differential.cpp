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
// Three kinds of run: the classic fork (Differential, set_cow_pte is never called, and no fork
// may share a PTE table), and the two COW-PTE policies, armed with set_cow_pte(policy) on
// every spawned process and at random: the seed's (DifferentialCowPte) and On-demand-fork's
// (DifferentialOdf, whose op mix also maps whole 2 MiB spans, the only tables ODF shares).
// DifferentialTimed runs the classic fork, the seed policy and ODF again with the timing model
// on and two CPUs: the TLBs then serve translations without a walk, check_invariants() also
// checks every cached translation against the page tables, and a set_cpu call (only in these
// runs) moves a random process to a random CPU, or to a CPU that does not exist (EINVAL).
// summary() counts the PTE tables fork really shared. DifferentialSwap gives every machine a
// swap device (more pageouts, migrate_page, swapoff); DifferentialReclaim also shrinks memory to
// 2 MiB so that allocations reclaim directly (a run stops early if the OOM killer acts).
//
// The seed policy must moreover be unobservable: a classic twin Machine (timed too in a timed
// run) runs the same calls in lockstep and must answer every one alike (errno and value).
// After every operation the two machines must also be in equivalent states (compare_twin).
// Equivalent means equal, except for the pages a child of the classic fork would fault in
// later. The seed's fork (copy_cow_pte_range) prepares every entry of the shared 2 MiB span,
// also those of the VMAs the classic fork skips because they have no anon_vma: MAP_SHARED
// anonymous (shmem) VMAs, and private anonymous VMAs that were only ever read (their entries
// map the zero page). The classic child starts without those entries and would map the very
// same page on its first touch; the COW-PTE child maps it from the start (through the shared
// table, or through the private table a fallback or a later break copied it into). Precisely:
//   - Frames are matched through a bijection built afresh for each comparison: a frame of this
//     machine always pairs with the same frame of the twin and the other way round, and the
//     zero page pairs with the zero page. A shmem page (the model's object and page index) is
//     one frame on each machine wherever it is mapped.
//   - A page present here and not present on the twin (an "extra" mapping) is allowed only if
//     (a) it is the zero page, in a private VMA, with no other pagemap bit than present and
//     soft-dirty; or (b) it is a shmem page (pagemap file bit, not swapped) in a MAP_SHARED
//     VMA whose frame is the frame of that shmem page: the one paired with the twin's frame of
//     the same shmem page where the twin maps it in some process, or, where the twin maps that
//     shmem page nowhere (it stays in the page cache of the object, which the facade can't
//     show), a frame that is no other page's and the same for every extra mapping of that
//     shmem page, whose object is the one the model gives this VMA (fork hands the child the
//     parent's object: the same VMA lineage).
//   - (c) The mirror image: a shmem page present on the twin and not present here is allowed
//     only in a MAP_SHARED VMA, with the twin's frame of that shmem page (paired with this
//     machine's frame of it where this machine maps it, or else a twin frame that is no other
//     page's). A read fault on a shmem VMA maps the cached pages of the 64 KiB window around
//     it (do_fault_around); where the COW-PTE child already maps the faulting page (b), it
//     takes no fault, and its neighbours stay unmapped until it touches them.
//   - Nothing else may differ: never any other page present on the twin and absent here, never
//     an extra anonymous page other than the zero page, never a different pairing of frames.
//   - rss(): file, anon and swapents equal; shmem equal to the twin's plus the extra shmem
//     pages this process maps, minus those of (c). pgtables_bytes(): equal (the seed charges every
//     sharer of a table as if it had its own).
//   - The pagemap exclusive bit (56, mapcount == 1) may differ only on a frame with at least
//     one extra mapping (or, on the twin, one mapping of (c)) somewhere; in a full comparison
//     that frame's mapcount must be the twin frame's (0 where a machine maps that shmem page
//     nowhere) plus its extra mappings minus its mappings of (c).
//   - Every other pagemap bit is equal, soft-dirty (bit 55) included: fork keeps it in shared
//     entries as classic fork does.
// summary() counts each allowed difference per page compared, so a reader sees how often each
// happened. ODF charges a shared table's pages to one owner, so it has no such equivalence.
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
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
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
    case Advice::free_:
      return "FREE";
    case Advice::remove:
      return "REMOVE";
    case Advice::wipeonfork:
      return "WIPEONFORK";
    case Advice::keeponfork:
      return "KEEPONFORK";
    case Advice::cold:
      return "COLD";
    case Advice::pageout:
      return "PAGEOUT";
    case Advice::populate_read:
      return "POPULATE_READ";
    case Advice::populate_write:
      return "POPULATE_WRITE";
    case Advice::hugepage:
      return "HUGEPAGE";
    case Advice::nohugepage:
      return "NOHUGEPAGE";
    case Advice::collapse:
      return "COLLAPSE";
  }
  return "?";
}

std::string pin_flags_name(PinFlags f) {
  std::string s;
  if (flat::has(f, PinFlags::write)) s += "WRITE";
  if (flat::has(f, PinFlags::longterm)) s += s.empty() ? "LONGTERM" : "|LONGTERM";
  if (flat::has(f, PinFlags::fast)) s += s.empty() ? "FAST" : "|FAST";
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

// The fork a run exercises, by policy name: the classic one (set_cow_pte is never called), or
// COW PTE under a registered fork policy, armed with set_cow_pte(name) on every spawned process
// (and at random later on). The seed policy also runs a classic twin in lockstep; every other
// policy (on_demand_fork, rfc_v2, any registered later) is checked against the flat model.
enum class ForkMode { classic, seed, shared };

ForkMode mode_of(const std::string& policy) {
  if (policy == "classic") return ForkMode::classic;
  return policy == "seed" ? ForkMode::seed : ForkMode::shared;
}

std::string mode_name(const std::string& policy) {
  return policy == "classic" ? "classic fork" : "COW-PTE " + policy + " policy";
}

// For file and test names.
std::string mode_tag(const std::string& policy) {
  return policy == "classic" ? "classic" : "cowpte_" + policy;
}

// The timed runs (DifferentialTimed) turn the timing model on, with this many CPUs: the TLBs
// then serve translations, so a missing flush shows up in check_invariants() or as a wrong load.
constexpr unsigned kTimedCpus = 2;

// The swap runs (DifferentialSwap) give the machine (and its twin) a swap device of this size:
// MADV_PAGEOUT then swaps anonymous pages out, a later access swaps them in, fork and the zaps
// meet swap entries, and swapoff brings them back.
constexpr std::uint64_t kSwapBytes = 16ull << 20;
// The reclaim runs (DifferentialReclaim) also shrink memory to this, below what the runs touch:
// allocations then find no free frame and reclaim directly.
constexpr std::uint64_t kSmallMachineBytes = 2ull << 20;

MachineConfig machine_config(bool timed, bool zero_page = true, bool swap = false,
                             bool small = false, ThpMode thp = ThpMode::never) {
  MachineConfig c{.memory_bytes = small ? kSmallMachineBytes : kMachineBytes,
                  .zero_page = zero_page,
                  .thp = thp};
  if (swap) c.swap_bytes = kSwapBytes;
  if (timed) {
    c.cpus = kTimedCpus;
    c.timing.enabled = true;
  }
  return c;
}

std::string run_tag(const std::string& policy, bool timed, bool zero_page = true, bool swap = false,
                    bool small = false, ThpMode thp = ThpMode::never) {
  return mode_tag(policy) + (timed ? "_timed" : "") + (zero_page ? "" : "_nozeropage") +
         (swap ? "_swap" : "") + (small ? "_small" : "") +
         (thp == ThpMode::never ? "" : "_thp_" + std::string(to_string(thp)));
}
std::string run_name(const std::string& policy, bool timed, bool zero_page = true,
                     bool swap = false, bool small = false, ThpMode thp = ThpMode::never) {
  return mode_name(policy) + (timed ? ", timed on " + std::to_string(kTimedCpus) + " CPUs" : "") +
         (zero_page ? "" : ", without the zero page") + (swap ? ", with a swap device" : "") +
         (small ? " and 2 MiB of memory" : "") +
         (thp == ThpMode::never ? "" : ", THP " + std::string(to_string(thp)));
}

struct RunConfig {
  std::uint64_t seed = 1;
  std::uint64_t ops = kDefaultOps;
  std::string policy = "classic";
  ForkMode mode = ForkMode::classic;  // mode_of(policy)
  bool timed = false;                 // the timing model on, kTimedCpus CPUs, and set_cpu calls
  bool zero_page = true;              // MachineConfig::zero_page of the machine and its twin
  bool swap = false;                  // a swap device (kSwapBytes), more pageouts, swapoff
  bool small = false;                 // kSmallMachineBytes of memory: direct reclaim
  ThpMode thp = ThpMode::never;       // THP enabled mode; 2 MiB-aligned mappings, MADV_(NO)HUGEPAGE
};

class DifferentialRun {
 public:
  explicit DifferentialRun(const RunConfig& cfg)
      : cfg_(cfg),
        m_(machine_config(cfg.timed, cfg.zero_page, cfg.swap, cfg.small, cfg.thp)),
        rng_(cfg.seed) {
    // Under direct reclaim the twin would reclaim other pages (its tables take other frames):
    // the small runs check the seed against the model alone.
    if (cfg.mode == ForkMode::seed && !cfg.small)
      twin_ = std::make_unique<Machine>(
          machine_config(cfg.timed, cfg.zero_page, cfg.swap, cfg.small, cfg.thp));
  }

  // Runs the operations; returns false (after printing the reproducer) on the first mismatch.
  bool run() {
    CrashGuard guard(this);
    try {
      free_at_start_ = m_.free_pages();
      if (twin_) twin_free_at_start_ = twin_->free_pages();
      spawn();
      for (op_ = 0; op_ < cfg_.ops; ++op_) {
        model_.set_stamp(op_ + 1);
        step();
        if (!failed_) check_invariants();
        if (!failed_ && !tolerated_ && m_.vmstat().oom_kill) {
          // The OOM killer took a process the model still runs: it no longer knows the state.
          log("  (OOM kill: " + m_.dmesg().back() + "; the run stops here)");
          tolerated_ = true;
        }
        min_free_ = std::min(min_free_, m_.free_pages());
        if (!failed_ && !tolerated_ && rng_.chance(30)) check_random_pin();
        if (!failed_ && !tolerated_) compare_twin();
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
        std::to_string(cfg_.seed) + ", operation " + std::to_string(op_) + " (" +
        run_name(cfg_.policy, cfg_.timed, cfg_.zero_page) + ")\noperation log up to the crash:\n");
    for (const auto& l : log_) put("  " + l + "\n");
    put("rerun: " + rerun_command() + "\n");
  }

  // "kind ok/errors" for every kind of call made.
  std::string summary() const {
    const VmStat vs = m_.vmstat();
    const std::string swap =
        cfg_.swap
            ? "swapped out " + std::to_string(vs.pswpout) + ", in " + std::to_string(vs.pswpin) +
                  " (swap cache hits " + std::to_string(vs.swapcache_hits) +
                  "), continuation frames " + std::to_string(vs.swap_cont_pages) + "; "
            : "";
    const std::string thp =
        cfg_.thp != ThpMode::never
            ? "THPs faulted " + std::to_string(vs.thp_fault_alloc) + " (fallbacks " +
                  std::to_string(vs.thp_fault_fallback) + "), PMDs split " +
                  std::to_string(vs.thp_split_pmd) + ", THPs split " +
                  std::to_string(vs.thp_split_page) + "; MADV_COLLAPSE done " +
                  std::to_string(collapse_ok_) + ", refused by the pages " +
                  std::to_string(collapse_refused_) + "; khugepaged collapsed " +
                  std::to_string(khugepaged_collapsed_) + "; "
            : "";
    std::string out =
        std::string(tolerated_ ? "STOPPED EARLY on ENOMEM or an OOM kill; " : "") + swap + thp +
        (cfg_.small ? "reclaimed " + std::to_string(vs.pgsteal) + " of " +
                          std::to_string(vs.pgscan) + " scanned; "
                    : "") +
        "min free pages " + std::to_string(min_free_) + "/" + std::to_string(m_.total_pages()) +
        "; stores to shared private pages " + std::to_string(cow_stores_) +
        "; read_gup checks live " + std::to_string(gup_live_) + ", detached " +
        std::to_string(gup_detached_) + "; MADV_FREE'd pages read dropped " +
        std::to_string(model_.lazy_dropped_seen) + ", kept " +
        std::to_string(model_.lazy_kept_seen) + "; PTE tables shared at fork " +
        std::to_string(shared_tables_) + " (in " + std::to_string(sharing_forks_) + " of " +
        std::to_string(forks_) + " forks, up to " + std::to_string(max_sharers_) + " sharers)" +
        "; threads made by clone_vm " + std::to_string(clones_) +
        (twin_ ? "; classic twin compared " + std::to_string(twin_full_) + " times in full, " +
                     std::to_string(twin_partial_) + " times on recent spans, " +
                     std::to_string(twin_pages_) +
                     " pages; allowed differences (pages compared): only here the zero page " +
                     std::to_string(allowed_zero_) + ", a shmem page the twin maps elsewhere " +
                     std::to_string(allowed_shmem_) + ", a shmem page the twin maps nowhere " +
                     std::to_string(allowed_shmem_unmapped_) +
                     ", only on the twin a shmem page its fault-around mapped " +
                     std::to_string(allowed_missing_) + ", exclusive bit " +
                     std::to_string(allowed_exclusive_) + ", RSS shmem (process checks) " +
                     std::to_string(allowed_rss_shmem_)
               : "") +
        "; ";
    for (const auto& [k, v] : tally_)
      out += k + " " + std::to_string(v.first) + "/" + std::to_string(v.second) + "  ";
    return out;
  }

 private:
  struct Live {
    int mid;  // model process id
    Process* proc;
    Process* twin;  // the same process on the classic twin machine (seed policy), or nullptr
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

  std::string pname(const Live& l) const {
    std::string name = "p";  // appended, not "p" + ...: GCC 12's -O3 warns on that falsely
    return name += std::to_string(l.proc->pid());
  }

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
    os << "differential mismatch: seed " << cfg_.seed << ", operation " << op_ << " ("
       << run_name(cfg_.policy, cfg_.timed, cfg_.zero_page) << ")\n  " << failure_
       << "\noperation log (" << log_.size() << " lines):\n";
    for (const auto& l : log_) os << "  " << l << "\n";
    os << "rerun: " << rerun_command() << "\n";
    const std::string path = "/tmp/cowpte_diff_seed" + std::to_string(cfg_.seed) + "_" +
                             run_tag(cfg_.policy, cfg_.timed, cfg_.zero_page) + ".log";
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
    // ENOMEM from a fault-driven call is tolerated only when memory is really gone (or the OOM
    // killer had to act, which frees memory again).
    if (got == Errno::nomem && want == kOk && (m_.free_pages() < 64 || m_.vmstat().oom_kill)) {
      log("  (tolerated ENOMEM: " + std::to_string(m_.free_pages()) +
          " free pages; the run stops here)");
      tolerated_ = true;
      return false;
    }
    fail(desc + ": simulator returned " + errname(got) + ", model expects " + errname(want));
    return false;
  }

  // ---------------------------------------------------------------- the classic twin
  // Under the seed policy a second Machine runs the same calls with the classic fork: COW PTE
  // must not be observable. Every call on a live process (except set_cow_pte) goes to both, and
  // the twin must answer the same errno and value.
  bool twin_same(const std::string& d, Errno got, Errno twin) {
    if (failed_ || tolerated_ || got == twin) return !failed_;
    fail(d + ": returned " + errname(got) + ", but " + errname(twin) +
         " with the classic fork (twin machine, " + std::to_string(twin_->free_pages()) +
         " free pages)");
    return false;
  }
  template <class T>
  void twin_same(const std::string& d, const Result<T>& got, const Result<T>& twin) {
    if (!twin_same(d, got.error(), twin.error()) || !got) return;
    if constexpr (!std::is_void_v<T>) {
      if (*got != *twin) {
        fail(d + ": returned " + hex(*got) + ", but " + hex(*twin) +
             " with the classic fork (twin machine)");
      }
    }
  }

  // After every operation the twin must be equivalent in the sense of the header comment:
  // pgtables_bytes() equal; RSS equal but for the shmem pages mapped only here; the pagemap of
  // every page of every VMA of every live process equal bit for bit, except for the allowed
  // differences (an extra zero page in a private VMA, an extra shmem page, the exclusive bit of
  // a frame with extra mappings, soft-dirty after a COW-PTE fork), with frames matched through a
  // bijection. Frame numbers differ (COW PTE allocates fewer table frames), so the bijection is
  // built afresh for each comparison: a frame of this machine always pairs with the same twin
  // frame and the other way round, and the zero page pairs with the zero page.
  //
  // Cost: a full comparison reads the pagemap of every page of every VMA of every process on
  // both machines. After every operation that took 2.3-3.4 s per 10,000-operation seed
  // (RelWithDebInfo), over the 3 s budget, so every operation compares only the 2 MiB spans
  // it used (twin_spans_), in every process, since a store or an unmap in one process changes
  // what its relatives see at the same address (the exclusive bit, a shared table broken); a
  // spawn, a fork, an exit and every kTwinFullEvery-th operation compare everything. That
  // takes 0.7-1.5 s per seed. Every mapping of a shmem page sits at the same address in every
  // process (fork keeps addresses and the test never maps an object twice), so a partial
  // comparison sees all the mappings of the shmem pages of its spans; the extra shmem pages of
  // the spans it skips are remembered from the comparison that last saw them (extra_shmem_),
  // for the RSS check. Should that RSS check or the exclusive bit fail in a partial comparison,
  // it is redone in full before reporting, so a span this bookkeeping missed can't make a false
  // mismatch.
  void compare_twin() {
    if (!twin_) return;
    // COWPTE_TWIN_FULL=1: every span after every step (slow; to find where a difference began).
    static const bool always_full = std::getenv("COWPTE_TWIN_FULL") != nullptr;
    const bool full = twin_full_next_ || op_ % kTwinFullEvery == 0 || always_full;
    twin_full_next_ = false;
    compare_twin_once(full);
    if (!failed_) twin_spans_.clear();
  }

  void compare_twin_once(bool full) {
    ++(full ? twin_full_ : twin_partial_);
    if (full) {
      extra_shmem_.clear();
      missing_shmem_.clear();
    } else {
      for (auto& [pid, spans] : extra_shmem_)
        for (vaddr_t span : twin_spans_) spans.erase(span);
      for (auto& [pid, spans] : missing_shmem_)
        for (vaddr_t span : twin_spans_) spans.erase(span);
    }
    // frame -> (the frame it pairs with, where it was first seen), in each direction.
    struct Seen {
      pfn_t other;
      int pid;
      vaddr_t va;
    };
    std::unordered_map<pfn_t, Seen> to_twin{{m_.zero_pfn(), {twin_->zero_pfn(), 0, 0}}},
        from_twin{{twin_->zero_pfn(), {m_.zero_pfn(), 0, 0}}};
    auto seen_at = [](const Seen& w) {
      return w.pid ? "p" + std::to_string(w.pid) + " " + hex(w.va) : std::string("zero page");
    };
    auto show = [](const PagemapEntry& e, pfn_t zero) {
      return std::string(e.present ? "present" : "not present") +
             (e.present ? " pfn " + hex(e.pfn) : std::string()) +
             (e.present && e.pfn == zero ? " (zero page)" : "") +
             (e.exclusive ? " exclusive" : "") + (e.file_or_shared_anon ? " file" : "") +
             (e.swapped ? " swapped" : "") + (e.soft_dirty ? " soft-dirty" : "");
    };
    using ShmPage = std::pair<std::uint64_t, std::uint64_t>;  // the model's object, page index
    auto shm_name = [](const ShmPage& k) {
      return "shmem object " + std::to_string(k.first) + " page " + std::to_string(k.second);
    };
    // The frames the shmem pages mapped on both machines have: here, and on the twin.
    std::map<ShmPage, std::pair<pfn_t, pfn_t>> shm_frames;
    struct Extra {  // a shmem page mapped here and not on the twin
      const Live* l;
      vaddr_t va;
      pfn_t pfn;
      ShmPage key;
    };
    std::vector<Extra> extras;
    // Shmem pages mapped on the twin and not here (pfn: the twin's frame): see (c).
    std::vector<Extra> missing;
    struct ExclusiveDiff {
      const Live* l;
      vaddr_t va;
      PagemapEntry p, q;
    };
    std::vector<ExclusiveDiff> exclusive_diffs;
    constexpr std::uint64_t kFlagBits = ~((1ull << 55) - 1);  // bits 55-63
    constexpr std::uint64_t kPresent = 1ull << 63, kExclusive = 1ull << 56, kSoftDirty = 1ull << 55;

    for (const Live& l : live_) {
      if (!first_task(l)) continue;  // a thread sees its group's mm: count its mappings once
      const int pid = l.proc->pid();
      for (const auto& [s, v] : model_.proc(l.mid).vmas) {
        for (vaddr_t va = v.start; va < v.end; va += kPageSize) {
          if (!full) {
            const vaddr_t span = va & ~(kSpanBytes - 1);
            if (std::find(twin_spans_.begin(), twin_spans_.end(), span) == twin_spans_.end()) {
              va = span + kSpanBytes - kPageSize;  // on to the next span
              continue;
            }
          }
          ++twin_pages_;
          const PagemapEntry p = l.proc->pagemap(va), q = l.twin->pagemap(va);
          auto mismatch = [&](const std::string& why) {
            fail("pagemap(" + pname(l) + " " + hex(va) + "): " + show(p, m_.zero_pfn()) + ", but " +
                 show(q, twin_->zero_pfn()) + " with the classic fork" + why);
          };
          std::uint64_t diff = (p.raw ^ q.raw) & kFlagBits;
          const ShmPage key{v.obj, v.pgoff + (va - v.start) / kPageSize};
          if (p.present && !q.present) {  // a page the classic child would fault in later
            if (!v.shared) {
              if (p.pfn != m_.zero_pfn() || (p.raw & kFlagBits & ~(kPresent | kSoftDirty)))
                return mismatch(
                    ": in a private VMA only the zero page may be mapped where the classic fork "
                    "maps nothing");
              ++allowed_zero_;
              continue;
            }
            if (!p.file_or_shared_anon || p.swapped || p.pfn == m_.zero_pfn())
              return mismatch(
                  ": in a MAP_SHARED VMA only a shmem page may be mapped where the classic fork "
                  "maps nothing");
            extras.push_back({&l, va, p.pfn, key});
            continue;
          }
          if (diff & kPresent) {  // present on the twin only
            if (!v.shared || !q.file_or_shared_anon || q.swapped || q.pfn == twin_->zero_pfn())
              return mismatch(
                  ": a page the classic fork maps must be mapped here too (only a shmem page "
                  "its fault-around mapped may be missing)");
            missing.push_back({&l, va, q.pfn, key});
            continue;
          }
          if (diff & kExclusive) {  // both present: allowed only on a frame with extra mappings
            exclusive_diffs.push_back({&l, va, p, q});
            diff &= ~kExclusive;
          }
          if (diff) return mismatch("");
          if (!p.present) continue;
          const auto [it, fresh] = to_twin.try_emplace(p.pfn, Seen{q.pfn, pid, va});
          const auto [jt, jfresh] = from_twin.try_emplace(q.pfn, Seen{p.pfn, pid, va});
          const std::string here = "pagemap(" + pname(l) + " " + hex(va) + ") maps frame " +
                                   hex(p.pfn) + ", and frame " + hex(q.pfn) +
                                   " with the classic fork; but ";
          if (it->second.other != q.pfn) {
            return fail(here + "frame " + hex(p.pfn) + " is also mapped at " + seen_at(it->second) +
                        ", where the classic fork maps frame " + hex(it->second.other) +
                        ": the sharing of pages differs");
          }
          if (jt->second.other != p.pfn) {
            return fail(here + "classic frame " + hex(q.pfn) + " is also mapped at " +
                        seen_at(jt->second) + ", where this machine maps frame " +
                        hex(jt->second.other) + ": the sharing of pages differs");
          }
          if (v.shared) {
            const auto [st, sfresh] = shm_frames.try_emplace(key, p.pfn, q.pfn);
            if (st->second != std::pair{p.pfn, q.pfn}) {
              return fail(here + shm_name(key) + " is frame " + hex(st->second.first) +
                          " elsewhere (frame " + hex(st->second.second) +
                          " with the classic fork): one shmem page, two frames");
            }
          }
        }
      }
    }

    // The shmem pages mapped only here: each must be the frame of its shmem page. When the twin
    // maps that page somewhere, it is the frame paired with the twin's. When the twin maps it
    // nowhere (the classic child that would fault it in has not, and every other mapping went),
    // the facade can't show the twin's page cache: then every extra mapping of that shmem page
    // must be one frame, that frame no other page's, and its shmem object the one the model
    // says this VMA maps (fork hands a child its parent's object, so it is the same lineage).
    std::unordered_map<pfn_t, std::int64_t> extra_maps;  // frame -> mappings the twin lacks
    std::map<ShmPage, pfn_t> only_here;                  // shmem pages the twin maps nowhere
    std::unordered_map<pfn_t, ShmPage> only_here_page;
    for (const Extra& e : extras) {
      const std::string here = "pagemap(" + pname(*e.l) + " " + hex(e.va) + ") maps frame " +
                               hex(e.pfn) + " (" + shm_name(e.key) +
                               "), which the classic fork does not map there; but ";
      if (const auto it = shm_frames.find(e.key); it != shm_frames.end()) {
        if (it->second.first != e.pfn) {
          return fail(here + "that shmem page is frame " + hex(it->second.first) +
                      " where both machines map it (frame " + hex(it->second.second) +
                      " with the classic fork)");
        }
        ++allowed_shmem_;
      } else {
        if (const auto other = to_twin.find(e.pfn); other != to_twin.end()) {
          return fail(here + "that frame is also mapped at " + seen_at(other->second) +
                      " as another page (frame " + hex(other->second.other) +
                      " with the classic fork)");
        }
        const auto [kt, kfresh] = only_here.try_emplace(e.key, e.pfn);
        const auto [ft, ffresh] = only_here_page.try_emplace(e.pfn, e.key);
        if (kt->second != e.pfn)
          return fail(here + "that shmem page is frame " + hex(kt->second) + " elsewhere");
        if (ft->second != e.key)
          return fail(here + "that frame is also " + shm_name(ft->second) + " elsewhere");
        ++allowed_shmem_unmapped_;
      }
      ++extra_maps[e.pfn];
      ++extra_shmem_[e.l->proc->pid()][e.va & ~(kSpanBytes - 1)];
    }
    // The shmem pages the twin's fault-around mapped and this machine did not: the mirror image.
    std::unordered_map<pfn_t, std::int64_t> missing_maps;  // twin frame -> mappings lacking here
    std::map<ShmPage, pfn_t> only_twin;                    // shmem pages only the twin maps
    std::unordered_map<pfn_t, ShmPage> only_twin_page;
    for (const Extra& e : missing) {
      const std::string here = "pagemap(" + pname(*e.l) + " " + hex(e.va) +
                               ") maps nothing, but frame " + hex(e.pfn) + " (" + shm_name(e.key) +
                               ") with the classic fork; and ";
      if (const auto it = shm_frames.find(e.key); it != shm_frames.end()) {
        if (it->second.second != e.pfn) {
          return fail(here + "that shmem page is classic frame " + hex(it->second.second) +
                      " where both machines map it");
        }
      } else {
        if (const auto other = from_twin.find(e.pfn); other != from_twin.end()) {
          return fail(here + "that classic frame is also mapped at " + seen_at(other->second) +
                      " as another page");
        }
        const auto [kt, kfresh] = only_twin.try_emplace(e.key, e.pfn);
        const auto [ft, ffresh] = only_twin_page.try_emplace(e.pfn, e.key);
        if (kt->second != e.pfn)
          return fail(here + "that shmem page is classic frame " + hex(kt->second) + " elsewhere");
        if (ft->second != e.key)
          return fail(here + "that classic frame is also " + shm_name(ft->second) + " elsewhere");
      }
      ++allowed_missing_;
      ++missing_maps[e.pfn];
      ++missing_shmem_[e.l->proc->pid()][e.va & ~(kSpanBytes - 1)];
    }

    // The exclusive bit (mapcount == 1) may differ only on a frame mapped more often here; in a
    // full comparison, its mapcount must exceed the twin frame's by exactly those mappings.
    for (const ExclusiveDiff& d : exclusive_diffs) {
      if (!extra_maps.count(d.p.pfn) && !missing_maps.count(d.q.pfn)) {
        // The extra mapping may be in a span this partial comparison skipped (mremap maps a
        // shmem page at different addresses in related processes): look at everything.
        if (!full) return compare_twin_once(true);
        return fail("pagemap(" + pname(*d.l) + " " + hex(d.va) + "): " + show(d.p, m_.zero_pfn()) +
                    ", but " + show(d.q, twin_->zero_pfn()) +
                    " with the classic fork: the exclusive bit differs on a frame that no process "
                    "maps where the classic fork does not");
      }
      ++allowed_exclusive_;
    }
    if (full) {
      // Every frame with an extra or a missing mapping: maps(here) = maps(twin) + extra -
      // missing, where a side that maps the shmem page nowhere counts 0.
      std::vector<std::pair<std::optional<pfn_t>, std::optional<pfn_t>>> pairs;
      for (const auto& [pfn, n] : extra_maps) {
        const auto it = to_twin.find(pfn);
        std::optional<pfn_t> q;
        if (it != to_twin.end())
          q = it->second.other;
        else if (const auto k = only_here_page.find(pfn); k != only_here_page.end())
          if (const auto t = only_twin.find(k->second); t != only_twin.end()) q = t->second;
        pairs.push_back({pfn, q});
      }
      for (const auto& [qfn, n] : missing_maps) {
        const auto it = from_twin.find(qfn);
        std::optional<pfn_t> p;
        if (it != from_twin.end())
          p = it->second.other;
        else if (const auto k = only_twin_page.find(qfn); k != only_twin_page.end())
          if (const auto h = only_here.find(k->second); h != only_here.end()) p = h->second;
        if (p && extra_maps.count(*p)) continue;  // checked above
        pairs.push_back({p, qfn});
      }
      for (const auto& [p, q] : pairs) {
        const std::int64_t maps = p ? m_.page_info(*p).mapcount : 0;
        const std::int64_t twin_maps = q ? twin_->page_info(*q).mapcount : 0;
        const std::int64_t extra = p && extra_maps.count(*p) ? extra_maps.at(*p) : 0;
        const std::int64_t lack = q && missing_maps.count(*q) ? missing_maps.at(*q) : 0;
        if (maps != twin_maps + extra - lack) {
          return fail("shmem frame " + (p ? hex(*p) : std::string("(none)")) + " has mapcount " +
                      std::to_string(maps) + ", but the classic fork's " +
                      (q ? hex(*q) : std::string("(none)")) + " " + std::to_string(twin_maps) +
                      ", plus " + std::to_string(extra) + " mappings only here, minus " +
                      std::to_string(lack) + " mappings only there");
        }
      }
    }

    // RSS: equal, but for the extra shmem pages each process maps; page-table bytes: equal (the
    // seed charges each sharer as if it had its own table).
    for (const Live& l : live_) {
      if (!first_task(l)) continue;
      std::int64_t extra = 0;
      if (const auto it = extra_shmem_.find(l.proc->pid()); it != extra_shmem_.end())
        for (const auto& [span, n] : it->second) extra += static_cast<std::int64_t>(n);
      if (const auto it = missing_shmem_.find(l.proc->pid()); it != missing_shmem_.end())
        for (const auto& [span, n] : it->second) extra -= static_cast<std::int64_t>(n);
      const RssStat a = l.proc->rss(), b = l.twin->rss();
      if (a.file != b.file || a.anon != b.anon || a.swapents != b.swapents ||
          a.shmem != b.shmem + extra) {
        if (!full) return compare_twin_once(true);  // see the comment above compare_twin
        return fail(pname(l) + ".rss() = {file " + std::to_string(a.file) + ", anon " +
                    std::to_string(a.anon) + ", swapents " + std::to_string(a.swapents) +
                    ", shmem " + std::to_string(a.shmem) + "}, but {file " +
                    std::to_string(b.file) + ", anon " + std::to_string(b.anon) + ", swapents " +
                    std::to_string(b.swapents) + ", shmem " + std::to_string(b.shmem) +
                    "} with the classic fork, and this process maps " + std::to_string(extra) +
                    " shmem pages the classic fork does not map");
      }
      if (extra) ++allowed_rss_shmem_;
      if (l.proc->pgtables_bytes() != l.twin->pgtables_bytes()) {
        return fail(pname(l) + ".pgtables_bytes() = " + std::to_string(l.proc->pgtables_bytes()) +
                    ", but " + std::to_string(l.twin->pgtables_bytes()) + " with the classic fork");
      }
    }
  }

  // An operation used [a, a+len): compare its 2 MiB spans with the twin after this operation.
  void twin_dirty(vaddr_t a, std::uint64_t len) {
    if (!twin_) return;
    len = std::min<std::uint64_t>(len, kArenaPages * kPageSize);
    for (vaddr_t span = a & ~(kSpanBytes - 1); span < a + std::max<std::uint64_t>(len, 1);
         span += kSpanBytes) {
      if (std::find(twin_spans_.begin(), twin_spans_.end(), span) == twin_spans_.end())
        twin_spans_.push_back(span);
    }
  }

  // Coverage: the PTE tables a child shares with its parent right after fork (walk() reaches
  // the same table frame at the same address), one look per 2 MiB span of the child's VMAs.
  std::uint64_t shared_tables(const Machine& m, const Process& parent, const Process& child,
                              int child_mid) {
    std::uint64_t n = 0;
    vaddr_t done = ~0ull;
    for (const auto& [s, v] : model_.proc(child_mid).vmas) {
      for (vaddr_t span = v.start & ~(kSpanBytes - 1); span < v.end; span += kSpanBytes) {
        if (span == done) continue;
        done = span;
        const vaddr_t a = std::max(span, v.start);
        const PtWalk pw = m.walk(parent, a), cw = m.walk(child, a);
        if (pw.levels < 4 || cw.levels < 4 || pw.table[3] != cw.table[3]) continue;
        ++n;
        if (&m == &m_) max_sharers_ = std::max(max_sharers_, m.page_info(cw.table[3]).refcount);
      }
    }
    return n;
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
    Live l{model_.spawn(), &p, twin_ ? &twin_->spawn() : nullptr};
    live_.push_back(l);
    log("spawn -> " + pname(l));
    twin_full_next_ = true;
    if (cfg_.mode != ForkMode::classic) set_cow_pte(l);
  }

  // Never made on the twin: it keeps the classic fork.
  void set_cow_pte(const Live& l) {
    const std::string d = pname(l) + ".set_cow_pte(" + cfg_.policy + ")";
    auto r = l.proc->set_cow_pte(cfg_.policy);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.set_cow_pte(l.mid).err);
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
      kSetCpu,
      kMremap,
      kSwapoff,
      kMigrate,
      kKhugepaged,
      kClone,
      kCount
    };
    // set_cpu only in the timed runs (a zero weight is never drawn, so the untimed runs draw
    // what they drew before it existed).
    // swapoff and migrate_page only in the swap runs, as set_cpu.
    // khugepaged only in the THP runs.
    static const unsigned kWeights[kCount] = {260, 220, 90, 50, 60, 80, 40, 28, 50, 40,
                                              30,  6,   0,  0,  45, 0,  0,  0,  12};
    static const unsigned kWeightsCowPte[kCount] = {260, 220, 90, 50, 60, 80, 40, 28, 50, 40,
                                                    30,  6,   10, 0,  45, 0,  0,  0,  12};
    unsigned weights[kCount];
    std::copy_n(cfg_.mode == ForkMode::classic ? kWeights : kWeightsCowPte, kCount, weights);
    if (cfg_.timed) weights[kSetCpu] = kSetCpuWeight;
    if (cfg_.swap) weights[kSwapoff] = 1, weights[kMigrate] = 20;
    if (cfg_.thp != ThpMode::never) weights[kKhugepaged] = 8;
    Op op = static_cast<Op>(rng_.weighted(weights));
    if (op == kDead && dead_.empty()) op = kLoad;
    if (op == kSwapoff && op_ < kDefaultOps * 3 / 4) op = kLoad;  // the last quarter: no swap
    if ((op == kFork || op == kClone) && live_.size() >= kMaxLive) op = kExit;
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
      case kSetCpu:
        return do_set_cpu(l);
      case kMremap:
        return do_mremap(l);
      case kSwapoff:
        return do_swapoff();
      case kMigrate:
        return do_migrate(l);
      case kKhugepaged:
        return do_khugepaged();
      case kClone:
        return do_clone(l);
      case kCount:
        break;
    }
  }

  // Timed runs: migrate a process to a random CPU, or to CPU `cpus`, which does not exist
  // (EINVAL, and the process stays where it is). A migrated process finds its new CPU's TLB
  // holding whatever that CPU cached for it earlier: the flushes must have reached it too.
  void do_set_cpu(Live& l) {
    const unsigned cpus = m_.config().cpus;
    const unsigned cpu = static_cast<unsigned>(rng_.below(cpus + 1));
    const unsigned before = l.proc->cpu();
    const std::string d = pname(l) + ".set_cpu(" + std::to_string(cpu) + ")";
    auto r = l.proc->set_cpu(cpu);
    note(d, r.error(), errname(r.error()));
    if (!expect_err(d, r.error(), cpu < cpus ? kOk : Errno::inval)) return;
    if (l.twin) twin_same(d, r, l.twin->set_cpu(cpu));
    const unsigned want = r ? cpu : before;
    if (!failed_ && l.proc->cpu() != want) {
      fail(d + ": the process is on CPU " + std::to_string(l.proc->cpu()) + ", expected " +
           std::to_string(want));
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
    if (l.twin) twin_same(d, r, l.twin->store(a, v));
    twin_dirty(a, 8);
    if (r) touch(a);
    if (!failed_ && model_.expected_gup(l.mid, a)) check_pin(l, a);
  }

  // Returns the value loaded (valid only when the load succeeded and matched).
  std::uint64_t do_load(Live& l, vaddr_t a) {
    std::string d = pname(l) + ".load(" + hex(a) + ")";
    auto r = l.proc->load(a);
    note(d, r.error(), r ? hex(*r) : errname(r.error()));
    Outcome want = r ? model_.observe_load(l.mid, a, *r) : model_.load(l.mid, a);
    const bool ok = expect_err(d, r.error(), want.err);
    if (ok && r && *r != want.value)
      fail(d + ": simulator loaded " + hex(*r) + ", model expects " + hex(want.value));
    if (l.twin) twin_same(d, r, l.twin->load(a));
    twin_dirty(a, 8);
    return ok && r ? *r : 0;
  }

  void do_mmap(Live& l) {
    if ((cfg_.mode == ForkMode::shared || cfg_.thp != ThpMode::never) &&
        rng_.chance(kBigMmapPercent) && footprint() + 2 * kSpanPages <= kFootprintCap)
      return do_big_mmap(l);
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
    mmap_once(l, addr, maybe_ragged(len), prot, flags);
  }

  // On-demand-fork shares only the table of a 2 MiB span that one private anonymous VMA covers
  // whole: in the ODF runs, now and then map 2-4 MiB at 2 MiB boundaries of the arena, mostly
  // populated (otherwise the stores that come back to the hot address fill it).
  void do_big_mmap(Live& l) {
    const std::uint64_t spans = rng_.range(1, 2);
    const vaddr_t addr =
        kArenaBase + rng_.below(kArenaPages / kSpanPages - spans + 1) * kSpanPages * kPageSize;
    const std::uint64_t len = spans * kSpanPages * kPageSize;
    MapFlags flags = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;
    // THP "madvise": most big mappings ask for huge pages before they are populated, as a
    // program under that mode does (mmap, MADV_HUGEPAGE, then touch or MADV_POPULATE_*).
    const bool advise = cfg_.thp == ThpMode::madvise && rng_.chance(75);
    if (!advise && rng_.chance(60)) flags = flags | MapFlags::populate;
    mmap_once(l, addr, len, rng_.chance(85) ? Prot::read | Prot::write : Prot::read, flags);
    if (!advise || failed_) return;
    madvise_once(l, addr, len, Advice::hugepage);
    if (!failed_ && rng_.chance(60))
      madvise_once(l, addr, len, rng_.chance(70) ? Advice::populate_write : Advice::populate_read);
  }

  void mmap_once(Live& l, vaddr_t addr, std::uint64_t len, Prot prot, MapFlags flags) {
    std::string d = pname(l) + ".mmap(" + hex(addr) + ", " + hex(len) + ", " + prot_name(prot) +
                    ", " + map_flags_name(flags) + ")";
    auto r = l.proc->mmap(addr, len, prot, flags);
    note(d, r.error(), r ? hex(*r) : errname(r.error()));
    FlatModel::MmapPlan plan = model_.plan_mmap(l.mid, addr, len, prot, flags);
    const bool ok = expect_err(d, r.error(), plan.err);
    if (l.twin) twin_same(d, r, l.twin->mmap(addr, len, prot, flags));
    twin_dirty(r ? *r : addr, len);
    if (!ok || !r) return;
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
    if (l.twin) twin_same(d, r, l.twin->munmap(a, len));
    twin_dirty(a, len);
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
    if (l.twin) twin_same(d, r, l.twin->mprotect(a, len, prot));
    twin_dirty(a, len);
    if (len) touch(a);
  }

  // migrate_page (swap runs) of the page a process maps at a random address, if one is mapped
  // there: it moves (or stays: EBUSY for a pin or a GUP reference, ENOMEM without a frame);
  // either way every value reads the same, which the loads that follow check.
  void do_migrate(Live& l) {
    const vaddr_t a = pick_word_addr(l.mid) & ~(kPageSize - 1);
    migrate_at(m_, *l.proc, a, pname(l));
    if (l.twin) migrate_at(*twin_, *l.twin, a, "twin " + pname(l));
    twin_full_next_ = true;
    touch(a);
    do_load(l, a);
  }
  void migrate_at(Machine& m, Process& p, vaddr_t a, const std::string& who) {
    const PagemapEntry e = p.pagemap(a);
    if (!e.present || e.pfn == m.zero_pfn() || e.file_or_shared_anon) return;
    const std::string d = "migrate_page(" + who + " " + hex(a) + ")";
    auto r = m.migrate_page(e.pfn);
    note("machine." + d, r.error(), r ? "pfn " + hex(*r) : errname(r.error()));
    if (!r && r.error() != Errno::busy && r.error() != Errno::nomem)
      fail(d + ": " + errname(r.error()) + ", expected a new frame, EBUSY or ENOMEM");
  }

  // khugepaged (THP runs): one pass of a random length; contents never change, and the twin
  // (the classic fork) collapses the same spans.
  void do_khugepaged() {
    const std::uint64_t pages = rng_.range(1, 4) * kSpanPages;
    const std::uint64_t n = m_.khugepaged_scan(pages);
    note("machine.khugepaged_scan(" + std::to_string(pages) + ")", kOk, std::to_string(n));
    khugepaged_collapsed_ += n;
    if (twin_) {
      const std::uint64_t t = twin_->khugepaged_scan(pages);
      if (t != n)
        fail("khugepaged_scan(" + std::to_string(pages) + ") collapsed " + std::to_string(n) +
             " spans, " + std::to_string(t) + " with the classic fork (twin machine)");
    }
    twin_full_next_ = true;
  }

  // swapoff (swap runs): every swapped page comes back; the values stay. The device is gone for
  // the rest of the run (a second swapoff: EINVAL).
  void do_swapoff() {
    auto r = m_.swapoff();
    note("machine.swapoff()", r.error(), errname(r.error()));
    expect_err("machine.swapoff()", r.error(), swapped_off_ ? Errno::inval : kOk);
    if (twin_) twin_same("machine.swapoff()", r, twin_->swapoff());
    swapped_off_ = true;
    twin_full_next_ = true;
  }

  void do_madvise(Live& l) {
    static constexpr Advice kAdvice[] = {
        Advice::dontneed,       Advice::dontfork,   Advice::dofork,     Advice::populate_read,
        Advice::populate_write, Advice::wipeonfork, Advice::keeponfork, Advice::cold,
        Advice::pageout,        Advice::remove,     Advice::free_};
    // A swap run pages out ten times as often, and swaps the first page back in now and then:
    // the swap entries must meet every other call.
    Advice adv = kAdvice[cfg_.swap ? rng_.weighted({35, 14, 14, 17, 20, 6, 4, 3, 60, 5, 6})
                                   : rng_.weighted({35, 14, 14, 17, 20, 6, 4, 3, 6, 5, 6})];
    // A THP run turns THP off and on again for some ranges (VMAs split at the boundaries), and
    // collapses some, half the time a whole 2 MiB span of the arena.
    bool span = false;
    if (cfg_.thp != ThpMode::never && rng_.chance(15)) {
      const unsigned k = rng_.weighted({35, 30, 35});
      adv = k == 0 ? Advice::nohugepage : k == 1 ? Advice::hugepage : Advice::collapse;
      span = adv == Advice::collapse && rng_.chance(50);
    }
    auto [a, len] = pick_range(l.mid);
    if (span) {
      a = kArenaBase + rng_.below(kArenaPages / kSpanPages) * kSpanPages * kPageSize;
      len = kSpanPages * kPageSize;
    }
    spoil_range(a, len);
    madvise_once(l, a, len, adv);
    // Half the MADV_FREE calls are followed by reclaim of the same range, and then a load: the
    // pages not written since are dropped and read zeros.
    if (adv == Advice::free_ && !failed_ && rng_.chance(50)) {
      madvise_once(l, a, len, Advice::pageout);
      if (!failed_ && len && a % kPageSize == 0) do_load(l, a);
    }
    if (adv == Advice::pageout && cfg_.swap && !failed_ && len && a % kPageSize == 0 &&
        rng_.chance(30))
      do_load(l, a);
  }

  void madvise_once(Live& l, vaddr_t a, std::uint64_t len, Advice adv) {
    std::string d =
        pname(l) + ".madvise(" + hex(a) + ", " + hex(len) + ", " + advice_name(adv) + ")";
    auto r = l.proc->madvise(a, len, adv);
    note(d, r.error(), errname(r.error()));
    const Outcome want = model_.madvise(l.mid, a, len, adv);
    const Errno got = r.error();
    if (want.collapse_uncertain && got != want.err &&
        (got == Errno::inval || got == Errno::again || got == Errno::nomem)) {
      ++collapse_refused_;  // the pages decided (see Outcome::collapse_uncertain)
    } else {
      expect_err(d, got, want.err);
    }
    if (adv == Advice::collapse && got == kOk) ++collapse_ok_;
    if (l.twin) twin_same(d, r, l.twin->madvise(a, len, adv));
    twin_dirty(a, len);
    if (len && a % kPageSize == 0) touch(a);
  }

  // mremap: mostly a range inside one VMA, shrunk, kept or grown; in place, moved anywhere,
  // moved to a fixed address (PMD-aligned now and then, so that whole tables move), or with
  // MREMAP_DONTUNMAP; now and then bad flags or a range across VMAs.
  void do_mremap(Live& l) {
    auto [a, old_len] = pick_range(l.mid);
    if (rng_.chance(3)) a += rng_.range(1, kPageSize - 1);
    const std::uint64_t old_pages = old_len / kPageSize;
    std::uint64_t new_len = old_len;
    switch (rng_.weighted({30, 25, 45})) {
      case 0:
        new_len = rng_.range(old_pages > 1 ? 1 : 0, old_pages > 1 ? old_pages - 1 : 0) * kPageSize;
        break;
      case 1:
        break;
      default:
        new_len = (old_pages + rng_.range(1, 32)) * kPageSize;
    }
    if (footprint() + new_len / kPageSize + 64 > kFootprintCap) new_len = old_len;
    static constexpr MremapFlags kFlags[] = {
        MremapFlags::none,
        MremapFlags::maymove,
        MremapFlags::maymove | MremapFlags::fixed,
        MremapFlags::maymove | MremapFlags::fixed | MremapFlags::dontunmap,
        MremapFlags::maymove | MremapFlags::dontunmap,
        MremapFlags::fixed,
        MremapFlags(8)};
    const MremapFlags f = kFlags[rng_.weighted({25, 25, 30, 8, 4, 4, 4})];
    if (any(f & MremapFlags::dontunmap) && rng_.chance(85)) new_len = old_len;
    if (rng_.chance(4)) old_len = 0;
    vaddr_t na = 0;
    if (any(f & (MremapFlags::fixed | MremapFlags::dontunmap)) || rng_.chance(10)) {
      na = place(l.mid, std::max<std::uint64_t>(new_len / kPageSize, 1));
      if (rng_.chance(20)) {  // a 2 MiB boundary of the arena: whole PTE tables may move
        na = kArenaBase + rng_.below(kArenaPages / kSpanPages) * kSpanPages * kPageSize;
        if (rng_.chance(50)) a &= ~(kSpanPages * kPageSize - 1);
      }
    }
    std::string d = pname(l) + ".mremap(" + hex(a) + ", " + hex(old_len) + ", " + hex(new_len) +
                    ", " + std::to_string(unsigned(f)) + ", " + hex(na) + ")";
    auto r = l.proc->mremap(a, old_len, new_len, f, na);
    note(d, r.error(), r ? hex(*r) : errname(r.error()));
    if (l.twin) twin_same(d, r, l.twin->mremap(a, old_len, new_len, f, na));
    twin_dirty(a, old_len);
    const auto o = model_.mremap(l.mid, a, old_len, new_len, f, na, r);
    if (!expect_err(d, r.error(), o.err) || !r) return;
    twin_dirty(*r, new_len);
    if (o.bad_got) return fail(d + ": simulator moved to " + hex(*r) + ", not a free range");
    if (!o.any && *r != o.addr)
      return fail(d + ": simulator returned " + hex(*r) + ", Linux returns " + hex(o.addr));
    // A moved range maps its pages at other addresses than the relatives' do, which the
    // comparison of recent spans alone cannot follow.
    if (*r != a) twin_full_next_ = true;
    touch(*r);
  }

  void do_fork(Live& l) {
    std::string d = pname(l) + ".fork()";
    auto r = l.proc->fork();
    note(d, r.error(), r ? "p" + std::to_string((*r)->pid()) : errname(r.error()));
    Result<Process*> t = l.twin ? l.twin->fork() : Result<Process*>(nullptr);
    twin_full_next_ = true;
    if (!expect_err(d, r.error(), kOk) || !r) return;
    if (!twin_same(d, r.error(), t.error())) return;
    Process* child = *r;
    if (!child || !child->alive() || m_.find(child->pid()) != child || child == l.proc)
      return fail(d + ": the child is not a new live process");
    for (const auto& o : live_)
      if (o.proc->pid() == child->pid()) return fail(d + ": the child reuses a live pid");
    const Live parent = l;  // push_back moves `l`
    const int mid = model_.fork(l.mid);
    live_.push_back({mid, child, *t});
    ++forks_;
    // A classic fork never shares a PTE table (nor does the twin, which forks classically).
    const std::uint64_t n = shared_tables(m_, *parent.proc, *child, mid);
    if (n && cfg_.mode == ForkMode::classic)
      return fail(d + ": " + std::to_string(n) + " PTE tables shared by a classic fork");
    if (parent.twin && shared_tables(*twin_, *parent.twin, **t, mid))
      return fail(d + ": the classic twin's fork shared PTE tables");
    shared_tables_ += n;
    sharing_forks_ += n != 0;
  }

  // A thread: a new task sharing l's mm, so the same model process (its memory and its pins).
  void do_clone(Live& l) {
    const std::string d = pname(l) + ".clone_vm()";
    auto r = l.proc->clone_vm();
    note(d, r.error(), r ? "p" + std::to_string((*r)->pid()) : errname(r.error()));
    Result<Process*> t = l.twin ? l.twin->clone_vm() : Result<Process*>(nullptr);
    if (!expect_err(d, r.error(), kOk) || !r) return;
    if (!twin_same(d, r.error(), t.error())) return;
    Process* task = *r;
    if (!task || !task->alive() || task == l.proc || task->tgid() != l.proc->tgid())
      return fail(d + ": not a new live task of the thread group");
    if (m_.walk(*task, kArenaBase).table[0] != m_.walk(*l.proc, kArenaBase).table[0])
      return fail(d + ": the thread has a pgd of its own");
    const Live parent = l;  // push_back moves `l`
    live_.push_back({parent.mid, task, *t});
    ++clones_;
  }

  // l is the first live task of its model process (threads share one mm and its mappings).
  bool first_task(const Live& l) const {
    for (const Live& o : live_)
      if (o.mid == l.mid) return &o == &l;
    return false;
  }

  // The last task of a model process leaves it: its mm goes.
  bool last_task_of(int mid) const {
    return std::count_if(live_.begin(), live_.end(), [&](const Live& o) { return o.mid == mid; }) ==
           1;
  }

  void do_exit(std::size_t idx) {
    Live l = live_[idx];
    log(pname(l) + ".exit()");
    const int pid = l.proc->pid();
    l.proc->exit();
    if (l.twin) l.twin->exit();
    twin_full_next_ = true;
    if (last_task_of(l.mid)) model_.exit(l.mid);
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
    // pin_user_pages_fast for pins starting on an odd page (no draw of its own, so that the
    // seeds' sequences stay as they were): GUP-fast must pin exactly what the slow path would.
    if ((a >> 12) & 1) flags = flags | PinFlags::fast;
    std::string d =
        pname(l) + ".pin(" + hex(a) + ", " + hex(len) + ", " + pin_flags_name(flags) + ")";
    auto r = l.proc->pin(a, len, flags);
    note(d, r.error(), errname(r.error()));
    expect_err(d, r.error(), model_.pin(l.mid, a, len, flags).err);
    if (l.twin) twin_same(d, r, l.twin->pin(a, len, flags));
    twin_dirty(a, len);
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
    if (l.twin) twin_same(d, r, l.twin->unpin(a, len));
    twin_dirty(a, len);
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
    if (l.twin) twin_same(d, g, l.twin->read_gup(a));
    if (failed_) return;
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
    switch (rng_.below(cfg_.timed ? 7 : 6)) {  // set_cpu only in the timed runs
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
      case 5:
        d = n + ".pin(" + hex(a) + ", 0x1000, LONGTERM)";
        got = p->pin(a, kPageSize, PinFlags::longterm).error();
        break;
      default:
        d = n + ".set_cpu(0)";
        got = p->set_cpu(0).error();
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
      if (l.twin) l.twin->exit();
      twin_full_next_ = true;
      if (std::none_of(live_.begin(), live_.end(), [&](const Live& o) { return o.mid == l.mid; }))
        model_.exit(l.mid);
      check_invariants();
      if (!failed_) compare_twin();
    }
    if (failed_) return;
    if (twin_ && tolerated_) {  // the twin may have one more child, whose fork succeeded there
      for (Process* p : twin_->processes()) p->exit();
    }
    if (twin_ && twin_->free_pages() != twin_free_at_start_) {
      return fail("after every process exited, the classic twin has " +
                  std::to_string(twin_->free_pages()) + " free pages, but it had " +
                  std::to_string(twin_free_at_start_) + " right after construction");
    }
    if (m_.free_pages() != free_at_start_) {
      fail("after every process exited, free_pages() = " + std::to_string(m_.free_pages()) +
           ", but it was " + std::to_string(free_at_start_) + " right after construction (" +
           std::to_string(static_cast<std::int64_t>(free_at_start_ - m_.free_pages())) +
           " frames leaked)");
    }
  }

  // Compare with the twin in full at least every that many operations (see compare_twin).
  static constexpr std::uint64_t kTwinFullEvery = 50;
  static constexpr vaddr_t kSpanBytes = kSpanPages * kPageSize;
  // In the ODF runs, the share of mmap calls that map whole 2 MiB spans (do_big_mmap).
  static constexpr unsigned kBigMmapPercent = 20;
  // The weight of set_cpu in the timed runs' op mix (the others sum to 954 or 964).
  static constexpr unsigned kSetCpuWeight = 12;

  RunConfig cfg_;
  Machine m_;
  std::unique_ptr<Machine> twin_;  // the classic twin (seed policy only)
  FlatModel model_;
  Rng rng_;
  std::vector<Live> live_;
  std::vector<Process*> dead_;
  std::vector<std::string> log_;
  std::uint64_t op_ = 0;
  std::uint64_t free_at_start_ = 0;
  std::uint64_t min_free_ = ~0ull;
  std::uint64_t cow_stores_ = 0, gup_live_ = 0, gup_detached_ = 0;
  std::uint64_t collapse_ok_ = 0, collapse_refused_ = 0, khugepaged_collapsed_ = 0;
  std::uint64_t forks_ = 0, sharing_forks_ = 0, shared_tables_ = 0, clones_ = 0;
  std::int64_t max_sharers_ = 0;
  std::uint64_t twin_free_at_start_ = 0, twin_full_ = 0, twin_partial_ = 0, twin_pages_ = 0;
  std::vector<vaddr_t> twin_spans_;  // spans used since the last comparison
  bool twin_full_next_ = false;      // a fork, an exit or a spawn: compare everything next
  // pid -> span -> shmem pages that process maps there and the twin does not (compare_twin).
  std::unordered_map<int, std::map<vaddr_t, std::uint64_t>> extra_shmem_;
  // pid -> span -> shmem pages the twin maps there (its fault-around) and this process does not.
  std::unordered_map<int, std::map<vaddr_t, std::uint64_t>> missing_shmem_;
  // The pids of the processes that took part in a COW-PTE fork, as parent or child.
  // The allowed differences from the twin, counted per page compared (see the header comment):
  // the zero page mapped only here, a shmem page mapped only here (that the twin maps
  // elsewhere, or nowhere), the exclusive bit, soft-dirty; and the RSS comparisons where a
  // process maps extra shmem pages.
  std::uint64_t allowed_zero_ = 0, allowed_shmem_ = 0, allowed_shmem_unmapped_ = 0,
                allowed_exclusive_ = 0, allowed_rss_shmem_ = 0, allowed_missing_ = 0;
  std::array<vaddr_t, 24> hot_{};
  std::size_t hot_next_ = 0, hot_count_ = 0;
  bool failed_ = false;
  bool swapped_off_ = false;
  bool tolerated_ = false;
  std::string failure_;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> tally_;
};

struct SeedParam {
  std::uint64_t seed;
  std::string policy;
  bool timed = false;
  bool zero_page = true;
  bool swap = false;
  bool small = false;
  ThpMode thp = ThpMode::never;
};

void PrintTo(const SeedParam& p, std::ostream* os) {
  *os << "seed " << p.seed << " with the "
      << run_name(p.policy, p.timed, p.zero_page, p.swap, p.small, p.thp);
}

class RandomOps : public ::testing::TestWithParam<SeedParam> {};

TEST_P(RandomOps, MatchesFlatModel) {
  RunConfig cfg;
  cfg.seed = GetParam().seed;
  cfg.policy = GetParam().policy;
  cfg.mode = mode_of(cfg.policy);
  cfg.timed = GetParam().timed;
  cfg.zero_page = GetParam().zero_page;
  cfg.swap = GetParam().swap;
  cfg.small = GetParam().small;
  cfg.thp = GetParam().thp;
  bool set = false;
  if (std::uint64_t s = env_u64("COWPTE_DIFF_SEED", &set); set) cfg.seed = s;
  if (std::uint64_t n = env_u64("COWPTE_DIFF_OPS", &set); set) cfg.ops = n;
  if (cfg.mode != ForkMode::classic) {
    // Only meaningful once prctl(PR_SET_COW_PTE) works under this policy.
    Machine probe(machine_config(cfg.timed));
    auto r = probe.spawn().set_cow_pte(cfg.policy);
    if (!r) GTEST_SKIP() << "set_cow_pte() returns " << errname(r.error());
  }
  DifferentialRun run(cfg);
  EXPECT_TRUE(run.run());
  RecordProperty("ops", std::to_string(run.ops_done()));
  std::printf("[ calls    ] seed %" PRIu64 ", %s, %" PRIu64 " ops (kind ok/errors): %s\n", cfg.seed,
              run_name(cfg.policy, cfg.timed, cfg.zero_page, cfg.swap, cfg.small, cfg.thp).c_str(),
              run.ops_done(), run.summary().c_str());
}

std::string seed_name(const ::testing::TestParamInfo<SeedParam>& info) {
  return "seed" + std::to_string(info.param.seed) + "_" +
         run_tag(info.param.policy, info.param.timed, info.param.zero_page, info.param.swap,
                 info.param.small, info.param.thp);
}

// 10 x 10,000 operations with the classic fork, 5 x 10,000 under each COW-PTE policy.
INSTANTIATE_TEST_SUITE_P(Differential, RandomOps,
                         ::testing::Values(SeedParam{1, "classic"}, SeedParam{2, "classic"},
                                           SeedParam{3, "classic"}, SeedParam{4, "classic"},
                                           SeedParam{5, "classic"}, SeedParam{6, "classic"},
                                           SeedParam{7, "classic"}, SeedParam{8, "classic"},
                                           SeedParam{9, "classic"}, SeedParam{10, "classic"}),
                         seed_name);
INSTANTIATE_TEST_SUITE_P(DifferentialCowPte, RandomOps,
                         ::testing::Values(SeedParam{101, "seed"}, SeedParam{102, "seed"},
                                           SeedParam{103, "seed"}, SeedParam{104, "seed"},
                                           SeedParam{105, "seed"}),
                         seed_name);
INSTANTIATE_TEST_SUITE_P(DifferentialOdf, RandomOps,
                         ::testing::Values(SeedParam{201, "on_demand_fork"},
                                           SeedParam{202, "on_demand_fork"},
                                           SeedParam{203, "on_demand_fork"},
                                           SeedParam{204, "on_demand_fork"},
                                           SeedParam{205, "on_demand_fork"}),
                         seed_name);
// With the timing model on and two CPUs, so that TLBs serve translations and processes
// migrate (set_cpu): the classic fork, the seed policy (its twin timed too) and ODF.
INSTANTIATE_TEST_SUITE_P(DifferentialTimed, RandomOps,
                         ::testing::Values(SeedParam{301, "classic", true},
                                           SeedParam{302, "classic", true},
                                           SeedParam{303, "seed", true},
                                           SeedParam{304, "on_demand_fork", true}),
                         seed_name);
// Without the zero page (MachineConfig::zero_page false, as on this project's CI hosts and under
// mm_forbids_zeropage): read faults allocate. Classic and seed, one of them timed.
INSTANTIATE_TEST_SUITE_P(DifferentialNoZeroPage, RandomOps,
                         ::testing::Values(SeedParam{501, "classic", false, false},
                                           SeedParam{502, "classic", true, false},
                                           SeedParam{503, "seed", false, false},
                                           SeedParam{504, "seed", true, false}),
                         seed_name);

// Every registered fork policy, by name, from the registry: a policy added to builtin.def runs
// here with no other edit. Two seeds each, the second timed on two CPUs. Not "seed_exact", which
// breaks Linux's semantics on purpose (test_seed_exact.cpp shows how).
std::vector<SeedParam> every_policy() {
  std::vector<SeedParam> params;
  const std::vector<std::string> names = sound_fork_policy_names();
  for (std::size_t i = 0; i < names.size(); ++i) {
    params.push_back(SeedParam{401 + 10 * i, names[i]});
    params.push_back(SeedParam{402 + 10 * i, names[i], true});
  }
  return params;
}
INSTANTIATE_TEST_SUITE_P(DifferentialEveryPolicy, RandomOps, ::testing::ValuesIn(every_policy()),
                         seed_name);

// With a swap device, ten times the pageouts, migrate_page and, in the last quarter, swapoff,
// under every sound policy (and the seed timed, and classic without the zero page): swapped-out
// data must read back as written through fork, COW, zap, MADV_FREE, migration and swapoff.
std::vector<SeedParam> swap_runs() {
  std::vector<SeedParam> params;
  const std::vector<std::string> names = sound_fork_policy_names();
  for (std::size_t i = 0; i < names.size(); ++i)
    params.push_back(SeedParam{601 + 10 * i, names[i], false, true, true});
  params.push_back(SeedParam{691, "seed", true, true, true});
  params.push_back(SeedParam{692, "classic", false, false, true});
  return params;
}
INSTANTIATE_TEST_SUITE_P(DifferentialSwap, RandomOps, ::testing::ValuesIn(swap_runs()), seed_name);

// The same with 2 MiB of memory, less than the runs touch: allocations reclaim directly (the
// clock over the frames, the accessed-bit harvest, try_to_unmap through shared tables). A run
// stops early (still tearing down and checking) if the OOM killer had to act.
std::vector<SeedParam> reclaim_runs() {
  std::vector<SeedParam> params;
  const std::vector<std::string> names = sound_fork_policy_names();
  for (std::size_t i = 0; i < names.size(); ++i)
    params.push_back(SeedParam{701 + 10 * i, names[i], false, true, true, true});
  params.push_back(SeedParam{791, "seed", true, true, true, true});
  return params;
}
INSTANTIATE_TEST_SUITE_P(DifferentialReclaim, RandomOps, ::testing::ValuesIn(reclaim_runs()),
                         seed_name);

// THP "always" and "madvise" (2 MiB-aligned mappings now and then, MADV_HUGEPAGE and
// MADV_NOHUGEPAGE; under "madvise" most big mappings ask for huge pages) under every sound
// policy, one timed on two CPUs (2 MiB TLB entries), two with swap (pageout splits THPs), one
// without the zero page: huge faults, the huge zero page, fork's copy_huge_pmd, COW
// faults that split, partial munmap, mprotect and madvise splits, mremap of huge PMDs, pins.
std::vector<SeedParam> thp_runs() {
  std::vector<SeedParam> params;
  const std::vector<std::string> names = sound_fork_policy_names();
  for (std::size_t i = 0; i < names.size(); ++i)
    for (ThpMode mode : {ThpMode::always, ThpMode::madvise})
      params.push_back(SeedParam{801 + 10 * i + (mode == ThpMode::madvise ? 5 : 0), names[i], false,
                                 true, false, false, mode});
  params.push_back(SeedParam{891, "seed", true, true, false, false, ThpMode::always});
  params.push_back(SeedParam{892, "classic", false, true, true, false, ThpMode::always});
  params.push_back(SeedParam{893, "classic", true, false, false, false, ThpMode::always});
  params.push_back(SeedParam{894, "seed", false, true, true, false, ThpMode::madvise});
  return params;
}
INSTANTIATE_TEST_SUITE_P(DifferentialThp, RandomOps, ::testing::ValuesIn(thp_runs()), seed_name);

TEST(ForkPolicies, RegistryListsTheBuiltInPoliciesAndEachForks) {
  const std::vector<std::string> names = fork_policy_names();
  for (const char* want : {"classic", "seed", "on_demand_fork", "rfc_v2"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  for (const std::string& name : names) {
    Machine m(MachineConfig{.memory_bytes = 64ull << 20});
    Process& p = m.spawn();
    ASSERT_TRUE(p.set_cow_pte(name).has_value()) << name;
    const vaddr_t a = *p.mmap(0, 4ull << 20, Prot::read | Prot::write,
                              MapFlags::private_ | MapFlags::anonymous | MapFlags::populate);
    ASSERT_TRUE(p.store(a, 42).has_value());
    auto c = p.fork();
    ASSERT_TRUE(c.has_value()) << name;
    m.check_invariants();
    EXPECT_EQ(*(*c)->load(a), 42u) << name;
    ASSERT_TRUE((*c)->store(a, 7).has_value());
    EXPECT_EQ(*p.load(a), 42u) << name;
    EXPECT_EQ(*(*c)->load(a), 7u) << name;
    m.check_invariants();
  }
  Machine m;
  EXPECT_EQ(m.spawn().set_cow_pte("no_such_policy").error(), Errno::inval);
}

}  // namespace
}  // namespace cowpte
