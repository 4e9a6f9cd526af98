// The facade: Machine and Process. Each call checks its arguments as the Linux syscall does,
// then enters the modelled kernel path.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <mutex>
#include <stdexcept>

#include "cowpte/config_io.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

void lock_violation(const char* what) { throw LockViolation(what); }

std::string_view to_string(Errno e) noexcept {
  switch (e) {
    case Errno::perm:
      return "EPERM";
    case Errno::noent:
      return "ENOENT";
    case Errno::srch:
      return "ESRCH";
    case Errno::io:
      return "EIO";
    case Errno::badf:
      return "EBADF";
    case Errno::again:
      return "EAGAIN";
    case Errno::nomem:
      return "ENOMEM";
    case Errno::acces:
      return "EACCES";
    case Errno::fault:
      return "EFAULT";
    case Errno::busy:
      return "EBUSY";
    case Errno::exist:
      return "EEXIST";
    case Errno::inval:
      return "EINVAL";
    case Errno::nospc:
      return "ENOSPC";
  }
  return "E?";
}

// ---------------- Kernel: boot, processes ----------------

Kernel::Kernel(Machine& m, const MachineConfig& c)
    : CostModel(&mem), machine(m), cfg(c), mem(c.memory_bytes) {
  if (mem.total_pages() < 16) throw std::invalid_argument("cowpte: memory_bytes below 64 KiB");
  zero_page = mem.alloc_page();  // empty_zero_page: reserved, never freed
  zero_page->set(PG_zero);
  zero_page->set(PG_reserved);
  mem.set_reclaim_hook(this);
  if (cfg.swap_bytes) swap = std::make_unique<SwapInfo>(cfg.swap_bytes >> PAGE_SHIFT);
  if (cfg.trace) {
    // One "cowpte" logger for every Machine: lookup and creation under one lock, so that two
    // Machines built on two threads do not both try to register it.
    static std::mutex registry_lock;
    std::lock_guard guard(registry_lock);
    tracer = spdlog::get("cowpte");
    if (!tracer) {
      tracer = spdlog::stderr_color_mt("cowpte");
      tracer->set_pattern("[%n] %v");  // simulated time in the message, not the host's clock
    }
    tracer->set_level(spdlog::level::trace);
  }
  if (cfg.timing.enabled) {
    hw = std::make_unique<Hardware>(cfg.timing, cfg.cpus, cfg.memory_bytes);
    timed_locks = make_timed_locks(*this);
  }
}

Kernel::~Kernel() { procs.clear(); }

// The PCID first, then the pgd: a failure gives back what was taken, so nothing leaks.
Result<std::unique_ptr<MmStruct>> Kernel::mm_alloc() {
  auto mm = std::make_unique<MmStruct>();
  mm->lock_timing = timed_locks.get();
  mm->pcid = pcids_.alloc();
  if (!mm->pcid) return Errno::again;  // the model's process limit: 4095 live processes
  if (!pgd_alloc(*mm)) {
    pcids_.free(mm->pcid);  // never loaded into CR3: nothing to flush
    return Errno::nomem;
  }
  return mm;
}

// The PCID will be reused: drop whatever any CPU still caches for it.
void Kernel::mm_free_pcid(MmStruct& mm) {
  if (hw)
    for (Cpu& cpu : hw->cpus) hw->flush_pcid(cpu, mm.pcid);
  pcids_.free(mm.pcid);
}

Process& Kernel::add_process(std::shared_ptr<MmStruct> mm, unsigned cpu, int tgid) {
  const int pid = procs.next_pid();
  if (!tgid) tgid = pid;
  if (!mm->pid) mm->pid = pid;  // a new mm: named after its first task
  Process& p = procs.add(std::unique_ptr<Process>(new Process(machine, pid, tgid, std::move(mm))));
  p.cpu_ = cpu;
  proc_stats.emplace_back();
  return p;
}

