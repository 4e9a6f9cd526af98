// The modelled kernel: physical memory, the zero page, the processes, and every kernel path of
// the model as a member named after the Linux function it models. Each group below names the
// source file that implements it and the kernel file it models.
#pragma once

#include <fmt/format.h>
#include <spdlog/logger.h>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "cowpte/machine.hpp"
#include "cowpte/model/fork_policy.hpp"
#include "cowpte/model/mm_types.hpp"
#include "cowpte/model/mmap_lock.hpp"
#include "cowpte/model/mmu_gather.hpp"
#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable.hpp"
#include "cowpte/model/swap.hpp"
#include "mm/errno.hpp"
#include "mm/gup_refs.hpp"
#include "mm/pid_table.hpp"
#include "mmu/cost_model.hpp"
#include "mmu/hw.hpp"
#include "mmu/pcid.hpp"

namespace cowpte {

// TLB flushes the kernel issued (counted with and without the timing model).
struct TlbStats {
  std::uint64_t flush_range = 0;  // flush_tlb_range / tlb_flush of a gather
  std::uint64_t flush_mm = 0;     // flush_tlb_mm
  std::uint64_t flush_page = 0;   // flush_tlb_page (ptep_clear_flush)
};

// Fault flags (include/linux/mm_types.h) and fault results (vm_fault_t).
enum FaultFlags : unsigned {
  FAULT_FLAG_WRITE = 1u << 0,
  FAULT_FLAG_USER = 1u << 6,
  FAULT_FLAG_UNSHARE = 1u << 10,
};
using vm_fault_t = unsigned;
enum : vm_fault_t {
  VM_FAULT_OOM = 0x1,
  VM_FAULT_SIGBUS = 0x2,
  VM_FAULT_MAJOR = 0x4,
  VM_FAULT_WRITE = 0x8,
  VM_FAULT_SIGSEGV = 0x40,
  VM_FAULT_NOPAGE = 0x100,
  VM_FAULT_FALLBACK = 0x800,  // a huge page fault could not map a huge page: try 4 KiB
  VM_FAULT_ERROR = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV,
};

// Page-fault error code bits (arch/x86/include/asm/trap_pf.h).
enum X86PfError : unsigned { X86_PF_PROT = 1, X86_PF_WRITE = 2, X86_PF_USER = 4 };

// GUP flags (include/linux/mm.h).
enum FollFlags : unsigned {
  FOLL_WRITE = 0x01,
  FOLL_TOUCH = 0x02,
  FOLL_GET = 0x04,
  FOLL_FORCE = 0x10,
  FOLL_PIN = 0x40000,
  FOLL_LONGTERM = 0x10000,
};

// struct vm_fault.
struct VmFault {
  Vma* vma = nullptr;
  vaddr_t address = 0;
  unsigned flags = 0;
  EntryRef pmd;                  // the PMD entry that maps address
  EntryRef pte;                  // the PTE, once the table exists
  pteval_t orig_pte = 0;         // the PTE value the fault saw
  Page* page = nullptr;          // the page found or made by the fault
  Page* prealloc_pte = nullptr;  // a PTE table allocated ahead (do_fault_around)
};

// enum scan_result (mm/khugepaged.c): why khugepaged or MADV_COLLAPSE did or did not collapse
// a span (the mm_khugepaged_scan_pmd tracepoint's result). cow_pte is the series' SCAN_COW_PTE.
enum class ScanResult : std::uint8_t {
  fail,
  succeed,
  pmd_null,
  pmd_none,
  pmd_mapped,
  exceed_none_pte,
  exceed_swap_pte,
  exceed_shared_pte,
  pte_non_present,
  page_ro,
  lack_referenced_page,
  page_null,
  page_count,
  page_anon,
  vma_null,
  vma_check,
  alloc_huge_page_fail,
  cow_pte,
  count
};
const char* to_string(ScanResult r) noexcept;

// fault_around_bytes (mm/memory.c): read faults on file/shmem VMAs map up to 16 cached pages.
inline constexpr std::uint64_t kFaultAroundBytes = 65536;
inline constexpr std::uint64_t kMaxMapCount =
    65530;  // sysctl_max_map_count (DEFAULT_MAX_MAP_COUNT)

// Kernel is the PolicyOps a fork policy gets (final: its own calls of table_of and
// copy_pte_range are direct calls).
class Kernel final : public PolicyOps, public CostModel, private ReclaimHook {
 public:
  Kernel(Machine& machine, const MachineConfig& cfg);
  ~Kernel();

  // The Kernel's state is a set of components, each keeping its own state private: the frames
  // (PhysMem), the processes (PidTable), the references GUP handed out (GupRefs), the PCIDs
  // (PcidAllocator, private: only mm_alloc and mm_free_pcid hand them out and back) and the
  // timing model (the CostModel base, with the Hardware). The kernel paths below are members,
  // named after the Linux functions they model.
  Machine& machine;
  MachineConfig cfg;
  PhysMem mem;
  Page* zero_page = nullptr;
  PidTable procs;
  GupRefs gup_refs;
  TlbStats tlb_stats;
  std::shared_ptr<spdlog::logger> tracer;  // null when tracing is off
  // "cycle N cpu C: " while a timed path runs on a CPU (the tracepoints' timestamp), else "".
  std::string trace_stamp() const;

  // A facade call entering the kernel on process p's CPU: sets cur_cpu (which the timing of
  // every lock and access charges) for its duration and credits the process with what its CPU
  // counted meanwhile.
  class Entry {
   public:
    Entry(Kernel& k, Process& p, bool syscall);
    ~Entry();
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;

   private:
    Kernel& k_;
    Cpu* prev_;
    MmStruct* prev_mm_;
  };
  // Process p takes cpu over from the task that ran there last (src/mmu/timing.cpp): that task
  // cannot run anywhere before the CPU's clock now, and its statistics are settled.
  void context_switch(Cpu& cpu, Process& p) noexcept;
  // ---- src/facade/process.cpp and src/fork/fork.cpp: process lifetime (kernel/fork.c mm_alloc,
  //      kernel/pid.c alloc_pid, kernel/exit.c) ----
  // mm_alloc -> mm_init: a new mm with its PCID and pgd; EAGAIN when no PCID is left (the
  // model's limit of 4095 live processes), ENOMEM without a frame for the pgd. Nothing leaks.
  Result<std::unique_ptr<MmStruct>> mm_alloc();
  // Flush mm's PCID from every CPU and give it back (exit, or a fork that failed).
  void mm_free_pcid(MmStruct& mm);
  // alloc_pid: a new task with mm, starting on cpu, in thread group tgid (0: a group of its own).
  Process& add_process(std::shared_ptr<MmStruct> mm, unsigned cpu, int tgid = 0);
  Process& spawn();
  void release_gup_refs(int tgid);
  // do_exit -> exit_mm -> mmput: the task leaves its mm; the last one tears it down.
  void do_exit(Process& p);
  // Every task using mm exits (the OOM killer's victim is a thread group: all of it dies).
  void exit_mm_tasks(MmStruct& mm);

