// mm_struct, vm_area_struct, anon_vma and the shmem file behind a shared anonymous mapping.
// Models include/linux/mm_types.h, include/linux/mm.h (vm_flags), include/linux/sched/coredump.h
// (mm flags) and include/linux/mm_types_task.h (RSS counters).
#pragma once

#include <array>
#include <boost/intrusive/set.hpp>
#include <boost/smart_ptr/intrusive_ptr.hpp>
#include <boost/smart_ptr/intrusive_ref_counter.hpp>
#include <cstdint>
#include <map>
#include <vector>

#include "cowpte/config_io.hpp"  // kMaxCpus
#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable_types.hpp"
#include "cowpte/model/spinlock.hpp"

namespace cowpte {

// vm_flags (include/linux/mm.h, x86-64 values).
enum VmFlags : std::uint64_t {
  VM_NONE = 0,
  VM_READ = 0x1,
  VM_WRITE = 0x2,
  VM_EXEC = 0x4,
  VM_SHARED = 0x8,
  VM_MAYREAD = 0x10,
  VM_MAYWRITE = 0x20,
  VM_MAYEXEC = 0x40,
  VM_MAYSHARE = 0x80,
  VM_LOCKED = 0x2000,
  VM_DONTCOPY = 0x20000,
  VM_ACCOUNT = 0x100000,  // charged to the overcommit count: private writable memory
  VM_NORESERVE = 0x200000,
  VM_WIPEONFORK = 0x2000000,
  VM_SOFTDIRTY = 0x8000000,
  VM_HUGEPAGE = 0x20000000,    // MADV_HUGEPAGE
  VM_NOHUGEPAGE = 0x40000000,  // MADV_NOHUGEPAGE
};
inline constexpr std::uint64_t VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC;

// mm->flags bits (sched/coredump.h) and the COW PTE series' two bits.
inline constexpr unsigned MMF_VM_HUGEPAGE = 16;  // registered with khugepaged
inline constexpr unsigned MMF_HAS_PINNED = 27;
inline constexpr unsigned MMF_COW_PTE_READY = 29;
inline constexpr unsigned MMF_COW_PTE = 30;
// MMF_INIT_MASK: the flags a child inherits (dumpable, dump filter, disable-THP; the series adds
// MMF_COW_PTE). MMF_HAS_PINNED is deliberately not inherited.
inline constexpr std::uint64_t MMF_INIT_MASK =
    0x3ull | (0x7full << 2) | (1ull << 24) | (1ull << MMF_COW_PTE);

// RSS counters (mm_types_task.h).
enum MmCounter : unsigned {
  MM_FILEPAGES,
  MM_ANONPAGES,
  MM_SWAPENTS,
  MM_SHMEMPAGES,
  NR_MM_COUNTERS
};
using RssVec = std::array<std::int64_t, NR_MM_COUNTERS>;

// struct anon_vma, reduced to its identity and lifetime: what decides vma_needs_copy() and
// whether two VMAs may merge.
struct AnonVma : boost::intrusive_ref_counter<AnonVma, boost::thread_unsafe_counter> {};

// The shmem inode behind MAP_SHARED|MAP_ANONYMOUS (shmem_zero_setup): a page cache indexed by
// page offset. Each cached page holds one reference for the cache.
// The cache is sparse: host memory grows with the pages cached, not with the length mapped.
struct ShmemFile : boost::intrusive_ref_counter<ShmemFile, boost::thread_unsafe_counter> {
  explicit ShmemFile(std::uint64_t pages) : size(pages) {}
  std::uint64_t size;                        // the file's length in pages
  std::map<std::uint64_t, Page*> cache;      // index -> page, only the cached ones
  Page* lookup(std::uint64_t index) const {  // nullptr when not cached
    auto it = cache.find(index);
    return it == cache.end() ? nullptr : it->second;
  }
  class Kernel* kernel = nullptr;
  ~ShmemFile();  // shmem_evict_inode: truncate the cache
};

struct MmStruct;
class ForkPolicy;
using VmaHook =
    boost::intrusive::set_member_hook<boost::intrusive::link_mode<boost::intrusive::normal_link>>;

// struct vm_area_struct.
struct Vma {
  vaddr_t vm_start = 0;
  vaddr_t vm_end = 0;
  std::uint64_t vm_flags = 0;
  pteval_t vm_page_prot = 0;
  MmStruct* vm_mm = nullptr;
  boost::intrusive_ptr<AnonVma> anon_vma;
  // Number of anon_vmas this VMA is linked to (the length of anon_vma_chain): 1 for a VMA that
  // made its own, one more per fork generation. A VMA with a longer chain cannot merge with a
  // VMA without anon_vma (is_mergeable_anon_vma).
  unsigned anon_vma_chain = 0;
  boost::intrusive_ptr<ShmemFile> vm_file;  // shared anonymous memory; vm_ops = shmem_vm_ops
  std::uint64_t vm_pgoff = 0;               // offset in vm_file, in pages
  VmaHook mm_mt;                            // the mm's VMA tree, ordered by address

