// The facade: a simulated machine and the processes on it (the contract: docs/facade.md).
//
// Threads: a Machine and its Processes belong to one thread at a time (no call is safe
// concurrently with another call on the same Machine or any of its Processes); different
// Machines may run on different threads concurrently. docs/robustness.md has the details.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "cowpte/result.hpp"
#include "cowpte/stats.hpp"
#include "cowpte/timing_config.hpp"
#include "cowpte/types.hpp"

namespace cowpte {

struct MmStruct;
class Kernel;
class Process;
namespace detail {
struct Access;  // the library's own way to the model behind the facade (src/facade/access.hpp)
}

// The names of the registered fork policies: the built-in ones ("classic", "seed",
// "seed_exact", "on_demand_fork", "rfc_v2"), then those registered with register_fork_policy().
std::vector<std::string> fork_policy_names();
// The same without the policies that reproduce a posted patch's bugs on purpose ("seed_exact":
// ForkPolicy::as_posted): those every process can rely on to behave as Linux does. The
// differential tests, the fuzzers and the fork-latency comparison run these.
std::vector<std::string> sound_fork_policy_names();

// A fork policy's name in MachineConfig; converts from the CowPtePolicy enum too.
class PolicyName {
 public:
  PolicyName(const char* name) : name_(name) {}             // NOLINT: implicit on purpose
  PolicyName(std::string name) : name_(std::move(name)) {}  // NOLINT
  PolicyName(std::string_view name) : name_(name) {}        // NOLINT
  PolicyName(CowPtePolicy p) : name_(to_string(p)) {}       // NOLINT
  const std::string& str() const noexcept { return name_; }
  operator std::string_view() const noexcept { return name_; }  // NOLINT
  friend bool operator==(const PolicyName&, const PolicyName&) = default;

 private:
  std::string name_;
};

// Every field is range-checked when a Machine is built (check_machine_config, config_io.hpp):
// memory_bytes 64 KiB..2^46, cpus 1..64, the timing model's ghz and geometries; a value out of
// range is a std::invalid_argument naming the field and the allowed range.
struct MachineConfig {
  std::uint64_t memory_bytes = 4ull << 30;  // simulated physical memory
  unsigned cpus = 1;
  // One swap device of this size (a swap file after swapon); 0: none. Anonymous pages go to it
  // on MADV_PAGEOUT; shmem pages are not swapped in the model.
  std::uint64_t swap_bytes = 0;
  bool trace = false;  // log the kernel's tracepoints (fork, faults, zap) to stderr
  // What Process::set_cow_pte() arms when called without a policy, by name (fork_policy_names).
  // A process can also choose for itself with set_cow_pte(name).
  PolicyName cow_pte_policy = "seed";
  // false: anonymous read faults allocate a zeroed page of their own instead of mapping the
  // shared zero page, as kernels with mm_forbids_zeropage do (s390 with KVM; this project's CI
  // hosts boot without the zero page). The zero page's frame exists either way.
  bool zero_page = true;
  // Transparent huge pages for anonymous memory (/sys/kernel/mm/transparent_hugepage/enabled):
  // never, always, or madvise (only VMAs with MADV_HUGEPAGE). A private anonymous fault in a
  // 2 MiB-aligned span inside one VMA then maps a 2 MiB page with one PMD.
  ThpMode thp = ThpMode::never;
  // transparent_hugepage/use_zero_page: a THP read fault maps the huge zero page (unless
  // zero_page is false, as mm_forbids_zeropage).
  bool thp_use_zero_page = true;
  // transparent_hugepage/khugepaged/max_ptes_{none,swap,shared} (0..511): how many empty (or
  // zero-page), swapped and shared PTEs khugepaged accepts in a span it collapses. Linux's
  // defaults. MADV_COLLAPSE ignores them, as in Linux.
  unsigned khugepaged_max_ptes_none = 511;
  unsigned khugepaged_max_ptes_swap = 64;
  unsigned khugepaged_max_ptes_shared = 256;
  // The cycle-level timing model (TLBs, caches, kernel path costs); off by default.
  TimingConfig timing{};
};

class Machine {
 public:
  // Throws std::invalid_argument for a configuration out of range (check_machine_config).
  explicit Machine(const MachineConfig& = {});
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // A new process with an empty address space. Throws std::runtime_error when no PCID is left
  // (4,095 live processes) or the pgd cannot be allocated; nothing is leaked either way.
  Process& spawn();
  // spawn() without exceptions: EAGAIN at the PCID limit, ENOMEM when memory is short.
  Result<Process*> try_spawn();
  Process* find(int pid);             // nullptr once the process has exited
  void check_invariants() const;      // throws InvariantViolation naming the first broken one
  std::uint64_t total_pages() const;  // frames of simulated memory
  std::uint64_t free_pages() const;   // frames on the free lists now
  // Frames holding page tables now, every level and the pgds (/proc/meminfo's PageTables).
  // Unlike the per-process VmPTE, a table shared by COW PTE counts once here.
  std::uint64_t pgtable_frames() const;
  PageInfo page_info(pfn_t) const;  // the struct page of one frame, read-only
  // The page-table path of one address. Every call taking a Process throws
  // std::invalid_argument for a Process of another Machine.
  PtWalk walk(const Process&, vaddr_t) const;

