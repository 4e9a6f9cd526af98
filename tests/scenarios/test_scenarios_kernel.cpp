// Kernel-derived scenarios K01-K07, K18 (without swap), K19 (DONTFORK), K20 of
// linux-cow-semantics.md section 4, checked against the raw PTEs, struct page, pagemap, RSS and
// VmPTE. check_invariants() runs after every step (see scenario_util.hpp).

#include <cstdint>
#include <vector>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr std::int64_t kPinBias = 1024;  // GUP_PIN_COUNTING_BIAS
// x86-64 with 4-level paging: a fresh mm's first mapping allocates a PUD, a PMD and a PTE table,
// and mm->pgtables_bytes (VmPTE) counts every level below the PGD.
constexpr std::uint64_t kFirstTables = 3 * kPage;

class KernelCow : public ScenarioTest {
 protected:
  vaddr_t populated(Process& p, std::uint64_t n, std::uint64_t seed,
                    const loc_t& loc = loc_t::current()) {
    const vaddr_t a = map_anon(p, n, 0, loc);
    populate(p, a, n, seed, loc);
    for (std::uint64_t i = 0; i < n; ++i)
      EXPECT_TRUE(AnonPage(page(pfn_of(p, a + i * kPage, loc)), 1, 1, true)) << where(loc);
    return a;
  }
  void expect_same_counts(const PageInfo& x, const PageInfo& y,
                          const loc_t& loc = loc_t::current()) {
    EXPECT_EQ(x.refcount, y.refcount) << where(loc);
    EXPECT_EQ(x.mapcount, y.mapcount) << where(loc);
    EXPECT_EQ(x.free, y.free) << where(loc);
    EXPECT_EQ(x.zero_page, y.zero_page) << where(loc);
  }
};

// K01: a read fault on untouched private anon memory maps the shared zero page (special, R/O,
// clean, not soft-dirty, no RSS, no refcount); a write then allocates a zeroed exclusive page.
TEST_F(KernelCow, K01ZeroPageReadThenWriteFault) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 2);
  EXPECT_FALSE(p.pagemap(a).present);
  EXPECT_TRUE(pte_none(p, a));
  EXPECT_EQ(p.rss(), RssStat{});
  EXPECT_EQ(p.pgtables_bytes(), 0u) << "mmap allocates no page tables";

  const pfn_t zero = m.zero_pfn();
  const PageInfo z0 = page(zero);
  EXPECT_TRUE(z0.zero_page);
  EXPECT_FALSE(z0.free);

  EXPECT_EQ(load(p, a), 0u);
  const std::uint64_t ez = pte(p, a);
  EXPECT_EQ(pte_pfn(ez), zero);
  EXPECT_TRUE(PteFlagsAre(ez, kPageCopy | kSpecial)) << "zero-page PTE is PAGE_COPY|SPECIAL";
  const PagemapEntry pmz = p.pagemap(a);
  EXPECT_TRUE(pmz.present);
  EXPECT_EQ(pmz.pfn, zero);
  EXPECT_FALSE(pmz.exclusive) << "the zero page is no normal page: never PM_MMAP_EXCLUSIVE";
  EXPECT_FALSE(pmz.file_or_shared_anon);
  EXPECT_EQ(p.rss(), RssStat{}) << "the zero page is not counted";
  expect_same_counts(page(zero), z0);
  EXPECT_EQ(p.pgtables_bytes(), kFirstTables);

  const std::uint64_t free_before = m.free_pages();
  store(p, a, 0xabcdef);
  const std::uint64_t e = pte(p, a);
  const pfn_t pfn = pte_pfn(e);
  EXPECT_NE(pfn, zero);
  EXPECT_TRUE(PteFlagsAre(e, kPageCopy | kRW | kD | kSoftDirty))
      << "a fresh anon write gives PAGE_COPY|RW|D|SOFT_DIRTY";
  EXPECT_TRUE(AnonPage(page(pfn), 1, 1, true));
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 1, .swapents = 0, .shmem = 0}));
  EXPECT_EQ(free_before - m.free_pages(), 1u) << "exactly one new frame";
  expect_same_counts(page(zero), z0);
  const PagemapEntry pm = p.pagemap(a);
  EXPECT_TRUE(pm.present && pm.exclusive && pm.soft_dirty);
  EXPECT_EQ(pm.pfn, pfn);
  EXPECT_EQ(load(p, a + 8), 0u) << "the new page is zero-filled";
  EXPECT_EQ(load(p, a + kPage - 8), 0u);
  EXPECT_EQ(load(p, a), 0xabcdefu);
  EXPECT_EQ(p.pgtables_bytes(), kFirstTables);

  // After CLEAR_SOFTDIRTY (VM_SOFTDIRTY cleared), a zero-page mapping is not soft-dirty and a
  // write fault from the zero page makes the new page soft-dirty.
  const vaddr_t b = a + kPage;
  EXPECT_EQ(load(p, b), 0u);
  const std::uint64_t ezb = pte(p, b);
  EXPECT_EQ(pte_pfn(ezb), zero);
  STEP(p.clear_soft_dirty());
  EXPECT_EQ(pte(p, b), ezb) << "a zero-page PTE is already R/O and not soft-dirty";
  EXPECT_FALSE(p.pagemap(b).soft_dirty);
  EXPECT_TRUE(PteBits(pte(p, a), kP | kD, kRW | kSoftDirty));
  EXPECT_FALSE(p.pagemap(a).soft_dirty);
  EXPECT_TRUE(AnonPage(page(pfn), 1, 1, true));

  store(p, b, 7);
  const std::uint64_t eb = pte(p, b);
  EXPECT_NE(pte_pfn(eb), zero);
  EXPECT_TRUE(PteFlagsAre(eb, kPageCopy | kRW | kD | kSoftDirty));
  EXPECT_TRUE(p.pagemap(b).soft_dirty);
  EXPECT_TRUE(AnonPage(page(pte_pfn(eb)), 1, 1, true));
  EXPECT_EQ(p.rss().anon, 2);
  expect_same_counts(page(zero), z0);
  finish();
}