  // ---- src/mmu/tlb.cpp: TLB maintenance (arch/x86/mm/tlb.c). INVLPG up to flush_ceiling
  //      pages, else a PCID flush, on this CPU, and a shootdown IPI to every other CPU in
  //      mm_cpumask ----
  void flush_tlb_range(MmStruct& mm, vaddr_t start, vaddr_t end, unsigned stride_shift = 12);
  void flush_tlb_mm(MmStruct& mm);
  void flush_tlb_page(MmStruct& mm, vaddr_t addr);

  // ---- src/mm/pgtable.cpp: table frames and the walk to an entry (mm/memory.c,
  //      include/linux/pgtable.h, arch/x86/mm/pgtable.c) ----
  Page* pte_alloc_one(MmStruct& mm);  // with pgtable_pte_page_ctor
  Page* pmd_alloc_one(MmStruct& mm);  // with pgtable_pmd_page_ctor
  Page* pud_alloc_one(MmStruct& mm);
  void pgtable_free(Page& table);  // pte_free / pmd_free / pud_free: destructor + free
  bool pgd_alloc(MmStruct& mm);
  void pgd_free(MmStruct& mm);
  Page& table_of(pteval_t entry) noexcept override { return mem.page(pmd_pfn(entry)); }
  EntryRef pgd_offset(MmStruct& mm, vaddr_t a) noexcept {
    return {mm.pgd, table_base(*mm.pgd) + pgd_index(a)};
  }
  EntryRef pud_offset(EntryRef pgd, vaddr_t a) noexcept {
    Page& t = table_of(pgd.get());
    return {&t, table_base(t) + pud_index(a)};
  }
  EntryRef pmd_offset(EntryRef pud, vaddr_t a) noexcept {
    Page& t = table_of(pud.get());
    return {&t, table_base(t) + pmd_index(a)};
  }
  EntryRef pte_offset_map(EntryRef pmd, vaddr_t a) noexcept {
    Page& t = table_of(pmd.get());
    return {&t, table_base(t) + pte_index(a)};
  }
  // pud_alloc / pmd_alloc / pte_alloc: allocate a missing level; an empty EntryRef on -ENOMEM.
  EntryRef pud_alloc(MmStruct& mm, EntryRef pgd, vaddr_t a);
  EntryRef pmd_alloc(MmStruct& mm, EntryRef pud, vaddr_t a);
  bool pte_alloc(MmStruct& mm, EntryRef pmd);  // false on -ENOMEM
  void pmd_install(MmStruct& mm, EntryRef pmd, Page*& pte_table);
  // Read-only lookup of the PMD entry for a, or an empty ref if a level is missing.
  EntryRef walk_to_pmd(MmStruct& mm, vaddr_t a) noexcept;
  // The same for a walk over [a, end), as walk_page_range's levels do: next is where the walk
  // goes on (the end of a's PMD, or of the missing PUD or PGD entry's whole range), so that a
  // range call costs what the tables hold, not what the range spans.
  EntryRef walk_to_pmd(MmStruct& mm, vaddr_t a, vaddr_t end, vaddr_t& next) noexcept;

  // ---- src/mm/rmap.cpp (mm/rmap.c, include/linux/rmap.h) ----
  void page_add_new_anon_rmap(Page& page, Vma& vma, vaddr_t address);
  void page_add_anon_rmap(Page& page, Vma& vma, vaddr_t address, bool exclusive);
  void page_add_file_rmap(Page& page);
  void page_remove_rmap(Page& page);
  void page_move_anon_rmap(Page& page);
  int page_try_dup_anon_rmap(Page& page, Vma& src_vma);
  bool anon_vma_prepare(Vma& vma);
  bool anon_vma_fork(Vma& dst, const Vma& src);
  Page* vm_normal_page(const Vma& vma, pteval_t pte) noexcept;
  static unsigned mm_counter(const Page& page) noexcept;

  // ---- src/mm/mmap.cpp (mm/mmap.c, mm/util.c, mm/shmem.c shmem_zero_setup) ----
  Result<vaddr_t> do_mmap(MmStruct& mm, vaddr_t addr, std::uint64_t len, Prot prot, MapFlags flags);
  Result<vaddr_t> get_unmapped_area(MmStruct& mm, vaddr_t addr, std::uint64_t len, MapFlags flags);
  Result<vaddr_t> mmap_region(MmStruct& mm, vaddr_t addr, std::uint64_t len, std::uint64_t flags,
                              std::uint64_t prot);
  Result<void> do_munmap(MmStruct& mm, vaddr_t start, std::uint64_t len);
  Result<void> do_vmi_munmap(MmStruct& mm, vaddr_t start, vaddr_t end);
  Vma* vm_area_alloc(MmStruct& mm);
  Vma* vm_area_dup(const Vma& orig);
  void vm_area_free(Vma* vma);
  bool split_vma(MmStruct& mm, Vma& vma, vaddr_t addr, bool new_below);
  Vma* split_vma_range(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end);
  Vma* vma_merge(MmStruct& mm, Vma& vma);  // merge vma with its neighbours if they allow it
  void vma_set_page_prot(Vma& vma);
  static pteval_t vm_get_page_prot(std::uint64_t vm_flags) noexcept;
  void unmap_region(MmStruct& mm, std::vector<Vma*>& vmas, vaddr_t start, vaddr_t end,
                    vaddr_t floor, vaddr_t ceiling);
  void remove_vma(Vma* vma);

