// Unit tests of the machine through the facade and machine.kernel(): the page walk and table
// frames, the exact PTE words the fault paths write, the hardware A/D bits, VMA split/merge,
// mmap placement, page-table accounting and freeing (free_pgtables floor/ceiling), RSS, smaps,
// pagemap, ptdump and the fmt formatters. check_invariants() runs after every step.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>
#include <cowpte/model/format.hpp>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>
#include "facade/access.hpp"
#include "mm/kernel.hpp"

namespace cowpte {
namespace {

constexpr std::uint64_t kPg = 4096;
constexpr std::uint64_t kP = 1ull << 0, kRW = 1ull << 1, kUser = 1ull << 2, kA = 1ull << 5,
                        kD = 1ull << 6, kSpecial = 1ull << 9, kSoftDirty = 1ull << 11,
                        kNX = 1ull << 63;
constexpr std::uint64_t kPfnField = 0x000FFFFFFFFFF000ull;
constexpr std::uint64_t kTableFlags = 0x67;                        // _PAGE_TABLE: P|RW|USER|A|D
constexpr std::uint64_t kWriteFaultFlags = 0x8000000000000867ull;  // P|RW|USER|A|D|SD|NX
constexpr std::uint64_t kZeroPageFlags = 0x8000000000000225ull;    // P|USER|A|SPECIAL|NX
constexpr Prot kRWProt = Prot::read | Prot::write;
constexpr MapFlags kPriv = MapFlags::private_ | MapFlags::anonymous;
constexpr MapFlags kShared = MapFlags::shared | MapFlags::anonymous;

constexpr pfn_t pfn_of(std::uint64_t e) { return (e & kPfnField) >> 12; }

class UnitMachine : public ::testing::Test {
 protected:
  // A failed facade call aborts the test with the call and errno; a broken invariant aborts it
  // with InvariantViolation's message.
  template <class T>
  T ok(Result<T> r, const char* what) {
    if (!r) throw std::runtime_error(std::string(what) + ": " + std::string(to_string(r.error())));
    m.check_invariants();
    return *r;
  }
  void ok(Result<void> r, const char* what) {
    if (!r) throw std::runtime_error(std::string(what) + ": " + std::string(to_string(r.error())));
    m.check_invariants();
  }
  vaddr_t map(Process& p, std::uint64_t pages, vaddr_t hint = 0, MapFlags f = kPriv,
              Prot prot = kRWProt) {
    return ok(p.mmap(hint, pages * kPg, prot, f), "mmap");
  }
  void store(Process& p, vaddr_t a, std::uint64_t v) { ok(p.store(a, v), "store"); }
  std::uint64_t load(Process& p, vaddr_t a) { return ok(p.load(a), "load"); }
  Process& fork(Process& p) { return *ok(p.fork(), "fork"); }
  // The PTE of va, or 0 where the walk stops above the PTE level.
  std::uint64_t pte(const Process& p, vaddr_t va) {
    const PtWalk w = m.walk(p, va);
    return w.levels == 4 ? w.entry[3] : 0;
  }
  // Clear A and D of one PTE the way the kernel would (page_referenced / folio_mkclean): under
  // the PTE table's lock.
  void mkold_mkclean(Process& p, vaddr_t va) {
    Kernel& k = detail::Access::kernel(m);
    MmStruct& mm = *detail::Access::mm(p);
    EntryRef pmd = k.walk_to_pmd(mm, va);
    ASSERT_TRUE(pmd);
    EntryRef e = k.pte_offset_map(pmd, va);
    SpinGuard ptl(pte_lockptr(mm, *e.table));
    set_pte_at(e, pte_mkold(pte_mkclean(e.get())));
  }

