// Unit tests of the lock model (include/cowpte/spinlock.hpp) and of the lock checker on entry
// writes (include/cowpte/model/pgtable.hpp): a PTE is guarded by its PTE table's split lock, a PMD
// by its PMD table's split lock, a PUD/PGD entry by mm->page_table_lock, and free_pgtables by
// mmap_lock (reference linux-cow-semantics.md section 6).

#include <gtest/gtest.h>

#include <cowpte/model/mmap_lock.hpp>
#include <cowpte/model/pgtable.hpp>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace cowpte {
namespace {

// ---- SpinLock ----

TEST(UnitLocks, SpinLockLockUnlock) {
  SpinLock l;
  EXPECT_FALSE(l.is_locked());
  l.lock();
  EXPECT_TRUE(l.is_locked());
  l.unlock();
  EXPECT_FALSE(l.is_locked());
  l.lock();  // re-taking after release is fine
  EXPECT_TRUE(l.is_locked());
  l.unlock();
}

TEST(UnitLocks, SpinLockDoubleLockThrows) {
  SpinLock l;
  l.lock();
  EXPECT_THROW(l.lock(), LockViolation);
  EXPECT_TRUE(l.is_locked()) << "the failed lock leaves the holder's lock held";
  l.unlock();
  EXPECT_FALSE(l.is_locked());
}

TEST(UnitLocks, SpinLockDoubleUnlockThrows) {
  SpinLock l;
  EXPECT_THROW(l.unlock(), LockViolation);
  l.lock();
  l.unlock();
  EXPECT_THROW(l.unlock(), LockViolation);
  EXPECT_FALSE(l.is_locked());
}

TEST(UnitLocks, LockViolationIsALogicError) {
  SpinLock l;
  try {
    l.unlock();
    FAIL() << "no exception";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()), "");
  }
}

TEST(UnitLocks, SpinGuardIsScoped) {
  SpinLock l;
  {
    SpinGuard g({l, nullptr});
    EXPECT_TRUE(l.is_locked());
    EXPECT_THROW(SpinGuard g2({l, nullptr}), LockViolation) << "nested guard on the same lock";
    EXPECT_TRUE(l.is_locked());
  }
  EXPECT_FALSE(l.is_locked());
}

// ---- RwSem (mmap_lock) ----

TEST(UnitLocks, RwSemReadersShare) {
  RwSem s;
  EXPECT_FALSE(s.is_locked());
  s.down_read();
  s.down_read();
  EXPECT_TRUE(s.is_locked());
  EXPECT_FALSE(s.is_write_locked());
  s.up_read();
  EXPECT_TRUE(s.is_locked()) << "one reader still holds it";
  s.up_read();
  EXPECT_FALSE(s.is_locked());
  EXPECT_THROW(s.up_read(), LockViolation);
}

TEST(UnitLocks, RwSemWriterExcludesEveryone) {
  RwSem s;
  s.down_write();
  EXPECT_TRUE(s.is_locked());
  EXPECT_TRUE(s.is_write_locked());
  EXPECT_THROW(s.down_read(), LockViolation);
  EXPECT_THROW(s.down_write(), LockViolation);
  EXPECT_THROW(s.up_read(), LockViolation) << "a writer is not a reader";
  EXPECT_TRUE(s.is_write_locked());
  s.up_write();
  EXPECT_FALSE(s.is_locked());
  EXPECT_THROW(s.up_write(), LockViolation);
}

TEST(UnitLocks, RwSemReaderExcludesWriter) {
  RwSem s;
  s.down_read();
  EXPECT_THROW(s.down_write(), LockViolation);
  EXPECT_THROW(s.up_write(), LockViolation);
  EXPECT_FALSE(s.is_write_locked());
  s.up_read();
  s.down_write();  // free again
  s.up_write();
}

TEST(UnitLocks, RwSemDowngrade) {
  RwSem s;
  s.down_write();
  s.downgrade_write();
  EXPECT_TRUE(s.is_locked());
  EXPECT_FALSE(s.is_write_locked());
  s.down_read();  // another reader may join now
  EXPECT_THROW(s.down_write(), LockViolation);
  s.up_read();
  s.up_read();
  EXPECT_FALSE(s.is_locked());
  EXPECT_THROW(s.downgrade_write(), LockViolation) << "downgrade needs the write lock";
}