  // ---- src/mm/mremap.cpp (mm/mremap.c) ----
  Result<vaddr_t> do_mremap(MmStruct& mm, vaddr_t addr, std::uint64_t old_len,
                            std::uint64_t new_len, std::uint64_t flags, vaddr_t new_addr);
  Result<Vma*> vma_to_resize(MmStruct& mm, vaddr_t addr, std::uint64_t old_len,
                             std::uint64_t new_len, std::uint64_t flags);
  Result<vaddr_t> mremap_to(MmStruct& mm, vaddr_t addr, std::uint64_t old_len, vaddr_t new_addr,
                            std::uint64_t new_len, std::uint64_t flags);
  Result<vaddr_t> move_vma(MmStruct& mm, Vma& vma, vaddr_t old_addr, std::uint64_t old_len,
                           std::uint64_t new_len, vaddr_t new_addr, std::uint64_t flags);
  Vma* copy_vma(MmStruct& mm, Vma& vma, vaddr_t addr, std::uint64_t len, std::uint64_t pgoff);
  bool vma_expandable(MmStruct& mm, Vma& vma, std::uint64_t delta);
  std::uint64_t move_page_tables(MmStruct& mm, vaddr_t old_addr, Vma& new_vma, vaddr_t new_addr,
                                 std::uint64_t len);
  bool move_normal_pmd(MmStruct& mm, vaddr_t old_addr, EntryRef old_pmd, EntryRef new_pmd);
  bool move_huge_pmd(MmStruct& mm, vaddr_t old_addr, EntryRef old_pmd, EntryRef new_pmd);
  bool move_normal_pud(MmStruct& mm, vaddr_t old_addr, EntryRef old_pud, EntryRef new_pud);
  void move_ptes(MmStruct& mm, EntryRef old_pmd, vaddr_t old_addr, vaddr_t old_end, Vma& new_vma,
                 EntryRef new_pmd, vaddr_t new_addr);
  Result<void> do_mas_munmap(MmStruct& mm, vaddr_t start, std::uint64_t len);

  // ---- src/mm/mprotect.cpp (mm/mprotect.c) ----
  Result<void> do_mprotect_pkey(MmStruct& mm, vaddr_t start, std::uint64_t len, Prot prot);
  bool mprotect_fixup(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end, std::uint64_t newflags);
  long change_protection(MmGather& tlb, Vma& vma, vaddr_t start, vaddr_t end, bool try_writable);
  long change_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end,
                        pteval_t newprot, bool try_writable);
  bool can_change_pte_writable(Vma& vma, pteval_t pte);