// K02: fork of a private anon VMA with only zero-page PTEs (no anon_vma) copies no page tables;
// once the VMA has an anon_vma, fork copies them all, zero-page PTEs included.
TEST_F(KernelCow, K02ForkWithoutAnonVmaCopiesNoPageTables) {
  constexpr std::uint64_t n = 4;
  Process& p = spawn();
  const vaddr_t a = map_anon(p, n);
  const pfn_t zero = m.zero_pfn();
  const PageInfo z0 = page(zero);
  std::vector<std::uint64_t> pe(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    EXPECT_EQ(load(p, a + i * kPage), 0u);
    pe[i] = pte(p, a + i * kPage);
    EXPECT_EQ(pte_pfn(pe[i]), zero);
  }
  EXPECT_EQ(p.pgtables_bytes(), kFirstTables);

  Process& c = fork(p);
  for (std::uint64_t i = 0; i < n; ++i) {
    EXPECT_TRUE(pte_none(c, a + i * kPage)) << "vma_needs_copy is false: page " << i;
    EXPECT_FALSE(c.pagemap(a + i * kPage).present);
    EXPECT_EQ(pte(p, a + i * kPage), pe[i]) << "the parent is untouched";
  }
  EXPECT_EQ(c.pgtables_bytes(), 0u) << "no page tables copied for the child";
  EXPECT_EQ(c.rss(), RssStat{});
  const auto vmas = c.smaps();
  ASSERT_EQ(vmas.size(), 1u) << "the VMA itself is duplicated";
  EXPECT_EQ(vmas[0].start, a);
  EXPECT_EQ(vmas[0].end, a + n * kPage);
  expect_same_counts(page(zero), z0);

  // The child faults its own PTEs.
  EXPECT_EQ(load(c, a), 0u);
  EXPECT_EQ(pfn_of(c, a), zero);
  EXPECT_TRUE(PteBits(pte(c, a), kP | kSpecial, kRW | kD | kSoftDirty));
  EXPECT_EQ(c.pgtables_bytes(), kFirstTables);
  store(c, a + kPage, 0x77);
  EXPECT_NE(pfn_of(c, a + kPage), zero);
  EXPECT_TRUE(AnonPage(page(pfn_of(c, a + kPage)), 1, 1, true));
  EXPECT_EQ(c.rss().anon, 1);
  EXPECT_EQ(pte(p, a + kPage), pe[1]) << "the child's fault leaves the parent alone";
  EXPECT_EQ(load(p, a + kPage), 0u);

  // A write in the parent gives its VMA an anon_vma: now fork copies the whole range.
  store(p, a + 3 * kPage, 0x99);
  const pfn_t pfn3 = pfn_of(p, a + 3 * kPage);
  Process& c2 = fork(p);
  for (std::uint64_t i = 0; i < 3; ++i) {
    const std::uint64_t ce = pte(c2, a + i * kPage);
    EXPECT_EQ(pte_pfn(ce), zero) << "page " << i;
    EXPECT_TRUE(PteBits(ce, kP | kSpecial, kRW | kA)) << "copied zero-page PTE, made old";
    EXPECT_EQ(pte(p, a + i * kPage), pe[i]);
  }
  EXPECT_EQ(pfn_of(c2, a + 3 * kPage), pfn3);
  EXPECT_TRUE(AnonPage(page(pfn3), 2, 2, false));
  EXPECT_EQ(c2.rss(), (RssStat{.file = 0, .anon = 1, .swapents = 0, .shmem = 0}));
  EXPECT_EQ(c2.pgtables_bytes(), p.pgtables_bytes());
  expect_same_counts(page(zero), z0);
  EXPECT_EQ(load(c2, a + 3 * kPage), 0x99u);
  finish();
}

