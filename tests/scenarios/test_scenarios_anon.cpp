// cow.c anonymous cases A01-A14 (reference linux-cow-semantics.md section 2.3) on memory variant
// V01: a few write-populated 4 KiB base pages, each exclusive and mapped writable.
//
// Each case checks what cow.c checks (the data seen by the other side, the pipe or the pin) and
// the kernel state that makes it so: the raw PTE, struct page counts and PageAnonExclusive, the
// pagemap bits, RSS and free frames. check_invariants() runs after every step (see
// scenario_util.hpp).
//
// Vocabulary: "io_uring fixed buffer" = pin(FOLL_WRITE|FOLL_LONGTERM); "R/O pin" =
// pin(FOLL_LONGTERM); READ_VIA_PIN = read_gup(); vmsplice = gup_get()/gup_put() with read_gup()
// as the pipe's read end; CLEAR_SOFTDIRTY = clear_soft_dirty().

#include <cstdint>
#include <vector>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr PinFlags kIoUring = PinFlags::write | PinFlags::longterm;  // PIN_RW
constexpr PinFlags kRoPin = PinFlags::longterm;                      // PIN_RO
constexpr std::int64_t kPinBias = 1024;                              // GUP_PIN_COUNTING_BIAS

class AnonCowV01 : public ScenarioTest {
 protected:
  // V01: map n pages and write-populate them. Every page is then a fresh exclusive anon page
  // mapped by a writable, young, dirty, soft-dirty PTE (do_anonymous_page).
  vaddr_t setup_v01(Process& p, std::uint64_t n, std::uint64_t seed,
                    const loc_t& loc = loc_t::current()) {
    const vaddr_t a = map_anon(p, n, 0, loc);
    populate(p, a, n, seed, loc);
    for (std::uint64_t i = 0; i < n; ++i) {
      const vaddr_t va = a + i * kPage;
      const std::uint64_t e = pte(p, va, loc);
      EXPECT_TRUE(PteBits(e, kP | kRW | kA | kD | kSoftDirty, kSpecial)) << where(loc);
      EXPECT_TRUE(AnonPage(page(pte_pfn(e)), 1, 1, true)) << where(loc);
      const PagemapEntry pm = p.pagemap(va);
      EXPECT_TRUE(pm.present && pm.exclusive && pm.soft_dirty) << where(loc);
      EXPECT_FALSE(pm.swapped || pm.file_or_shared_anon) << where(loc);
      EXPECT_EQ(pm.pfn, pte_pfn(e)) << where(loc);
    }
    EXPECT_EQ(p.rss(), (RssStat{.file = 0, .anon = std::int64_t(n), .swapents = 0, .shmem = 0}))
        << where(loc);
    return a;
  }

  // The state right after fork() shared a written, unpinned page (copy_present_pte with
  // page_try_dup_anon_rmap succeeding): both PTEs R/O, the child's old, D and soft-dirty kept,
  // refcount and mapcount 2, PageAnonExclusive cleared, no longer exclusive in pagemap.
  void expect_fork_shared(Process& parent, Process& child, vaddr_t va, pfn_t pfn,
                          std::int64_t extra_refs = 0, const loc_t& loc = loc_t::current()) {
    const std::uint64_t pe = pte(parent, va, loc);
    const std::uint64_t ce = pte(child, va, loc);
    EXPECT_EQ(pte_pfn(pe), pfn) << where(loc);
    EXPECT_EQ(pte_pfn(ce), pfn) << where(loc);
    EXPECT_TRUE(PteBits(pe, kP | kA | kD | kSoftDirty, kRW)) << "parent, " << where(loc);
    EXPECT_TRUE(PteBits(ce, kP | kD | kSoftDirty, kRW | kA)) << "child, " << where(loc);
    EXPECT_TRUE(AnonPage(page(pfn), 2 + extra_refs, 2, false)) << where(loc);
    for (Process* q : {&parent, &child}) {
      const PagemapEntry pm = q->pagemap(va);
      EXPECT_TRUE(pm.present) << where(loc);
      EXPECT_FALSE(pm.exclusive) << "pagemap exclusive with mapcount 2, " << where(loc);
      EXPECT_TRUE(pm.soft_dirty) << where(loc);
      EXPECT_EQ(pm.pfn, pfn) << where(loc);
    }
  }