  // ---- src/mm/madvise.cpp (mm/madvise.c) ----
  Result<void> do_madvise(MmStruct& mm, vaddr_t start, std::uint64_t len, Advice advice);
  Result<void> madvise_populate(MmStruct& mm, vaddr_t start, vaddr_t end, bool write);
  bool madvise_update_vma(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end,
                          std::uint64_t newflags);
  void madvise_free_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end);
  void madvise_cold_or_pageout_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr,
                                         vaddr_t end, bool pageout);
  void madvise_cold_or_pageout_ptes(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr,
                                    vaddr_t end, bool pageout, std::vector<Page*>& isolated);
  template <class PteRange>
  Result<void> madvise_walk_ptes(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end, bool cold,
                                 PteRange&& range);
  Result<void> madvise_remove(Vma& vma, vaddr_t start, vaddr_t end);
  void shmem_punch_hole(ShmemFile& file, std::uint64_t first, std::uint64_t last);

  // ---- swap: src/mm/swapfile.cpp (mm/swapfile.c), src/mm/swap_state.cpp (mm/swap_state.c,
  //      mm/page_io.c), src/mm/vmscan.cpp (mm/vmscan.c, mm/rmap.c's try_to_unmap) ----
  std::unique_ptr<SwapInfo> swap;  // the swap device; null without one, or after swapoff
  VmStat vm_events;                // the event counters of Machine::vmstat()
  // The allocation contexts that matter here: GFP_ATOMIC under a PTE lock (no reclaim),
  // GFP_KERNEL where the caller may sleep, reclaim and wait for the OOM killer.
  enum class Gfp : std::uint8_t { atomic, kernel };
  Page* alloc_page(Gfp gfp) {
    return gfp == Gfp::atomic ? mem.alloc_page_atomic() : mem.alloc_page();
  }
  std::uint64_t get_swap_page();
  void swap_range_free(std::uint64_t offset);
  int __swap_duplicate(SwpEntry entry, std::uint8_t usage);
  int swap_duplicate(SwpEntry entry);
  int add_swap_count_continuation(SwpEntry entry, Gfp gfp);
  bool swap_count_continued(std::uint64_t offset, std::uint8_t count);
  std::uint8_t __swap_entry_free(SwpEntry entry, std::uint8_t usage);
  void swap_free(SwpEntry entry);
  void put_swap_page(SwpEntry entry);
  std::uint64_t swp_swapcount(SwpEntry entry) const;
  bool vm_swap_full() const noexcept;
  bool folio_free_swap(Page& page);
  void try_to_reclaim_swap(std::uint64_t offset);
  bool free_swap_and_cache(SwpEntry entry);
  void free_swap_count_continuations();
  bool is_device_swp_entry(SwpEntry e) const noexcept {
    return swap && e.type == swap->type && e.offset != 0 && e.offset < swap->pages;
  }
  Result<void> sys_swapoff();
  int try_to_unuse();
  int unuse_mm(MmStruct& mm);
  int unuse_pte_range(Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end);
  int unuse_pte(Vma& vma, EntryRef pmd, vaddr_t addr, SwpEntry entry, Page& page);
  void add_to_swap_cache(Page& page, SwpEntry entry);
  bool add_to_swap(Page& page);
  void delete_from_swap_cache(Page& page);
  // free_page_and_swap_cache (mm/swap_state.c): a zap drops a mapping's reference; a page no
  // PTE maps any more leaves the swap cache too if no swap PTE needs it (free_swap_cache).
  // Inline: every page an exit or munmap frees comes here, from tlb_flush_mmu.
  template <bool Hooks = true>
  void free_page_and_swap_cache(Page& page) {
    if (PageSwapCache(page) && page_mapcount(page) == 0) folio_free_swap(page);
    mem.put_page<Hooks>(page);
  }
  Page* lookup_swap_cache(SwpEntry entry);
  Page* read_swap_cache_async(SwpEntry entry);
  void swap_writepage(Page& page);
  void swap_readpage(Page& page);
  template <class F>
  bool for_each_anon_address(std::uint64_t index, F&& f);
  template <class Visit>
  bool rmap_walk_anon(Page& page, bool break_cow, Visit&& visit);
  bool try_to_unmap_one(Page& page, Vma& vma, vaddr_t addr, EntryRef pmd);
  void set_swp_pte_unmapping(EntryRef pte, pteval_t old, pteval_t swp_pte, Page& page);
  bool try_to_unmap(Page& page);
  bool shrink_folio(Page& page);
  std::uint64_t reclaim_pages(const std::vector<Page*>& pages);
  int folio_referenced(Page& page);
  bool folio_reclaimable(const Page& page) const noexcept;
  std::uint64_t try_to_free_pages(std::uint64_t nr_to_reclaim);
  bool alloc_slowpath() override;  // __alloc_pages_slowpath: direct reclaim, then the OOM killer
  // ---- src/mm/migrate.cpp (mm/migrate.c, mm/rmap.c's try_to_migrate) ----
  bool try_to_migrate_one(Page& page, Vma& vma, vaddr_t addr, EntryRef pmd);
  bool try_to_migrate(Page& page);
  void remove_migration_ptes(Page& src, Page& dst);
  Result<Pfn> migrate_page(Page& page);
  // ---- src/mm/oom_kill.cpp (mm/oom_kill.c) ----
  static long oom_badness(const MmStruct& mm) noexcept;
  bool out_of_memory();
  void oom_reap_pending();
  // The mm the running kernel path works on (the calling process's, or swapoff's): the OOM
  // killer kills its process only once the path is done (Linux's victim dies on its way back
  // to user space).
  MmStruct* busy_mm = nullptr;
  // The shared PTE tables the running path holds across an allocation (a break's old table,
  // the table a fork is sharing with its child): direct reclaim inside that allocation does
  // not unmap through them, in any mm. Linux relies on locks and rechecks for this race.
  std::vector<const Page*> tables_in_hand;
  class TableInHand {
   public:
    TableInHand(Kernel& k, const Page& table) : k_(k) { k.tables_in_hand.push_back(&table); }
    ~TableInHand() { k_.tables_in_hand.pop_back(); }
    TableInHand(const TableInHand&) = delete;
    TableInHand& operator=(const TableInHand&) = delete;

   private:
    Kernel& k_;
  };
  // The mm a fork is copying: its shared tables may be shared with the child, which no rmap
  // walk can see yet (alloc_pid comes after copy_mm), so direct reclaim leaves them alone too.
  MmStruct* forking_mm = nullptr;
  bool table_in_hand(const MmStruct& mm, const Page& table) const noexcept {
    if (&mm == forking_mm && cow_pte_count(table) > 1) return true;
    for (const Page* t : tables_in_hand)
      if (t == &table) return true;
    return false;
  }
  Process* oom_pending = nullptr;
  bool in_reclaim = false;      // PF_MEMALLOC: reclaim's own allocations do not reclaim
  bool direct_reclaim = false;  // reclaim runs inside an allocation (tables in hand are kept)
  std::uint64_t lru_hand = 0;   // the reclaim scan's clock hand over the frames

  // ---- src/mm/gup.cpp (mm/gup.c) ----
  // Pages grabbed, or -errno if none; *stopped (if given) gets the -errno that cut a short count.
  long get_user_pages(MmStruct& mm, vaddr_t start, std::uint64_t nr_pages, unsigned gup_flags,
                      std::vector<Page*>* pages, int* stopped = nullptr);
  Page* follow_page_pte(Vma& vma, vaddr_t addr, unsigned flags, bool& unshare, bool& oom);
  // GUP-fast: pages grabbed from the start of the range without mmap_lock; 0 when a pin raced
  // a fork (write_protect_seq moved) and gave everything back.
  std::uint64_t lockless_pages_from_mm(MmStruct& mm, vaddr_t start, std::uint64_t nr_pages,
                                       unsigned gup_flags, std::vector<Page*>& pages);
  Page* follow_trans_huge_pmd(Vma& vma, EntryRef pmd, vaddr_t addr, unsigned flags, bool& unshare,
                              bool& oom);
  bool try_grab_page(Page& page, unsigned flags);
  int faultin_page(Vma& vma, vaddr_t addr, unsigned flags, bool unshare);
  static int check_vma_flags(const Vma& vma, unsigned gup_flags) noexcept;
  static bool gup_must_unshare(const Vma& vma, unsigned flags, const Page& page) noexcept;
  void unpin_user_page(Page& page);
  long populate_vma_page_range(Vma& vma, vaddr_t start, vaddr_t end);
  void mm_populate(MmStruct& mm, vaddr_t start, std::uint64_t len);

  // ---- src/mm/zap.cpp (mm/memory.c zap paths, mm/mmap.c free_pgtables and exit_mmap) ----
  void zap_pte_range(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end);
  void zap_pmd_range(MmGather& tlb, Vma& vma, EntryRef pud, vaddr_t addr, vaddr_t end);
  void zap_pud_range(MmGather& tlb, Vma& vma, EntryRef pgd, vaddr_t addr, vaddr_t end);
  void unmap_page_range(MmGather& tlb, Vma& vma, vaddr_t addr, vaddr_t end);
  void unmap_vmas(MmGather& tlb, const std::vector<Vma*>& vmas, vaddr_t start, vaddr_t end);
  void free_pgtables(MmGather& tlb, const std::vector<Vma*>& vmas, vaddr_t floor, vaddr_t ceiling);
  void free_pgd_range(MmGather& tlb, vaddr_t addr, vaddr_t end, vaddr_t floor, vaddr_t ceiling);
  void free_pud_range(MmGather& tlb, EntryRef pgd, vaddr_t addr, vaddr_t end, vaddr_t floor,
                      vaddr_t ceiling);
  void free_pmd_range(MmGather& tlb, EntryRef pud, vaddr_t addr, vaddr_t end, vaddr_t floor,
                      vaddr_t ceiling);
  void free_pte_range(MmGather& tlb, EntryRef pmd);
  bool zap_cow_pte(MmGather& tlb, EntryRef pmd, vaddr_t addr);  // the policy's zap_table
  bool cow_pte_zap_whole_mm(const MmGather& tlb, vaddr_t span);
  void zap_cow_pte_range(MmGather& tlb, EntryRef pmd, vaddr_t addr, vaddr_t end);
  void zap_page_range(MmStruct& mm, vaddr_t start, vaddr_t end);
  void exit_mmap(MmStruct& mm);
  void tlb_finish_mmu(MmGather& tlb);
  void tlb_flush_mmu_tlbonly(MmGather& tlb);
  void tlb_flush_mmu(MmGather& tlb);
  void tlb_remove_page(MmGather& tlb, Page& page) {  // __tlb_remove_page, flushing a full batch
    if (tlb.__tlb_remove_page(page)) tlb_flush_mmu(tlb);
  }

  // ---- src/fork/fork.cpp (kernel/fork.c) ----
  // CLONE_VM (and CLONE_THREAD): copy_mm takes a reference on the parent's mm instead of
  // duplicating it.
  static constexpr std::uint64_t kCloneVm = 0x100,
                                 kCloneThread =
                                     0x10000;  // CLONE_VM, CLONE_THREAD (<sched.h> has the macros)
  Result<Process*> kernel_clone(Process& parent, std::uint64_t clone_flags = 0);
  int dup_mmap(MmStruct& mm, MmStruct& oldmm);
  void zap_unlinked_ptes(MmStruct& mm);

  // ---- src/fork/copy_page_range.cpp (mm/memory.c) ----
  int copy_page_range(Vma& dst_vma, Vma& src_vma);
  int copy_pud_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pgd, EntryRef src_pgd, vaddr_t addr,
                     vaddr_t end);
  int copy_pmd_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pud, EntryRef src_pud, vaddr_t addr,
                     vaddr_t end);
  int copy_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd, vaddr_t addr,
                     vaddr_t end) override;
  template <bool Hooks = true>
  int copy_present_pte(Vma& dst_vma, Vma& src_vma, EntryRef dst_pte, EntryRef src_pte, RssVec& rss,
                       Page*& prealloc);
  int copy_nonpresent_pte(EntryRef dst_pte, EntryRef src_pte, RssVec& rss);
  int copy_present_page(Vma& dst_vma, Vma& src_vma, EntryRef dst_pte, EntryRef src_pte, RssVec& rss,
                        Page*& prealloc, Page& page);
  Page* page_copy_prealloc(MmStruct& src_mm);
  static bool vma_needs_copy(const Vma& dst_vma, const Vma& src_vma) noexcept;

  // ---- src/fork/copy_cow_pte_range.cpp: fork sharing PTE tables (mm/memory.c of the seed,
  //      [PATCH v3 02/14] mm: Add Copy-On-Write PTE to fork(), with v4's fixes) ----
  // as_posted: the series' code exactly ("seed_exact"): the walk starts at addr, not at the
  // span, and a VM_WIPEONFORK VMA's entries are shared; recover_pte_range clears the child's
  // PMD without mm_dec_nr_ptes and leaves the child's reference and accounting on failure.
  int copy_cow_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                         vaddr_t addr, vaddr_t end, vaddr_t& recover_end, bool as_posted = false);
  int recover_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd, vaddr_t end,
                        bool as_posted = false);
  void uncharge_cow_pte_range(Vma& src_vma, MmStruct& dst_mm, EntryRef dst_pmd, EntryRef src_pmd,
                              vaddr_t end);
  // ---- src/fork/copy_pmd_range_tfork.cpp: On-demand-fork's fork (the ODF code's mm/memory.c) ----
  bool copy_pmd_range_tfork(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                            vaddr_t addr);
  static bool is_vma_odf_incompatible(const Vma& vma) noexcept;
  // The span the current fork fell back to copying, and where the recovered entries end: the
  // VMAs after the one that hit the fallback copy only from there (see copy_pmd_range).
  struct CowPteRecover {
    vaddr_t span = ~0ull;
    vaddr_t end = 0;
  } cow_pte_recover;

  // ---- src/mm/huge_memory.cpp: transparent huge pages for anonymous memory (mm/huge_memory.c,
  //      mm/pgtable-generic.c, include/linux/huge_mm.h) ----
  // hugepage_vma_check (v6.2): may vma hold THPs? in_pf: for a fault (the span is checked by
  // the caller); enforce_sysfs: the "enabled" mode applies (not for MADV_COLLAPSE).
  bool hugepage_vma_check(const Vma& vma, std::uint64_t vm_flags, bool smaps, bool in_pf,
                          bool enforce_sysfs) const noexcept;
  static bool transhuge_vma_suitable(const Vma& vma, vaddr_t haddr) noexcept;
  Page* huge_zero_page = nullptr;    // allocated by the first read fault that maps it
  std::uint64_t huge_zero_pmds = 0;  // huge PMDs that map it (it is freed with the last)
  Page* get_huge_zero_page();
  void put_huge_zero_pmd();
  bool is_huge_zero_pmd(pteval_t pmd) const noexcept {
    return huge_zero_page && pmd_pfn(pmd) == mem.pfn(*huge_zero_page);
  }
  void pgtable_trans_huge_deposit(EntryRef pmd, Page& pgtable);
  Page& pgtable_trans_huge_withdraw(EntryRef pmd);
  void zap_deposited_table(MmStruct& mm, EntryRef pmd);
  vm_fault_t do_huge_pmd_anonymous_page(VmFault& vmf);
  vm_fault_t __do_huge_pmd_anonymous_page(VmFault& vmf, Page& folio);
  vm_fault_t do_huge_pmd_wp_page(VmFault& vmf, pteval_t orig_pmd);
  void huge_pmd_set_accessed(VmFault& vmf, pteval_t orig_pmd);
  int copy_huge_pmd(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd, vaddr_t addr);
  bool zap_huge_pmd(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr);
  void __split_huge_pmd_locked(Vma& vma, EntryRef pmd, vaddr_t haddr);
  void __split_huge_zero_page_pmd(Vma& vma, EntryRef pmd, vaddr_t haddr);
  void split_huge_pmd(Vma& vma, EntryRef pmd, vaddr_t address);  // no-op unless huge
  void split_huge_pmd_address(Vma& vma, vaddr_t address);
  void vma_adjust_trans_huge(Vma& vma, vaddr_t start, vaddr_t end);
  // Split every huge PMD of [start, end) of mm (the callers that work on PTEs only).
  void split_huge_pmd_range(MmStruct& mm, vaddr_t start, vaddr_t end);
  void split_huge_pages_range(MmStruct& mm, vaddr_t start, vaddr_t end);
  long change_huge_pmd(MmGather& tlb, Vma& vma, EntryRef pmd, vaddr_t addr, pteval_t newprot);
  int split_huge_page(Page& head);  // 0, or -EBUSY with extra references (pins)
  void deferred_split_huge_page(Page& head);
  std::uint64_t deferred_split_scan();
  void page_add_new_anon_rmap_compound(Page& head, Vma& vma, vaddr_t haddr);
  int page_try_dup_anon_rmap_compound(Page& head, Vma& src_vma);
  void page_remove_rmap_compound(Page& head);

  // ---- src/mm/khugepaged.cpp: khugepaged and MADV_COLLAPSE (mm/khugepaged.c, v6.2; the
  //      series' [PATCH v3 05/14] mm/khugepaged: Break COW PTE before scanning pte) ----
  struct CollapseControl {
    bool is_khugepaged;  // the daemon (its limits and referenced checks) or MADV_COLLAPSE
  };
  // khugepaged_scan: the mms registered (khugepaged_mm_slot), and where the scan stands.
  struct KhugepagedScan {
    std::list<MmStruct*> mm_slots;
    std::list<MmStruct*>::iterator slot{};
    bool has_slot = false;  // khugepaged_scan.mm_slot != NULL
    vaddr_t address = 0;
  } khugepaged;
  void khugepaged_enter_vma(Vma& vma, std::uint64_t vm_flags);
  void __khugepaged_enter(MmStruct& mm);
  void khugepaged_fork(MmStruct& mm, const MmStruct& oldmm);
  void khugepaged_exit(MmStruct& mm);
  ScanResult find_pmd_or_thp_or_none(MmStruct& mm, vaddr_t address, EntryRef& pmd);
  bool is_refcount_suitable(const Page& head) const noexcept;
  ScanResult hpage_collapse_scan_pmd(MmStruct& mm, Vma& vma, vaddr_t address,
                                     const CollapseControl& cc);
  ScanResult trace_scan(MmStruct& mm, vaddr_t address, ScanResult r);
  ScanResult hugepage_vma_revalidate(MmStruct& mm, vaddr_t address, const CollapseControl& cc,
                                     Vma*& vma);
  ScanResult __collapse_huge_page_swapin(MmStruct& mm, Vma& vma, vaddr_t haddr);
  ScanResult __collapse_huge_page_isolate(Vma& vma, Page& table, const CollapseControl& cc);
  void __collapse_huge_page_copy(MmStruct& mm, Vma& vma, Page& table, Page& hpage);
  ScanResult collapse_huge_page(MmStruct& mm, vaddr_t address, unsigned unmapped,
                                const CollapseControl& cc);
  std::uint64_t khugepaged_scan_mm_slot(std::uint64_t pages, const CollapseControl& cc);
  std::uint64_t khugepaged_do_scan(std::uint64_t pages);
  Result<void> madvise_collapse(Vma& vma, vaddr_t start, vaddr_t end);
  static Errno madvise_collapse_errno(ScanResult r) noexcept;

  // ---- src/fault/memory.cpp (mm/memory.c) ----
  vm_fault_t handle_mm_fault(Vma& vma, vaddr_t address, unsigned flags);
  vm_fault_t __handle_mm_fault(Vma& vma, vaddr_t address, unsigned flags);
  vm_fault_t handle_pte_fault(VmFault& vmf);
  vm_fault_t do_anonymous_page(VmFault& vmf);
  // ---- src/fault/swap.cpp (mm/memory.c) ----
  vm_fault_t do_swap_page(VmFault& vmf);
  bool should_try_to_free_swap(const Page& page, const Vma& vma, unsigned fault_flags) const;
  bool mm_forbids_zeropage() const noexcept { return !cfg.zero_page; }
  // ---- src/fault/wp.cpp (mm/memory.c) ----
  vm_fault_t do_wp_page(VmFault& vmf);
  vm_fault_t wp_page_copy(VmFault& vmf);
  vm_fault_t wp_page_shared(VmFault& vmf);
  void wp_page_reuse(VmFault& vmf);
  // ---- src/fault/cow_pte.cpp: breaking a shared table (mm/memory.c of [PATCH v3 03/14] mm: Add
  //      break COW PTE fault and helper functions; On-demand-fork's tfork_one_pte_table) ----
  int break_cow_pte(MmStruct& mm, EntryRef pmd, vaddr_t addr);  // 0 or -ENOMEM
  int break_cow_pte_range(MmStruct& mm, vaddr_t start, vaddr_t end);
  int break_cow_pte_partial(MmStruct& mm, vaddr_t start, vaddr_t end);
  vm_fault_t handle_cow_pte_fault(VmFault& vmf);
  int tfork_one_pte_table(MmStruct& mm, EntryRef pmd, vaddr_t addr);
  void tfork_undo_copy(Page& table, unsigned n);
  void dereference_pte_table(MmStruct& mm, Page& table, vaddr_t span, MmGather* tlb);
  void odf_transfer_owner(Page& table, MmStruct& from, vaddr_t span);
  RssVec pte_table_rss(Page& table);
  // ---- src/fault/file.cpp (mm/memory.c do_fault and mm/shmem.c shmem_fault) ----
  vm_fault_t do_fault(VmFault& vmf);
  vm_fault_t do_read_fault(VmFault& vmf);
  vm_fault_t do_shared_fault(VmFault& vmf);
  vm_fault_t do_fault_around(VmFault& vmf);
  vm_fault_t finish_fault(VmFault& vmf);
  void do_set_pte(VmFault& vmf, Page& page, vaddr_t addr, EntryRef pte);
  vm_fault_t shmem_fault(VmFault& vmf);
  void shmem_truncate(ShmemFile& file);
  // ---- src/fault/user_fault.cpp (arch/x86/mm/fault.c) ----
  vm_fault_t do_user_addr_fault(MmStruct& mm, vaddr_t address, unsigned error_code);
  static bool access_error(unsigned error_code, const Vma& vma) noexcept;

  // ---- src/mmu/mmu.cpp: the hardware page walk and user accesses ----
  // user_access is inline (below kernel.hpp's class): a DTLB hit is the common case of every
  // timed load and store. The paths it falls back to are here.
  bool dtlb_mru_access(Cpu& cpu, MmStruct& mm, vaddr_t addr, bool write, std::uint64_t& val);
  Result<std::uint64_t> user_access(MmStruct& mm, vaddr_t addr, bool write, std::uint64_t val);
  // The same access from the facade before any Entry: hit (val loaded or stored) if it hit the
  // DTLB way used last on a CPU p already owns; walk if the address is a valid user one and
  // that check missed (the caller takes Entry and user_access_walk: the check would miss again);
  // full if nothing was checked (Entry and user_access).
  enum class Unentered { hit, walk, full };
  Unentered user_access_unentered(Process& p, vaddr_t addr, bool write, std::uint64_t& val);
  // The rest of a user access, timed or not: the TLBs (timed), one walk, the fault handler.
  Result<std::uint64_t> user_access_walk(MmStruct& mm, vaddr_t addr, bool write, std::uint64_t val);

  // ---- src/mm/task_mmu.cpp (fs/proc/task_mmu.c) ----
  PagemapEntry pagemap(MmStruct& mm, vaddr_t addr);
  std::vector<SmapsEntry> smaps(MmStruct& mm);
  void smaps_pmd_entry(SmapsEntry& e, std::uint64_t& pss, pteval_t pmd);
  Result<void> clear_refs_soft_dirty(MmStruct& mm);

  // ---- src/mm/invariants.cpp ----
  void check_invariants() const;
  // check_mm (kernel/fork.c): at exit every RSS counter and pgtables_bytes must be zero. Linux
  // prints "BUG: Bad rss-counter state" and goes on; the model throws, unless the mm's policy
  // keeps the series' accounting bugs (SeriesQuirks::check_mm_reports), whose message goes to
  // the kernel log (Machine::dmesg) as Linux's does.
  void check_mm(MmStruct& mm);
  std::vector<std::string> kernel_log;

 private:
  PcidAllocator pcids_;
};