// K04: fork of a writable exclusive anon page. Exact PTE values (reference section 7): the
// parent keeps everything but RW; the child's copy is also old; D and soft-dirty are kept as
// they were (here: page 0 soft-dirty, page 1 not, after CLEAR_SOFTDIRTY).
// K03: fork of a shared mapping (here shmem-backed MAP_SHARED|MAP_ANONYMOUS) copies nothing:
// vma_needs_copy() is false (no anon_vma). The child refaults from the page cache and maps the
// very same page; writes through either mapping are seen by both, and no COW ever happens.
TEST_F(KernelCow, K03ForkOfSharedMappingCopiesNothing) {
  constexpr std::uint64_t n = 2;
  Process& p = spawn();
  auto r = p.mmap(0, n * kPage, kRWProt, MapFlags::shared | MapFlags::anonymous);
  ASSERT_TRUE(r.has_value());
  const vaddr_t a = *r;
  inv();
  store(p, a, 0x1111);
  const pfn_t f = pfn_of(p, a);
  const std::uint64_t pe = pte(p, a);
  // A shared writable mapping is mapped writable and dirty at once (do_shared_fault).
  EXPECT_TRUE(PteBits(pe, kP | kRW | kUser | kD, kSpecial));
  EXPECT_FALSE(page(f).anon);
  EXPECT_EQ(page(f).refcount, 2) << "page cache + the parent's PTE";
  EXPECT_EQ(page(f).mapcount, 1);
  EXPECT_EQ(p.rss().shmem, 1);
  EXPECT_EQ(p.rss().anon, 0);
  EXPECT_TRUE(p.pagemap(a).file_or_shared_anon);

  Process& c = fork(p);
  EXPECT_TRUE(pte_none(c, a)) << "shared mappings are not copied at fork";
  EXPECT_EQ(c.pgtables_bytes(), 0u);
  EXPECT_EQ(c.rss(), RssStat{});
  EXPECT_EQ(pte(p, a), pe) << "the parent's PTE stays writable: no COW for shared memory";
  EXPECT_EQ(page(f).refcount, 2);

  // The child's read fault maps the same page-cache page.
  EXPECT_EQ(load(c, a), 0x1111u);
  EXPECT_EQ(pfn_of(c, a), f);
  EXPECT_EQ(page(f).refcount, 3);
  EXPECT_EQ(page(f).mapcount, 2);
  EXPECT_EQ(c.rss().shmem, 1);
  EXPECT_FALSE(c.pagemap(a).exclusive) << "mapped by two PTEs";
  // Writes go to the one page, whoever makes them.
  store(c, a, 0x2222);
  EXPECT_EQ(pfn_of(c, a), f);
  EXPECT_EQ(load(p, a), 0x2222u);
  store(p, a + 8, 0x3333);
  EXPECT_EQ(load(c, a + 8), 0x3333u);
  EXPECT_EQ(pfn_of(p, a), f);
  c.exit();
  inv();
  EXPECT_EQ(page(f).refcount, 2);
  EXPECT_EQ(page(f).mapcount, 1);
  finish();
}