  // MPROTECT RO, CLEAR_SOFTDIRTY, MPROTECT RW on a V01 page: the PTE ends R/O and clean of
  // soft-dirty while the page stays exclusive. mprotect may not re-upgrade it, because with
  // VM_SOFTDIRTY cleared a PTE without soft-dirty needs the write fault (can_change_pte_writable).
  void make_ro_exclusive(Process& p, vaddr_t a, pfn_t pfn, std::int64_t refcount,
                         const loc_t& loc = loc_t::current()) {
    ok(p.mprotect(a, kPage, Prot::read), "mprotect(PROT_READ)", loc);
    EXPECT_TRUE(PteBits(pte(p, a, loc), kP, kRW)) << where(loc);
    ok(p.clear_soft_dirty(), "clear_soft_dirty", loc);
    EXPECT_TRUE(PteBits(pte(p, a, loc), kP, kRW | kSoftDirty)) << where(loc);
    EXPECT_FALSE(p.pagemap(a).soft_dirty) << where(loc);
    ok(p.mprotect(a, kPage, kRWProt), "mprotect(PROT_READ|PROT_WRITE)", loc);
    const std::uint64_t e = pte(p, a, loc);
    EXPECT_EQ(pte_pfn(e), pfn) << where(loc);
    EXPECT_TRUE(PteBits(e, kP | kD, kRW | kSoftDirty))
        << "mprotect must not upgrade a PTE that soft-dirty tracking wants to see written, "
        << where(loc);
    EXPECT_FALSE(p.pagemap(a).soft_dirty) << where(loc);
    EXPECT_TRUE(AnonPage(page(pfn), refcount, 1, true)) << where(loc);
  }

  // A01 / A02.
  void run_basic_cow(bool mprotect_opt) {
    constexpr std::uint64_t n = 3;
    Process& p = spawn();
    const vaddr_t a = setup_v01(p, n, 1);
    std::vector<pfn_t> old(n);
    for (std::uint64_t i = 0; i < n; ++i) old[i] = pfn_of(p, a + i * kPage);

    Process& c = fork(p);
    for (std::uint64_t i = 0; i < n; ++i) expect_fork_shared(p, c, a + i * kPage, old[i]);
    EXPECT_EQ(c.rss().anon, std::int64_t(n));
    EXPECT_EQ(p.rss().anon, std::int64_t(n));
    EXPECT_NE(pte_table(p, a), pte_table(c, a)) << "plain fork copies the PTE table";
    EXPECT_EQ(c.pgtables_bytes(), p.pgtables_bytes());

    // The child takes its snapshot.
    for (std::uint64_t i = 0; i < n; ++i) EXPECT_EQ(load(c, a + i * kPage), pattern(1, i));

    if (mprotect_opt) {
      STEP(p.mprotect(a, n * kPage, Prot::read));
      for (std::uint64_t i = 0; i < n; ++i) EXPECT_TRUE(PteBits(pte(p, a + i * kPage), kP, kRW));
      STEP(p.mprotect(a, n * kPage, kRWProt));
      // The mprotect optimization may upgrade only exclusive anon pages: these are shared.
      for (std::uint64_t i = 0; i < n; ++i) {
        EXPECT_TRUE(PteBits(pte(p, a + i * kPage), kP, kRW)) << "page " << i;
        EXPECT_EQ(pfn_of(p, a + i * kPage), old[i]);
        EXPECT_TRUE(PteBits(pte(c, a + i * kPage), kP, kRW)) << "child page " << i;
        EXPECT_TRUE(AnonPage(page(old[i]), 2, 2, false));
      }
    }

    // The parent writes: not exclusive, refcount 2 -> wp_page_copy.
    const std::uint64_t free_before = m.free_pages();
    for (std::uint64_t i = 0; i < n; ++i) store(p, a + i * kPage, kFF);
    EXPECT_EQ(free_before - m.free_pages(), n) << "one new frame per copied page";
    for (std::uint64_t i = 0; i < n; ++i) {
      const vaddr_t va = a + i * kPage;
      const std::uint64_t pe = pte(p, va);
      EXPECT_NE(pte_pfn(pe), old[i]) << "the parent must copy, page " << i;
      EXPECT_TRUE(PteBits(pe, kP | kRW | kA | kD | kSoftDirty, kSpecial));
      EXPECT_TRUE(AnonPage(page(pte_pfn(pe)), 1, 1, true));
      EXPECT_TRUE(AnonPage(page(old[i]), 1, 1, false)) << "old page left to the child";
      EXPECT_TRUE(p.pagemap(va).exclusive);
      const PagemapEntry cpm = c.pagemap(va);
      EXPECT_EQ(cpm.pfn, old[i]);
      EXPECT_TRUE(cpm.exclusive) << "pagemap exclusive means mapcount 1";
      EXPECT_TRUE(PteBits(pte(c, va), kP, kRW));
    }
    EXPECT_EQ(p.rss().anon, std::int64_t(n)) << "anon -> anon copy does not change RSS";
    EXPECT_EQ(c.rss().anon, std::int64_t(n));

    // "No leak from parent into child".
    for (std::uint64_t i = 0; i < n; ++i) {
      EXPECT_EQ(load(c, a + i * kPage), pattern(1, i));
      EXPECT_EQ(load(p, a + i * kPage), kFF);
    }

    exit(c);
    for (std::uint64_t i = 0; i < n; ++i) EXPECT_TRUE(page(old[i]).free);
    finish();
  }