// ---- hot per-PTE helpers, inline (include/linux/rmap.h, mm/memory.c, include/linux/mm.h) ----

// vm_normal_page: the struct page behind a present PTE, or nullptr for special mappings (the
// zero page).
inline Page* Kernel::vm_normal_page(const Vma&, pteval_t pte) noexcept {
  if (pte_special(pte)) return nullptr;
  return &mem.page(pte_pfn(pte));
}

// mm_counter: anon pages, shmem (swap-backed non-anon) pages and file pages.
inline unsigned Kernel::mm_counter(const Page& page) noexcept {
  if (PageAnon(page)) return MM_ANONPAGES;
  return page.test(PG_swapbacked) ? MM_SHMEMPAGES : MM_FILEPAGES;
}

// page_dup_file_rmap / page_add_file_rmap.
inline void Kernel::page_add_file_rmap(Page& page) { ++page._mapcount; }

inline void Kernel::page_remove_rmap(Page& page) {
  if (--page._mapcount < -1) [[unlikely]]
    throw InvariantViolation("page_remove_rmap: negative mapcount");
  // A subpage of a THP unmapped: the THP may be partially mapped now (deferred_split_huge_page).
  if (PageCompound(page) && PageAnon(page)) [[unlikely]]
    deferred_split_huge_page(compound_head(page));
}