TEST(UnitLocks, MmapGuards) {
  MmStruct mm;
  const RwSem& s = mm.mmap_lock;
  {
    MmapReadGuard r1(mm);
    MmapReadGuard r2(mm);
    EXPECT_TRUE(s.is_locked());
    EXPECT_THROW(MmapWriteGuard w(mm), LockViolation);
  }
  EXPECT_FALSE(s.is_locked());
  {
    MmapWriteGuard w(mm);
    EXPECT_TRUE(s.is_write_locked());
    w.downgrade();
    EXPECT_FALSE(s.is_write_locked());
    EXPECT_TRUE(s.is_locked());
  }
  EXPECT_FALSE(s.is_locked()) << "the guard releases the downgraded read lock";
  { MmapWriteGuard w(mm); }
  EXPECT_FALSE(s.is_locked());
}

// The lock helpers report every acquire and release to the LockTiming of the mm they are given
// (the timing model of its Machine), in the order the kernel path takes them; an mm without
// one (timing off) reports nothing.
struct RecordingTiming final : LockTiming {
  struct Event {
    const void* lock;
    bool acquire, exclusive;
    bool operator==(const Event&) const = default;
  };
  std::vector<Event> events;
  void acquire(const void* lock, bool exclusive) override {
    events.push_back({lock, true, exclusive});
  }
  void release(const void* lock, bool exclusive) override {
    events.push_back({lock, false, exclusive});
  }
};

TEST(UnitLocks, LockHelpersReportToTheMmsLockTiming) {
  PhysMem mem{4 * PAGE_SIZE};
  Page* table = mem.alloc_page();
  ASSERT_NE(table, nullptr);
  MmStruct mm;
  RecordingTiming timing;
  mm.lock_timing = &timing;
  {
    MmapWriteGuard w(mm);
    SpinGuard pl(pmd_lockptr(mm, *table));
    w.downgrade();
  }
  { SpinGuard g(pud_lockptr(mm)); }
  SpinLockRef ptl = pte_lockptr(mm, *table);
  ptl.lock();
  EXPECT_TRUE(table->ptl.is_locked());
  ptl.unlock();
  using E = RecordingTiming::Event;
  const void* mmap = &mm.mmap_lock;
  const void* ptlock = &table->ptl;
  const void* ptl_mm = &mm.page_table_lock;
  const std::vector<E> want = {
      {mmap, true, true},    {ptlock, true, true},  {mmap, false, true},  {mmap, true, false},
      {ptlock, false, true}, {mmap, false, false},  {ptl_mm, true, true}, {ptl_mm, false, true},
      {ptlock, true, true},  {ptlock, false, true},
  };
  EXPECT_EQ(timing.events, want);
  EXPECT_EQ(&pte_lockptr(mm, *table).get(), &table->ptl);
  EXPECT_EQ(&pud_lockptr(mm).get(), &mm.page_table_lock);

  MmStruct untimed;  // timing off: the same calls report nothing
  timing.events.clear();
  {
    MmapReadGuard r(untimed);
    SpinGuard ptl2(pte_lockptr(untimed, *table));
  }
  EXPECT_TRUE(timing.events.empty());
  mem.put_page(*table);
}

// ---- the entry-write checker ----

class UnitLocksChecker : public ::testing::Test {
 protected:
  void SetUp() override {
#if !defined(COWPTE_LOCK_CHECKS)
    GTEST_SKIP() << "COWPTE_LOCK_CHECKS is not defined in this build";
#else
    for (Page*& t : tables_) {
      t = mem_.alloc_page();
      ASSERT_NE(t, nullptr);
      t->data = mem_.alloc_table_block();
      t->set(PG_table);
    }
#endif
  }
  void TearDown() override {
    for (Page* t : tables_)
      if (t) mem_.put_page(*t);
  }
  EntryRef entry(int table, unsigned idx) { return {tables_[table], tables_[table]->data + idx}; }

  PhysMem mem_{16 * PAGE_SIZE};
  MmStruct mm_;
  Page* tables_[2] = {nullptr, nullptr};
};

TEST_F(UnitLocksChecker, KLockChecksIsOn) { EXPECT_TRUE(kLockChecks); }

TEST_F(UnitLocksChecker, SetPteAtNeedsTheTablesLock) {
  const EntryRef pte = entry(0, 7);
  const pteval_t v = pfn_pte(Pfn{3}, _PAGE_PRESENT | _PAGE_USER);
  EXPECT_THROW(set_pte_at(pte, v), LockViolation);
  EXPECT_EQ(pte.get(), 0u) << "a refused write leaves the entry alone";
  {
    SpinGuard other(pte_lockptr(mm_, *tables_[1]));  // another table's lock does not count
    EXPECT_THROW(set_pte_at(pte, v), LockViolation);
  }
  {
    SpinGuard wrong(pud_lockptr(mm_));  // nor does mm->page_table_lock
    EXPECT_THROW(set_pte_at(pte, v), LockViolation);
  }
  {
    SpinGuard ptl(pte_lockptr(mm_, *tables_[0]));
    EXPECT_NO_THROW(set_pte_at(pte, v));
    EXPECT_EQ(pte.get(), v);
  }
}

