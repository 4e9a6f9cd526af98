// COW PTE scenarios: the seed patch's own cases (v3/v4 semantics, eager accounting) and
// On-demand-fork's (deferred accounting), checked against the tables, struct page, pagemap,
// RSS and VmPTE. check_invariants() runs after every step (see scenario_util.hpp); it also
// checks that a shared table's refcount equals the PMDs that point at it and that no writable
// PMD points at a shared table.
#include <cstdint>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr vaddr_t kBase = 0x7e0000000000ull;       // 1 GiB aligned: one PUD and one PMD table
constexpr std::uint64_t kSpan = 512;               // pages per PTE table (2 MiB)
constexpr std::uint64_t kUpperTables = 2 * kPage;  // the PUD and PMD tables below the pgd

class CowPteTest : public ScenarioTest {
 protected:
  // A populated private anonymous VMA of n pages at kBase + off pages.
  vaddr_t area(Process& p, std::uint64_t n, std::uint64_t off, std::uint64_t seed,
               const loc_t& loc = loc_t::current()) {
    const vaddr_t a = map_anon(p, n, kBase + off * kPage, loc);
    populate(p, a, n, seed, loc);
    return a;
  }
  std::uint64_t pmd(const Process& p, vaddr_t va) { return m.walk(p, va).entry[2]; }
  bool pmd_writable(const Process& p, vaddr_t va) { return pmd(p, va) & kRW; }
  std::int64_t table_refs(const Process& p, vaddr_t va) { return page(pte_table(p, va)).refcount; }
  void expect_shared(const Process& a, const Process& b, vaddr_t va, std::int64_t refs,
                     const loc_t& loc = loc_t::current()) {
    EXPECT_EQ(pte_table(a, va), pte_table(b, va)) << where(loc);
    EXPECT_EQ(table_refs(a, va), refs) << where(loc);
    EXPECT_FALSE(pmd_writable(a, va)) << where(loc);
    EXPECT_FALSE(pmd_writable(b, va)) << where(loc);
  }
  // Pages [first, first + n) of an area populated with `seed` still read their pattern.
  void expect_loads(Process& p, vaddr_t a, std::uint64_t n, std::uint64_t seed,
                    std::uint64_t first = 0, const loc_t& loc = loc_t::current()) {
    for (std::uint64_t i = first; i < first + n; ++i)
      EXPECT_EQ(load(p, a + i * kPage, loc), pattern(seed, i)) << "page " << i << " " << where(loc);
  }
};

// ------------------------------------------------------------------ the seed's policy

class SeedCowPte : public CowPteTest {};

TEST_F(SeedCowPte, ForkSharesThePreparedTable) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 1);
  STEP(p.set_cow_pte());
  const pfn_t table = pte_table(p, a);
  const std::uint64_t before = pte(p, a);
  EXPECT_TRUE(PteBits(before, kRW | kD | kA | kSoftDirty, 0));
  const std::uint64_t free_before = m.free_pages();
  Process& c = fork(p);
  // The child got a pgd, a PUD and a PMD table, but no PTE table.
  EXPECT_EQ(free_before - m.free_pages(), 3u);
  expect_shared(p, c, a, 2);
  EXPECT_EQ(pte_table(p, a), table);
  // Every page accounted as after a classic fork: two references and mappings, not exclusive.
  for (std::uint64_t i = 0; i < 8; ++i)
    EXPECT_TRUE(AnonPage(page(pfn_of(p, a + i * kPage)), 2, 2, false)) << i;
  // The "child-side" changes of copy_present_pte land in the parent's entry: write-protected
  // and old; an anonymous page keeps its dirty bit, and soft-dirty stays (as in classic fork).
  EXPECT_TRUE(PteBits(pte(p, a), kD | kSoftDirty, kRW | kA));
  EXPECT_EQ(p.rss().anon, 8);
  EXPECT_EQ(c.rss().anon, 8);
  // VmPTE per process, as if each had its own table.
  EXPECT_EQ(p.pgtables_bytes(), kUpperTables + kPage);
  EXPECT_EQ(c.pgtables_bytes(), kUpperTables + kPage);
  EXPECT_EQ(c.pagemap(a).pfn, p.pagemap(a).pfn);
  EXPECT_FALSE(c.pagemap(a).exclusive);
  expect_loads(c, a, 8, 1);
  expect_loads(p, a, 8, 1);
  FAILS(p.set_cow_pte(), Errno::inval);  // MMF_COW_PTE is never cleared
  FAILS(c.set_cow_pte(), Errno::inval);  // and inherited
  finish();
}

