// The facade's value types: addresses, flags and error codes with Linux's numeric values, and
// the read-only views (/proc/PID/pagemap, smaps, rss, struct page, a page walk).
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace cowpte {

using vaddr_t = std::uint64_t;  // user virtual address
using pfn_t = std::uint64_t;    // simulated physical frame number

// Strong frame number and physical address for the model's insides: a pfn can't be mixed up
// with a count or an address by accident. The facade keeps the plain pfn_t of the contract.
enum class Pfn : std::uint64_t {};
enum class PhysAddr : std::uint64_t {};
constexpr std::uint64_t raw(Pfn p) noexcept { return static_cast<std::uint64_t>(p); }
constexpr std::uint64_t raw(PhysAddr p) noexcept { return static_cast<std::uint64_t>(p); }
constexpr PhysAddr pfn_to_phys(Pfn p) noexcept { return PhysAddr{raw(p) << 12}; }
constexpr Pfn phys_to_pfn(PhysAddr a) noexcept { return Pfn{raw(a) >> 12}; }

enum class Prot : std::uint32_t { none = 0, read = 1, write = 2, exec = 4 };
enum class MapFlags : std::uint32_t {
  shared = 0x01,
  private_ = 0x02,
  fixed = 0x10,
  anonymous = 0x20,
  noreserve = 0x4000,  // accepted and ignored: the model has no overcommit accounting
  populate = 0x8000,
  fixed_noreplace = 0x100000,
};
enum class Advice : int {  // Linux's values
  dontneed = 4,
  free_ = 8,   // MADV_FREE: clean private anon pages may be dropped by reclaim (MADV_PAGEOUT)
  remove = 9,  // MADV_REMOVE: punch a hole in shared (shmem) memory
  dontfork = 10,
  dofork = 11,
  wipeonfork = 18,  // the child gets this private anon range empty
  keeponfork = 19,
  cold = 20,  // deactivate: the model has no LRU; clears the accessed bit of exclusive pages
  pageout = 21,
  populate_read = 22,
  populate_write = 23,
  hugepage = 14,    // MADV_HUGEPAGE: VM_HUGEPAGE, THP faults under ThpMode::madvise
  nohugepage = 15,  // MADV_NOHUGEPAGE: VM_NOHUGEPAGE, no THP faults whatever the mode
  collapse = 25,    // MADV_COLLAPSE: collapse each 2 MiB span into a THP now, whatever the mode
};
// /sys/kernel/mm/transparent_hugepage/enabled: when an anonymous fault may map a 2 MiB page.
enum class ThpMode : std::uint8_t { always, madvise, never };
constexpr std::string_view to_string(ThpMode m) noexcept {
  switch (m) {
    case ThpMode::always:
      return "always";
    case ThpMode::madvise:
      return "madvise";
    case ThpMode::never:
      break;
  }
  return "never";
}
// Fork policies have names (fork_policy_names(), machine.hpp): "classic", "seed" (the COW PTE
// series v3/v4: fork still does every page's accounting and shares only the prepared table),
// "seed_exact" (the same series exactly as posted, its bugs included),
// "on_demand_fork" (EuroSys'21: fork shares every table one private anonymous VMA covers and
// does no per-page work), "rfc_v2" (the series' RFC v2: as on_demand_fork, but the last holder
// reuses a table), and those research code registers (<cowpte/model/fork_policy.hpp>).
// CowPtePolicy names the first two COW PTE policies, as earlier versions did.
enum class CowPtePolicy : std::uint8_t { seed = 0, on_demand_fork = 1 };
constexpr std::string_view to_string(CowPtePolicy p) noexcept {
  switch (p) {
    case CowPtePolicy::seed:
      return "seed";
    case CowPtePolicy::on_demand_fork:
      return "on_demand_fork";
  }
  return "";  // not a policy: set_cow_pte answers EINVAL
}

// FOLL_WRITE and FOLL_LONGTERM; `fast` asks for pin_user_pages_fast(): the lockless walk first
// (GUP-fast, no mmap_lock), the locked one for what it could not pin.
enum class PinFlags : std::uint32_t { none = 0, write = 0x1, longterm = 0x10000, fast = 0x80000 };
// mremap(2) flags, Linux's values: MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP.
enum class MremapFlags : std::uint32_t { none = 0, maymove = 1, fixed = 2, dontunmap = 4 };
enum class Errno : int {
  perm = 1,
  noent = 2,
  srch = 3,
  io = 5,
  badf = 9,
  again = 11,
  nomem = 12,
  acces = 13,
  fault = 14,
  busy = 16,
  exist = 17,
  inval = 22,
  nospc = 28
};
std::string_view to_string(Errno) noexcept;

// | and & for the flag enums; `any(x)` tests for a non-empty set.
template <class E>
concept FlagEnum = std::is_same_v<E, Prot> || std::is_same_v<E, MapFlags> ||
    std::is_same_v<E, PinFlags> || std::is_same_v<E, MremapFlags>;
template <FlagEnum E>
constexpr E operator|(E a, E b) noexcept {
  using U = std::underlying_type_t<E>;
  return E(U(a) | U(b));
}
template <FlagEnum E>
constexpr E operator&(E a, E b) noexcept {
  using U = std::underlying_type_t<E>;
  return E(U(a) & U(b));
}
template <FlagEnum E>
constexpr E operator~(E a) noexcept {
  using U = std::underlying_type_t<E>;
  return E(~U(a));
}
template <FlagEnum E>
constexpr E& operator|=(E& a, E b) noexcept {
  return a = a | b;
}
template <FlagEnum E>
constexpr bool any(E a) noexcept {
  return std::underlying_type_t<E>(a) != 0;
}

// Thrown by Machine::check_invariants(); what() names the first broken invariant.
class InvariantViolation : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

struct PagemapEntry {        // the Linux pagemap bits, and the raw 64-bit word
  bool present;              // bit 63
  bool swapped;              // bit 62
  bool file_or_shared_anon;  // bit 61
  bool exclusive;            // bit 56: mapped by exactly one page-table entry
  bool soft_dirty;           // bit 55
  pfn_t pfn;                 // bits 0-54: the frame when present; when swapped, the swap type
                             // (bits 0-4) and offset (bits 5-54)
  std::uint64_t raw;
};

struct SmapsEntry {  // bytes, as Linux reports them (its kB times 1024)
  vaddr_t start, end;
  std::uint64_t rss, pss, shared_clean, shared_dirty, private_clean, private_dirty, anonymous, swap;
  std::uint64_t anon_huge;  // AnonHugePages: anonymous memory mapped by huge PMDs
};

struct RssStat {
  std::int64_t file, anon, swapents, shmem;
  friend bool operator==(const RssStat&, const RssStat&) = default;
};

struct PageInfo {         // one frame's struct page
  std::int64_t refcount;  // page_count()
  std::int64_t mapcount;  // page_mapcount(): _mapcount + 1
  bool free, anon, anon_exclusive, page_table, zero_page, swapcache, dirty;
  bool compound_head, compound_tail;  // a frame of a THP: its first, or one of the others
  unsigned order;                     // the compound page's order (9), 0 for a base page
};

// /proc/vmstat's swap and reclaim counters (events since the Machine was built) and gauges
// (pages now), plus the model's own counts of the rare paths.
struct VmStat {
  std::uint64_t nr_swap_pages = 0;           // swap slots, the header excluded (SwapTotal)
  std::uint64_t nr_swap_free = 0;            // of those, free (SwapFree)
  std::uint64_t nr_swapcached = 0;           // pages in the swap cache (SwapCached)
  std::uint64_t pswpin = 0;                  // pages read from swap
  std::uint64_t pswpout = 0;                 // pages written to swap
  std::uint64_t pgmajfault = 0;              // swap-in faults that read the device
  std::uint64_t swapcache_hits = 0;          // swap-in faults the swap cache served
  std::uint64_t pgscan = 0;                  // pages reclaim looked at
  std::uint64_t pgsteal = 0;                 // pages reclaim freed
  std::uint64_t pgmigrate_success = 0;       // pages Machine::migrate_page moved
  std::uint64_t oom_kill = 0;                // processes the OOM killer killed
  std::uint64_t referenced_shared_ptes = 0;  // A bits harvested in shared tables (no break)
  std::uint64_t swap_cont_pages = 0;         // count continuation frames added (add_swap_count_...)
  std::uint64_t fork_swap_retries = 0;       // copies that dropped the PTE lock for a continuation
  std::uint64_t rmap_cow_pte_breaks = 0;     // shared tables the rmap walk broke (series patch 04)
  std::uint64_t thp_fault_alloc = 0;         // THP faults that mapped a new 2 MiB page
  std::uint64_t thp_fault_fallback = 0;      // THP faults with no free 2 MiB block: 4 KiB pages
  std::uint64_t thp_split_pmd = 0;           // huge PMDs split into PTE tables
  std::uint64_t thp_split_page = 0;          // THPs split into 512 base pages
  std::uint64_t nr_anon_thp = 0;             // THPs now (gauge)
  std::uint64_t thp_collapse_alloc = 0;      // 2 MiB pages khugepaged or MADV_COLLAPSE got
  std::uint64_t thp_collapse_alloc_failed = 0;   // ... and did not get (no free 2 MiB block)
  std::uint64_t khugepaged_pages_collapsed = 0;  // spans khugepaged collapsed (sysfs, in THPs)
  std::uint64_t khugepaged_full_scans = 0;       // passes over every registered mm (sysfs)
};

struct PtWalk {  // the path of one address from the top table down
  int levels;    // entries read: 4 to reach a PTE; fewer where a level is absent or huge
  std::array<std::uint64_t, 4> entry;  // raw pgd (PML4E), pud (PDPTE), pmd (PDE), pte
  std::array<pfn_t, 4> table;          // the frame that holds each of those entries
};

}  // namespace cowpte
