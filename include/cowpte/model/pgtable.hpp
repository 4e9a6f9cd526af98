// Page-table entry access in table frames, and the lock checker: every entry write goes through
// one of the setters below, which (with COWPTE_LOCK_CHECKS) assert that the writer holds the
// lock Linux uses to guard that entry. Models include/linux/pgtable.h, arch/x86/include/asm/
// pgtable.h and the lock helpers of include/linux/mm.h (pte_lockptr, pmd_lockptr, pud_lockptr).
#pragma once

#include "cowpte/model/mm_types.hpp"
#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable_types.hpp"
#include "cowpte/model/spinlock.hpp"

namespace cowpte {

// A pointer to one entry inside a table frame, with the frame it lives in (for its lock).
struct EntryRef {
  Page* table = nullptr;
  pteval_t* p = nullptr;

  pteval_t get() const noexcept { return *p; }
  explicit operator bool() const noexcept { return p != nullptr; }
};

inline pteval_t* table_base(Page& t) noexcept { return t.data; }

// --- lock lookup ---
// Each takes the mm a kernel path works for, as Linux's do: its LockTiming times the lock.
// pte_lockptr: the split lock in the struct page of the PTE table.
inline SpinLockRef pte_lockptr(const MmStruct& mm, Page& pte_table) noexcept {
  return {pte_table.ptl, mm.lock_timing};
}
// pmd_lockptr: the split lock of the PMD table frame (USE_SPLIT_PMD_PTLOCKS on x86-64).
inline SpinLockRef pmd_lockptr(const MmStruct& mm, Page& pmd_table) noexcept {
  return {pmd_table.ptl, mm.lock_timing};
}
// pud_lockptr: mm->page_table_lock.
inline SpinLockRef pud_lockptr(MmStruct& mm) noexcept {
  return {mm.page_table_lock, mm.lock_timing};
}

// --- the checker ---
// A PTE table whose frame has _refcount above 1 is shared by several mms (COW PTE). Nothing
// may write its entries but the paths that own that sharing: fork preparing the table, and
// On-demand-fork write-protecting the entries it copies. They open a SharedPteWrites scope;
// any other write is a path that forgot to break COW first (David Hildenbrand's first
// objection to v4; v5's page_table_check does the same).
inline thread_local int shared_pte_writes_allowed = 0;
struct SharedPteWrites {
  SharedPteWrites() noexcept { ++shared_pte_writes_allowed; }
  ~SharedPteWrites() { --shared_pte_writes_allowed; }
  SharedPteWrites(const SharedPteWrites&) = delete;
  SharedPteWrites& operator=(const SharedPteWrites&) = delete;
};

// free_pgtables() clears upper-level entries holding no spinlock: Linux relies on the VMAs
// being detached (and mmap_lock held), so no other path can reach those tables.
inline void check_pte_write(const Page& pte_table) {
  if constexpr (kLockChecks) {
    if (!pte_table.ptl.held_by_me()) lock_violation("PTE write without the PTE table's lock");
    if (pte_table._refcount > 1 && !shared_pte_writes_allowed)
      lock_violation("PTE write into a shared (COW) PTE table without breaking it first");
  }
}
inline void check_pmd_write(const MmStruct& mm, const Page& pmd_table, bool freeing) {
  if constexpr (kLockChecks) {
    if (freeing) {
      if (!mm.mmap_lock.is_locked()) lock_violation("free_pgtables without mmap_lock");
    } else if (!pmd_table.ptl.held_by_me()) {
      lock_violation("PMD write without the PMD table's lock");
    }
  }
}
inline void check_pud_write(const MmStruct& mm, bool freeing) {
  if constexpr (kLockChecks) {
    if (freeing) {
      if (!mm.mmap_lock.is_locked()) lock_violation("free_pgtables without mmap_lock");
    } else if (!mm.page_table_lock.held_by_me()) {
      lock_violation("PUD/PGD write without mm->page_table_lock");
    }
  }
}

// --- PTE writes (caller holds the PTE table's lock) ---
template <bool Hooks = true>
inline void set_pte_at(EntryRef pte, pteval_t v) {
  interleave_point<Hooks>(Point::entry_write, pte.p);
  check_pte_write(*pte.table);
  *pte.p = v;
}
template <bool Hooks = true>
inline pteval_t ptep_get_and_clear(EntryRef pte) {
  interleave_point<Hooks>(Point::entry_write, pte.p);
  check_pte_write(*pte.table);
  pteval_t old = *pte.p;
  *pte.p = 0;
  return old;
}
template <bool Hooks = true>
inline void ptep_set_wrprotect(EntryRef pte) {
  interleave_point<Hooks>(Point::entry_write, pte.p);
  check_pte_write(*pte.table);
  *pte.p &= ~_PAGE_RW;
}
inline void pte_clear(EntryRef pte) {
  interleave_point(Point::entry_write, pte.p);
  check_pte_write(*pte.table);
  *pte.p = 0;
}

// --- PMD writes (caller holds the PMD table's lock, or is free_pgtables) ---
inline void set_pmd_at(const MmStruct& mm, EntryRef pmd, pteval_t v) {
  interleave_point(Point::entry_write, pmd.p);
  check_pmd_write(mm, *pmd.table, false);
  *pmd.p = v;
}
inline void pmdp_set_wrprotect(const MmStruct& mm, EntryRef pmd) {
  interleave_point(Point::entry_write, pmd.p);
  check_pmd_write(mm, *pmd.table, false);
  *pmd.p &= ~_PAGE_RW;
}
inline void pmd_clear_for_free(const MmStruct& mm, EntryRef pmd) {
  interleave_point(Point::entry_write, pmd.p);
  check_pmd_write(mm, *pmd.table, true);
  *pmd.p = 0;
}

// --- PUD and PGD writes (caller holds mm->page_table_lock, or is free_pgtables) ---
inline void set_pud(const MmStruct& mm, EntryRef pud, pteval_t v) {
  interleave_point(Point::entry_write, pud.p);
  check_pud_write(mm, false);
  *pud.p = v;
}
inline void pud_clear_for_free(const MmStruct& mm, EntryRef pud) {
  interleave_point(Point::entry_write, pud.p);
  check_pud_write(mm, true);
  *pud.p = 0;
}

}  // namespace cowpte