TEST_F(SeedCowPte, GrandchildrenAddOneReferenceEach) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 2);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  Process& g = fork(c);
  expect_shared(p, g, a, 3);
  EXPECT_EQ(pte_table(c, a), pte_table(p, a));
  EXPECT_TRUE(AnonPage(page(pfn_of(g, a)), 3, 3, false));
  Process& c2 = fork(p);
  EXPECT_EQ(table_refs(p, a), 4);
  EXPECT_EQ(g.rss().anon, 4);
  exit(c2);
  EXPECT_EQ(table_refs(p, a), 3);
  finish();
}

TEST_F(SeedCowPte, WriteInChildCopiesThenParentReuses) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 3);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t shared = pte_table(p, a);
  const pfn_t page0 = pfn_of(p, a);
  const std::uint64_t free_before = m.free_pages();
  store(c, a, 42);
  // The child broke: a new table (copy of the entries) and a new page (the page COW).
  EXPECT_EQ(free_before - m.free_pages(), 2u);
  EXPECT_NE(pte_table(c, a), shared);
  EXPECT_TRUE(pmd_writable(c, a));
  EXPECT_EQ(table_refs(p, a), 1);
  EXPECT_FALSE(pmd_writable(p, a)) << "the parent's PMD stays write-protected until it breaks";
  EXPECT_NE(pfn_of(c, a), page0);
  EXPECT_EQ(pfn_of(c, a + kPage), pfn_of(p, a + kPage)) << "a break copies entries, not pages";
  EXPECT_TRUE(AnonPage(page(pfn_of(p, a + kPage)), 2, 2, false));
  EXPECT_EQ(c.pgtables_bytes(), kUpperTables + kPage);
  EXPECT_EQ(c.rss().anon, 8);
  EXPECT_EQ(load(p, a), pattern(3, 0));
  // The parent is the last holder: it reuses the table (no new table), then reuses its page.
  const std::uint64_t free_mid = m.free_pages();
  store(p, a, 43);
  EXPECT_EQ(pte_table(p, a), shared);
  EXPECT_TRUE(pmd_writable(p, a));
  EXPECT_EQ(free_mid, m.free_pages()) << "reuse of the table and of the exclusive page";
  EXPECT_EQ(pfn_of(p, a), page0);
  EXPECT_EQ(load(c, a), 42u);
  EXPECT_EQ(load(p, a), 43u);
  finish();
}

TEST_F(SeedCowPte, WriteInParentCopiesThenChildReuses) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 4);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t shared = pte_table(p, a);
  store(p, a + 3 * kPage, 7);
  EXPECT_NE(pte_table(p, a), shared);
  EXPECT_EQ(pte_table(c, a), shared);
  EXPECT_EQ(table_refs(c, a), 1);
  store(c, a + 5 * kPage, 8);
  EXPECT_EQ(pte_table(c, a), shared) << "the last holder reuses";
  EXPECT_TRUE(pmd_writable(c, a));
  EXPECT_EQ(load(c, a + 3 * kPage), pattern(4, 3));
  EXPECT_EQ(load(p, a + 5 * kPage), pattern(4, 5));
  finish();
}