  // A03 / A04: FORK; child GUP_REF + MUNMAP; parent writes; the pipe still holds the old data.
  void run_vmsplice_unmap_in_child(bool mprotect_opt) {
    Process& p = spawn();
    const vaddr_t a = setup_v01(p, 1, 3);
    const pfn_t old = pfn_of(p, a);
    Process& c = fork(p);
    expect_fork_shared(p, c, a, old);

    STEP(c.gup_get(a, kPage));  // vmsplice(): FOLL_GET, +1, no unshare
    EXPECT_TRUE(AnonPage(page(old), 3, 2, false));
    EXPECT_EQ(pfn_of(c, a), old);
    EXPECT_TRUE(PteBits(pte(c, a), kP, kRW));

    STEP(c.munmap(a, kPage));
    EXPECT_TRUE(pte_none(c, a));
    EXPECT_FALSE(c.pagemap(a).present);
    EXPECT_EQ(c.rss().anon, 0);
    EXPECT_TRUE(AnonPage(page(old), 2, 1, false)) << "parent mapping + pipe reference";
    EXPECT_TRUE(p.pagemap(a).exclusive) << "mapcount is 1 now";
    EXPECT_TRUE(PteBits(pte(p, a), kP, kRW));

    if (mprotect_opt) {
      STEP(p.mprotect(a, kPage, Prot::read));
      EXPECT_TRUE(PteBits(pte(p, a), kP, kRW));
      STEP(p.mprotect(a, kPage, kRWProt));
      EXPECT_TRUE(PteBits(pte(p, a), kP, kRW))
          << "mapcount 1 but not PageAnonExclusive: mprotect must not make it writable";
      EXPECT_EQ(pfn_of(p, a), old);
      EXPECT_TRUE(AnonPage(page(old), 2, 1, false));
    }

    // Reuse is decided by the refcount (2), not the mapcount (1): the parent copies.
    store(p, a, kFF);
    const pfn_t now = pfn_of(p, a);
    EXPECT_NE(now, old) << "the parent must not reuse a page the pipe still references";
    EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kD | kSoftDirty, 0));
    EXPECT_TRUE(AnonPage(page(now), 1, 1, true));
    EXPECT_TRUE(HeldPage(page(old), 1)) << "only the pipe holds the old page";

    EXPECT_EQ(read_gup(c, a), pattern(3, 0)) << "the pipe must hold the old data";
    EXPECT_EQ(load(p, a), kFF);

    gup_put_until(c, a, kPage, old, 0);
    EXPECT_TRUE(page(old).free);
    finish();
  }

  // A09 / A10: FORK (child stays); R/O pin in the parent unshares into a copy mapped R/O.
  void run_ro_pin_shared() {
    Process& p = spawn();
    const vaddr_t a = setup_v01(p, 1, 9);
    const pfn_t old = pfn_of(p, a);
    Process& c = fork(p);
    expect_fork_shared(p, c, a, old);

    const std::uint64_t free_before = m.free_pages();
    STEP(p.pin(a, kPage, kRoPin));
    // gup_must_unshare: FOLL_PIN without FOLL_WRITE on a non-exclusive anon page. The unshare
    // fault sees refcount 2 and copies (wp_page_copy in unshare mode).
    const std::uint64_t e = pte(p, a);
    const pfn_t now = pte_pfn(e);
    EXPECT_NE(now, old) << "R/O pin of a shared anon page must unshare into a copy";
    EXPECT_TRUE(PteBits(e, kP | kSoftDirty, kRW))
        << "an unshare maps the copy R/O and keeps soft-dirty";
    EXPECT_TRUE(AnonPage(page(now), 1 + kPinBias, 1, true));
    EXPECT_TRUE(AnonPage(page(old), 1, 1, false));
    EXPECT_EQ(pfn_of(c, a), old);
    EXPECT_TRUE(PteBits(pte(c, a), kP, kRW));
    EXPECT_EQ(free_before - m.free_pages(), 1u);
    EXPECT_EQ(p.rss().anon, 1);
    EXPECT_EQ(c.rss().anon, 1);
    EXPECT_EQ(load(p, a), pattern(9, 0));

    // The write fault finds the pinned page exclusive and reuses it.
    store(p, a, kFF);
    EXPECT_EQ(pfn_of(p, a), now) << "a write to the exclusive pinned page must reuse it";
    EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kA | kD | kSoftDirty, 0));
    EXPECT_TRUE(AnonPage(page(now), 1 + kPinBias, 1, true));
    EXPECT_EQ(free_before - m.free_pages(), 1u);

    EXPECT_EQ(read_gup(p, a), kFF) << "the pin must see what the process wrote";
    EXPECT_EQ(load(c, a), pattern(9, 0));

    STEP(p.unpin(a, kPage));
    EXPECT_TRUE(AnonPage(page(now), 1, 1, true));
    finish();
  }

  // A11 / A12: FORK, EXIT(child); R/O pin reuses the now-unshared page without copying.
  void run_ro_pin_previously_shared() {
    Process& p = spawn();
    const vaddr_t a = setup_v01(p, 1, 11);
    const pfn_t old = pfn_of(p, a);
    Process& c = fork(p);
    expect_fork_shared(p, c, a, old);
    exit(c);
    EXPECT_TRUE(AnonPage(page(old), 1, 1, false));
    EXPECT_TRUE(PteBits(pte(p, a), kP, kRW));
    EXPECT_TRUE(p.pagemap(a).exclusive);

    const std::uint64_t free_before = m.free_pages();
    STEP(p.pin(a, kPage, kRoPin));
    // Unshare fault with refcount 1: page_move_anon_rmap, no copy, the PTE stays R/O.
    EXPECT_EQ(pfn_of(p, a), old) << "refcount 1: the unshare must reuse, not copy";
    EXPECT_TRUE(PteBits(pte(p, a), kP, kRW)) << "an unshare never maps writable";
    EXPECT_TRUE(AnonPage(page(old), 1 + kPinBias, 1, true));
    EXPECT_EQ(m.free_pages(), free_before);

    store(p, a, kFF);
    EXPECT_EQ(pfn_of(p, a), old);
    EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kD | kSoftDirty, 0));
    EXPECT_TRUE(AnonPage(page(old), 1 + kPinBias, 1, true));
    EXPECT_EQ(m.free_pages(), free_before);
    EXPECT_EQ(read_gup(p, a), kFF);

    STEP(p.unpin(a, kPage));
    EXPECT_TRUE(AnonPage(page(old), 1, 1, true));
    finish();
  }

  // A13 / A14: R/O-mapped exclusive page; R/O pin needs no unshare; the write reuses.
  void run_ro_pin_exclusive() {
    Process& p = spawn();
    const vaddr_t a = setup_v01(p, 1, 13);
    const pfn_t pfn = pfn_of(p, a);
    make_ro_exclusive(p, a, pfn, 1);

    const std::uint64_t free_before = m.free_pages();
    STEP(p.pin(a, kPage, kRoPin));
    EXPECT_EQ(pfn_of(p, a), pfn);
    EXPECT_TRUE(PteBits(pte(p, a), kP, kRW | kSoftDirty)) << "a R/O pin changes no PTE";
    EXPECT_TRUE(AnonPage(page(pfn), 1 + kPinBias, 1, true));

    store(p, a, kFF);
    EXPECT_EQ(pfn_of(p, a), pfn) << "write fault on an exclusive anon page must reuse it";
    EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kA | kD | kSoftDirty, 0));
    EXPECT_TRUE(p.pagemap(a).soft_dirty);
    EXPECT_TRUE(AnonPage(page(pfn), 1 + kPinBias, 1, true));
    EXPECT_EQ(m.free_pages(), free_before);
    EXPECT_EQ(read_gup(p, a), kFF);

    STEP(p.unpin(a, kPage));
    EXPECT_TRUE(AnonPage(page(pfn), 1, 1, true));
    finish();
  }
};