  Machine m{MachineConfig{.memory_bytes = 64ull << 20}};
};

#define INV() ASSERT_NO_THROW(m.check_invariants())

// ---- walk() and the table frames ----

TEST_F(UnitMachine, WalkOnEmptyAddressSpaceStopsAtPgd) {
  Process& p = m.spawn();
  INV();
  const vaddr_t va = 0x7f0000001000ull;
  PtWalk w = m.walk(p, va);
  EXPECT_EQ(w.levels, 1);
  EXPECT_EQ(w.entry[0], 0u);
  const pfn_t pgd = w.table[0];
  EXPECT_TRUE(m.page_info(pgd).page_table);
  EXPECT_FALSE(m.page_info(pgd).free);
  EXPECT_EQ(p.pgtables_bytes(), 0u) << "the pgd is not counted";

  // A mapping alone allocates no tables.
  const vaddr_t a = map(p, 4);
  w = m.walk(p, a);
  EXPECT_EQ(w.levels, 1);
  EXPECT_EQ(w.entry[0], 0u);
  EXPECT_EQ(w.table[0], pgd);
  EXPECT_EQ(p.pgtables_bytes(), 0u);
}

TEST_F(UnitMachine, WalkAfterWriteFault) {
  Process& p = m.spawn();
  const pfn_t pgd = m.walk(p, 0x10000).table[0];
  const vaddr_t a = map(p, 4);
  const std::uint64_t free0 = m.free_pages();
  store(p, a + kPg, 0x1122334455667788ull);

  const PtWalk w = m.walk(p, a + kPg);
  ASSERT_EQ(w.levels, 4);
  EXPECT_EQ(w.table[0], pgd);
  std::set<pfn_t> frames;
  for (int l = 0; l < 4; ++l) {
    const PageInfo pi = m.page_info(w.table[l]);
    EXPECT_TRUE(pi.page_table) << "level " << l;
    EXPECT_FALSE(pi.free || pi.anon || pi.zero_page) << "level " << l;
    EXPECT_EQ(pi.refcount, 1) << "level " << l;
    EXPECT_TRUE(frames.insert(w.table[l]).second) << "table frame reused at level " << l;
  }
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(w.entry[l] & ~kPfnField, kTableFlags) << "level " << l << std::hex << w.entry[l];
    EXPECT_EQ(pfn_of(w.entry[l]), w.table[l + 1]) << "level " << l;
  }
  // P|RW|USER|A|D|SOFT_DIRTY|NX and a fresh, exclusive anon page.
  const pfn_t pfn = pfn_of(w.entry[3]);
  EXPECT_EQ(w.entry[3], kWriteFaultFlags | (pfn << 12)) << std::hex << w.entry[3];
  EXPECT_FALSE(frames.count(pfn));
  EXPECT_NE(pfn, m.zero_pfn());
  const PageInfo pi = m.page_info(pfn);
  EXPECT_TRUE(pi.anon);
  EXPECT_TRUE(pi.anon_exclusive);
  EXPECT_EQ(pi.refcount, 1);
  EXPECT_EQ(pi.mapcount, 1);
  EXPECT_FALSE(pi.page_table || pi.zero_page || pi.free || pi.swapcache);
  // Three tables and one data frame.
  EXPECT_EQ(free0 - m.free_pages(), 4u);
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg);
  EXPECT_EQ(load(p, a + kPg), 0x1122334455667788ull);
  EXPECT_EQ(load(p, a + kPg + 8), 0u);

  // A neighbouring page of the same PTE table uses the same tables.
  store(p, a, 1);
  const PtWalk w0 = m.walk(p, a);
  ASSERT_EQ(w0.levels, 4);
  EXPECT_EQ(w0.table, w.table);
  EXPECT_NE(pfn_of(w0.entry[3]), pfn);
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg);
}

TEST_F(UnitMachine, ReadFaultMapsTheZeroPage) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 2);
  EXPECT_EQ(load(p, a), 0u);
  const PtWalk w = m.walk(p, a);
  ASSERT_EQ(w.levels, 4);
  EXPECT_EQ(w.entry[3], kZeroPageFlags | (m.zero_pfn() << 12)) << std::hex << w.entry[3];
  EXPECT_EQ(pfn_of(w.entry[3]), m.zero_pfn());
  const PageInfo z = m.page_info(m.zero_pfn());
  EXPECT_TRUE(z.zero_page);
  EXPECT_FALSE(z.anon || z.free || z.page_table);
  EXPECT_EQ(p.rss(), (RssStat{0, 0, 0, 0})) << "the zero page is not counted";
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg);

  // A store on it COWs a fresh page: the PTE word becomes the write-fault word.
  store(p, a, 5);
  const std::uint64_t e = pte(p, a);
  EXPECT_NE(pfn_of(e), m.zero_pfn());
  EXPECT_EQ(e, kWriteFaultFlags | (pfn_of(e) << 12)) << std::hex << e;
  EXPECT_EQ(p.rss().anon, 1);
  EXPECT_TRUE(m.page_info(m.zero_pfn()).zero_page);
  EXPECT_EQ(load(p, a), 5u);
}