  // --- extensions ---
  const MachineConfig& config() const;
  std::vector<Process*> processes();  // the live tasks (processes and threads), in pid order
  pfn_t zero_pfn() const;             // the shared zero page
  // Fault injection: the nth frame, VMA or anon_vma allocation from now on fails (1 = the next
  // one), and the times - 1 allocations after it too; 0 switches it off. Fires once.
  void fail_nth_allocation(std::uint64_t n, std::uint64_t times = 1);
  std::uint64_t allocations() const;         // allocations made so far (frames, VMAs, anon_vmas)
  std::string ptdump(const Process&) const;  // ptdump-style listing of a process's tables
  // The kernel's log: what Linux would print with pr_alert/WARN, oldest first. Only "seed_exact"
  // writes to it, when the series' accounting bugs reach exit ("BUG: Bad rss-counter state").
  std::vector<std::string> dmesg() const;
  // The timing model (null statistics when MachineConfig::timing.enabled is false).
  bool timed() const;
  // The machine's time on CPU cpu, in cycles: what it ran plus what it idled (HwStats::
  // idle_cycles). Every CPU's clock is a view of one time; the README's "Time on several CPUs".
  std::uint64_t cycles(unsigned cpu) const;
  // cycles(cpu) less the CPU's idle cycles: what it ran. An operation's latency is the change
  // of this across the call (cycles() would add the idle time before the operation started).
  std::uint64_t busy_cycles(unsigned cpu) const;
  std::string hw_stats_json() const;  // per-CPU and per-process statistics, JSON
  // Every timing statistic (per CPU and per process) starts again from zero, e.g. after a
  // warm-up; the CPU clocks (cycles()) go on. docs/facade.md has the JSON's schema.
  void reset_stats();
  // swapoff(2) of the swap device: every swapped page comes back (shared PTE tables are broken
  // first). ENOMEM when memory runs out (what came back stays; the device stays on), EINVAL
  // without a device. The device is gone afterwards.
  Result<void> swapoff();
  // Migrate one anonymous page to a new frame, as compaction does (try_to_migrate through every
  // mapping, shared PTE tables broken first; copy; remove_migration_ptes). The new frame, or
  // EINVAL (not an anonymous page in use), ENOMEM (no frame), EBUSY (pinned, held by GUP, or a
  // shared table that could not be broken): then nothing changed.
  Result<pfn_t> migrate_page(pfn_t pfn);
  VmStat vmstat() const;  // /proc/vmstat's swap and reclaim counters, /proc/meminfo's swap
  // Proactive reclaim of up to `pages` anonymous pages (cgroup v2's memory.reclaim): the same
  // scan direct reclaim runs when an allocation finds no free frame. Returns the pages freed.
  std::uint64_t reclaim(std::uint64_t pages);
  // One deterministic pass of khugepaged (khugepaged_do_scan): it walks the registered mms in
  // order from where the last pass stopped, up to `pages` pages (512 per 2 MiB span scanned,
  // one per VMA skipped), and collapses each span that passes hpage_collapse_scan_pmd into a
  // 2 MiB THP. Returns the spans it collapsed. Under COW PTE it breaks a shared table before
  // scanning it (the series' patch 05). Timed on CPU `cpu` when the timing model is on.
  std::uint64_t khugepaged_scan(std::uint64_t pages, unsigned cpu = 0);

 private:
  friend class Process;
  friend struct detail::Access;
  Kernel& kernel() { return *kernel_; }
  const Kernel& kernel() const { return *kernel_; }
  std::unique_ptr<Kernel> kernel_;
};

class Process {
 public:
  int pid() const { return pid_; }
  // The thread group (getpid() in a thread): the pid of the task whose spawn or fork made the
  // mm; clone_vm() tasks share their creator's.
  int tgid() const { return tgid_; }
  bool alive() const;