// A01 "Basic COW after fork()".
TEST_F(AnonCowV01, A01BasicCowAfterFork) { run_basic_cow(false); }

// A02 "Basic COW after fork() with mprotect() optimization".
TEST_F(AnonCowV01, A02BasicCowAfterForkWithMprotectOptimization) { run_basic_cow(true); }

// A03 "vmsplice() + unmap in child" (CVE-2020-29374).
TEST_F(AnonCowV01, A03VmspliceUnmapInChild) { run_vmsplice_unmap_in_child(false); }

// A04 "vmsplice() + unmap in child with mprotect() optimization".
TEST_F(AnonCowV01, A04VmspliceUnmapInChildWithMprotectOptimization) {
  run_vmsplice_unmap_in_child(true);
}

// A05 "vmsplice() before fork(), unmap in parent after fork()".
TEST_F(AnonCowV01, A05VmspliceBeforeForkUnmapInParent) {
  Process& p = spawn();
  const vaddr_t a = setup_v01(p, 1, 5);
  const pfn_t old = pfn_of(p, a);
  const std::uint64_t e_before = pte(p, a);

  STEP(p.gup_get(a, kPage));
  EXPECT_TRUE(AnonPage(page(old), 2, 1, true)) << "FOLL_GET: +1, nothing else";
  EXPECT_EQ(pte(p, a), e_before);

  // A FOLL_GET reference is not a pin (and MMF_HAS_PINNED is unset): fork shares the page.
  Process& c = fork(p);
  expect_fork_shared(p, c, a, old, /*extra_refs=*/1);
  EXPECT_EQ(c.rss().anon, 1);

  STEP(p.munmap(a, kPage));
  EXPECT_TRUE(pte_none(p, a));
  EXPECT_EQ(p.rss().anon, 0);
  EXPECT_TRUE(AnonPage(page(old), 2, 1, false)) << "child mapping + pipe reference";

  // The child's write sees refcount 2 and copies.
  store(c, a, kFF);
  const pfn_t now = pfn_of(c, a);
  EXPECT_NE(now, old) << "the child must not reuse a page the pipe still references";
  EXPECT_TRUE(PteBits(pte(c, a), kP | kRW | kD | kSoftDirty, 0));
  EXPECT_TRUE(AnonPage(page(now), 1, 1, true));
  EXPECT_TRUE(HeldPage(page(old), 1));
  EXPECT_EQ(c.rss().anon, 1);

  EXPECT_EQ(read_gup(p, a), pattern(5, 0)) << "the pipe must hold the old data";
  EXPECT_EQ(load(c, a), kFF);

  gup_put_until(p, a, kPage, old, 0);
  EXPECT_TRUE(page(old).free);
  finish();
}