TEST_F(KernelCow, K04ForkWriteProtectsBothAndClearsExclusive) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 2, 4);
  STEP(p.clear_soft_dirty());  // both PTEs R/O and not soft-dirty; the pages stay exclusive
  store(p, a, pattern(4, 0));  // page 0: reused, writable and soft-dirty again
  const vaddr_t b = a + kPage;
  const pfn_t pfn0 = pfn_of(p, a), pfn1 = pfn_of(p, b);
  const std::uint64_t e0 = pte(p, a), e1 = pte(p, b);
  EXPECT_TRUE(PteFlagsAre(e0, kPageCopy | kRW | kD | kSoftDirty));
  EXPECT_TRUE(PteFlagsAre(e1, kPageCopy | kD));
  EXPECT_TRUE(AnonPage(page(pfn0), 1, 1, true));
  EXPECT_TRUE(AnonPage(page(pfn1), 1, 1, true));

  Process& c = fork(p);
  EXPECT_EQ(pte(p, a), e0 & ~kRW) << "parent: only RW cleared";
  EXPECT_EQ(pte(p, b), e1) << "parent: an R/O PTE is left as it is";
  EXPECT_EQ(pte(c, a), e0 & ~(kRW | kA)) << "child: R/O and old, D and soft-dirty kept";
  EXPECT_EQ(pte(c, b), e1 & ~kA) << "child: old, soft-dirty stays clear";
  EXPECT_TRUE(PteFlagsAre(pte(c, a), kP | kUser | kNX | kD | kSoftDirty));
  EXPECT_TRUE(AnonPage(page(pfn0), 2, 2, false));
  EXPECT_TRUE(AnonPage(page(pfn1), 2, 2, false)) << "fork clears PageAnonExclusive";
  EXPECT_EQ(c.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 0}));
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 0}));
  for (Process* q : {&p, &c}) {
    EXPECT_FALSE(q->pagemap(a).exclusive);
    EXPECT_FALSE(q->pagemap(b).exclusive);
    EXPECT_TRUE(q->pagemap(a).soft_dirty);
    EXPECT_FALSE(q->pagemap(b).soft_dirty) << "VM_SOFTDIRTY (clear) is inherited too";
  }
  EXPECT_NE(pte_table(c, a), pte_table(p, a));
  EXPECT_EQ(c.pgtables_bytes(), p.pgtables_bytes());
  EXPECT_EQ(load(c, a), pattern(4, 0));
  EXPECT_EQ(load(c, b), pattern(4, 1));
  finish();
}

// K05: K04, EXIT(child), parent write: refcount 1, so the page is reused and exclusive again.
TEST_F(KernelCow, K05ParentWriteAfterChildExitReuses) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 1, 5);
  const pfn_t pfn = pfn_of(p, a);
  Process& c = fork(p);
  EXPECT_TRUE(AnonPage(page(pfn), 2, 2, false));
  exit(c);
  EXPECT_TRUE(AnonPage(page(pfn), 1, 1, false));
  EXPECT_TRUE(PteBits(pte(p, a), kP, kRW));

  const std::uint64_t free_before = m.free_pages();
  store(p, a, kFF);
  EXPECT_EQ(pfn_of(p, a), pfn) << "refcount 1: reuse, no copy";
  EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kA | kD | kSoftDirty, 0));
  EXPECT_TRUE(AnonPage(page(pfn), 1, 1, true)) << "reuse marks the page exclusive again";
  EXPECT_EQ(m.free_pages(), free_before);
  EXPECT_EQ(p.rss().anon, 1);
  EXPECT_EQ(load(p, a), kFF);
  finish();
}