TEST_F(SeedCowPte, PinnedPageForcesTheRecoverPath) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 5);
  STEP(p.pin(a + 3 * kPage, kPage, PinFlags::write | PinFlags::longterm));
  const pfn_t pinned = pfn_of(p, a + 3 * kPage);
  STEP(p.set_cow_pte());
  const pfn_t table = pte_table(p, a);
  Process& c = fork(p);
  // Pages 0-2 were prepared for sharing, then recovered into the child's own table; page 3
  // is copied now (copy_present_page); pages 4-7 are copied by copy_pte_range.
  EXPECT_NE(pte_table(c, a), table);
  EXPECT_TRUE(pmd_writable(c, a));
  EXPECT_EQ(table_refs(p, a), 1) << "the child's reference is dropped again";
  EXPECT_TRUE(pmd_writable(p, a)) << "copy_cow_pte_range write-protects only on success";
  EXPECT_NE(pfn_of(c, a + 3 * kPage), pinned);
  EXPECT_EQ(pfn_of(p, a + 3 * kPage), pinned);
  EXPECT_TRUE(page(pinned).anon_exclusive);
  for (std::uint64_t i : {0u, 1u, 2u, 4u, 7u}) {
    EXPECT_EQ(pfn_of(c, a + i * kPage), pfn_of(p, a + i * kPage)) << i;
    EXPECT_TRUE(AnonPage(page(pfn_of(p, a + i * kPage)), 2, 2, false)) << i;
  }
  EXPECT_EQ(c.rss().anon, 8);
  EXPECT_EQ(c.pgtables_bytes(), kUpperTables + kPage);
  expect_loads(c, a, 8, 5);
  // The parent's pinned page stays its own: a write through the PTE reaches the pin.
  store(p, a + 3 * kPage, 99);
  EXPECT_EQ(read_gup(p, a + 3 * kPage), 99u);
  EXPECT_TRUE(pmd_writable(p, a)) << "the break at refcount 1 reused the table";
  STEP(p.unpin(a + 3 * kPage, kPage));
  finish();
}

TEST_F(SeedCowPte, DontforkVmaInTheSpanForcesTheRecoverPath) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 6);
  const vaddr_t b = area(p, 4, 16, 7);
  const vaddr_t d = area(p, 4, 32, 8);
  STEP(p.madvise(b, 4 * kPage, Advice::dontfork));
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  EXPECT_NE(pte_table(c, a), pte_table(p, a));
  EXPECT_EQ(table_refs(p, a), 1);
  EXPECT_TRUE(pte_none(c, b)) << "the DONTFORK VMA's entries must not reach the child";
  FAILS(c.load(b), Errno::fault);
  expect_loads(c, a, 4, 6);
  expect_loads(c, d, 4, 8);
  EXPECT_EQ(c.rss().anon, 8);
  EXPECT_EQ(pfn_of(c, d), pfn_of(p, d));
  finish();
}

TEST_F(SeedCowPte, SeveralVmasInOneSpanShareOnce) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 9);
  const vaddr_t b = area(p, 4, 4, 10);
  const vaddr_t d = area(p, 4, 100, 11);
  STEP(p.mprotect(b, 4 * kPage, Prot::read));  // a, b: two VMAs side by side
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  expect_shared(p, c, a, 2);
  EXPECT_EQ(pte_table(c, d), pte_table(p, a));
  EXPECT_EQ(c.rss().anon, 12);
  EXPECT_EQ(c.pgtables_bytes(), kUpperTables + kPage);
  expect_loads(c, b, 4, 10);
  expect_loads(c, d, 4, 11);
  FAILS(c.store(b, 1), Errno::fault);
  finish();
}

TEST_F(SeedCowPte, VmaWithoutAnonVmaInTheSpanIsSharedToo) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 12);
  const vaddr_t z = map_anon(p, 4, kBase + 64 * kPage);  // only read: zero page, no anon_vma
  EXPECT_EQ(load(p, z), 0u);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  expect_shared(p, c, a, 2);
  EXPECT_EQ(pfn_of(c, z), m.zero_pfn()) << "lazy fork would skip it; the shared table has it";
  EXPECT_EQ(load(c, z), 0u);
  finish();
}