  std::uint64_t pages() const noexcept { return (vm_end - vm_start) >> PAGE_SHIFT; }
};

// mm->mm_mt: VMAs ordered by vm_end, so find_vma(addr) is upper_bound(addr).
struct VmaEndKey {
  using type = vaddr_t;
  vaddr_t operator()(const Vma& v) const noexcept { return v.vm_end; }
};
using VmaTree = boost::intrusive::set<Vma, boost::intrusive::member_hook<Vma, VmaHook, &Vma::mm_mt>,
                                      boost::intrusive::key_of_value<VmaEndKey>,
                                      boost::intrusive::constant_time_size<true>>;

// linear_page_index: the index of address in vma's mapping; for anon memory, the page->index
// that places a page in every VMA that inherited this one (vm_pgoff moves with the range).
inline std::uint64_t linear_page_index(const Vma& v, vaddr_t address) noexcept {
  return v.vm_pgoff + ((address - v.vm_start) >> PAGE_SHIFT);
}

// vma_is_anonymous: no vm_ops. Shared anonymous memory has shmem's vm_ops.
inline bool vma_is_anonymous(const Vma& v) noexcept { return !v.vm_file; }
// is_cow_mapping: private and may be written.
inline bool is_cow_mapping(std::uint64_t flags) noexcept {
  return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE;
}
inline bool vma_is_accessible(const Vma& v) noexcept { return v.vm_flags & VM_ACCESS_FLAGS; }
// CONFIG_MEM_SOFT_DIRTY: tracking is on for a VMA once clear_refs cleared its VM_SOFTDIRTY.
inline bool vma_soft_dirty_enabled(const Vma& v) noexcept { return !(v.vm_flags & VM_SOFTDIRTY); }

// struct mm_struct.
struct MmStruct {
  VmaTree mm_mt;
  Page* pgd = nullptr;  // the PML4 frame
  std::uint64_t flags = 0;
  // The fork policy set_cow_pte() chose (fork_policy.hpp); it governs fork and the shared tables
  // once MMF_COW_PTE is on, and a child inherits it with MMF_COW_PTE. Not Linux's: the series
  // has one policy, the ODF code a per-process use_odf flag.
  const ForkPolicy* cow_pte_policy = nullptr;
  RssVec rss_stat{};
  std::int64_t pgtables_bytes = 0;  // PUD, PMD and PTE tables; the pgd is not counted
  SpinLock page_table_lock;         // guards pgd and pud entries (and pmd_install's recheck)
  RwSem mmap_lock;
  // The timing model of this mm's Machine, which every lock taken for the mm reports to (null
  // when timing is off; spinlock.hpp). Not Linux's.
  LockTiming* lock_timing = nullptr;
  int pid = 0;       // the thread group's (its first task's pid): for traces and messages
  int mm_users = 1;  // the tasks using this mm (a thread group); exit_mmap when the last goes
  // Odd while fork copies (write_protect_seq): page_needs_cow_for_dma is only valid then.
  unsigned write_protect_seq = 0;
  // The timing model: the PCID this mm's TLB entries carry, and mm_cpumask (the CPUs it ran
  // on, which a TLB flush must reach).
  unsigned pcid = 0;
  std::uint64_t cpumask = 0;
  static_assert(kMaxCpus <= sizeof(cpumask) * 8, "mm_cpumask holds a bit for every CPU");

  bool test_flag(unsigned bit) const noexcept { return flags & (1ull << bit); }
  void set_flag(unsigned bit) noexcept { flags |= 1ull << bit; }
  void clear_flag(unsigned bit) noexcept { flags &= ~(1ull << bit); }

  // find_vma: the first VMA that ends above addr, or nullptr.
  Vma* find_vma(vaddr_t addr) noexcept {
    auto it = mm_mt.upper_bound(addr);
    return it == mm_mt.end() ? nullptr : &*it;
  }
  const Vma* find_vma(vaddr_t addr) const noexcept {
    auto it = mm_mt.upper_bound(addr);
    return it == mm_mt.end() ? nullptr : &*it;
  }
  // vma_lookup: the VMA containing addr, or nullptr.
  Vma* vma_lookup(vaddr_t addr) noexcept {
    Vma* v = find_vma(addr);
    return (v && v->vm_start <= addr) ? v : nullptr;
  }
  // find_vma_intersection: the first VMA that overlaps [start, end), or nullptr.
  Vma* find_vma_intersection(vaddr_t start, vaddr_t end) noexcept {
    Vma* v = find_vma(start);
    return (v && v->vm_start < end) ? v : nullptr;
  }
  Vma* vma_prev(Vma& v) noexcept {
    auto it = mm_mt.iterator_to(v);
    return it == mm_mt.begin() ? nullptr : &*--it;
  }
  Vma* vma_next(Vma& v) noexcept {
    auto it = ++mm_mt.iterator_to(v);
    return it == mm_mt.end() ? nullptr : &*it;
  }
  // for_each_vma_range: every VMA that overlaps [start, end).
  template <class F>
  void for_each_vma_range (vaddr_t start, vaddr_t end, F && f) {
    for (auto it = mm_mt.upper_bound(start); it != mm_mt.end() && it->vm_start < end;) {
      Vma& v = *it++;  // f may split or remove v
      f(v);
    }
  }

  ~MmStruct() {
    mm_mt.clear_and_dispose([](Vma* v) { delete v; });
  }
};

inline void add_mm_rss_vec(MmStruct& mm, const RssVec& rss) noexcept {
  for (unsigned i = 0; i < NR_MM_COUNTERS; ++i) mm.rss_stat[i] += rss[i];
}

}  // namespace cowpte