// mm_forbids_zeropage (MachineConfig::zero_page false): a read fault allocates a zeroed page of
// its own, writable and dirty in a writable VMA (the word a write fault makes), counted in RSS;
// a store to it then needs no fault. MADV_POPULATE_READ does the same.
TEST(UnitMachineNoZeroPage, ReadFaultAllocatesAZeroedPage) {
  Machine m{MachineConfig{.memory_bytes = 64ull << 20, .zero_page = false}};
  Process& p = m.spawn();
  const vaddr_t a =
      *p.mmap(0, 4 * 4096, Prot::read | Prot::write, MapFlags::private_ | MapFlags::anonymous);
  const std::uint64_t free_before = m.free_pages();
  EXPECT_EQ(*p.load(a), 0u);
  m.check_invariants();
  const PtWalk w = m.walk(p, a);
  ASSERT_EQ(w.levels, 4);
  const pfn_t pfn = w.entry[3] >> 12 & ((1ull << 40) - 1);
  EXPECT_NE(pfn, m.zero_pfn());
  EXPECT_EQ(w.entry[3], kWriteFaultFlags | (pfn << 12)) << std::hex << w.entry[3];
  const PageInfo pi = m.page_info(pfn);
  EXPECT_TRUE(pi.anon && pi.anon_exclusive);
  EXPECT_EQ(pi.mapcount, 1);
  EXPECT_EQ(p.rss().anon, 1);
  EXPECT_TRUE(p.pagemap(a).exclusive);
  EXPECT_EQ(free_before - m.free_pages(), 4u) << "a PUD, a PMD, a PTE table and the page";
  ASSERT_TRUE(p.store(a, 9).has_value());
  EXPECT_EQ(m.walk(p, a).entry[3] >> 12 & ((1ull << 40) - 1), pfn) << "no COW: it is ours";
  ASSERT_TRUE(p.madvise(a + 4096, 3 * 4096, Advice::populate_read).has_value());
  EXPECT_EQ(p.rss().anon, 4);
  EXPECT_EQ(m.page_info(m.zero_pfn()).mapcount, 0) << "the zero page is mapped nowhere";
  // Read-only VMA: a read fault still allocates, read-only.
  const vaddr_t r = *p.mmap(0, 4096, Prot::read, MapFlags::private_ | MapFlags::anonymous);
  EXPECT_EQ(*p.load(r), 0u);
  EXPECT_NE(m.walk(p, r).entry[3] >> 12 & ((1ull << 40) - 1), m.zero_pfn());
  EXPECT_FALSE(m.walk(p, r).entry[3] & 2) << "not writable";
  m.check_invariants();
}

// ---- the hardware's A and D bits ----

TEST_F(UnitMachine, ChildEntryIsOldAndChildLoadSetsAccessed) {
  Process& parent = m.spawn();
  const vaddr_t a = map(parent, 1);
  store(parent, a, 42);
  const pfn_t pfn = pfn_of(pte(parent, a));
  Process& child = fork(parent);

  // copy_present_pte: both write-protected, the child's copy old; D and SOFT_DIRTY kept.
  const std::uint64_t ce = pte(child, a);
  EXPECT_EQ(ce, (kP | kUser | kD | kSoftDirty | kNX) | (pfn << 12)) << std::hex << ce;
  EXPECT_EQ(pte(parent, a), (kP | kUser | kA | kD | kSoftDirty | kNX) | (pfn << 12));

  EXPECT_EQ(load(child, a), 42u);
  EXPECT_EQ(pte(child, a), ce | kA) << "the hardware walk set A, nothing else";
  EXPECT_EQ(m.page_info(pfn).mapcount, 2);
  INV();
}

TEST_F(UnitMachine, HardwareSetsAccessedOnLoadAndDirtyOnStore) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 1);
  store(p, a, 1);
  const std::uint64_t e = pte(p, a);
  const pfn_t pfn = pfn_of(e);
  ASSERT_EQ(e, kWriteFaultFlags | (pfn << 12));

  mkold_mkclean(p, a);
  INV();
  const std::uint64_t old_clean = e & ~(kA | kD);
  EXPECT_EQ(pte(p, a), old_clean);
  const std::uint64_t allocs = m.allocations();

  EXPECT_EQ(load(p, a), 1u);
  EXPECT_EQ(pte(p, a), old_clean | kA) << "a load sets A only";

  mkold_mkclean(p, a);
  INV();
  store(p, a, 2);
  EXPECT_EQ(pte(p, a), old_clean | kA | kD) << "a store sets A and D, same frame";
  EXPECT_EQ(m.allocations(), allocs) << "no fault allocated anything";
  EXPECT_EQ(load(p, a), 2u);
  EXPECT_TRUE(m.page_info(pfn).anon_exclusive);
}