// Machine::try_spawn does the work; spawn() turns its errors into exceptions.
Process& Kernel::spawn() {
  auto r = machine.try_spawn();
  if (!r && r.error() == Errno::again)
    throw std::runtime_error("cowpte: no free PCID (4095 live processes)");
  if (!r) throw std::runtime_error("cowpte: out of memory for a new pgd");
  return **r;
}

void Kernel::release_gup_refs(int tgid) {
  for (const GupRef& r : gup_refs.take_all(tgid)) {
    if (r.pin) {
      unpin_user_page(*r.page);
    } else {
      mem.put_page(*r.page);
    }
  }
}

// do_exit -> exit_mm -> mmput -> exit_mmap once the last task has left the mm; the pins the
// thread group's "driver" held (io_uring buffers, vmsplice pipes: the group's files) are
// released with it.
void Kernel::do_exit(Process& p) {
  MmStruct& mm = *p.mm_;
  if (--mm.mm_users == 0) {  // mmput
    exit_mmap(mm);
    mm_free_pcid(mm);
    release_gup_refs(p.tgid());
    pgd_free(mm);
  }
  p.mm_.reset();
  COWPTE_TRACE(*this, "exit: pid {}", p.pid());
}

void Kernel::exit_mm_tasks(MmStruct& mm) {
  for (Process& t : procs)
    if (t.mm() == &mm) do_exit(t);  // the last one frees mm: no use of it after that
}

// ---------------- Machine ----------------

Machine::Machine(const MachineConfig& cfg)
    : kernel_((check_machine_config(cfg), std::make_unique<Kernel>(*this, cfg))) {}
Machine::~Machine() = default;

Process& Machine::spawn() { return kernel_->spawn(); }

Result<Process*> Machine::try_spawn() {
  auto mm = kernel_->mm_alloc();
  if (!mm) return mm.error();
  return &kernel_->add_process(std::move(*mm), 0);
}

Process* Machine::find(int pid) {
  Process* p = kernel_->procs.find(pid);
  return p && p->alive() ? p : nullptr;
}

std::vector<Process*> Machine::processes() {
  std::vector<Process*> out;
  for (Process& p : kernel_->procs)
    if (p.alive()) out.push_back(&p);
  return out;
}