// A06 "vmsplice() + unmap in parent after fork()".
TEST_F(AnonCowV01, A06VmspliceUnmapInParentAfterFork) {
  Process& p = spawn();
  const vaddr_t a = setup_v01(p, 1, 6);
  const pfn_t old = pfn_of(p, a);
  Process& c = fork(p);
  expect_fork_shared(p, c, a, old);
  const std::uint64_t e_before = pte(p, a);

  // A R/O FOLL_GET on the shared page does not unshare.
  STEP(p.gup_get(a, kPage));
  EXPECT_EQ(pte(p, a), e_before) << "FOLL_GET must not unshare or touch the PTE";
  EXPECT_TRUE(AnonPage(page(old), 3, 2, false));

  STEP(p.munmap(a, kPage));
  EXPECT_TRUE(pte_none(p, a));
  EXPECT_EQ(p.rss().anon, 0);
  EXPECT_TRUE(AnonPage(page(old), 2, 1, false));

  store(c, a, kFF);
  const pfn_t now = pfn_of(c, a);
  EXPECT_NE(now, old) << "the child must not reuse a page the pipe still references";
  EXPECT_TRUE(AnonPage(page(now), 1, 1, true));
  EXPECT_TRUE(HeldPage(page(old), 1));

  EXPECT_EQ(read_gup(p, a), pattern(6, 0)) << "the pipe must hold the old data";
  EXPECT_EQ(load(c, a), kFF);

  gup_put_until(p, a, kPage, old, 0);
  EXPECT_TRUE(page(old).free);
  finish();
}