// ---- VMA split and merge ----

TEST_F(UnitMachine, MprotectMiddlePageSplitsAndMprotectBackMerges) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 3);
  for (int i = 0; i < 3; ++i) store(p, a + i * kPg, 100 + i);
  ASSERT_EQ(p.smaps().size(), 1u);

  ok(p.mprotect(a + kPg, kPg, Prot::read), "mprotect(PROT_READ)");
  auto s = p.smaps();
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].start, a);
  EXPECT_EQ(s[0].end, a + kPg);
  EXPECT_EQ(s[1].start, a + kPg);
  EXPECT_EQ(s[1].end, a + 2 * kPg);
  EXPECT_EQ(s[2].start, a + 2 * kPg);
  EXPECT_EQ(s[2].end, a + 3 * kPg);
  EXPECT_EQ(p.store(a + kPg, 9).error(), Errno::fault) << "the middle page is read-only";
  INV();
  EXPECT_FALSE(pte(p, a + kPg) & kRW);
  EXPECT_EQ(load(p, a + kPg), 101u);
  store(p, a, 200);  // the outer pages stay writable
  store(p, a + 2 * kPg, 202);

  ok(p.mprotect(a + kPg, kPg, kRWProt), "mprotect(PROT_READ|PROT_WRITE)");
  s = p.smaps();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].start, a);
  EXPECT_EQ(s[0].end, a + 3 * kPg);
  store(p, a + kPg, 201);
  EXPECT_EQ(load(p, a), 200u);
  EXPECT_EQ(load(p, a + kPg), 201u);
  EXPECT_EQ(load(p, a + 2 * kPg), 202u);

  // mprotect of a whole VMA changes it in place.
  ok(p.mprotect(a, 3 * kPg, Prot::read), "mprotect(whole, PROT_READ)");
  EXPECT_EQ(p.smaps().size(), 1u);
}

TEST_F(UnitMachine, MadviseDontforkSplitsAndDoforkMerges) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 3);
  for (int i = 0; i < 3; ++i) store(p, a + i * kPg, 300 + i);

  ok(p.madvise(a + kPg, kPg, Advice::dontfork), "MADV_DONTFORK");
  auto s = p.smaps();
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[1].start, a + kPg);
  EXPECT_EQ(s[1].end, a + 2 * kPg);

  // The child inherits only the two outer VMAs.
  Process& c = fork(p);
  const auto cs = c.smaps();
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_EQ(cs[0].start, a);
  EXPECT_EQ(cs[0].end, a + kPg);
  EXPECT_EQ(cs[1].start, a + 2 * kPg);
  EXPECT_EQ(cs[1].end, a + 3 * kPg);
  EXPECT_EQ(c.load(a + kPg).error(), Errno::fault);
  EXPECT_EQ(load(c, a + 2 * kPg), 302u);
  EXPECT_EQ(c.rss().anon, 2);
  c.exit();
  INV();

  ok(p.madvise(a + kPg, kPg, Advice::dofork), "MADV_DOFORK");
  s = p.smaps();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].start, a);
  EXPECT_EQ(s[0].end, a + 3 * kPg);
  EXPECT_EQ(load(p, a + kPg), 301u);

  // DONTFORK over the whole VMA: no split, and a child inherits nothing.
  ok(p.madvise(a, 3 * kPg, Advice::dontfork), "MADV_DONTFORK(all)");
  EXPECT_EQ(p.smaps().size(), 1u);
  Process& c2 = fork(p);
  EXPECT_TRUE(c2.smaps().empty());
  EXPECT_EQ(c2.pgtables_bytes(), 0u);
}

// ---- mmap placement ----

TEST_F(UnitMachine, MmapWithoutHintIsTopDown) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 1);
  EXPECT_EQ(a % kPg, 0u);
  EXPECT_EQ(a + kPg, MMAP_BASE) << "the first mapping ends at mmap_base";
  const vaddr_t b = ok(p.mmap(0, 5000, kRWProt, kPriv), "mmap(5000)");
  EXPECT_EQ(b % kPg, 0u);
  EXPECT_EQ(b + 2 * kPg, a) << "the next one right below, length rounded up to pages";
  const vaddr_t c = map(p, 3, 0, kPriv, Prot::read);
  EXPECT_EQ(c + 3 * kPg, b);
  // A hole left by munmap is reused by a mapping that fits it.
  ok(p.munmap(b, 2 * kPg), "munmap");
  const vaddr_t d = map(p, 1, 0, kShared);
  EXPECT_EQ(d, b + kPg) << "the highest gap below mmap_base that fits";
}