void Machine::check_invariants() const { kernel_->check_invariants(); }
std::vector<std::string> Machine::dmesg() const { return kernel_->kernel_log; }
std::uint64_t Machine::total_pages() const { return kernel_->mem.total_pages(); }
std::uint64_t Machine::free_pages() const { return kernel_->mem.free_pages(); }
std::uint64_t Machine::pgtable_frames() const { return kernel_->mem.table_frames(); }
const MachineConfig& Machine::config() const { return kernel_->cfg; }
bool Machine::timed() const { return kernel_->hw != nullptr; }
std::uint64_t Machine::cycles(unsigned cpu) const {
  if (!kernel_->hw || cpu >= kernel_->hw->cpus.size()) return 0;
  return kernel_->hw->cpus[cpu].clock;
}
std::uint64_t Machine::busy_cycles(unsigned cpu) const {
  if (!kernel_->hw || cpu >= kernel_->hw->cpus.size()) return 0;
  const Cpu& c = kernel_->hw->cpus[cpu];
  return c.clock - c.idle;
}
Result<void> Machine::swapoff() { return kernel_->sys_swapoff(); }
Result<pfn_t> Machine::migrate_page(pfn_t pfn) {
  Kernel& k = *kernel_;
  if (pfn >= k.mem.total_pages() || !k.mem.ever_allocated(Pfn{pfn})) return Errno::inval;
  Page& page = k.mem.page(Pfn{pfn});
  if (page.test(PG_free) || page.test(PG_table) || !PageAnon(page) ||
      (page_mapcount(page) == 0 && !PageSwapCache(page)))
    return Errno::inval;  // not a page compaction would isolate (anonymous, on the LRU)
  if (PageCompound(page)) {
    // A THP: the model migrates base pages only, so it splits first (as migrate_pages does
    // when no 2 MiB page is free for it); a pinned THP cannot split: EBUSY.
    Page& head = compound_head(page);
    if (&head == k.huge_zero_page) return Errno::inval;
    get_page(head);
    const int err = k.split_huge_page(head);
    k.mem.put_page(head);
    if (err) return Errno::busy;
  }
  auto r = k.migrate_page(page);
  if (!r) return r.error();
  return raw(*r);
}
std::uint64_t Machine::reclaim(std::uint64_t pages) {
  Kernel& k = *kernel_;
  k.in_reclaim = true;  // memory.reclaim runs reclaim itself: its allocations do not recurse
  const std::uint64_t n = k.try_to_free_pages(pages);
  k.in_reclaim = false;
  return n;
}
std::uint64_t Machine::khugepaged_scan(std::uint64_t pages, unsigned cpu) {
  Kernel& k = *kernel_;
  if (k.hw && cpu >= k.hw->cpus.size())
    throw std::invalid_argument("khugepaged_scan: no CPU " + std::to_string(cpu));
  // khugepaged is a kernel thread: its cycles go to the CPU it runs on, and to no process.
  Cpu* const prev = k.cur_cpu;
  if (k.hw) {
    Cpu& c = k.hw->cpus[cpu];
    if (c.owner != 0) k.settle_stats(c, 0);
    k.start_at(c, 0);
    k.cur_cpu = &c;
  }
  std::uint64_t n = 0;
  {
    Kernel::PhaseScope phase(k, Phase::collapse);
    n = k.khugepaged_do_scan(pages);
  }
  k.cur_cpu = prev;
  if (!k.busy_mm && k.oom_pending) k.oom_reap_pending();  // a victim of the scan's allocations
  return n;
}
VmStat Machine::vmstat() const {
  VmStat s = kernel_->vm_events;
  if (const SwapInfo* si = kernel_->swap.get()) {
    s.nr_swap_pages = si->pages - 1;
    s.nr_swap_free = si->nr_free();
    s.nr_swapcached = si->cache.size();
  }
  s.nr_anon_thp = kernel_->mem.compound_pages() - (kernel_->huge_zero_page ? 1 : 0);
  return s;
}
pfn_t Machine::zero_pfn() const { return raw(kernel_->mem.pfn(*kernel_->zero_page)); }
void Machine::fail_nth_allocation(std::uint64_t n, std::uint64_t times) {
  kernel_->mem.fail_nth_allocation(n, times);
}
std::uint64_t Machine::allocations() const { return kernel_->mem.allocations(); }

PageInfo Machine::page_info(pfn_t pfn) const {
  const PhysMem& mem = kernel_->mem;
  if (pfn >= mem.total_pages()) throw std::out_of_range("cowpte: pfn beyond memory");
  if (!mem.ever_allocated(Pfn{pfn}))
    return PageInfo{0, 0, true, false, false, false, false, false, false, false, false, 0};
  const Page& p = mem.page(Pfn{pfn});
  return PageInfo{page_count(p),
                  page_mapcount(p),
                  p.test(PG_free),
                  p.test(PG_anon),
                  p.test(PG_anon_exclusive),
                  p.test(PG_table),
                  p.test(PG_zero),
                  p.test(PG_swapcache),
                  p.test(PG_dirty),
                  PageHead(p),
                  PageTail(p),
                  PageCompound(p) ? HPAGE_PMD_ORDER : 0};
}

// A Process belongs to the Machine that made it: one from another Machine is refused.
static void check_owner(const Machine& m, const Process& p, const char* call) {
  if (&const_cast<Process&>(p).machine() != &m)
    throw std::invalid_argument(std::string("cowpte: Machine::") + call +
                                ": the Process belongs to another Machine");
}

PtWalk Machine::walk(const Process& proc, vaddr_t va) const {
  check_owner(*this, proc, "walk");
  PtWalk w{0, {}, {}};
  const MmStruct* mm = proc.mm();
  if (!mm || !is_canonical(va) || va >= TASK_SIZE) return w;
  Kernel& k = *kernel_;
  const Page* table = mm->pgd;
  const unsigned idx[4] = {pgd_index(va), pud_index(va), pmd_index(va), pte_index(va)};
  for (int level = 0; level < 4; ++level) {
    const pteval_t e = table->data[idx[level]];
    w.entry[level] = e;
    w.table[level] = raw(k.mem.pfn(*table));
    w.levels = level + 1;
    if (level == 3 || !pmd_present(e) || pmd_trans_huge(e)) break;
    table = &k.table_of(e);
  }
  return w;
}

