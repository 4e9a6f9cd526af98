// Allocation failure injected at every allocation of the COW PTE paths: a fork that shares PTE
// tables under the seed's policy (and its fallback for a possibly pinned page and a DONTFORK VMA)
// and under On-demand-fork, the break of a shared table (a write, a read fault, mprotect, munmap,
// MADV_DONTNEED, a pin, clear_refs), and On-demand-fork's table copy on the first fault.
//
// Method (as in test_alloc_failure.cpp): build a state deterministically on a fresh machine, count
// the allocations a successful operation makes (N), then for n = 1..N rebuild the same state, make
// the nth allocation fail and run the operation again. It must fail with ENOMEM and leave the
// machine as Linux would: invariants hold, what was written still reads back, the views the
// operation must not change are unchanged, no frame is lost, and the same operation succeeds
// once the failure is off. n = N + 1 must succeed. After every process has exited all frames are
// free again.
//
// What a failure may legitimately leave changed, and where the checks allow it:
//  - fork: the parent's PTEs (and, with COW PTE, its PMD entries) may have been write-protected
//    and the parent's entries lose soft-dirty (copy_present_pte with dst == src clears it for a
//    table it prepares for sharing); pages lose PageAnonExclusive (page_try_dup_anon_rmap), a
//    shmem page whose clean-made PTE was dirty becomes PG_dirty. Nothing else: the same frames in
//    use, the same refcounts and mapcounts, the parent's tables at refcount 1 again.
//  - a break followed by another allocation (the page a write fault copies, a VMA split): the
//    break is complete by itself (Linux does not undo it when the fault or the split fails), so
//    the acting process may own a private copy of the table (same entries; the other holder
//    keeps the old table at refcount 1). mprotect and munmap may also have done the first of
//    their two VMA splits (Linux's vma_modify and do_vmi_align_munmap leave it).
//  - On-demand-fork: a failure after the table copy (the page of a write fault) leaves the copy
//    with its per-page work done: the acting process owns a new table, the pages of the span gain
//    a reference and a mapping each, and the RSS / VmPTE charge moves accordingly.
// Hardware A bits are masked out of walk comparisons: a failed access walks the upper levels
// before it faults.
#include <gtest/gtest.h>

#include <algorithm>
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "snapshot_util.hpp"