TEST_F(UnitMachine, MmapHint) {
  Process& p = m.spawn();
  const vaddr_t hint = 0x10000000;
  EXPECT_EQ(map(p, 2, hint), hint) << "a free hint is honoured";
  EXPECT_EQ(map(p, 1, 0x20000123), 0x20000000u) << "x86 rounds the hint down to a page";
  store(p, hint, 77);
  // An occupied hint is not: the mapping goes elsewhere and the old one is untouched.
  const vaddr_t b = map(p, 2, hint + kPg);
  EXPECT_TRUE(b + 2 * kPg <= hint || b >= hint + 2 * kPg) << std::hex << b;
  EXPECT_EQ(load(p, hint), 77u);
  // A hint below mmap_min_addr is not used as is.
  const vaddr_t low = map(p, 1, 0x1000);
  EXPECT_GE(low, MMAP_MIN_ADDR);
}

TEST_F(UnitMachine, MapFixedReplaces) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 3, 0x30000000);
  ASSERT_EQ(a, 0x30000000u);
  for (int i = 0; i < 3; ++i) store(p, a + i * kPg, 500 + i);
  const pfn_t old = pfn_of(pte(p, a + kPg));
  const std::uint64_t free0 = m.free_pages();
  const std::uint64_t pt0 = p.pgtables_bytes();

  EXPECT_EQ(ok(p.mmap(a + kPg, kPg, kRWProt, kPriv | MapFlags::fixed), "MAP_FIXED"), a + kPg);
  EXPECT_EQ(pte(p, a + kPg), 0u) << "the old PTE is zapped";
  EXPECT_TRUE(m.page_info(old).free);
  EXPECT_EQ(m.free_pages(), free0 + 1);
  EXPECT_EQ(p.rss().anon, 2);
  EXPECT_EQ(p.pgtables_bytes(), pt0) << "the neighbours keep the tables";
  EXPECT_EQ(load(p, a + kPg), 0u);
  EXPECT_EQ(load(p, a), 500u);
  EXPECT_EQ(load(p, a + 2 * kPg), 502u);
  const auto s = p.smaps();
  ASSERT_FALSE(s.empty());
  EXPECT_EQ(s.front().start, a);
  EXPECT_EQ(s.back().end, a + 3 * kPg);
  for (std::size_t i = 1; i < s.size(); ++i) EXPECT_EQ(s[i].start, s[i - 1].end);

  EXPECT_EQ(p.mmap(a, kPg, kRWProt, kPriv | MapFlags::fixed_noreplace).error(), Errno::exist);
  INV();
  EXPECT_EQ(load(p, a), 500u);
}

// ---- page-table accounting and free_pgtables ----

TEST_F(UnitMachine, PgtablesBytesCountsPudPmdPte) {
  Process& p = m.spawn();
  const std::uint64_t free0 = m.free_pages();
  const vaddr_t base = 0x40000000;      // 1 GiB aligned
  ASSERT_EQ(map(p, 1024, base), base);  // 4 MiB: two PTE tables' worth
  EXPECT_EQ(p.pgtables_bytes(), 0u);
  store(p, base, 1);
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg) << "PUD + PMD + PTE table";
  store(p, base + 511 * kPg, 2);
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg) << "same PTE table";
  store(p, base + PMD_SIZE, 3);
  EXPECT_EQ(p.pgtables_bytes(), 4 * kPg) << "a second PTE table";
  EXPECT_EQ(free0 - m.free_pages(), 4u + 3u);

  ok(p.munmap(base, 1024 * kPg), "munmap");
  EXPECT_EQ(p.pgtables_bytes(), 0u);
  EXPECT_EQ(m.walk(p, base).levels, 1);
  EXPECT_EQ(m.walk(p, base).entry[0], 0u);
  EXPECT_EQ(m.free_pages(), free0) << "every table and page frame is back";
  EXPECT_EQ(p.rss(), (RssStat{0, 0, 0, 0}));
}