// page_try_dup_anon_rmap: share an anon page with a child, unless it may be pinned (then the
// child must get its own copy: -EBUSY). page_needs_cow_for_dma is only valid while fork holds
// write_protect_seq.
inline int Kernel::page_try_dup_anon_rmap(Page& page, Vma& src_vma) {
  if (PageAnonExclusive(page)) {
    const MmStruct& mm = *src_vma.vm_mm;
    if (!(mm.write_protect_seq & 1)) [[unlikely]]
      throw InvariantViolation("page_try_dup_anon_rmap outside fork");
    if (is_cow_mapping(src_vma.vm_flags) && mm.test_flag(MMF_HAS_PINNED) &&
        page_maybe_dma_pinned(page))
      return -EBUSY;
    page.clear(PG_anon_exclusive);
  }
  ++page._mapcount;  // __page_dup_rmap
  return 0;
}

// Entering the kernel (the timing model's side): inline, since every user load and store of a
// timed machine enters once.
inline Kernel::Entry::Entry(Kernel& k, Process& p, bool syscall)
    : k_(k), prev_(k.cur_cpu), prev_mm_(k.busy_mm) {
  k.busy_mm = p.mm();
  if (!k.hw) return;
  Cpu& cpu = k.hw->cpus[p.cpu()];
  if (cpu.owner != p.pid()) [[unlikely]]
    k.context_switch(cpu, p);
  if (!prev_) k.start_at(cpu, p.ready_at_);  // a nested entry runs inside its caller's time
  k.cur_cpu = &cpu;
  if (MmStruct* mm = p.mm()) mm->cpumask |= 1ull << p.cpu();
  if (syscall) cpu.clock += k.hw->cfg.syscall;
}