  Result<vaddr_t> mmap(vaddr_t addr, std::uint64_t length, Prot, MapFlags);
  Result<void> munmap(vaddr_t addr, std::uint64_t length);
  Result<void> mprotect(vaddr_t addr, std::uint64_t length, Prot);
  Result<void> madvise(vaddr_t addr, std::uint64_t length, Advice);
  // mremap(2), v6.1's rules: shrink in place, grow in place when the next VMA leaves room, else
  // move (maymove) to a free range or to new_addr (fixed, which unmaps what is there first);
  // dontunmap leaves the old range mapped and empty. Page tables move whole where both ends are
  // 2 MiB aligned (move_page_tables). The new address, or Linux's errno.
  Result<vaddr_t> mremap(vaddr_t old_addr, std::uint64_t old_len, std::uint64_t new_len,
                         MremapFlags flags, vaddr_t new_addr = 0);

  Result<std::uint64_t> load(vaddr_t addr);               // 8-byte aligned user load
  Result<void> store(vaddr_t addr, std::uint64_t value);  // 8-byte aligned user store

  Result<Process*> fork();  // the child; the Machine owns it
  // clone(CLONE_VM | CLONE_THREAD | CLONE_FILES ...), a thread: a new task sharing this task's
  // mm (its memory, its VMAs, its page tables and its pins), in this task's thread group, on
  // the CPU after this task's. The Machine owns it. ESRCH once this task has exited.
  Result<Process*> clone_vm();
  // prctl(PR_SET_COW_PTE): the next fork shares PTE tables, under the machine's
  // cow_pte_policy; the child inherits it. EINVAL once a fork has turned it on (it stays on).
  Result<void> set_cow_pte();
  Result<void> pin(vaddr_t addr, std::uint64_t length, PinFlags);  // pin_user_pages
  Result<void> unpin(vaddr_t addr, std::uint64_t length);          // unpin_user_pages
  // exit(2) of this task; its pid is reaped. The mm goes (exit_mmap, and the group's pins are
  // released) with the last task using it: a thread's exit leaves it to the others.
  void exit();

  PagemapEntry pagemap(vaddr_t addr) const;  // /proc/PID/pagemap for one page
  std::vector<SmapsEntry> smaps() const;     // /proc/PID/smaps, one per VMA
  RssStat rss() const;                       // pages
  std::uint64_t pgtables_bytes() const;      // VmPTE, in bytes

  // --- extensions ---
  // get_user_pages(FOLL_GET), as vmsplice() takes it in v6.2: +1 reference per page, no pin, no
  // unshare, MMF_HAS_PINNED untouched. gup_put() drops the references gup_get() took there.
  Result<void> gup_get(vaddr_t addr, std::uint64_t length);
  Result<void> gup_put(vaddr_t addr, std::uint64_t length);
  // Read 8 bytes through the newest pin or GUP reference held on addr's page: what a device
  // (READ_VIA_PIN) or a pipe filled by vmsplice sees, whatever the page tables map now.
  Result<std::uint64_t> read_gup(vaddr_t addr) const;
  // set_cow_pte() with an explicit policy for this process and its descendants, by name
  // (fork_policy_names(); on_demand_fork is the ODF code's /proc/PID/use_odf). EINVAL for an
  // unknown name, and once a fork has turned COW PTE on.
  Result<void> set_cow_pte(std::string_view policy);
  Result<void> set_cow_pte(CowPtePolicy policy);
  Result<void> set_cow_pte(const char* policy) { return set_cow_pte(std::string_view(policy)); }
  // echo 4 > /proc/PID/clear_refs: clear soft-dirty and write-protect every present PTE.
  Result<void> clear_soft_dirty();

  // The CPU this process runs on (timing model): spawn puts it on CPU 0, fork puts the child
  // on the CPU after its parent's. set_cpu migrates it (sched_setaffinity); EINVAL past cpus.
  unsigned cpu() const { return cpu_; }
  Result<void> set_cpu(unsigned cpu);
  HwStats hw_stats() const;           // this process's share of the timing statistics
  std::string hw_stats_json() const;  // the same as JSON ("{}" without the timing model)

  Machine& machine() { return *machine_; }

  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

 private:
  friend class Kernel;
  friend class Machine;
  friend struct detail::Access;
  Process(Machine& m, int pid, int tgid, std::shared_ptr<MmStruct> mm);
  MmStruct* mm() { return mm_.get(); }  // nullptr after exit
  const MmStruct* mm() const { return mm_.get(); }
  Machine* machine_;
  int pid_;
  int tgid_;
  unsigned cpu_ = 0;
  // The timing model: the task cannot run before this cycle: the end of its fork (a child),
  // or of its last operation on a CPU it has left (a context switch or set_cpu records it).
  std::uint64_t ready_at_ = 0;
  std::shared_ptr<MmStruct> mm_;  // shared by the tasks of a thread group (mm_users counts them)
};

}  // namespace cowpte