TEST_F(SeedCowPte, ExitOfOneSharer) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 13);
  STEP(p.set_cow_pte());
  const std::uint64_t free_before = m.free_pages();
  Process& c = fork(p);
  exit(c);
  EXPECT_EQ(m.free_pages(), free_before);
  EXPECT_EQ(table_refs(p, a), 1);
  EXPECT_FALSE(pmd_writable(p, a));
  EXPECT_TRUE(AnonPage(page(pfn_of(p, a)), 1, 1, false));
  EXPECT_EQ(p.rss().anon, 8);
  Process& c2 = fork(p);
  exit(p);  // now the parent leaves first
  EXPECT_EQ(table_refs(c2, a), 1);
  expect_loads(c2, a, 8, 13);
  store(c2, a, 1);
  EXPECT_TRUE(pmd_writable(c2, a));
  finish();
}

TEST_F(SeedCowPte, MunmapOfOneSharer) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 14);
  const vaddr_t b = area(p, 8, 600, 15);  // the next span
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t tb = pte_table(p, b);
  // The whole VMA, alone in its span: de-accounted, and free_pgtables drops the reference.
  STEP(p.munmap(a, 8 * kPage));
  EXPECT_LT(m.walk(p, a).levels, 4);
  EXPECT_EQ(table_refs(c, a), 1);
  EXPECT_EQ(p.rss().anon, 8);
  EXPECT_EQ(p.pgtables_bytes(), kUpperTables + kPage);
  EXPECT_TRUE(AnonPage(page(pfn_of(c, a)), 1, 1, false));
  expect_loads(c, a, 8, 14);
  // Part of a VMA: the split breaks the table first.
  STEP(p.munmap(b + 2 * kPage, 2 * kPage));
  EXPECT_NE(pte_table(p, b), tb);
  EXPECT_EQ(pte_table(c, b), tb);
  EXPECT_EQ(table_refs(c, b), 1);
  EXPECT_TRUE(pte_none(p, b + 2 * kPage));
  expect_loads(c, b, 8, 15);
  EXPECT_EQ(load(p, b + 4 * kPage), pattern(15, 4));
  finish();
}

TEST_F(SeedCowPte, MunmapOfAVmaThatSharesItsSpanWithAnother) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 16);
  const vaddr_t b = area(p, 4, 64, 17);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t t = pte_table(p, a);
  STEP(c.munmap(b, 4 * kPage));  // a stays in the span: the child breaks first
  EXPECT_NE(pte_table(c, a), t);
  EXPECT_EQ(table_refs(p, a), 1);
  EXPECT_TRUE(pte_none(c, b));
  expect_loads(p, b, 4, 17);
  expect_loads(c, a, 4, 16);
  finish();
}

TEST_F(SeedCowPte, MprotectBreaksFirst) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 18);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t t = pte_table(p, a);
  STEP(p.mprotect(a, 8 * kPage, Prot::read));
  EXPECT_NE(pte_table(p, a), t);
  EXPECT_EQ(pte_table(c, a), t);
  FAILS(p.store(a, 1), Errno::fault);
  store(c, a, 2);  // the child's table was not touched by the parent's mprotect
  EXPECT_EQ(load(p, a), pattern(18, 0));
  // Same flags: nothing to change, nothing broken.
  Process& g = fork(c);
  const pfn_t tg = pte_table(g, a);
  STEP(g.mprotect(a, 8 * kPage, kRWProt));
  EXPECT_EQ(pte_table(g, a), tg);
  finish();
}