// K06: K04, parent write copies; then the child's write finds refcount 1 and reuses.
TEST_F(KernelCow, K06ParentCopiesThenChildReuses) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 1, 6);
  const pfn_t old = pfn_of(p, a);
  Process& c = fork(p);
  EXPECT_TRUE(AnonPage(page(old), 2, 2, false));

  std::uint64_t free_before = m.free_pages();
  store(p, a, kFF);
  const pfn_t now = pfn_of(p, a);
  EXPECT_NE(now, old) << "refcount 2: the parent copies";
  EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kA | kD | kSoftDirty, 0));
  EXPECT_TRUE(AnonPage(page(now), 1, 1, true));
  EXPECT_TRUE(AnonPage(page(old), 1, 1, false));
  EXPECT_EQ(free_before - m.free_pages(), 1u);
  EXPECT_TRUE(PteBits(pte(c, a), kP, kRW));

  free_before = m.free_pages();
  store(c, a, 0x66);
  EXPECT_EQ(pfn_of(c, a), old) << "refcount 1: the child reuses";
  EXPECT_TRUE(PteBits(pte(c, a), kP | kRW | kA | kD | kSoftDirty, 0));
  EXPECT_TRUE(AnonPage(page(old), 1, 1, true));
  EXPECT_EQ(m.free_pages(), free_before);
  EXPECT_EQ(p.rss().anon, 1);
  EXPECT_EQ(c.rss().anon, 1);
  EXPECT_EQ(load(p, a), kFF);
  EXPECT_EQ(load(c, a), 0x66u);
  finish();
}

// K07: fork of an exclusive page that may be pinned (MMF_HAS_PINNED, refcount >= 1024): the
// child gets a fresh copy, dirty and writable; the parent PTE is untouched. A neighbouring
// unpinned page in the same VMA is shared as usual.
TEST_F(KernelCow, K07PinnedExclusivePageIsCopiedAtFork) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 2, 7);
  const vaddr_t b = a + kPage;
  const pfn_t pfn0 = pfn_of(p, a), pfn1 = pfn_of(p, b);
  const std::uint64_t e0 = pte(p, a);
  STEP(p.pin(a, kPage, PinFlags::longterm));  // R/O pin of an exclusive page: no unshare
  EXPECT_EQ(pte(p, a), e0);
  EXPECT_TRUE(AnonPage(page(pfn0), 1 + kPinBias, 1, true));
  const std::uint64_t e1 = pte(p, b);

  Process& c = fork(p);
  EXPECT_EQ(pte(p, a), e0) << "the parent PTE of the pinned page must be untouched (still RW)";
  EXPECT_TRUE(AnonPage(page(pfn0), 1 + kPinBias, 1, true));
  const pfn_t c0 = pfn_of(c, a);
  EXPECT_NE(c0, pfn0) << "the child must get its own copy at fork";
  EXPECT_TRUE(PteBits(pte(c, a), kP | kRW | kD | kSoftDirty, kSpecial));
  EXPECT_TRUE(AnonPage(page(c0), 1, 1, true));
  // The unpinned page is COW-shared.
  EXPECT_EQ(pte(p, b), e1 & ~kRW);
  EXPECT_EQ(pte(c, b), e1 & ~(kRW | kA));
  EXPECT_TRUE(AnonPage(page(pfn1), 2, 2, false));
  EXPECT_EQ(c.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 0}));
  EXPECT_EQ(p.rss().anon, 2);
  EXPECT_EQ(load(c, a), pattern(7, 0));

  store(p, a, kFF);  // no fault
  EXPECT_EQ(pte(p, a), e0);
  EXPECT_EQ(read_gup(p, a), kFF);
  EXPECT_EQ(load(c, a), pattern(7, 0));
  store(c, a, 0x55);  // the child's copy is its own: no fault, no copy
  EXPECT_EQ(pfn_of(c, a), c0);
  EXPECT_EQ(read_gup(p, a), kFF);

  STEP(p.unpin(a, kPage));
  EXPECT_TRUE(AnonPage(page(pfn0), 1, 1, true));
  finish();
}