TEST_F(UnitLocksChecker, OtherPteWritersNeedTheTablesLock) {
  const EntryRef pte = entry(0, 9);
  const pteval_t v = pfn_pte(Pfn{4}, _PAGE_PRESENT | _PAGE_RW | _PAGE_USER);
  {
    SpinGuard ptl(pte_lockptr(mm_, *tables_[0]));
    set_pte_at(pte, v);
  }
  EXPECT_THROW(ptep_set_wrprotect(pte), LockViolation);
  EXPECT_THROW(ptep_get_and_clear(pte), LockViolation);
  EXPECT_THROW(pte_clear(pte), LockViolation);
  EXPECT_EQ(pte.get(), v);
  SpinGuard ptl(pte_lockptr(mm_, *tables_[0]));
  ptep_set_wrprotect(pte);
  EXPECT_EQ(pte.get(), v & ~_PAGE_RW);
  EXPECT_EQ(ptep_get_and_clear(pte), v & ~_PAGE_RW);
  EXPECT_EQ(pte.get(), 0u);
  set_pte_at(pte, v);
  pte_clear(pte);
  EXPECT_EQ(pte.get(), 0u);
}

TEST_F(UnitLocksChecker, SetPmdAtNeedsThePmdTablesLock) {
  const EntryRef pmd = entry(0, 3);
  const pteval_t v = mk_table_entry(Pfn{5});
  EXPECT_THROW(set_pmd_at(mm_, pmd, v), LockViolation);
  {
    SpinGuard g(pud_lockptr(mm_));  // split PMD locks: page_table_lock is not it
    EXPECT_THROW(set_pmd_at(mm_, pmd, v), LockViolation);
  }
  {
    MmapWriteGuard g(mm_);  // nor is mmap_lock, outside free_pgtables
    EXPECT_THROW(set_pmd_at(mm_, pmd, v), LockViolation);
    EXPECT_THROW(pmdp_set_wrprotect(mm_, pmd), LockViolation);
  }
  EXPECT_EQ(pmd.get(), 0u);
  {
    SpinGuard g(pmd_lockptr(mm_, *tables_[0]));
    set_pmd_at(mm_, pmd, v);
    EXPECT_EQ(pmd.get(), v);
    pmdp_set_wrprotect(mm_, pmd);
    EXPECT_EQ(pmd.get(), v & ~_PAGE_RW);
  }
}

TEST_F(UnitLocksChecker, PmdClearForFreeNeedsMmapLock) {
  const EntryRef pmd = entry(0, 4);
  {
    SpinGuard g(pmd_lockptr(mm_, *tables_[0]));
    set_pmd_at(mm_, pmd, mk_table_entry(Pfn{6}));
  }
  {
    SpinGuard g(pmd_lockptr(mm_, *tables_[0]));  // the PMD lock does not stand in for mmap_lock
    EXPECT_THROW(pmd_clear_for_free(mm_, pmd), LockViolation);
  }
  EXPECT_NE(pmd.get(), 0u);
  {
    MmapReadGuard g(mm_);  // read or write: the VMAs are detached
    pmd_clear_for_free(mm_, pmd);
  }
  EXPECT_EQ(pmd.get(), 0u);
}

TEST_F(UnitLocksChecker, SetPudNeedsPageTableLock) {
  const EntryRef pud = entry(1, 0);
  const pteval_t v = mk_table_entry(Pfn{8});
  EXPECT_THROW(set_pud(mm_, pud, v), LockViolation);
  {
    SpinGuard g(pmd_lockptr(mm_, *tables_[1]));  // the table frame's own lock is not pud_lock
    EXPECT_THROW(set_pud(mm_, pud, v), LockViolation);
  }
  {
    MmapWriteGuard g(mm_);
    EXPECT_THROW(set_pud(mm_, pud, v), LockViolation);
  }
  EXPECT_EQ(pud.get(), 0u);
  {
    SpinGuard g(pud_lockptr(mm_));
    set_pud(mm_, pud, v);
  }
  EXPECT_EQ(pud.get(), v);
  EXPECT_EQ(&pud_lockptr(mm_).get(), &mm_.page_table_lock);

  EXPECT_THROW(pud_clear_for_free(mm_, pud), LockViolation);
  {
    SpinGuard g(pud_lockptr(mm_));
    EXPECT_THROW(pud_clear_for_free(mm_, pud), LockViolation) << "freeing needs mmap_lock";
  }
  EXPECT_EQ(pud.get(), v);
  {
    MmapWriteGuard g(mm_);
    pud_clear_for_free(mm_, pud);
  }
  EXPECT_EQ(pud.get(), 0u);
}

}  // namespace
}  // namespace cowpte