// ---------------- Process ----------------

Process::Process(Machine& m, int pid, int tgid, std::shared_ptr<MmStruct> mm)
    : machine_(&m), pid_(pid), tgid_(tgid), mm_(std::move(mm)) {}
Process::~Process() = default;

bool Process::alive() const { return mm_ != nullptr; }

// A syscall of this process, timed on its CPU as other_syscall (fork, munmap and exit time
// their own phases inside).
#define COWPTE_SYSCALL(phase)          \
  Kernel& k = machine_->kernel();      \
  Kernel::Entry entry(k, *this, true); \
  Kernel::PhaseScope phase_scope(k, phase)

Result<vaddr_t> Process::mmap(vaddr_t addr, std::uint64_t length, Prot prot, MapFlags flags) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return k.do_mmap(*mm_, addr, length, prot, flags);
}

Result<void> Process::munmap(vaddr_t addr, std::uint64_t length) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::zap);
  return k.do_munmap(*mm_, addr, length);
}

Result<void> Process::mprotect(vaddr_t addr, std::uint64_t length, Prot prot) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return k.do_mprotect_pkey(*mm_, addr, length, prot);
}

Result<void> Process::madvise(vaddr_t addr, std::uint64_t length, Advice advice) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(advice == Advice::dontneed ? Phase::zap : Phase::other_syscall);
  return k.do_madvise(*mm_, addr, length, advice);
}

Result<vaddr_t> Process::mremap(vaddr_t old_addr, std::uint64_t old_len, std::uint64_t new_len,
                                MremapFlags flags, vaddr_t new_addr) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return k.do_mremap(*mm_, old_addr, old_len, new_len, static_cast<std::uint64_t>(flags), new_addr);
}

Result<std::uint64_t> Process::load(vaddr_t addr) {
  if (!alive()) return Errno::srch;
  Kernel& k = machine_->kernel();
  std::uint64_t v = 0;
  const Kernel::Unentered u = k.user_access_unentered(*this, addr, false, v);
  if (u == Kernel::Unentered::hit) return v;
  Kernel::Entry entry(k, *this, false);
  if (u == Kernel::Unentered::walk) return k.user_access_walk(*mm_, addr, false, 0);
  return k.user_access(*mm_, addr, false, 0);
}

Result<void> Process::store(vaddr_t addr, std::uint64_t value) {
  if (!alive()) return Errno::srch;
  Kernel& k = machine_->kernel();
  const Kernel::Unentered u = k.user_access_unentered(*this, addr, true, value);
  if (u == Kernel::Unentered::hit) return {};
  Kernel::Entry entry(k, *this, false);
  auto r = u == Kernel::Unentered::walk ? k.user_access_walk(*mm_, addr, true, value)
                                        : k.user_access(*mm_, addr, true, value);
  if (!r) return r.error();
  return {};
}

Result<Process*> Process::fork() {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::fork);
  auto child = k.kernel_clone(*this);
  // wake_up_new_task: the child becomes runnable as its parent's fork ends, not before.
  if (child && k.cur_cpu) (*child)->ready_at_ = k.cur_cpu->clock;
  return child;
}

Result<Process*> Process::clone_vm() {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::fork);
  auto task = k.kernel_clone(*this, Kernel::kCloneVm | Kernel::kCloneThread);
  if (task && k.cur_cpu) (*task)->ready_at_ = k.cur_cpu->clock;
  return task;
}