TEST_F(SeedCowPte, MadviseDontneedOnASharedTable) {
  Process& p = spawn();
  const vaddr_t a = area(p, kSpan, 0, 19);  // covers its span
  const vaddr_t b = area(p, 8, kSpan + 8, 20);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t tb = pte_table(p, b);
  // The whole span: the parent drops its PMD and reference (no copy).
  const std::uint64_t free_before = m.free_pages();
  STEP(p.madvise(a, kSpan * kPage, Advice::dontneed));
  EXPECT_EQ(m.free_pages(), free_before);
  EXPECT_TRUE(pte_none(p, a));
  EXPECT_EQ(table_refs(c, a), 1);
  EXPECT_EQ(p.rss().anon, 8);
  EXPECT_EQ(p.pgtables_bytes(), kUpperTables + kPage);
  EXPECT_EQ(load(p, a + 5 * kPage), 0u);
  expect_loads(c, a, 16, 19);
  // Part of a span: break, then zap.
  STEP(c.madvise(b, 2 * kPage, Advice::dontneed));
  EXPECT_NE(pte_table(c, b), tb);
  EXPECT_EQ(load(c, b), 0u);
  expect_loads(p, b, 8, 20);
  finish();
}

TEST_F(SeedCowPte, PopulateWriteAndPinBreak) {
  Process& p = spawn();
  const vaddr_t a = area(p, 8, 0, 21);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  Process& d = fork(p);
  const pfn_t t = pte_table(p, a);
  STEP(c.madvise(a, 8 * kPage, Advice::populate_write));
  EXPECT_NE(pte_table(c, a), t);
  EXPECT_EQ(table_refs(p, a), 2);
  // A read-only long-term pin: an unshare fault breaks the table, then unshares the page.
  STEP(d.pin(a + kPage, kPage, PinFlags::longterm));
  EXPECT_NE(pte_table(d, a), t);
  EXPECT_NE(pfn_of(d, a + kPage), pfn_of(p, a + kPage));
  EXPECT_TRUE(page(pfn_of(d, a + kPage)).anon_exclusive);
  EXPECT_EQ(read_gup(d, a + kPage), pattern(21, 1));
  STEP(d.unpin(a + kPage, kPage));
  finish();
}

TEST_F(SeedCowPte, ShmemInTheSpanBreaksOnAnyFault) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 22);
  auto s = p.mmap(kBase + 32 * kPage, 4 * kPage, kRWProt,
                  MapFlags::shared | MapFlags::anonymous | MapFlags::fixed);
  ASSERT_TRUE(s);
  inv();
  store(p, *s, 5);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t t = pte_table(p, a);
  expect_shared(p, c, a, 2);
  EXPECT_EQ(c.rss().shmem, 1);
  EXPECT_EQ(load(c, *s + kPage), 0u);  // a read fault in a VMA with vm_ops breaks
  EXPECT_NE(pte_table(c, a), t);
  store(c, *s, 6);
  EXPECT_EQ(load(p, *s), 6u) << "still one shmem page";
  finish();
}

// The series lets an anonymous read fault install the zero page into a shared table; the
// model breaks instead (see __handle_mm_fault): here the child has no VMA where the parent
// maps a new one after fork, and must keep faulting there.
TEST_F(SeedCowPte, AnonymousReadFaultBreaksInTheModel) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 23);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t t = pte_table(p, a);
  const vaddr_t n = map_anon(p, 4, kBase + 200 * kPage);
  EXPECT_EQ(load(p, n), 0u);
  EXPECT_NE(pte_table(p, a), t);
  EXPECT_TRUE(pte_none(c, n));
  FAILS(c.load(n), Errno::fault);
  finish();
}

TEST_F(SeedCowPte, ClearSoftDirtyBreaks) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 24);
  STEP(p.set_cow_pte());
  Process& c = fork(p);
  const pfn_t t = pte_table(p, a);
  STEP(c.clear_soft_dirty());
  EXPECT_NE(pte_table(c, a), t);
  EXPECT_EQ(table_refs(p, a), 1);
  EXPECT_FALSE(pte(c, a) & kSoftDirty) << "cleared in the child's own copy of the table";
  store(c, a, 3);
  EXPECT_TRUE(c.pagemap(a).soft_dirty);
  EXPECT_TRUE(pte(p, a) & kSoftDirty) << "fork keeps it, and the child's clear_refs broke first";
  finish();
}