TEST_F(UnitMachine, FreePgtablesKeepsNeighboursPteTable) {
  Process& p = m.spawn();
  const std::uint64_t free0 = m.free_pages();
  const vaddr_t base = 0x40000000;
  // Two VMAs in one 2 MiB region, one page apart so that they cannot merge.
  ASSERT_EQ(map(p, 1, base), base);
  ASSERT_EQ(map(p, 1, base + 2 * kPg), base + 2 * kPg);
  ASSERT_EQ(p.smaps().size(), 2u);
  store(p, base, 11);
  store(p, base + 2 * kPg, 22);
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg);
  const PtWalk before = m.walk(p, base + 2 * kPg);

  ok(p.munmap(base, kPg), "munmap(first)");
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg) << "the neighbour still needs the PTE table";
  const PtWalk w = m.walk(p, base);
  ASSERT_EQ(w.levels, 4);
  EXPECT_EQ(w.entry[3], 0u) << "the unmapped PTE is cleared";
  const PtWalk n = m.walk(p, base + 2 * kPg);
  EXPECT_EQ(n.table, before.table);
  EXPECT_EQ(n.entry[3], before.entry[3]);
  EXPECT_EQ(load(p, base + 2 * kPg), 22u);

  ok(p.munmap(base + 2 * kPg, kPg), "munmap(second)");
  EXPECT_EQ(p.pgtables_bytes(), 0u);
  EXPECT_EQ(m.walk(p, base).levels, 1);
  EXPECT_EQ(m.free_pages(), free0);
}

TEST_F(UnitMachine, FreePgtablesFreesPteTableOfAnotherPmd) {
  Process& p = m.spawn();
  const vaddr_t base = 0x40000000;
  ASSERT_EQ(map(p, 1, base), base);
  ASSERT_EQ(map(p, 1, base + PMD_SIZE), base + PMD_SIZE);
  store(p, base, 1);
  store(p, base + PMD_SIZE, 2);
  EXPECT_EQ(p.pgtables_bytes(), 4 * kPg);
  const pfn_t pte_table = m.walk(p, base).table[3];

  ok(p.munmap(base, kPg), "munmap(first)");
  EXPECT_EQ(p.pgtables_bytes(), 3 * kPg) << "its PTE table goes, the PMD and PUD stay";
  const PtWalk w = m.walk(p, base);
  EXPECT_EQ(w.levels, 3);
  EXPECT_EQ(w.entry[2], 0u);
  EXPECT_TRUE(m.page_info(pte_table).free);
  EXPECT_EQ(load(p, base + PMD_SIZE), 2u);

  ok(p.munmap(base + PMD_SIZE, kPg), "munmap(second)");
  EXPECT_EQ(p.pgtables_bytes(), 0u);
}

TEST_F(UnitMachine, ExitFreesEverything) {
  const std::uint64_t free0 = m.free_pages();
  Process& p = m.spawn();
  const vaddr_t a = map(p, 4);
  for (int i = 0; i < 4; ++i) store(p, a + i * kPg, i + 1);
  Process& c = fork(p);
  store(c, a, 9);
  c.exit();
  INV();
  EXPECT_FALSE(c.alive());
  EXPECT_EQ(m.find(c.pid()), nullptr);
  p.exit();
  INV();
  EXPECT_EQ(m.free_pages(), free0);
  EXPECT_EQ(m.walk(p, a).levels, 0);
}

// ---- RSS, smaps, pagemap ----

TEST_F(UnitMachine, RssCountsAnonAndShmem) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 4);
  const vaddr_t s = map(p, 4, 0, kShared);
  EXPECT_EQ(p.rss(), (RssStat{0, 0, 0, 0}));
  store(p, a, 1);
  store(p, a + kPg, 2);
  EXPECT_EQ(load(p, a + 2 * kPg), 0u);  // the zero page
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 0}));
  store(p, s, 3);
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 1}));
  EXPECT_EQ(load(p, s + kPg), 0u);  // shmem allocates its page on a read fault too
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 2}));
  ok(p.munmap(s, 4 * kPg), "munmap(shmem)");
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 0}));
  ok(p.madvise(a, kPg, Advice::dontneed), "MADV_DONTNEED");
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 1, .swapents = 0, .shmem = 0}));
}