inline Kernel::Entry::~Entry() {
  k_.busy_mm = prev_mm_;
  if (!prev_mm_ && k_.oom_pending) [[unlikely]]
    k_.oom_reap_pending();  // the OOM victim was the caller: it dies on its way out
  if (!k_.hw) return;
  k_.cur_cpu = prev_;
}

// A user load or store (src/mmu/mmu.cpp has the walks). The common case first: with the timing
// model, the DTLB way used last translates this access too.
inline Result<std::uint64_t> Kernel::user_access(MmStruct& mm, vaddr_t addr, bool write,
                                                 std::uint64_t val) {
  if (addr & 7) return Errno::inval;
  if (!is_canonical(addr) || addr >= TASK_SIZE) return Errno::fault;  // kernel half: SIGSEGV
  Cpu* cpu = cur_cpu;
  if (!cpu || !dtlb_mru_access(*cpu, mm, addr, write, val))
    return user_access_walk(mm, addr, write, val);
  return val;
}

// The DTLB-hit case of a timed access to a valid user address: false, with nothing counted,
// unless the DTLB way cpu used last holds addr's page (and allows a write, for a store).
// Always inlined: GCC otherwise keeps one out-of-line copy for both callers, and the call, the
// saved registers and the untaken store branch cost the load a third of its time.
[[gnu::always_inline]] inline bool Kernel::dtlb_mru_access(Cpu& cpu, MmStruct& mm, vaddr_t addr,
                                                           bool write, std::uint64_t& val) {
  const std::uint64_t key = tlb_key(mm.pcid, addr, PAGE_SHIFT);
  const SetAssoc<TlbEntry>& dtlb = cpu.dtlb_4k;
  if (key != cpu.mru_key || dtlb.key_at(cpu.mru_slot) != key) [[unlikely]]
    return false;
  const TlbEntry& e = dtlb.value_at(cpu.mru_slot);
  if (write && !(e.writable && e.dirty)) [[unlikely]]
    return false;
  const std::uint64_t start = cpu.clock;
  cpu.clock += hw->cfg.dtlb_4k.latency;
  ++cpu.stats.dtlb_hits;
  const unsigned off = addr & (PAGE_SIZE - 1);
  hw->access(cpu, (e.pfn << PAGE_SHIFT) | off);
  Page& page = mem.page(Pfn{e.pfn});
  if (write) {
    mem.store_word(page, off, val);
  } else {
    val = mem.load_word(page, off);
  }
  end_phase(cpu, Phase::user_access, start);
  return true;
}