Result<void> Process::set_cpu(unsigned cpu) {
  if (!alive()) return Errno::srch;
  if (cpu >= machine_->config().cpus) return Errno::inval;
  if (Kernel& k = machine_->kernel(); k.hw && cpu != cpu_) {
    // The task leaves its CPU at that CPU's time (if it ran there last) and arrives on the new
    // one as a newcomer, so the new CPU's clock waits for it (Kernel::Entry).
    Cpu& from = k.hw->cpus[cpu_];
    if (from.owner == pid_) ready_at_ = std::max(ready_at_, from.clock);
    Cpu& to = k.hw->cpus[cpu];
    if (to.owner == pid_) k.settle_stats(to, 0);
  }
  cpu_ = cpu;
  return {};
}

HwStats Process::hw_stats() const {
  Kernel& k = const_cast<Kernel&>(machine_->kernel());
  if (k.hw)
    for (Cpu& c : k.hw->cpus) k.settle_stats(c, c.owner);
  return k.proc_stats[std::size_t(pid_ - 1)];
}

// prctl(PR_SET_COW_PTE): the next fork shares PTE tables. Once MMF_COW_PTE is set it stays.
Result<void> Process::set_cow_pte() { return set_cow_pte(machine_->config().cow_pte_policy); }

Result<void> Process::set_cow_pte(CowPtePolicy policy) { return set_cow_pte(to_string(policy)); }

Result<void> Process::set_cow_pte(std::string_view name) {
  if (!alive()) return Errno::srch;
  const ForkPolicy* policy = find_fork_policy(name);
  if (!policy) return Errno::inval;
  if (mm_->test_flag(MMF_COW_PTE)) return Errno::inval;  // prctl_set_cow_pte
  mm_->set_flag(MMF_COW_PTE_READY);
  mm_->cow_pte_policy = policy;
  return {};
}

namespace {
// The range [addr, addr+len) of a GUP call: page aligned, inside user space.
Result<std::uint64_t> gup_range(vaddr_t addr, std::uint64_t length) {
  if (addr & ~PAGE_MASK) return Errno::inval;
  const std::uint64_t len = (length + PAGE_SIZE - 1) & PAGE_MASK;
  if (length && !len) return Errno::fault;
  if (!is_canonical(addr) || addr >= TASK_SIZE || len > TASK_SIZE - addr) return Errno::fault;
  return len >> PAGE_SHIFT;
}

// Every page mapped by a VMA that check_vma_flags accepts: GUP would fail otherwise.
bool gup_vmas_ok(MmStruct& mm, vaddr_t addr, std::uint64_t nr, unsigned gup_flags) {
  const vaddr_t end = addr + (nr << PAGE_SHIFT);
  for (vaddr_t a = addr; a < end;) {
    const Vma* v = mm.vma_lookup(a);
    if (!v || Kernel::check_vma_flags(*v, gup_flags)) return false;
    a = v->vm_end;
  }
  return true;
}
}  // namespace

// GUP for the facade: all pages or none. The range is checked first, so a refused call changes
// nothing; an allocation failure while faulting pages in releases what was taken.
static Result<void> facade_gup(Kernel& k, MmStruct& mm, int tgid, vaddr_t addr,
                               std::uint64_t length, unsigned gup_flags, bool fast = false) {
  auto nr = gup_range(addr, length);
  if (!nr) return nr.error();
  if (*nr == 0) return {};
  {
    MmapReadGuard lock(mm);
    if (!gup_vmas_ok(mm, addr, *nr, gup_flags)) return Errno::fault;
  }
  std::vector<Page*> pages;
  long got = 0;
  int stopped = 0;
  const bool pin = gup_flags & FOLL_PIN;
  if (fast) {  // internal_get_user_pages_fast: the lockless walk, then the locked one
    if (pin) mm.set_flag(MMF_HAS_PINNED);  // mm_set_has_pinned_flag, before the walk
    got = static_cast<long>(k.lockless_pages_from_mm(mm, addr, *nr, gup_flags, pages));
  }
  if (static_cast<std::uint64_t>(got) < *nr) {
    MmapReadGuard lock(mm);
    const long more =
        k.get_user_pages(mm, addr + (static_cast<std::uint64_t>(got) << PAGE_SHIFT),
                         *nr - static_cast<std::uint64_t>(got), gup_flags, &pages, &stopped);
    got = more < 0 ? more : got + more;
  }
  if (got < 0 || static_cast<std::uint64_t>(got) != *nr) {
    for (Page* p : pages) pin ? k.unpin_user_page(*p) : k.mem.put_page(*p);
    return stopped == -EFAULT ? Errno::fault : Errno::nomem;  // a SIGBUS or SIGSEGV, or OOM
  }
  for (std::uint64_t i = 0; i < pages.size(); ++i)
    k.gup_refs.add(tgid, GupRef{addr + (i << PAGE_SHIFT), pages[i], pin});
  return {};
}