TEST_F(SeedCowPte, ClassicForkAfterSetCowPteInTheChildOnly) {
  Process& p = spawn();
  const vaddr_t a = area(p, 4, 0, 25);
  Process& c = fork(p);  // classic
  EXPECT_NE(pte_table(c, a), pte_table(p, a));
  STEP(c.set_cow_pte());
  Process& g = fork(c);
  expect_shared(c, g, a, 2);
  EXPECT_TRUE(pmd_writable(p, a));
  EXPECT_TRUE(AnonPage(page(pfn_of(p, a)), 3, 3, false));
  finish();
}

// ------------------------------------------------------------------ On-demand-fork

class OdfCowPte : public CowPteTest {};

TEST_F(OdfCowPte, ForkSharesOnlyFullyCoveredTablesAndDoesNoPageWork) {
  Process& p = spawn();
  const vaddr_t a = area(p, kSpan + 8, 0, 30);  // span 0 covered, span 1 partly
  const vaddr_t b = a + kSpan * kPage;
  STEP(p.set_cow_pte(CowPtePolicy::on_demand_fork));
  const std::uint64_t free_before = m.free_pages();
  Process& c = fork(p);
  // pgd, PUD, PMD and span 1's table for the child.
  EXPECT_EQ(free_before - m.free_pages(), 4u);
  expect_shared(p, c, a, 2);
  EXPECT_NE(pte_table(c, b), pte_table(p, b));
  EXPECT_TRUE(AnonPage(page(pfn_of(p, a)), 1, 1, true)) << "no per-page work at fork";
  EXPECT_TRUE(AnonPage(page(pfn_of(p, b)), 2, 2, false)) << "span 1 was copied as usual";
  EXPECT_TRUE(PteBits(pte(p, a), kRW | kD, 0)) << "entries untouched; the PMD protects them";
  EXPECT_EQ(p.rss().anon, int(kSpan + 8));
  EXPECT_EQ(c.rss().anon, 8) << "the shared table is charged to its owner, the parent";
  EXPECT_EQ(p.pgtables_bytes(), kUpperTables + 2 * kPage);
  EXPECT_EQ(c.pgtables_bytes(), kUpperTables + kPage);
  finish();
}

TEST_F(OdfCowPte, ReadFaultCopiesTheTableAndDoesThePageWork) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, kSpan, kBase);
  populate(p, a, 16, 31);
  STEP(p.set_cow_pte(CowPtePolicy::on_demand_fork));
  Process& c = fork(p);
  const pfn_t t = pte_table(p, a);
  EXPECT_EQ(load(c, a + 9 * kPage), pattern(31, 9)) << "a present entry: no fault, no copy";
  EXPECT_EQ(pte_table(c, a), t);
  EXPECT_EQ(load(c, a + 100 * kPage), 0u);  // a read fault in the shared table copies it
  EXPECT_NE(pte_table(c, a), t);
  EXPECT_EQ(pfn_of(c, a + 100 * kPage), m.zero_pfn());
  EXPECT_TRUE(pte_none(p, a + 100 * kPage));
  EXPECT_TRUE(pmd_writable(c, a));
  EXPECT_EQ(table_refs(p, a), 1);
  EXPECT_TRUE(AnonPage(page(pfn_of(p, a)), 2, 2, false));
  EXPECT_FALSE(pte(p, a) & kRW) << "write-protected in the old table too";
  EXPECT_EQ(c.rss().anon, 16);
  EXPECT_EQ(c.pgtables_bytes(), kUpperTables + kPage);
  // No reuse at count 1 (the paper): the parent copies too, and the old table goes.
  const std::uint64_t free_before = m.free_pages();
  store(p, a, 1);
  EXPECT_NE(pte_table(p, a), t);
  EXPECT_FALSE(page(t).page_table) << "the old table was freed (its frame may hold the copy)";
  EXPECT_EQ(free_before - m.free_pages(), 1u) << "new table, old table freed, page copied";
  EXPECT_EQ(load(c, a), pattern(31, 0));
  EXPECT_EQ(p.rss().anon, 16);
  finish();
}