// K07, the "may be pinned" test itself: page_needs_cow_for_dma needs MMF_HAS_PINNED (a sticky
// per-mm flag) and, on a small folio, refcount >= GUP_PIN_COUNTING_BIAS. FOLL_GET references
// alone never set the flag; once the mm has pinned anything, 1024 of them look like a pin (an
// accepted false positive).
TEST_F(KernelCow, K07MaybePinnedNeedsMmfHasPinned) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 2, 17);
  const vaddr_t b = a + kPage;
  const pfn_t pfn0 = pfn_of(p, a), pfn1 = pfn_of(p, b);

  // The mm has never pinned: refcount 1025 from FOLL_GET does not stop sharing.
  for (int i = 0; i < kPinBias; ++i) STEP(p.gup_get(b, kPage));
  EXPECT_TRUE(AnonPage(page(pfn1), 1 + kPinBias, 1, true));
  Process& c = fork(p);
  EXPECT_EQ(pfn_of(c, b), pfn1) << "no MMF_HAS_PINNED: fork shares the page";
  EXPECT_TRUE(AnonPage(page(pfn1), 2 + kPinBias, 2, false));
  EXPECT_TRUE(PteBits(pte(p, b), kP, kRW));
  exit(c);
  gup_put_until(p, b, kPage, pfn1, 1);
  store(p, b, 1);  // refcount 1: reuse, exclusive again
  EXPECT_EQ(pfn_of(p, b), pfn1);
  EXPECT_TRUE(AnonPage(page(pfn1), 1, 1, true));

  // Pin and unpin page 0: MMF_HAS_PINNED stays set.
  STEP(p.pin(a, kPage, PinFlags::longterm));
  STEP(p.unpin(a, kPage));
  EXPECT_TRUE(AnonPage(page(pfn0), 1, 1, true));
  for (int i = 0; i < kPinBias; ++i) STEP(p.gup_get(b, kPage));
  EXPECT_TRUE(AnonPage(page(pfn1), 1 + kPinBias, 1, true));
  const std::uint64_t e1 = pte(p, b);

  Process& c2 = fork(p);
  EXPECT_EQ(pfn_of(c2, a), pfn0) << "refcount 1: not maybe-pinned, shared";
  EXPECT_TRUE(AnonPage(page(pfn0), 2, 2, false));
  EXPECT_NE(pfn_of(c2, b), pfn1) << "MMF_HAS_PINNED and refcount >= 1024: copied at fork";
  EXPECT_EQ(pte(p, b), e1) << "the parent PTE stays writable";
  EXPECT_TRUE(AnonPage(page(pfn1), 1 + kPinBias, 1, true));
  EXPECT_TRUE(AnonPage(page(pfn_of(c2, b)), 1, 1, true));
  EXPECT_EQ(load(c2, b), 1u);
  exit(c2);
  gup_put_until(p, b, kPage, pfn1, 1);
  finish();
}