// Drop the newest reference of the given kind on every page of the range, or nothing at all
// if some page has none.
static Result<void> facade_gup_release(Kernel& k, int pid, vaddr_t addr, std::uint64_t length,
                                       bool pin) {
  auto nr = gup_range(addr, length);
  if (!nr) return nr.error() == Errno::fault ? Errno::inval : nr.error();
  if (*nr == 0) return {};
  const std::vector<GupRef> victims = k.gup_refs.take_range(pid, addr, *nr, pin);
  if (victims.empty()) return Errno::inval;
  for (const GupRef& r : victims) pin ? k.unpin_user_page(*r.page) : k.mem.put_page(*r.page);
  return {};
}

Result<void> Process::pin(vaddr_t addr, std::uint64_t length, PinFlags flags) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  const auto f = static_cast<std::uint32_t>(flags);
  const auto fast = static_cast<std::uint32_t>(PinFlags::fast);
  if (f & ~static_cast<std::uint32_t>(PinFlags::write | PinFlags::longterm | PinFlags::fast))
    return Errno::inval;
  return facade_gup(machine_->kernel(), *mm_, tgid_, addr, length,
                    FOLL_PIN | FOLL_TOUCH | (f & ~fast), (f & fast) != 0);
}

Result<void> Process::unpin(vaddr_t addr, std::uint64_t length) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return facade_gup_release(machine_->kernel(), tgid_, addr, length, true);
}

Result<void> Process::gup_get(vaddr_t addr, std::uint64_t length) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return facade_gup(machine_->kernel(), *mm_, tgid_, addr, length, FOLL_GET | FOLL_TOUCH);
}

Result<void> Process::gup_put(vaddr_t addr, std::uint64_t length) {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return facade_gup_release(machine_->kernel(), tgid_, addr, length, false);
}

Result<std::uint64_t> Process::read_gup(vaddr_t addr) const {
  if (!alive()) return Errno::srch;
  if (addr & 7) return Errno::inval;
  const Kernel& k = machine_->kernel();
  const GupRef* r = k.gup_refs.newest(tgid_, addr & PAGE_MASK);
  if (!r) return Errno::inval;
  return k.mem.load_word(*r->page, addr & (PAGE_SIZE - 1));
}

Result<void> Process::clear_soft_dirty() {
  if (!alive()) return Errno::srch;
  COWPTE_SYSCALL(Phase::other_syscall);
  return machine_->kernel().clear_refs_soft_dirty(*mm_);
}

void Process::exit() {
  if (!alive()) return;
  COWPTE_SYSCALL(Phase::exit);
  k.do_exit(*this);
}

PagemapEntry Process::pagemap(vaddr_t addr) const {
  if (!alive() || !is_canonical(addr) || addr >= TASK_SIZE) return PagemapEntry{};
  return machine_->kernel().pagemap(*mm_, addr & PAGE_MASK);
}

std::vector<SmapsEntry> Process::smaps() const {
  if (!alive()) return {};
  return machine_->kernel().smaps(*mm_);
}

RssStat Process::rss() const {
  if (!alive()) return RssStat{0, 0, 0, 0};
  const RssVec& r = mm_->rss_stat;
  return RssStat{r[MM_FILEPAGES], r[MM_ANONPAGES], r[MM_SWAPENTS], r[MM_SHMEMPAGES]};
}

std::uint64_t Process::pgtables_bytes() const {
  return alive() ? static_cast<std::uint64_t>(mm_->pgtables_bytes) : 0;
}

}  // namespace cowpte