TEST_F(OdfCowPte, OwnerLeavingHandsTheChargeOn) {
  Process& p = spawn();
  const vaddr_t a = area(p, kSpan, 0, 32);
  STEP(p.set_cow_pte(CowPtePolicy::on_demand_fork));
  Process& c = fork(p);
  Process& d = fork(p);
  EXPECT_EQ(table_refs(p, a), 3);
  store(p, a, 5);  // the owner copies: one of the others takes the charge
  EXPECT_EQ(table_refs(c, a), 2);
  EXPECT_EQ(p.rss().anon, int(kSpan));
  EXPECT_EQ(c.rss().anon + d.rss().anon, int(kSpan));
  exit(p);
  exit(c);
  EXPECT_EQ(d.rss().anon, int(kSpan));
  EXPECT_EQ(table_refs(d, a), 1);
  expect_loads(d, a, 8, 32, 1);  // page 0 was written by the parent only
  finish();
}

TEST_F(OdfCowPte, PartialUnmapCopiesFirstWholeUnmapDrops) {
  Process& p = spawn();
  const vaddr_t a = area(p, kSpan, 0, 33);
  const vaddr_t b = area(p, 2 * kSpan, 2 * kSpan, 34);
  STEP(p.set_cow_pte(CowPtePolicy::on_demand_fork));
  Process& c = fork(p);
  const pfn_t ta = pte_table(p, a);
  STEP(c.munmap(a + 4 * kPage, 4 * kPage));
  EXPECT_NE(pte_table(c, a), ta);
  EXPECT_EQ(table_refs(p, a), 1);
  expect_loads(p, a, 16, 33);
  const std::uint64_t free_before = m.free_pages();
  STEP(c.munmap(b, 2 * kSpan * kPage));  // two whole spans: drop, nothing copied
  EXPECT_EQ(m.free_pages(), free_before);
  EXPECT_EQ(table_refs(p, b), 1);
  STEP(p.madvise(b, kSpan * kPage, Advice::dontneed));  // the last holder of a whole span
  EXPECT_TRUE(pte_none(p, b));
  EXPECT_EQ(load(p, b), 0u);
  expect_loads(p, b, 4, 34, kSpan);
  finish();
}

TEST_F(OdfCowPte, AnMmThatPinnedCopiesInsteadOfSharing) {
  Process& p = spawn();
  const vaddr_t a = area(p, kSpan, 0, 35);
  STEP(p.pin(a, kPage, PinFlags::longterm | PinFlags::write));
  STEP(p.set_cow_pte(CowPtePolicy::on_demand_fork));
  Process& c = fork(p);
  EXPECT_NE(pte_table(c, a), pte_table(p, a));
  EXPECT_TRUE(pmd_writable(p, a));
  EXPECT_EQ(c.rss().anon, int(kSpan));
  STEP(p.unpin(a, kPage));
  finish();
}

TEST_F(OdfCowPte, MachineWidePolicy) {
  Machine odf(
      MachineConfig{.memory_bytes = 64ull << 20, .cow_pte_policy = CowPtePolicy::on_demand_fork});
  Process& p = odf.spawn();
  ASSERT_TRUE(p.mmap(kBase, kSpan * kPage, kRWProt, kPrivAnon | MapFlags::fixed));
  ASSERT_TRUE(p.store(kBase, 1));
  ASSERT_TRUE(p.set_cow_pte());
  auto c = p.fork();
  ASSERT_TRUE(c);
  EXPECT_EQ(odf.walk(**c, kBase).table[3], odf.walk(p, kBase).table[3]);
  EXPECT_EQ((*c)->rss().anon, 0) << "On-demand-fork: the parent carries the shared table";
  odf.check_invariants();
  EXPECT_EQ((*c)->set_cow_pte(CowPtePolicy::seed).error(), Errno::inval);
}

}  // namespace
}  // namespace cowpte::scen