namespace {

using cowpte::Advice;
using cowpte::CowPtePolicy;
using cowpte::Errno;
using cowpte::Machine;
using cowpte::MachineConfig;
using cowpte::MapFlags;
using cowpte::PageInfo;
using cowpte::pfn_t;
using cowpte::PinFlags;
using cowpte::Process;
using cowpte::Prot;
using cowpte::vaddr_t;
using cowpte_test::ErrName;
using cowpte_test::ErrOf;
using cowpte_test::InvariantsHold;
using cowpte_test::MachineSnapshot;
using cowpte_test::ProcSnap;

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPmdSize = 2ull << 20;
constexpr std::int64_t kPinBias = 1024;              // GUP_PIN_COUNTING_BIAS
constexpr std::uint64_t kEntryRw = 1ull << 1;        // _PAGE_RW
constexpr std::uint64_t kEntryAccessed = 1ull << 5;  // _PAGE_ACCESSED
constexpr std::uint64_t kPmSoftDirty = 1ull << 55;   // pagemap bit 55
constexpr std::uint64_t kPmPfnMask = (1ull << 55) - 1;
constexpr Prot kRW = Prot::read | Prot::write;
constexpr MapFlags kFixedPriv = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;
constexpr MapFlags kFixedShared = MapFlags::shared | MapFlags::anonymous | MapFlags::fixed;

// ---- the seed layout: several VMAs in and across 2 MiB spans ----
constexpr vaddr_t kSpan0 = 0x10000000;
constexpr vaddr_t kSpan1 = kSpan0 + kPmdSize;
constexpr vaddr_t kSpan2 = kSpan0 + 2 * kPmdSize;
constexpr vaddr_t kA = kSpan0;                 // private RW, 16 pages: 0-7 stored, 8-9 zero page
constexpr vaddr_t kB = kSpan0 + 32 * kPage;    // private RW, 8 pages: 0-3 stored
constexpr vaddr_t kShm = kSpan0 + 64 * kPage;  // shared anonymous RW, 4 pages: 0-1 stored
constexpr vaddr_t kC = kSpan2 - 4 * kPage;     // private RW, 8 pages across span1/span2, stored
constexpr vaddr_t kD = kSpan2 + 16 * kPage;    // private RW, 4 pages, stored (shares span2 with C)
constexpr vaddr_t kE = 0x7f0000000000;         // private RW, 4 pages in a PGD entry of its own
constexpr vaddr_t kSpanE = kE;

// ---- the fallback layout (seed): a pinned page, and a DONTFORK VMA next to a copied one ----
constexpr vaddr_t kSpanF0 = 0x20000000;
constexpr vaddr_t kF = kSpanF0;  // private RW, 8 pages stored; page 2 pinned
constexpr vaddr_t kSpanF1 = kSpanF0 + kPmdSize;
constexpr vaddr_t kQ = kSpanF1;                // private RW, 8 pages stored: copied
constexpr vaddr_t kDf = kSpanF1 + 16 * kPage;  // private RW, 4 pages stored, MADV_DONTFORK
constexpr vaddr_t kSpanF2 = kSpanF0 + 2 * kPmdSize;
constexpr vaddr_t kDf2 = kSpanF2;              // private RW, 4 pages stored, MADV_DONTFORK
constexpr vaddr_t kQ2 = kSpanF2 + 16 * kPage;  // private RW, 8 pages stored: copied

// ---- the On-demand-fork layout ----
constexpr vaddr_t kO = 0x7f0000000000;  // private RW, 4 MiB = two whole spans
constexpr vaddr_t kSpanO0 = kO;
constexpr vaddr_t kSpanO1 = kO + kPmdSize;
constexpr vaddr_t kOa = 0x10000000;  // private RW, 16 pages (classic copy): 0-3 stored
// private RW, 16 pages (classic copy) after O: 0-2 stored. Its allocations come after O's
// spans are shared, so failing them tears down a child that shares tables.
constexpr vaddr_t kOb = kO + 3 * kPmdSize;

std::string Hex(std::uint64_t v) { return fmt::format("{:#x}", v); }

struct World {
  std::unique_ptr<Machine> m;
  std::uint64_t baseline_free = 0;  // free_pages() before the first spawn
  Process* parent = nullptr;
  Process* child = nullptr;
  std::map<vaddr_t, std::uint64_t> pv, cv;                  // what the parent / the child must load
  std::vector<std::pair<Process*, vaddr_t>> pins;           // one page each, dropped at teardown
  std::vector<std::pair<vaddr_t, std::uint64_t>> dontfork;  // (addr, pages) the child lacks
  std::vector<vaddr_t> spans;                               // spans whose PTE table the fork shares
  std::vector<vaddr_t> private_spans;  // spans the fork copies for the child (fallback)
  std::map<vaddr_t, pfn_t> shared;     // span -> the shared table, recorded after the fork
};

World MakeWorld() {
  World w;
  w.m = std::make_unique<Machine>(MachineConfig{.memory_bytes = 32ull << 20});
  w.baseline_free = w.m->free_pages();
  w.parent = &w.m->spawn();
  return w;
}

std::map<vaddr_t, std::uint64_t>& ValuesOf(World& w, const Process* p) {
  return p == w.parent ? w.pv : w.cv;
}

#define CPA_ASSERT_OK(expr)                                             \
  do {                                                                  \
    const auto cpa_r_ = (expr);                                         \
    ASSERT_EQ(ErrName(ErrOf(cpa_r_)), "success") << "setup: " << #expr; \
    ASSERT_TRUE(InvariantsHold(*w.m)) << "after " << #expr;             \
  } while (0)

void Map(World& w, vaddr_t addr, std::uint64_t pages, Prot prot, MapFlags flags) {
  const auto r = w.parent->mmap(addr, pages * kPage, prot, flags);
  ASSERT_TRUE(r.has_value()) << "mmap " << Hex(addr) << ": " << ErrName(ErrOf(r));
  ASSERT_EQ(*r, addr);
  ASSERT_TRUE(InvariantsHold(*w.m));
}

void Write(World& w, Process* p, vaddr_t va, std::uint64_t value) {
  CPA_ASSERT_OK(p->store(va, value));
  ValuesOf(w, p)[va] = value;
}

void Read(World& w, Process* p, vaddr_t va) {
  const auto r = p->load(va);
  ASSERT_TRUE(r.has_value()) << "load " << Hex(va) << ": " << ErrName(ErrOf(r));
  ASSERT_EQ(*r, 0u);
  ASSERT_TRUE(InvariantsHold(*w.m));
  ValuesOf(w, p)[va] = 0;
}

// A store as the operation under test: on success the value is what va must read from now on.
Errno TryWrite(World& w, Process* p, vaddr_t va, std::uint64_t value) {
  const Errno e = ErrOf(p->store(va, value));
  if (e == Errno{}) ValuesOf(w, p)[va] = value;
  return e;
}

// A load as the operation under test: on success it must read what was recorded (0 if nothing).
Errno TryRead(World& w, Process* p, vaddr_t va) {
  const auto r = p->load(va);
  if (!r.has_value()) return r.error();
  auto& values = ValuesOf(w, p);
  const auto it = values.find(va);
  EXPECT_EQ(*r, it == values.end() ? 0u : it->second) << "load " << Hex(va);
  values[va] = *r;
  return Errno{};
}

void ExpectValues(World& w) {
  cowpte_test::ExpectLoads(*w.parent, w.pv, "parent");
  if (w.child != nullptr) cowpte_test::ExpectLoads(*w.child, w.cv, "child");
}

// Drops the pins, exits every process, and checks that every frame is free again.
void TearDownWorld(World& w) {
  w.m->fail_nth_allocation(0);
  for (const auto& [p, va] : w.pins) {
    if (p->alive()) {
      EXPECT_EQ(ErrName(ErrOf(p->unpin(va, kPage))), "success") << "unpin " << Hex(va);
    }
  }
  w.pins.clear();
  for (Process* p : w.m->processes()) {
    p->exit();
    EXPECT_TRUE(InvariantsHold(*w.m)) << "after exit";
  }
  EXPECT_TRUE(w.m->processes().empty());
  EXPECT_TRUE(InvariantsHold(*w.m));
  EXPECT_EQ(w.m->free_pages(), w.baseline_free) << "frames leaked after every process exited";
}

// ---- page-table views ----

cowpte::PtWalk WalkSpan(World& w, const Process* p, vaddr_t span) { return w.m->walk(*p, span); }

// The PTE table that maps span in p (0 if there is none).
pfn_t TableAt(World& w, const Process* p, vaddr_t span) {
  const cowpte::PtWalk wk = WalkSpan(w, p, span);
  return wk.levels == 4 ? wk.table[3] : 0;
}

bool PmdWritable(World& w, const Process* p, vaddr_t span) {
  return (WalkSpan(w, p, span).entry[2] & kEntryRw) != 0;
}

// Both processes map span through the same table, held twice, through write-protected PMDs.
void ExpectShared(World& w, vaddr_t span) {
  SCOPED_TRACE("span " + Hex(span));
  const pfn_t tp = TableAt(w, w.parent, span);
  const pfn_t tc = TableAt(w, w.child, span);
  ASSERT_NE(tp, 0u) << "the parent has no PTE table there";
  EXPECT_EQ(tp, tc) << "the child's PTE table is not the parent's";
  const PageInfo info = w.m->page_info(tp);
  EXPECT_TRUE(info.page_table);
  EXPECT_EQ(info.refcount, 2) << "the shared table's refcount is not the number of sharers";
  EXPECT_FALSE(PmdWritable(w, w.parent, span)) << "the parent's PMD is writable";
  EXPECT_FALSE(PmdWritable(w, w.child, span)) << "the child's PMD is writable";
}

// The two processes map span through two private tables, each held once.
void ExpectPrivateTables(World& w, vaddr_t span) {
  SCOPED_TRACE("span " + Hex(span));
  const pfn_t tp = TableAt(w, w.parent, span);
  const pfn_t tc = TableAt(w, w.child, span);
  ASSERT_NE(tp, 0u);
  ASSERT_NE(tc, 0u);
  EXPECT_NE(tp, tc) << "the table is still shared";
  EXPECT_EQ(w.m->page_info(tp).refcount, 1) << "the parent's table";
  EXPECT_EQ(w.m->page_info(tc).refcount, 1) << "the child's table";
  EXPECT_TRUE(w.m->page_info(tc).page_table);
}

// Records the table each shared span has after the fork, and checks it is shared.
void RecordShared(World& w) {
  w.shared.clear();
  for (const vaddr_t span : w.spans) {
    ExpectShared(w, span);
    w.shared[span] = TableAt(w, w.parent, span);
  }
}

const ProcSnap* FindProc(const MachineSnapshot& s, int pid) {
  for (const auto& p : s.procs)
    if (p.pid == pid) return &p;
  return nullptr;
}

bool SameWalkMaskA(const cowpte::PtWalk& a, const cowpte::PtWalk& b) {
  if (a.levels != b.levels || a.table != b.table) return false;
  for (int i = 0; i < 4; ++i)
    if ((a.entry[i] & ~kEntryAccessed) != (b.entry[i] & ~kEntryAccessed)) return false;
  return true;
}

// How strictly a process's view is compared.
struct ViewCheck {
  bool smaps = true;        // false: VMAs may have been split (same pages, same RSS sum)
  bool pagemap_raw = true;  // false: present, pfn, exclusive, file bits (not soft-dirty)
  bool walk = true;         // the whole walk, A bits masked
  bool pte_entries = true;  // the PTE entry (A masked) and levels, when !walk
};

std::string DiffView(const ProcSnap& b, const ProcSnap& a, const ViewCheck& c) {
  std::string out;
  int lines = 0;
  auto add = [&](const std::string& s) {
    if (lines++ < 40) out += "  " + s + "\n";
  };
  if (c.smaps) {
    if (a.smaps.size() != b.smaps.size())
      add(fmt::format("{} VMAs vs {}", b.smaps.size(), a.smaps.size()));
    for (std::size_t i = 0; i < a.smaps.size() && i < b.smaps.size(); ++i)
      if (!cowpte_test::SameSmaps(b.smaps[i], a.smaps[i]))
        add(fmt::format("smaps[{}] {} vs {}", i, cowpte_test::Describe(b.smaps[i]),
                        cowpte_test::Describe(a.smaps[i])));
  } else {
    std::uint64_t rb = 0, ra = 0;
    for (const auto& s : b.smaps) rb += s.rss;
    for (const auto& s : a.smaps) ra += s.rss;
    if (rb != ra) add(fmt::format("smaps Rss sum {} vs {}", rb, ra));
  }
  if (!(a.rss == b.rss))
    add(fmt::format("rss {} vs {}", cowpte_test::Describe(b.rss), cowpte_test::Describe(a.rss)));
  if (a.pgtables_bytes != b.pgtables_bytes)
    add(fmt::format("pgtables_bytes {} vs {}", b.pgtables_bytes, a.pgtables_bytes));
  if (a.pages.size() != b.pages.size())
    add(fmt::format("{} VMA pages vs {}", b.pages.size(), a.pages.size()));
  const std::uint64_t pm_mask = c.pagemap_raw ? ~0ull : ~kPmSoftDirty;
  for (std::size_t i = 0; i < a.pages.size() && i < b.pages.size(); ++i) {
    const auto& x = b.pages[i];
    const auto& y = a.pages[i];
    if (x.va != y.va) {
      add(fmt::format("page #{} at {:#x} vs {:#x}", i, x.va, y.va));
      continue;
    }
    if ((x.pagemap_raw & pm_mask) != (y.pagemap_raw & pm_mask))
      add(fmt::format("pagemap({:#x}) {:#018x} vs {:#018x}", x.va, x.pagemap_raw, y.pagemap_raw));
    if (c.walk) {
      if (!SameWalkMaskA(x.walk, y.walk))
        add(fmt::format("walk({:#x}) {} vs {}", x.va, cowpte_test::Describe(x.walk),
                        cowpte_test::Describe(y.walk)));
    } else if (c.pte_entries) {
      if (x.walk.levels != y.walk.levels ||
          (x.walk.entry[3] & ~kEntryAccessed) != (y.walk.entry[3] & ~kEntryAccessed))
        add(fmt::format("pte({:#x}) {} vs {}", x.va, cowpte_test::Describe(x.walk),
                        cowpte_test::Describe(y.walk)));
    }
  }
  return out;
}

void ExpectView(World& w, const MachineSnapshot& before, const Process* p, const ViewCheck& c,
                const std::string& who) {
  const ProcSnap* b = FindProc(before, p->pid());
  ASSERT_NE(b, nullptr);
  const ProcSnap now = cowpte_test::TakeProcSnap(*w.m, *p);
  const std::string d = DiffView(*b, now, c);
  EXPECT_TRUE(d.empty()) << who << " (pid " << p->pid() << ") changed (before vs after):\n" << d;
}

// Frames whose page_info changed and that `allowed` does not accept.
std::string FrameDiffs(
    const MachineSnapshot& before, World& w,
    const std::function<bool(pfn_t, const PageInfo&, const PageInfo&)>& allowed) {
  std::string out;
  int lines = 0;
  for (pfn_t pfn = 0; pfn < before.frames.size(); ++pfn) {
    const PageInfo a = before.frames[pfn];
    const PageInfo b = w.m->page_info(pfn);
    if (a.free && b.free) continue;
    if (cowpte_test::SamePageInfo(a, b)) continue;
    if (allowed(pfn, a, b)) continue;
    if (lines++ < 30)
      out += fmt::format("  page_info({}) {} vs {}\n", pfn, cowpte_test::Describe(a),
                         cowpte_test::Describe(b));
  }
  return out;
}

// Nothing at all changed: every frame, every process's view (A bits aside).
void ExpectMachineUnchanged(World& w, const MachineSnapshot& before) {
  EXPECT_EQ(w.m->free_pages(), before.free_pages);
  const std::string f =
      FrameDiffs(before, w, [](pfn_t, const PageInfo&, const PageInfo&) { return false; });
  EXPECT_TRUE(f.empty()) << "frames changed (before vs after):\n" << f;
  EXPECT_EQ(w.m->processes().size(), before.procs.size());
  for (Process* p : w.m->processes()) ExpectView(w, before, p, ViewCheck{}, "process");
}

// ---- the sweep ----

struct Sweep {
  std::string name;
  std::function<void(World&)> setup;
  std::function<Errno(World&)> op;  // Errno{} on success
  // After an ENOMEM at allocation n (injection off again), given the snapshot before the op.
  std::function<void(World&, const MachineSnapshot&, std::uint64_t)> after_failure;
  std::function<void(World&)> after_success;
  std::uint64_t expect_total = 0;  // if non-zero: the allocations a successful op makes
};

void RunSweep(const Sweep& s) {
  std::uint64_t total = 0;
  {
    World w = MakeWorld();
    s.setup(w);
    if (::testing::Test::HasFatalFailure()) return;
    const std::uint64_t before = w.m->allocations();
    const Errno e = s.op(w);
    total = w.m->allocations() - before;
    ASSERT_EQ(ErrName(e), "success") << s.name << " without injected failure";
    EXPECT_TRUE(InvariantsHold(*w.m));
    s.after_success(w);
    EXPECT_TRUE(InvariantsHold(*w.m));
    ExpectValues(w);
    TearDownWorld(w);
  }
  ASSERT_GT(total, 0u) << s.name << " made no allocation";
  if (s.expect_total != 0) {
    EXPECT_EQ(total, s.expect_total) << s.name;
  }
  std::printf("[ info     ] %s: %llu allocations\n", s.name.c_str(),
              static_cast<unsigned long long>(total));

  for (std::uint64_t n = 1; n <= total + 1; ++n) {
    SCOPED_TRACE(fmt::format("{}: allocation {} of {} fails", s.name, n, total));
    World w = MakeWorld();
    s.setup(w);
    if (::testing::Test::HasFatalFailure()) return;
    const MachineSnapshot before = cowpte_test::TakeSnapshot(*w.m);

    w.m->fail_nth_allocation(n);
    Errno e{};
    try {
      e = s.op(w);
    } catch (const std::exception& ex) {
      // The library threw (an invariant check of its own): report it with n and go on with the
      // next n; this world is abandoned as it is.
      w.m->fail_nth_allocation(0);
      ADD_FAILURE() << s.name << ": allocation " << n << " of " << total
                    << " fails: the operation threw: " << ex.what();
      continue;
    }
    w.m->fail_nth_allocation(0);

    EXPECT_TRUE(InvariantsHold(*w.m));
    if (n <= total) {
      EXPECT_EQ(ErrName(e), "ENOMEM");
      if (e == Errno{}) {
        TearDownWorld(w);
        continue;
      }
      EXPECT_EQ(w.m->processes().size(), before.procs.size()) << "a process appeared";
      s.after_failure(w, before, n);
      EXPECT_TRUE(InvariantsHold(*w.m));
      ExpectValues(w);
      EXPECT_TRUE(InvariantsHold(*w.m));
      const Errno again = s.op(w);
      EXPECT_EQ(ErrName(again), "success") << "retry after the failure";
      EXPECT_TRUE(InvariantsHold(*w.m));
      if (again == Errno{}) s.after_success(w);
    } else {
      EXPECT_EQ(ErrName(e), "success") << "no allocation failed";
      if (e == Errno{}) s.after_success(w);
    }
    EXPECT_TRUE(InvariantsHold(*w.m));
    ExpectValues(w);
    TearDownWorld(w);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// ---- fork ----

// The parent with several VMAs in and across 2 MiB spans, populated by stores.
void BuildSeedParent(World& w) {
  Process* p = w.parent;
  Map(w, kA, 16, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kA + i * kPage, 0xA000 + i);
  Read(w, p, kA + 8 * kPage);
  Read(w, p, kA + 9 * kPage);
  Map(w, kB, 8, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, p, kB + i * kPage, 0xB000 + i);
  Map(w, kShm, 4, kRW, kFixedShared);
  Write(w, p, kShm, 0x5000);
  Write(w, p, kShm + kPage, 0x5001);
  Map(w, kC, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kC + i * kPage, 0xC000 + i);
  Map(w, kD, 4, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, p, kD + i * kPage, 0xD000 + i);
  Map(w, kE, 4, kRW, kFixedPriv);
  Write(w, p, kE, 0xE000);
  Write(w, p, kE + 2 * kPage, 0xE002);
  w.spans = {kSpan0, kSpan1, kSpan2, kSpanE};
}

// The seed layout plus the fallback's: a long-term pinned page in span F0, a DONTFORK VMA after
// a copied one in span F1 and one before a copied one in span F2.
void BuildFallbackParent(World& w) {
  BuildSeedParent(w);
  if (::testing::Test::HasFatalFailure()) return;
  Process* p = w.parent;
  Map(w, kF, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kF + i * kPage, 0xF000 + i);
  CPA_ASSERT_OK(p->pin(kF + 2 * kPage, kPage, PinFlags::write | PinFlags::longterm));
  w.pins.emplace_back(p, kF + 2 * kPage);
  Map(w, kQ, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kQ + i * kPage, 0x9000 + i);
  Map(w, kDf, 4, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, p, kDf + i * kPage, 0xDF00 + i);
  CPA_ASSERT_OK(p->madvise(kDf, 4 * kPage, Advice::dontfork));
  w.dontfork.emplace_back(kDf, 4);
  Map(w, kDf2, 4, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, p, kDf2 + i * kPage, 0xDF20 + i);
  CPA_ASSERT_OK(p->madvise(kDf2, 4 * kPage, Advice::dontfork));
  w.dontfork.emplace_back(kDf2, 4);
  Map(w, kQ2, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kQ2 + i * kPage, 0x9200 + i);
  w.private_spans = {kSpanF0, kSpanF1, kSpanF2};
}

// The On-demand-fork layout: a 4 MiB VMA (two whole spans, shared by fork) and a small VMA
// (copied by fork).
void BuildOdfParent(World& w) {
  Process* p = w.parent;
  Map(w, kOa, 16, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, p, kOa + i * kPage, 0x0A00 + i);
  Map(w, kO, 1024, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, p, kO + i * kPage, 0x0000 + 0x100 + i);
  Read(w, p, kO + 5 * kPage);
  Write(w, p, kO + 100 * kPage, 0x164);
  for (int i = 0; i < 2; ++i) Write(w, p, kSpanO1 + i * kPage, 0x200 + i);
  Map(w, kOb, 16, kRW, kFixedPriv);
  for (int i = 0; i < 3; ++i) Write(w, p, kOb + i * kPage, 0x0B00 + i);
  w.spans = {kSpanO0, kSpanO1};
}

Errno ForkOp(World& w) {
  auto r = w.parent->fork();
  if (!r.has_value()) return r.error();
  w.child = *r;
  w.cv.clear();
  for (const auto& [va, v] : w.pv) {
    bool skip = false;
    for (const auto& [a, pages] : w.dontfork) skip |= va >= a && va < a + pages * kPage;
    if (!skip) w.cv[va] = v;
  }
  return Errno{};
}

// The parent after a failed fork: see the file comment for what may change. tables_reused: the
// parent's first write in a span whose table the failed fork shared needs no allocation (the
// seed reuses a table at refcount 1); On-demand-fork copies the table even then (the paper's
// rule, which the model keeps), so there the stores are only required to succeed.
void ExpectParentAsBeforeFork(World& w, const MachineSnapshot& before, bool tables_reused = true) {
  EXPECT_EQ(w.m->processes().size(), 1u);
  EXPECT_EQ(w.m->free_pages(), before.free_pages) << "frames of the failed child leaked";
  ViewCheck c;
  c.pagemap_raw = false;  // soft-dirty may be gone
  c.walk = false;         // PTEs and PMDs may be write-protected
  c.pte_entries = false;
  ExpectView(w, before, w.parent, c, "the parent");
  // The same tables at the same places, the same frames in use.
  const ProcSnap* parent_before = FindProc(before, w.parent->pid());
  ASSERT_NE(parent_before, nullptr);
  for (const auto& pg : parent_before->pages) {
    const cowpte::PtWalk now = w.m->walk(*w.parent, pg.va);
    EXPECT_TRUE(now.levels == pg.walk.levels && now.table == pg.walk.table)
        << "walk(" << Hex(pg.va) << ") " << cowpte_test::Describe(pg.walk) << " vs "
        << cowpte_test::Describe(now);
  }
  const std::string f = FrameDiffs(before, w, [](pfn_t, const PageInfo& a, const PageInfo& b) {
    return a.free == b.free && a.refcount == b.refcount && a.mapcount == b.mapcount &&
           a.anon == b.anon && a.page_table == b.page_table && a.zero_page == b.zero_page &&
           a.swapcache == b.swapcache && (a.anon_exclusive || !b.anon_exclusive) &&
           (b.dirty || !a.dirty);
  });
  EXPECT_TRUE(f.empty()) << "frames changed (before vs after):\n" << f;
  for (const vaddr_t span : w.spans) {
    const pfn_t t = TableAt(w, w.parent, span);
    ASSERT_NE(t, 0u) << Hex(span);
    EXPECT_EQ(w.m->page_info(t).refcount, 1) << "the parent's table at " << Hex(span);
  }
  // The pins still see the parent's data through the parent's page.
  for (const auto& [p, va] : w.pins) {
    const auto g = p->read_gup(va);
    EXPECT_TRUE(g.has_value() && *g == w.pv[va]) << "read_gup " << Hex(va);
    EXPECT_GE(w.m->page_info(p->pagemap(va).pfn).refcount, kPinBias);
  }
  // The parent writes everywhere it wrote before without any allocation: the tables it holds
  // alone are reused (a write-protected PMD at refcount 1), and so are its pages.
  for (auto& [va, v] : w.pv) {
    if (v == 0) continue;  // zero-page reads: a write would allocate
    const std::uint64_t a0 = w.m->allocations();
    v += 0x100000;
    EXPECT_EQ(ErrName(ErrOf(w.parent->store(va, v))), "success") << "store " << Hex(va);
    if (tables_reused) {
      EXPECT_EQ(w.m->allocations() - a0, 0u) << "store " << Hex(va) << " after the failed fork";
    }
  }
  EXPECT_TRUE(InvariantsHold(*w.m));
}

void ExpectSeedForkShared(World& w) {
  ASSERT_NE(w.child, nullptr);
  EXPECT_EQ(w.m->find(w.child->pid()), w.child);
  for (const vaddr_t span : w.spans) ExpectShared(w, span);
  for (const vaddr_t span : w.private_spans) ExpectPrivateTables(w, span);
  // Fork did every page's accounting: the same pages, mapped twice.
  for (const auto& [va, v] : w.cv) {
    const auto pp = w.parent->pagemap(va);
    const auto cp = w.child->pagemap(va);
    EXPECT_TRUE(pp.present && cp.present) << Hex(va);
    bool pinned = false;
    for (const auto& [p, pva] : w.pins) pinned |= p == w.parent && pva == va;
    if (pinned) {
      EXPECT_NE(pp.pfn, cp.pfn) << "the pinned page at " << Hex(va) << " was not copied";
    } else {
      EXPECT_EQ(pp.pfn, cp.pfn) << Hex(va);
      if (pp.pfn != w.m->zero_pfn()) {
        EXPECT_EQ(w.m->page_info(pp.pfn).mapcount, 2) << Hex(va);
        EXPECT_FALSE(pp.exclusive) << Hex(va);
      }
    }
  }
  for (const auto& [a, pages] : w.dontfork)
    EXPECT_EQ(ErrName(ErrOf(w.child->load(a))), "EFAULT") << "DONTFORK VMA in the child";
}

TEST(CowPteAllocFailure, SeedFork) {
  Sweep s;
  s.name = "seed fork";
  s.setup = [](World& w) {
    BuildSeedParent(w);
    if (::testing::Test::HasFatalFailure()) return;
    CPA_ASSERT_OK(w.parent->set_cow_pte(CowPtePolicy::seed));
  };
  s.op = ForkOp;
  // The PGD; A: VMA, anon_vma, PUD and PMD tables (span 0 is shared: no PTE table); B: VMA,
  // anon_vma; shmem: VMA; C: VMA, anon_vma (spans 1 and 2 shared); D: VMA, anon_vma; E: VMA,
  // anon_vma, PUD and PMD tables (its span shared).
  s.expect_total = 16;
  s.after_failure = [](World& w, const MachineSnapshot& before, std::uint64_t) {
    ExpectParentAsBeforeFork(w, before);
  };
  s.after_success = [](World& w) {
    ExpectSeedForkShared(w);
    EXPECT_TRUE(w.parent->rss() == w.child->rss())
        << cowpte_test::Describe(w.parent->rss()) << " vs "
        << cowpte_test::Describe(w.child->rss());
    EXPECT_EQ(w.parent->pgtables_bytes(), w.child->pgtables_bytes());
  };
  RunSweep(s);
}

TEST(CowPteAllocFailure, SeedForkFallback) {
  // recover_pte_range's table (span F0 after the pinned page's EAGAIN, spans F1 and F2 at the
  // DONTFORK VMA) and copy_present_page's preallocated page are both swept.
  Sweep s;
  s.name = "seed fork with fallback";
  s.setup = [](World& w) {
    BuildFallbackParent(w);
    if (::testing::Test::HasFatalFailure()) return;
    CPA_ASSERT_OK(w.parent->set_cow_pte(CowPtePolicy::seed));
  };
  s.op = ForkOp;
  // 16 as in SeedFork, then F: VMA, anon_vma, recover_pte_range's table, the pinned page's
  // preallocated copy; Q: VMA, anon_vma, recover_pte_range's table (at Df); Q2: VMA, anon_vma,
  // recover_pte_range's table (at Df2, before Q2). Df and Df2 are not duplicated.
  s.expect_total = 26;
  s.after_failure = [](World& w, const MachineSnapshot& before, std::uint64_t) {
    ExpectParentAsBeforeFork(w, before);
    for (const vaddr_t span : w.private_spans) {
      const pfn_t t = TableAt(w, w.parent, span);
      EXPECT_EQ(w.m->page_info(t).refcount, 1) << "the parent's table at " << Hex(span);
    }
  };
  s.after_success = [](World& w) {
    ExpectSeedForkShared(w);
    // The child has the pinned page's copy and the rest; the pin stays with the parent's page.
    const auto g = w.parent->read_gup(kF + 2 * kPage);
    EXPECT_TRUE(g.has_value() && *g == w.pv[kF + 2 * kPage]);
    const std::int64_t df_pages = 8;
    EXPECT_EQ(w.child->rss().anon, w.parent->rss().anon - df_pages);
  };
  RunSweep(s);
}

// ---- the seed's break ----

void BuildSeedForked(World& w) {
  BuildSeedParent(w);
  if (::testing::Test::HasFatalFailure()) return;
  CPA_ASSERT_OK(w.parent->set_cow_pte(CowPtePolicy::seed));
  ASSERT_EQ(ErrName(ForkOp(w)), "success");
  ASSERT_TRUE(InvariantsHold(*w.m));
  RecordShared(w);
}

Process* Other(World& w, const Process* actor) { return actor == w.parent ? w.child : w.parent; }

// After a failed operation that breaks shared tables in `actor`: the other process unchanged;
// in actor the same VMAs (or, with vmas_may_split, the same pages), RSS, VmPTE, pagemap and PTE
// entries; each shared table either still shared (refcount 2) or broken by actor (a private
// copy, the old one at refcount 1 for the other); one frame used per broken table and no other
// frame changed. At most n - 1 tables broken (the failing allocation is no table).
// Returns the number of broken tables.
int ExpectBreakFailed(World& w, const MachineSnapshot& before, Process* actor, std::uint64_t n,
                      bool vmas_may_split) {
  Process* other = Other(w, actor);
  ExpectView(w, before, other, ViewCheck{}, actor == w.parent ? "the child" : "the parent");
  ViewCheck c;
  c.smaps = !vmas_may_split;
  c.walk = false;
  ExpectView(w, before, actor, c, actor == w.parent ? "the parent" : "the child");
  int broken = 0;
  std::set<pfn_t> old_tables, new_tables;
  for (const auto& [span, t] : w.shared) {
    SCOPED_TRACE("span " + Hex(span));
    EXPECT_EQ(TableAt(w, other, span), t) << "the other process's table changed";
    const pfn_t now = TableAt(w, actor, span);
    if (now == t) {
      EXPECT_EQ(w.m->page_info(t).refcount, 2);
      EXPECT_FALSE(PmdWritable(w, actor, span));
    } else {
      ++broken;
      old_tables.insert(t);
      new_tables.insert(now);
      EXPECT_NE(now, 0u);
      EXPECT_EQ(w.m->page_info(t).refcount, 1);
      EXPECT_EQ(w.m->page_info(now).refcount, 1);
      EXPECT_TRUE(w.m->page_info(now).page_table);
      EXPECT_TRUE(PmdWritable(w, actor, span));
    }
  }
  EXPECT_LE(static_cast<std::uint64_t>(broken), n - 1) << "a table broken with no allocation";
  EXPECT_EQ(w.m->free_pages(), before.free_pages - static_cast<std::uint64_t>(broken))
      << broken << " tables broken";
  const std::string f = FrameDiffs(before, w, [&](pfn_t pfn, const PageInfo&, const PageInfo&) {
    return old_tables.count(pfn) || new_tables.count(pfn);
  });
  EXPECT_TRUE(f.empty()) << "frames changed (before vs after):\n" << f;
  if (n == 1) ExpectMachineUnchanged(w, before);
  return broken;
}

struct BreakCase {
  std::string name;
  bool actor_is_parent = false;
  bool vmas_may_split = false;
  std::function<Errno(World&, Process*)> op;
  std::function<void(World&, Process*)> after_success;
  // If >= 0: a failure at n leaves exactly min(n - 1, exact_breaks) tables broken (the breaks
  // come first, one allocation each; what follows them allocates no table).
  int exact_breaks = -1;
};

void RunBreakSweep(const BreakCase& bc) {
  Sweep s;
  s.name = bc.name;
  s.setup = BuildSeedForked;
  auto actor = [bc](World& w) { return bc.actor_is_parent ? w.parent : w.child; };
  s.op = [bc, actor](World& w) { return bc.op(w, actor(w)); };
  s.after_failure = [bc, actor](World& w, const MachineSnapshot& before, std::uint64_t n) {
    const int broken = ExpectBreakFailed(w, before, actor(w), n, bc.vmas_may_split);
    if (bc.exact_breaks >= 0) {
      EXPECT_EQ(static_cast<std::uint64_t>(broken),
                std::min<std::uint64_t>(n - 1, static_cast<std::uint64_t>(bc.exact_breaks)));
    }
  };
  s.after_success = [bc, actor](World& w) { bc.after_success(w, actor(w)); };
  RunSweep(s);
}

TEST(CowPteAllocFailure, SeedBreakByChildStore) {
  // handle_cow_pte_fault copies the table (refcount 2), then do_wp_page copies the page.
  BreakCase bc;
  bc.name = "child store in a shared table";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) { return TryWrite(w, c, kA + kPage, 0x1111); };
  bc.after_success = [](World& w, Process*) {
    ExpectPrivateTables(w, kSpan0);
    for (const vaddr_t span : {kSpan1, kSpan2, kSpanE}) ExpectShared(w, span);
    EXPECT_NE(w.parent->pagemap(kA + kPage).pfn, w.child->pagemap(kA + kPage).pfn);
    // The parent, now the table's only holder, reuses it (and its page, which the child no
    // longer maps): no allocation at all.
    const std::uint64_t a0 = w.m->allocations();
    EXPECT_EQ(ErrName(TryWrite(w, w.parent, kA + kPage, 0x2222)), "success");
    EXPECT_EQ(w.m->allocations() - a0, 0u) << "the parent's break at refcount 1 allocated";
    EXPECT_TRUE(PmdWritable(w, w.parent, kSpan0));
    EXPECT_TRUE(InvariantsHold(*w.m));
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByParentStore) {
  BreakCase bc;
  bc.name = "parent store in a shared table";
  bc.exact_breaks = 1;
  bc.actor_is_parent = true;
  bc.op = [](World& w, Process* p) { return TryWrite(w, p, kC + 6 * kPage, 0x3333); };
  bc.after_success = [](World& w, Process*) {
    ExpectPrivateTables(w, kSpan2);
    for (const vaddr_t span : {kSpan0, kSpan1, kSpanE}) ExpectShared(w, span);
    EXPECT_NE(w.parent->pagemap(kC + 6 * kPage).pfn, w.child->pagemap(kC + 6 * kPage).pfn);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildStoreToAbsentPage) {
  // The table copy, then do_anonymous_page's page.
  BreakCase bc;
  bc.name = "child store to an absent page in a shared table";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) { return TryWrite(w, c, kA + 12 * kPage, 0x4444); };
  bc.after_success = [](World& w, Process*) {
    ExpectPrivateTables(w, kSpan0);
    EXPECT_FALSE(w.parent->pagemap(kA + 12 * kPage).present) << "the child's page leaked into "
                                                                "the parent's table";
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildReadFault) {
  // A read fault in a shared table breaks it too (the model's rule, see __handle_mm_fault).
  BreakCase bc;
  bc.name = "child read fault in a shared table";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) { return TryRead(w, c, kB + 6 * kPage); };
  bc.after_success = [](World& w, Process*) {
    ExpectPrivateTables(w, kSpan0);
    EXPECT_EQ(w.child->pagemap(kB + 6 * kPage).pfn, w.m->zero_pfn());
    EXPECT_FALSE(w.parent->pagemap(kB + 6 * kPage).present);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildMprotectPartOfSpan) {
  // break_cow_pte_range, then split_vma twice: a failed second split leaves the first one.
  BreakCase bc;
  bc.name = "child mprotect of part of a shared span";
  bc.exact_breaks = 1;
  bc.vmas_may_split = true;
  bc.op = [](World&, Process* c) {
    return ErrOf(c->mprotect(kA + 4 * kPage, 4 * kPage, Prot::read));
  };
  bc.after_success = [](World& w, Process* c) {
    ExpectPrivateTables(w, kSpan0);
    EXPECT_EQ(ErrName(ErrOf(c->store(kA + 5 * kPage, 1))), "EFAULT") << "mprotect had no effect";
    EXPECT_EQ(ErrName(TryWrite(w, c, kA + 2 * kPage, 0x5555)), "success");
    EXPECT_EQ(ErrName(TryWrite(w, w.parent, kA + 5 * kPage, 0x6666)), "success")
        << "the child's mprotect reached the parent";
    EXPECT_TRUE(InvariantsHold(*w.m));
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildMunmapOfVmaInSharedSpan) {
  // B goes; A and the shmem VMA stay in span 0: the table is broken first.
  BreakCase bc;
  bc.name = "child munmap of a VMA in a shared span";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) {
    const Errno e = ErrOf(c->munmap(kB, 8 * kPage));
    if (e == Errno{})
      for (int i = 0; i < 4; ++i) w.cv.erase(kB + i * kPage);
    return e;
  };
  bc.after_success = [](World& w, Process* c) {
    ExpectPrivateTables(w, kSpan0);
    EXPECT_EQ(ErrName(ErrOf(c->load(kB))), "EFAULT");
    EXPECT_TRUE(w.parent->pagemap(kB).present);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildMunmapOfPartOfVma) {
  // break, split at start, split at end: a failed second split leaves the first one.
  BreakCase bc;
  bc.name = "child munmap of part of a VMA in a shared span";
  bc.exact_breaks = 1;
  bc.vmas_may_split = true;
  bc.op = [](World& w, Process* c) {
    const Errno e = ErrOf(c->munmap(kA + 4 * kPage, 4 * kPage));
    if (e == Errno{})
      for (int i = 4; i < 8; ++i) w.cv.erase(kA + i * kPage);
    return e;
  };
  bc.after_success = [](World& w, Process* c) {
    ExpectPrivateTables(w, kSpan0);
    EXPECT_EQ(ErrName(ErrOf(c->load(kA + 5 * kPage))), "EFAULT");
    EXPECT_TRUE(w.parent->pagemap(kA + 5 * kPage).present);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildDontneedOfPartOfSpan) {
  BreakCase bc;
  bc.name = "child MADV_DONTNEED of part of a shared span";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) {
    const Errno e = ErrOf(c->madvise(kA, 4 * kPage, Advice::dontneed));
    if (e == Errno{})
      for (int i = 0; i < 4; ++i) w.cv[kA + i * kPage] = 0;
    return e;
  };
  bc.after_success = [](World& w, Process* c) {
    ExpectPrivateTables(w, kSpan0);
    EXPECT_FALSE(c->pagemap(kA).present);
    EXPECT_TRUE(w.parent->pagemap(kA).present);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildLongtermWritePin) {
  // GUP refuses a pin in a shared table and faults: the break, then the COW copy of the page.
  BreakCase bc;
  bc.name = "child FOLL_WRITE|FOLL_LONGTERM pin in a shared table";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) {
    const Errno e = ErrOf(c->pin(kA + 3 * kPage, kPage, PinFlags::write | PinFlags::longterm));
    if (e == Errno{}) w.pins.emplace_back(c, kA + 3 * kPage);
    return e;
  };
  bc.after_success = [](World& w, Process* c) {
    ExpectPrivateTables(w, kSpan0);
    const auto pm = c->pagemap(kA + 3 * kPage);
    EXPECT_NE(pm.pfn, w.parent->pagemap(kA + 3 * kPage).pfn);
    EXPECT_GE(w.m->page_info(pm.pfn).refcount, kPinBias);
    const auto g = c->read_gup(kA + 3 * kPage);
    EXPECT_TRUE(g.has_value() && *g == w.cv[kA + 3 * kPage]);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildLongtermReadPin) {
  // A R/O long-term pin: an unshare fault, which breaks the table and copies the page.
  BreakCase bc;
  bc.name = "child R/O FOLL_LONGTERM pin in a shared table";
  bc.exact_breaks = 1;
  bc.op = [](World& w, Process* c) {
    const Errno e = ErrOf(c->pin(kC + kPage, kPage, PinFlags::longterm));
    if (e == Errno{}) w.pins.emplace_back(c, kC + kPage);
    return e;
  };
  bc.after_success = [](World& w, Process* c) {
    ExpectPrivateTables(w, kSpan1);
    const auto pm = c->pagemap(kC + kPage);
    EXPECT_NE(pm.pfn, w.parent->pagemap(kC + kPage).pfn);
    EXPECT_GE(w.m->page_info(pm.pfn).refcount, kPinBias);
    EXPECT_TRUE(pm.exclusive);
  };
  RunBreakSweep(bc);
}

TEST(CowPteAllocFailure, SeedBreakByChildClearSoftDirty) {
  // clear_refs breaks every shared table of the process (one allocation each) before changing
  // anything: a failure at n leaves the first n - 1 broken.
  BreakCase bc;
  bc.name = "child clear_refs soft-dirty";
  bc.exact_breaks = 4;
  bc.op = [](World&, Process* c) { return ErrOf(c->clear_soft_dirty()); };
  bc.after_success = [](World& w, Process* c) {
    for (const vaddr_t span : w.spans) ExpectPrivateTables(w, span);
    for (const auto& [va, v] : w.cv) EXPECT_FALSE(c->pagemap(va).soft_dirty) << Hex(va);
    EXPECT_EQ(ErrName(TryWrite(w, c, kD, 0x7777)), "success");
  };
  RunBreakSweep(bc);
}

// ---- On-demand-fork ----

void ExpectOdfForkShared(World& w) {
  ASSERT_NE(w.child, nullptr);
  for (const vaddr_t span : w.spans) ExpectShared(w, span);
  // No per-page work for shared tables: their pages stay mapped once and charged to the parent.
  for (const auto& [va, v] : w.cv) {
    EXPECT_EQ(w.parent->pagemap(va).pfn, w.child->pagemap(va).pfn) << Hex(va);
    if (va >= kO && va < kO + 2 * kPmdSize && v != 0) {
      EXPECT_EQ(w.m->page_info(w.parent->pagemap(va).pfn).mapcount, 1) << Hex(va);
    }
  }
  EXPECT_EQ(w.child->rss().anon, 7) << "only the copied VMAs' pages are charged to the child";
  // The shared tables are charged to the parent too: the child has Oa's PUD, PMD and PTE
  // tables, O's PUD and PMD tables and Ob's PTE table; the parent also O's two PTE tables.
  EXPECT_EQ(w.child->pgtables_bytes(), 6 * kPage);
  EXPECT_EQ(w.parent->pgtables_bytes(), 8 * kPage);
}

TEST(CowPteAllocFailure, OdfFork) {
  // Shared tables cost no allocation: what fails is the PGD, the VMAs, the anon_vmas, the upper
  // tables, and the small VMA's classic copy.
  Sweep s;
  s.name = "On-demand-fork fork";
  s.setup = [](World& w) {
    BuildOdfParent(w);
    if (::testing::Test::HasFatalFailure()) return;
    CPA_ASSERT_OK(w.parent->set_cow_pte(CowPtePolicy::on_demand_fork));
  };
  s.op = ForkOp;
  // The PGD; Oa: VMA, anon_vma, PUD, PMD and PTE tables; O: VMA, anon_vma, PUD and PMD tables
  // (its two spans shared); Ob: VMA, anon_vma, PTE table.
  s.expect_total = 13;
  s.after_failure = [](World& w, const MachineSnapshot& before, std::uint64_t) {
    ExpectParentAsBeforeFork(w, before, /*tables_reused=*/false);
  };
  s.after_success = ExpectOdfForkShared;
  RunSweep(s);
}

void BuildOdfForked(World& w) {
  BuildOdfParent(w);
  if (::testing::Test::HasFatalFailure()) return;
  CPA_ASSERT_OK(w.parent->set_cow_pte(CowPtePolicy::on_demand_fork));
  ASSERT_EQ(ErrName(ForkOp(w)), "success");
  ASSERT_TRUE(InvariantsHold(*w.m));
  RecordShared(w);
}

// After a failed first fault of `actor` in the shared table of `span`. n == 1 (the table copy's
// allocation): nothing changed. n > 1 (the page of a write fault): the copy is done, see the
// file comment.
void ExpectOdfFaultFailed(World& w, const MachineSnapshot& before, Process* actor, vaddr_t span,
                          std::uint64_t n) {
  if (n == 1) {
    ExpectMachineUnchanged(w, before);
    for (const auto& [s, t] : w.shared) ExpectShared(w, s);
    return;
  }
  Process* other = Other(w, actor);
  const pfn_t t = w.shared.at(span);
  EXPECT_EQ(TableAt(w, other, span), t);
  EXPECT_EQ(w.m->page_info(t).refcount, 1);
  const pfn_t nt = TableAt(w, actor, span);
  EXPECT_NE(nt, t);
  EXPECT_TRUE(w.m->page_info(nt).page_table);
  EXPECT_EQ(w.m->page_info(nt).refcount, 1);
  EXPECT_EQ(w.m->free_pages(), before.free_pages - 1);
  // Both processes map the same pages as before.
  for (Process* p : {w.parent, w.child}) {
    const ProcSnap* b = FindProc(before, p->pid());
    ASSERT_NE(b, nullptr);
    for (const auto& pg : b->pages) {
      const auto pm = p->pagemap(pg.va);
      EXPECT_EQ(pm.present, ((pg.pagemap_raw >> 63) & 1) != 0) << Hex(pg.va);
      EXPECT_EQ(pm.pfn, pg.pagemap_raw & kPmPfnMask) << Hex(pg.va);
    }
  }
  // The pages of the span got their reference and mapping; nothing else changed.
  std::set<pfn_t> span_pages;
  const ProcSnap* ba = FindProc(before, actor->pid());
  ASSERT_NE(ba, nullptr);
  for (const auto& pg : ba->pages) {
    const pfn_t pfn = pg.pagemap_raw & kPmPfnMask;
    if ((pg.pagemap_raw >> 63) && pg.va >= span && pg.va < span + kPmdSize &&
        pfn != w.m->zero_pfn())
      span_pages.insert(pfn);
  }
  const std::string f = FrameDiffs(before, w, [&](pfn_t pfn, const PageInfo& a, const PageInfo& b) {
    if (pfn == t || pfn == nt) return true;
    if (!span_pages.count(pfn)) return false;
    return b.refcount == a.refcount + 1 && b.mapcount == a.mapcount + 1;
  });
  EXPECT_TRUE(f.empty()) << "frames changed (before vs after):\n" << f;
  std::int64_t anon_before = 0, anon_now = 0;
  std::uint64_t pt_before = 0, pt_now = 0;
  for (const auto& p : before.procs) {
    anon_before += p.rss.anon;
    pt_before += p.pgtables_bytes;
  }
  for (Process* p : {w.parent, w.child}) {
    anon_now += p->rss().anon;
    pt_now += p->pgtables_bytes();
  }
  EXPECT_EQ(anon_now, anon_before + static_cast<std::int64_t>(span_pages.size()));
  EXPECT_EQ(pt_now, pt_before + kPage);
}

struct OdfFaultCase {
  std::string name;
  bool actor_is_parent = false;
  vaddr_t span = 0;
  std::function<Errno(World&, Process*)> op;
  std::function<void(World&, Process*)> after_success = [](World&, Process*) {};
};

void RunOdfFaultSweep(const OdfFaultCase& oc) {
  Sweep s;
  s.name = oc.name;
  s.setup = BuildOdfForked;
  auto actor = [oc](World& w) { return oc.actor_is_parent ? w.parent : w.child; };
  s.op = [oc, actor](World& w) { return oc.op(w, actor(w)); };
  s.after_failure = [oc, actor](World& w, const MachineSnapshot& before, std::uint64_t n) {
    ExpectOdfFaultFailed(w, before, actor(w), oc.span, n);
  };
  s.after_success = [oc, actor](World& w) {
    Process* a = actor(w);
    Process* other = Other(w, a);
    const pfn_t t = w.shared.at(oc.span);
    EXPECT_EQ(TableAt(w, other, oc.span), t);
    EXPECT_EQ(w.m->page_info(t).refcount, 1);
    EXPECT_NE(TableAt(w, a, oc.span), t) << "the fault did not copy the table";
    EXPECT_TRUE(PmdWritable(w, a, oc.span));
    for (const auto& [s2, t2] : w.shared)
      if (s2 != oc.span) ExpectShared(w, s2);
    oc.after_success(w, a);
  };
  RunSweep(s);
}

TEST(CowPteAllocFailure, OdfChildReadFaultCopiesTable) {
  // A load of a present page needs no fault (the shared PMD is readable); a read of an absent
  // page faults, and any fault in a shared table copies it.
  OdfFaultCase oc;
  oc.name = "On-demand-fork child read fault in a shared table";
  oc.span = kSpanO0;
  oc.op = [](World& w, Process* c) { return TryRead(w, c, kO + 7 * kPage); };
  oc.after_success = [](World& w, Process* c) {
    EXPECT_EQ(c->pagemap(kO + 7 * kPage).pfn, w.m->zero_pfn());
    EXPECT_FALSE(w.parent->pagemap(kO + 7 * kPage).present);
  };
  RunOdfFaultSweep(oc);
}

TEST(CowPteAllocFailure, OdfChildWriteFaultCopiesTable) {
  // The table copy, then the COW copy of the page (now mapped twice).
  OdfFaultCase oc;
  oc.name = "On-demand-fork child write fault in a shared table";
  oc.span = kSpanO0;
  oc.op = [](World& w, Process* c) { return TryWrite(w, c, kO + 2 * kPage, 0x8888); };
  oc.after_success = [](World& w, Process* c) {
    EXPECT_NE(c->pagemap(kO + 2 * kPage).pfn, w.parent->pagemap(kO + 2 * kPage).pfn);
  };
  RunOdfFaultSweep(oc);
}

TEST(CowPteAllocFailure, OdfParentReadFaultCopiesTable) {
  OdfFaultCase oc;
  oc.name = "On-demand-fork parent read fault in a shared table";
  oc.actor_is_parent = true;
  oc.span = kSpanO1;
  oc.op = [](World& w, Process* p) { return TryRead(w, p, kSpanO1 + 9 * kPage); };
  oc.after_success = [](World& w, Process* p) {
    EXPECT_EQ(p->pagemap(kSpanO1 + 9 * kPage).pfn, w.m->zero_pfn());
    EXPECT_FALSE(w.child->pagemap(kSpanO1 + 9 * kPage).present);
  };
  RunOdfFaultSweep(oc);
}

TEST(CowPteAllocFailure, OdfParentWriteFaultCopiesTable) {
  // The table copy, then do_anonymous_page's page.
  OdfFaultCase oc;
  oc.name = "On-demand-fork parent write fault in a shared table";
  oc.actor_is_parent = true;
  oc.span = kSpanO1;
  oc.op = [](World& w, Process* p) { return TryWrite(w, p, kSpanO1 + 8 * kPage, 0x9999); };
  oc.after_success = [](World& w, Process*) {
    EXPECT_FALSE(w.child->pagemap(kSpanO1 + 8 * kPage).present);
  };
  RunOdfFaultSweep(oc);
}

}  // namespace