// Process::load and store try this before building an Entry. An Entry outside any other
// (cur_cpu null) on a CPU p owns already (no context switch to settle) would only set the
// mm's cpumask bit, then set cur_cpu and reset it on the way out; a DTLB
// hit reads neither, so the bit is all of Entry it needs. Errors take the full path; a miss
// of a valid address goes to the walk under an Entry (which changes nothing the check read).
inline Kernel::Unentered Kernel::user_access_unentered(Process& p, vaddr_t addr, bool write,
                                                       std::uint64_t& val) {
  if (!hw || cur_cpu) return Unentered::full;
  Cpu& cpu = hw->cpus[p.cpu()];
  if (cpu.owner != p.pid() || (addr & 7) || !is_canonical(addr) || addr >= TASK_SIZE)
    return Unentered::full;
  // The task owns the CPU, so its runnable time is behind the clock (set_cpu makes sure); only
  // another CPU's later start can hold this access back, and Entry handles that.
  if (now > cpu.clock) [[unlikely]]
    return Unentered::full;
  now = cpu.clock;
  MmStruct& mm = *p.mm();
  mm.cpumask |= 1ull << p.cpu();
  return dtlb_mru_access(cpu, mm, addr, write, val) ? Unentered::hit : Unentered::walk;
}

// The timing model's lock timing (src/mmu/timing.cpp).
std::unique_ptr<LockTiming> make_timed_locks(Kernel& k);

// ---- COW PTE state (include/linux/mm.h of the series) ----

// copy_present_page (mm/memory.c): the parent's page may be pinned, so the child gets a copy now;
// the parent keeps its exclusive page and its PTE unchanged. Inline, as in Linux: out of line,
// prealloc's address escaped and both fork loops kept it in memory, reloading it every entry.
inline int Kernel::copy_present_page(Vma& dst_vma, Vma&, EntryRef dst_pte, EntryRef, RssVec& rss,
                                     Page*& prealloc, Page& page) {
  Page* new_page = prealloc;
  if (!new_page) return -EAGAIN;
  prealloc = nullptr;
  mem.copy_page(*new_page, page);
  // The child's VMA has the parent's vm_pgoff: the copy sits at the parent page's index.
  page_add_new_anon_rmap(*new_page, dst_vma,
                         dst_vma.vm_start + ((page.anon_index - dst_vma.vm_pgoff) << PAGE_SHIFT));
  ++rss[MM_ANONPAGES];
  pteval_t pte = pfn_pte(mem.pfn(*new_page), dst_vma.vm_page_prot);
  pte = pte_mkdirty(pte);
  if (dst_vma.vm_flags & VM_WRITE) pte = pte_mkwrite(pte);  // maybe_mkwrite
  set_pte_at(dst_pte, pte);
  return 0;
}

// copy_present_pte (mm/memory.c): share one present page with the child. Inline: both fork
// paths (copy_pte_range, copy_cow_pte_range) run it once per PTE; their loops' copies without
// hooks (with_hooks) pass Hooks false.
template <bool Hooks>
inline int Kernel::copy_present_pte(Vma& dst_vma, Vma& src_vma, EntryRef dst_pte, EntryRef src_pte,
                                    RssVec& rss, Page*& prealloc) {
  const std::uint64_t vm_flags = src_vma.vm_flags;
  pteval_t pte = src_pte.get();
  Page* page = vm_normal_page(src_vma, pte);
  tm_op<Hooks>(Op::pte);  // the entry is read; the page's refcount and mapcount go up
  if (page) tm_page<Hooks>(*page, 2);
  if (page && PageAnon(*page)) {
    get_page<Hooks>(*page);
    if (page_try_dup_anon_rmap(*page, src_vma)) [[unlikely]] {
      mem.put_page<Hooks>(*page);  // maybe pinned: the child must get a copy
      return copy_present_page(dst_vma, src_vma, dst_pte, src_pte, rss, prealloc, *page);
    }
    ++rss[MM_ANONPAGES];
  } else if (page) {
    get_page<Hooks>(*page);
    page_add_file_rmap(*page);  // page_dup_file_rmap
    ++rss[mm_counter(*page)];
  }
  // A COW mapping is write-protected in both parent and child.
  if (is_cow_mapping(vm_flags) && pte_write(pte)) {
    ptep_set_wrprotect<Hooks>(src_pte);
    pte = pte_wrprotect(pte);
  }
  if (vm_flags & VM_SHARED) {
    // With COW PTE (dst == src) the parent's entry is the one made clean; the seed loses the
    // dirty state, the model hands it to the page as page_mkclean would.
    if (dst_pte.p == src_pte.p && page && pte_dirty(pte)) page->set(PG_dirty);
    pte = pte_mkclean(pte);
  }
  // Soft-dirty stays, as in classic fork and the seed's code: a shared table's soft-dirty bits
  // are every sharer's, and clear_refs breaks the table before it clears them.
  pte = pte_mkold(pte);
  pte = pte_clear_uffd_wp(pte);  // the child VMA is never uffd-wp in the model
  set_pte_at<Hooks>(dst_pte, pte);
  tm_entry<Hooks>(dst_pte);
  return 0;
}

// The built-in policies get the Kernel behind the PolicyOps they are handed.
inline Kernel& kernel_of(PolicyOps& ops) noexcept { return static_cast<Kernel&>(ops); }

// Trace at a kernel tracepoint; costs one branch when tracing is off. The message carries the
// simulated time: the cycle of the CPU the path runs on (the timing model), else nothing.
#define COWPTE_TRACE(k, ...)                                                  \
  do {                                                                        \
    if ((k).tracer) [[unlikely]]                                              \
      (k).tracer->trace("{}{}", (k).trace_stamp(), fmt::format(__VA_ARGS__)); \
  } while (0)

}  // namespace cowpte