// A07 "R/O-mapping a page registered as iouring fixed buffer".
TEST_F(AnonCowV01, A07RoMappingIoUringFixedBuffer) {
  Process& p = spawn();
  const vaddr_t a = setup_v01(p, 1, 7);
  const pfn_t pfn = pfn_of(p, a);
  const std::uint64_t e_before = pte(p, a);

  STEP(p.pin(a, kPage, kIoUring));
  EXPECT_EQ(pte(p, a), e_before) << "FOLL_WRITE on a writable exclusive page needs no fault";
  EXPECT_TRUE(AnonPage(page(pfn), 1 + kPinBias, 1, true));

  make_ro_exclusive(p, a, pfn, 1 + kPinBias);

  // The write fault on the exclusive page reuses it: the pinned page stays mapped.
  const std::uint64_t free_before = m.free_pages();
  store(p, a, kFF);
  EXPECT_EQ(pfn_of(p, a), pfn) << "write fault on an exclusive anon page must never copy";
  EXPECT_TRUE(PteBits(pte(p, a), kP | kRW | kA | kD | kSoftDirty, 0));
  EXPECT_TRUE(p.pagemap(a).soft_dirty);
  EXPECT_TRUE(AnonPage(page(pfn), 1 + kPinBias, 1, true));
  EXPECT_EQ(m.free_pages(), free_before);

  EXPECT_EQ(read_gup(p, a), kFF) << "the fixed buffer must see the write";

  STEP(p.unpin(a, kPage));
  EXPECT_TRUE(AnonPage(page(pfn), 1, 1, true));
  finish();
}