// K18 (without swap): zap accounting. A present anon page: ANON -1 and, at refcount 0, the frame
// is freed; the zero page: no change; a page still mapped elsewhere or pinned is not freed;
// unmapping everything frees the page tables (VmPTE 0) and leaves every counter at 0.
TEST_F(KernelCow, K18ZapAccounting) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 4);
  const pfn_t zero = m.zero_pfn();
  const PageInfo z0 = page(zero);
  store(p, a, 10);
  store(p, a + kPage, 11);
  EXPECT_EQ(load(p, a + 2 * kPage), 0u);  // zero page; page 3 stays untouched
  const pfn_t pfn0 = pfn_of(p, a), pfn1 = pfn_of(p, a + kPage);
  EXPECT_EQ(p.rss().anon, 2);
  const std::uint64_t vmpte = p.pgtables_bytes();
  EXPECT_EQ(vmpte, kFirstTables);

  std::uint64_t free_before = m.free_pages();
  STEP(p.munmap(a, kPage));
  EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = 1, .swapents = 0, .shmem = 0}));
  EXPECT_TRUE(page(pfn0).free);
  EXPECT_EQ(m.free_pages(), free_before + 1) << "the page is freed; the PTE table is still used";
  EXPECT_EQ(p.pgtables_bytes(), vmpte);
  EXPECT_TRUE(pte_none(p, a));
  FAILS(p.load(a), Errno::fault);

  free_before = m.free_pages();
  STEP(p.munmap(a + 2 * kPage, kPage));  // the zero-page PTE
  EXPECT_EQ(p.rss().anon, 1) << "zapping the zero page changes no counter";
  expect_same_counts(page(zero), z0);
  EXPECT_EQ(m.free_pages(), free_before);

  STEP(p.madvise(a + kPage, kPage, Advice::dontneed));
  EXPECT_EQ(p.rss(), RssStat{});
  EXPECT_TRUE(page(pfn1).free);
  EXPECT_EQ(m.free_pages(), free_before + 1);
  EXPECT_FALSE(p.pagemap(a + kPage).present);
  EXPECT_EQ(load(p, a + kPage), 0u) << "DONTNEED keeps the VMA; it reads zeros again";
  EXPECT_EQ(pfn_of(p, a + kPage), zero);

  // A COW-shared page zapped in one process loses one mapping and is not freed.
  store(p, a + 3 * kPage, 13);
  const pfn_t pfn3 = pfn_of(p, a + 3 * kPage);
  Process& c = fork(p);
  EXPECT_TRUE(AnonPage(page(pfn3), 2, 2, false));
  EXPECT_EQ(c.rss().anon, 1);
  STEP(c.munmap(a + 3 * kPage, kPage));
  EXPECT_EQ(c.rss(), RssStat{});
  EXPECT_EQ(p.rss().anon, 1);
  EXPECT_TRUE(AnonPage(page(pfn3), 1, 1, false));

  // A pinned page outlives its last mapping until it is unpinned.
  STEP(p.pin(a + 3 * kPage, kPage, PinFlags::longterm));  // refcount 1: unshare reuses
  EXPECT_EQ(pfn_of(p, a + 3 * kPage), pfn3);
  EXPECT_TRUE(AnonPage(page(pfn3), 1 + kPinBias, 1, true));
  STEP(p.munmap(a + 3 * kPage, kPage));
  EXPECT_EQ(p.rss(), RssStat{});
  EXPECT_TRUE(HeldPage(page(pfn3), kPinBias)) << "the pin keeps the frame";
  EXPECT_EQ(read_gup(p, a + 3 * kPage), 13u);
  STEP(p.unpin(a + 3 * kPage, kPage));
  EXPECT_TRUE(page(pfn3).free);

  // Unmapping the rest (holes included) frees every page table of both processes.
  STEP(p.munmap(a, 4 * kPage));
  EXPECT_EQ(p.rss(), RssStat{});
  EXPECT_EQ(p.pgtables_bytes(), 0u) << "no VMA left: free_pgtables frees every level";
  STEP(c.munmap(a, 4 * kPage));
  EXPECT_EQ(c.rss(), RssStat{});
  EXPECT_EQ(c.pgtables_bytes(), 0u);
  expect_same_counts(page(zero), z0);
  finish();
}

// K19: MADV_DONTFORK (VM_DONTCOPY): the VMA is absent in the child and its page keeps its
// writable PTE and exclusivity in the parent; MADV_DOFORK restores normal sharing.
// The MADV_WIPEONFORK half of K19 is not reachable from the facade (Advice has no wipeonfork)
// and neither is VM_LOCKED (no mlock): both are skipped.
TEST_F(KernelCow, K19DontforkVmaIsAbsentInChild) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 3, 19);
  const vaddr_t b = a + kPage;
  const pfn_t pfn0 = pfn_of(p, a), pfn1 = pfn_of(p, b), pfn2 = pfn_of(p, a + 2 * kPage);

  STEP(p.madvise(b, kPage, Advice::dontfork));
  EXPECT_EQ(p.smaps().size(), 3u) << "madvise splits the VMA around the DONTFORK page";
  const std::uint64_t e1 = pte(p, b);

  Process& c = fork(p);
  const auto vmas = c.smaps();
  ASSERT_EQ(vmas.size(), 2u);
  EXPECT_EQ(vmas[0].start, a);
  EXPECT_EQ(vmas[0].end, b);
  EXPECT_EQ(vmas[1].start, a + 2 * kPage);
  EXPECT_EQ(vmas[1].end, a + 3 * kPage);
  EXPECT_TRUE(pte_none(c, b));
  EXPECT_FALSE(c.pagemap(b).present);
  FAILS(c.load(b), Errno::fault);
  FAILS(c.store(b, 1), Errno::fault);
  EXPECT_EQ(pte(p, b), e1) << "a VM_DONTCOPY VMA is not write-protected by fork";
  EXPECT_TRUE(AnonPage(page(pfn1), 1, 1, true));
  EXPECT_TRUE(AnonPage(page(pfn0), 2, 2, false));
  EXPECT_TRUE(AnonPage(page(pfn2), 2, 2, false));
  EXPECT_EQ(c.rss(), (RssStat{.file = 0, .anon = 2, .swapents = 0, .shmem = 0}));
  EXPECT_EQ(p.rss().anon, 3);

  const std::uint64_t free_before = m.free_pages();
  store(p, b, kFF);  // no fault: still writable
  EXPECT_EQ(pte(p, b), e1);
  EXPECT_EQ(m.free_pages(), free_before);
  EXPECT_EQ(load(c, a), pattern(19, 0));
  EXPECT_EQ(load(c, a + 2 * kPage), pattern(19, 2));

  STEP(p.madvise(b, kPage, Advice::dofork));
  Process& c2 = fork(p);
  EXPECT_EQ(pfn_of(c2, b), pfn1);
  EXPECT_TRUE(AnonPage(page(pfn1), 2, 2, false));
  EXPECT_TRUE(PteBits(pte(p, b), kP, kRW));
  EXPECT_EQ(load(c2, b), kFF);
  EXPECT_TRUE(AnonPage(page(pfn0), 3, 3, false));
  EXPECT_EQ(c2.rss().anon, 3);
  finish();
}