TEST_F(UnitMachine, SmapsAfterForkHalvesPss) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 3);
  store(p, a, 1);
  store(p, a + kPg, 2);
  EXPECT_EQ(load(p, a + 2 * kPg), 0u);  // zero page: in no smaps figure
  auto s = p.smaps();
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].rss, 2 * kPg);
  EXPECT_EQ(s[0].pss, 2 * kPg);
  EXPECT_EQ(s[0].private_dirty, 2 * kPg);
  EXPECT_EQ(s[0].private_clean, 0u);
  EXPECT_EQ(s[0].shared_dirty, 0u);
  EXPECT_EQ(s[0].shared_clean, 0u);
  EXPECT_EQ(s[0].anonymous, 2 * kPg);
  EXPECT_EQ(s[0].swap, 0u);

  Process& c = fork(p);
  for (Process* q : {&p, &c}) {
    s = q->smaps();
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].rss, 2 * kPg) << "pid " << q->pid();
    EXPECT_EQ(s[0].pss, kPg) << "pid " << q->pid();
    EXPECT_EQ(s[0].shared_dirty, 2 * kPg) << "pid " << q->pid();
    EXPECT_EQ(s[0].private_dirty, 0u) << "pid " << q->pid();
    EXPECT_EQ(s[0].anonymous, 2 * kPg) << "pid " << q->pid();
  }

  // The child's write COWs page 0: each side then owns one page and shares the other.
  store(c, a, 10);
  for (Process* q : {&p, &c}) {
    s = q->smaps();
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].rss, 2 * kPg) << "pid " << q->pid();
    EXPECT_EQ(s[0].pss, kPg + kPg / 2) << "pid " << q->pid();
    EXPECT_EQ(s[0].private_dirty, kPg) << "pid " << q->pid();
    EXPECT_EQ(s[0].shared_dirty, kPg) << "pid " << q->pid();
  }

  c.exit();
  INV();
  s = p.smaps();
  EXPECT_EQ(s[0].pss, 2 * kPg);
  EXPECT_EQ(s[0].private_dirty, 2 * kPg);
}

TEST_F(UnitMachine, PagemapBits) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 3);
  const vaddr_t sh = map(p, 1, 0, kShared);

  // Inside a new VMA, untouched: not present, but the VMA is soft-dirty as a whole.
  PagemapEntry e = p.pagemap(a);
  EXPECT_FALSE(e.present);
  EXPECT_TRUE(e.soft_dirty);
  EXPECT_EQ(e.pfn, 0u);
  // Outside every VMA: all zero.
  e = p.pagemap(0x10000);
  EXPECT_EQ(e.raw, 0u);

  store(p, a, 1);
  const pfn_t pfn = pfn_of(pte(p, a));
  e = p.pagemap(a + 0x18);  // any address in the page
  EXPECT_TRUE(e.present);
  EXPECT_FALSE(e.swapped);
  EXPECT_FALSE(e.file_or_shared_anon);
  EXPECT_TRUE(e.exclusive);
  EXPECT_TRUE(e.soft_dirty);
  EXPECT_EQ(e.pfn, pfn);
  EXPECT_EQ(e.raw, (1ull << 63) | (1ull << 56) | (1ull << 55) | pfn);

  // The zero page: present with its pfn, neither exclusive nor file.
  EXPECT_EQ(load(p, a + kPg), 0u);
  e = p.pagemap(a + kPg);
  EXPECT_TRUE(e.present);
  EXPECT_EQ(e.pfn, m.zero_pfn());
  EXPECT_FALSE(e.exclusive);
  EXPECT_FALSE(e.file_or_shared_anon);

  // Shared anonymous memory is shmem: the file bit.
  store(p, sh, 2);
  e = p.pagemap(sh);
  EXPECT_TRUE(e.present);
  EXPECT_TRUE(e.file_or_shared_anon);
  EXPECT_TRUE(e.exclusive) << "mapped once";
  EXPECT_EQ(e.pfn, pfn_of(pte(p, sh)));

  // clear_refs resets soft-dirty; the next write sets it again.
  ok(p.clear_soft_dirty(), "clear_soft_dirty");
  EXPECT_FALSE(p.pagemap(a).soft_dirty);
  EXPECT_FALSE(p.pagemap(a + 2 * kPg).soft_dirty) << "the VMA's VM_SOFTDIRTY is cleared too";
  store(p, a, 3);
  EXPECT_TRUE(p.pagemap(a).soft_dirty);
  EXPECT_TRUE(pte(p, a) & kSoftDirty);

  // After fork the anon page has mapcount 2: not exclusive in either process.
  Process& c = fork(p);
  for (Process* q : {&p, &c}) {
    e = q->pagemap(a);
    EXPECT_TRUE(e.present) << "pid " << q->pid();
    EXPECT_FALSE(e.exclusive) << "pid " << q->pid();
    EXPECT_EQ(e.pfn, pfn) << "pid " << q->pid();
  }
  // The shmem page: the child faults it in from the page cache, the same frame.
  EXPECT_EQ(load(c, sh), 2u);
  for (Process* q : {&p, &c}) {
    e = q->pagemap(sh);
    EXPECT_TRUE(e.present && e.file_or_shared_anon) << "pid " << q->pid();
    EXPECT_FALSE(e.exclusive) << "pid " << q->pid();
  }
  EXPECT_EQ(p.pagemap(sh).pfn, c.pagemap(sh).pfn);
}