// A08 "fork() with an iouring fixed buffer".
TEST_F(AnonCowV01, A08ForkWithIoUringFixedBuffer) {
  Process& p = spawn();
  const vaddr_t a = setup_v01(p, 1, 8);
  const pfn_t pfn = pfn_of(p, a);
  STEP(p.pin(a, kPage, kIoUring));
  EXPECT_TRUE(AnonPage(page(pfn), 1 + kPinBias, 1, true));
  const std::uint64_t e_before = pte(p, a);

  // MMF_HAS_PINNED and refcount >= 1024: page_try_dup_anon_rmap says -EBUSY, the child gets its
  // own copy at once (copy_present_page) and the parent PTE is left alone, still writable.
  Process& c = fork(p);
  EXPECT_EQ(pte(p, a), e_before) << "the parent PTE of a pinned page must be untouched";
  EXPECT_TRUE(AnonPage(page(pfn), 1 + kPinBias, 1, true));
  const pfn_t cpfn = pfn_of(c, a);
  EXPECT_NE(cpfn, pfn) << "the child must get a copy of the pinned page at fork";
  EXPECT_TRUE(PteBits(pte(c, a), kP | kRW | kD | kSoftDirty, kSpecial));
  EXPECT_TRUE(AnonPage(page(cpfn), 1, 1, true));
  EXPECT_EQ(c.rss().anon, 1);
  EXPECT_TRUE(c.pagemap(a).exclusive);
  EXPECT_TRUE(p.pagemap(a).exclusive);
  EXPECT_EQ(load(c, a), pattern(8, 0));

  // The parent writes through its still-writable PTE: no fault, same page.
  store(p, a, kFF);
  EXPECT_EQ(pfn_of(p, a), pfn);
  EXPECT_EQ(read_gup(p, a), kFF) << "the fixed buffer must see the parent's write";
  EXPECT_EQ(load(c, a), pattern(8, 0));

  store(c, a, 0x1234);
  EXPECT_EQ(pfn_of(c, a), cpfn) << "the child's copy is exclusive and writable";
  EXPECT_EQ(read_gup(p, a), kFF);
  EXPECT_EQ(load(p, a), kFF);

  STEP(p.unpin(a, kPage));
  EXPECT_TRUE(AnonPage(page(pfn), 1, 1, true));
  finish();
}

// A09 "R/O GUP pin on R/O-mapped shared page".
TEST_F(AnonCowV01, A09RoPinOnRoMappedSharedPage) { run_ro_pin_shared(); }

// A10 "R/O GUP-fast pin on R/O-mapped shared page". The model has one GUP path, pin(). Linux's
// GUP-fast refuses a R/O pin of a non-exclusive anon page (gup_must_unshare) and falls back to
// the slow path, so the outcome is the slow path's: the same assertions as A09.
TEST_F(AnonCowV01, A10RoGupFastPinOnRoMappedSharedPage) { run_ro_pin_shared(); }

// A11 "R/O GUP pin on R/O-mapped previously-shared page".
TEST_F(AnonCowV01, A11RoPinOnRoMappedPreviouslySharedPage) { run_ro_pin_previously_shared(); }

// A12 "R/O GUP-fast pin on R/O-mapped previously-shared page". Through pin(): GUP-fast sees a
// non-exclusive anon page, must unshare, and falls back to the slow path (as A11).
TEST_F(AnonCowV01, A12RoGupFastPinOnRoMappedPreviouslySharedPage) {
  run_ro_pin_previously_shared();
}

// A13 "R/O GUP pin on R/O-mapped exclusive page".
TEST_F(AnonCowV01, A13RoPinOnRoMappedExclusivePage) { run_ro_pin_exclusive(); }

// A14 "R/O GUP-fast pin on R/O-mapped exclusive page". Through pin(): for an exclusive page
// GUP-fast needs no unshare and takes the same pin the slow path takes, so the end state is A13's.
TEST_F(AnonCowV01, A14RoGupFastPinOnRoMappedExclusivePage) { run_ro_pin_exclusive(); }

}  // namespace
}  // namespace cowpte::scen
