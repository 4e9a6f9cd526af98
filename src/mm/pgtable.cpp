// Table frames and the allocation of missing levels: pte_alloc_one and the pgtable
// constructors (include/linux/mm.h, arch/x86/mm/pgtable.c), __pud_alloc, __pmd_alloc,
// __pte_alloc and pmd_install (mm/memory.c).
#include "mm/kernel.hpp"

namespace cowpte {

namespace {
// pgtable_pte_page_ctor / pgtable_pmd_page_ctor: a table frame is PageTable with its split lock
// initialised; _refcount is 1 (the COW PTE series uses it as the table's share count).
Page* alloc_table(PhysMem& mem) {
  Page* p = mem.alloc_page();
  if (!p) return nullptr;
  p->data = mem.alloc_table_block();  // __GFP_ZERO: 512 empty entries
  p->set(PG_table);
  new (&p->ptl) SpinLock();  // ptlock_init: the lock takes the place of page->index
  return p;
}
}  // namespace

Page* Kernel::pte_alloc_one(MmStruct&) {
  Page* t = alloc_table(mem);
  tm_page_alloc(t, true);
  return t;
}
Page* Kernel::pmd_alloc_one(MmStruct&) {
  Page* t = alloc_table(mem);
  tm_page_alloc(t, true);
  return t;
}
Page* Kernel::pud_alloc_one(MmStruct&) {
  Page* t = alloc_table(mem);
  tm_page_alloc(t, true);
  return t;
}

void Kernel::pgtable_free(Page& table) {
  if (table.ptl.is_locked()) lock_violation("freeing a page table whose lock is held");
  table.clear(PG_table);
  mem.table_freed();
  mem.put_page(table);
}

bool Kernel::pgd_alloc(MmStruct& mm) {
  mm.pgd = alloc_table(mem);  // the pgd is not counted in pgtables_bytes
  return mm.pgd != nullptr;
}

void Kernel::pgd_free(MmStruct& mm) {
  if (mm.pgd) pgtable_free(*mm.pgd);
  mm.pgd = nullptr;
}

// pud_alloc -> __pud_alloc: allocate outside the lock, install under mm->page_table_lock.
// With p4d folded, the pgd entry points at the PUD table.
EntryRef Kernel::pud_alloc(MmStruct& mm, EntryRef pgd, vaddr_t a) {
  if (pmd_none(pgd.get())) {
    Page* nw = pud_alloc_one(mm);
    if (!nw) return {};
    SpinGuard g(pud_lockptr(mm));  // &mm->page_table_lock
    if (pmd_none(pgd.get())) {
      mm.pgtables_bytes += PAGE_SIZE;  // mm_inc_nr_puds
      set_pud(mm, pgd, mk_table_entry(mem.pfn(*nw)));
    } else {
      pgtable_free(*nw);
    }
  }
  return pud_offset(pgd, a);
}

// pmd_alloc -> __pmd_alloc: the pud entry is guarded by pud_lock, i.e. mm->page_table_lock.
EntryRef Kernel::pmd_alloc(MmStruct& mm, EntryRef pud, vaddr_t a) {
  if (pmd_none(pud.get())) {
    Page* nw = pmd_alloc_one(mm);
    if (!nw) return {};
    SpinGuard g(pud_lockptr(mm));
    if (pmd_none(pud.get())) {
      mm.pgtables_bytes += PAGE_SIZE;  // mm_inc_nr_pmds
      set_pud(mm, pud, mk_table_entry(mem.pfn(*nw)));
    } else {
      pgtable_free(*nw);
    }
  }
  return pmd_offset(pud, a);
}

// pmd_install: under the PMD lock, populate the pmd unless someone else did meanwhile.
void Kernel::pmd_install(MmStruct& mm, EntryRef pmd, Page*& pte_table) {
  SpinGuard g(pmd_lockptr(mm, *pmd.table));
  if (pmd_none(pmd.get())) {
    mm.pgtables_bytes += PAGE_SIZE;  // mm_inc_nr_ptes
    set_pmd_at(mm, pmd, mk_table_entry(mem.pfn(*pte_table)));
    pte_table = nullptr;
  }
}

// pte_alloc -> __pte_alloc.
bool Kernel::pte_alloc(MmStruct& mm, EntryRef pmd) {
  if (!pmd_none(pmd.get())) return true;
  Page* nw = pte_alloc_one(mm);
  if (!nw) return false;
  pmd_install(mm, pmd, nw);
  if (nw) pgtable_free(*nw);
  return true;
}

EntryRef Kernel::walk_to_pmd(MmStruct& mm, vaddr_t a, vaddr_t end, vaddr_t& next) noexcept {
  EntryRef pgd = pgd_offset(mm, a);
  if (pmd_none(pgd.get())) {
    next = pgd_addr_end(a, end);
    return {};
  }
  EntryRef pud = pud_offset(pgd, a);
  if (pmd_none(pud.get())) {
    next = pud_addr_end(a, end);
    return {};
  }
  next = pmd_addr_end(a, end);
  return pmd_offset(pud, a);
}

EntryRef Kernel::walk_to_pmd(MmStruct& mm, vaddr_t a) noexcept {
  EntryRef pgd = pgd_offset(mm, a);
  if (pmd_none(pgd.get())) return {};
  EntryRef pud = pud_offset(pgd, a);
  if (pmd_none(pud.get())) return {};
  return pmd_offset(pud, a);
}

}  // namespace cowpte