// ---- ptdump and the formatters ----

TEST_F(UnitMachine, PtdumpShowsMappingAndFlags) {
  Process& p = m.spawn();
  const vaddr_t a = map(p, 2);
  store(p, a, 1);
  const PtWalk w = m.walk(p, a);
  ASSERT_EQ(w.levels, 4);
  const pfn_t pfn = pfn_of(w.entry[3]);
  const std::string d = m.ptdump(p);
  EXPECT_NE(d.find(fmt::format("pid {}", p.pid())), std::string::npos) << d;
  EXPECT_NE(d.find(fmt::format("pgd frame {:#x}", w.table[0])), std::string::npos) << d;
  EXPECT_NE(d.find(fmt::format("{:#x}", a)), std::string::npos) << d;
  EXPECT_NE(d.find("[P RW USR A D SOFT_DIRTY NX] pfn " + fmt::format("{:#x}", pfn)),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("[P RW USR A D] pfn " + fmt::format("{:#x}", w.table[3])), std::string::npos)
      << "the pmd entry, " << d;

  ok(p.munmap(a, 2 * kPg), "munmap");
  const std::string d2 = m.ptdump(p);
  EXPECT_EQ(d2.find(fmt::format("{:#x}", a)), std::string::npos) << d2;
  EXPECT_EQ(d2.find("pte"), std::string::npos) << d2;
}

TEST_F(UnitMachine, EntryFmtPrintsRawValueFlagsAndPfn) {
  const std::uint64_t v = kWriteFaultFlags | (0xabcull << 12);
  EXPECT_EQ(fmt::format("{}", EntryFmt{v}),
            "0x8000000000abc867 [P RW USR A D SOFT_DIRTY NX] pfn 0xabc");
  EXPECT_EQ(fmt::format("{}", EntryFmt{0}), "0x0000000000000000 none");
  // A PROT_NONE entry prints the real pfn, not the inverted field.
  const std::uint64_t pn = pte_modify(v, PAGE_NONE);
  const std::string s = fmt::format("{}", EntryFmt{pn});
  EXPECT_NE(s.find(fmt::format("{:#018x}", pn)), std::string::npos) << s;
  EXPECT_NE(s.find("PROTNONE"), std::string::npos) << s;
  EXPECT_NE(s.find("pfn 0xabc"), std::string::npos) << s;
  // A swap entry decodes as one.
  const std::uint64_t sw = pte_swp_mkexclusive(swp_entry_to_pte({1, 0x1234}));
  EXPECT_EQ(fmt::format("{}", EntryFmt{sw}),
            "0x0fffffffffdb9608 swap type 1 offset 0x1234 exclusive");
  // An upper-level table entry.
  EXPECT_EQ(fmt::format("{}", EntryFmt{mk_table_entry(Pfn{0x42}), 2}),
            "0x0000000000042067 [P RW USR A D] pfn 0x42");
  // struct page.
  Page pg;
  pg._refcount = 2;
  pg._mapcount = 1;
  pg.set(PG_anon);
  EXPECT_EQ(fmt::format("{}", pg), "page refcount 2 mapcount 2 anon");
}

// ---- tracing ----

TEST(UnitMachineTrace, ForkWithTracingOn) {
  Machine m{MachineConfig{.memory_bytes = 16ull << 20, .trace = true}};
  EXPECT_TRUE(m.config().trace);
  EXPECT_NE(detail::Access::kernel(m).tracer, nullptr);
  Process& p = m.spawn();
  auto a = p.mmap(0, 2 * kPg, kRWProt, kPriv);
  ASSERT_TRUE(a);
  ASSERT_TRUE(p.store(*a, 1));
  INV();
  auto c = p.fork();
  ASSERT_TRUE(c);
  INV();
  ASSERT_TRUE((*c)->store(*a, 2));
  INV();
  EXPECT_EQ(*p.load(*a), 1u);
  EXPECT_EQ(*(*c)->load(*a), 2u);
  ASSERT_TRUE(p.munmap(*a, kPg));
  (*c)->exit();
  INV();
  p.exit();
  INV();
}

TEST(UnitMachineTrace, TracingOffHasNoLogger) {
  Machine m{MachineConfig{.memory_bytes = 16ull << 20}};
  EXPECT_FALSE(m.config().trace);
  EXPECT_EQ(detail::Access::kernel(m).tracer, nullptr);
}

}  // namespace
}  // namespace cowpte