// K20 (= A02's rule): after fork, mprotect(RW) never makes a non-exclusive anon PTE writable,
// even at mapcount 1 or refcount 1; an exclusive page is upgraded at once (mprotect optimization).
TEST_F(KernelCow, K20MprotectNeverUpgradesNonExclusive) {
  Process& p = spawn();
  const vaddr_t a = populated(p, 2, 20);
  const vaddr_t b = a + kPage;
  const pfn_t pfn0 = pfn_of(p, a), pfn1 = pfn_of(p, b);
  Process& c = fork(p);
  store(p, b, kFF);  // the parent copies page 1: its new page is exclusive
  const pfn_t pfn1p = pfn_of(p, b);
  EXPECT_NE(pfn1p, pfn1);
  EXPECT_TRUE(AnonPage(page(pfn1), 1, 1, false));

  STEP(p.mprotect(a, 2 * kPage, Prot::read));
  EXPECT_TRUE(PteBits(pte(p, a), kP, kRW));
  EXPECT_TRUE(PteBits(pte(p, b), kP, kRW));
  STEP(p.mprotect(a, 2 * kPage, kRWProt));
  EXPECT_TRUE(PteBits(pte(p, a), kP, kRW)) << "shared page: must stay R/O";
  EXPECT_TRUE(PteBits(pte(p, b), kP | kRW, 0)) << "exclusive dirty page: upgraded without a fault";
  EXPECT_EQ(pfn_of(p, a), pfn0);
  EXPECT_EQ(pfn_of(p, b), pfn1p);

  // The child's page 1 has mapcount 1 and refcount 1 but is not PageAnonExclusive.
  STEP(c.mprotect(a, 2 * kPage, Prot::read));
  STEP(c.mprotect(a, 2 * kPage, kRWProt));
  EXPECT_TRUE(PteBits(pte(c, a), kP, kRW));
  EXPECT_TRUE(PteBits(pte(c, b), kP, kRW)) << "not PageAnonExclusive: must stay R/O";
  EXPECT_TRUE(AnonPage(page(pfn1), 1, 1, false));

  exit(c);
  EXPECT_TRUE(AnonPage(page(pfn0), 1, 1, false));
  STEP(p.mprotect(a, kPage, Prot::read));
  STEP(p.mprotect(a, kPage, kRWProt));
  EXPECT_TRUE(PteBits(pte(p, a), kP, kRW)) << "refcount 1 is not PageAnonExclusive";
  EXPECT_TRUE(AnonPage(page(pfn0), 1, 1, false));

  const std::uint64_t free_before = m.free_pages();
  store(p, a, 0x20);  // the write fault reuses it
  EXPECT_EQ(pfn_of(p, a), pfn0);
  EXPECT_TRUE(PteBits(pte(p, a), kP | kRW, 0));
  EXPECT_TRUE(AnonPage(page(pfn0), 1, 1, true));
  EXPECT_EQ(m.free_pages(), free_before);
  finish();
}

}  // namespace
}  // namespace cowpte::scen
