// fork under On-demand-fork (Zhao, Gong, Fonseca, EuroSys'21; the paper version of its kernel,
// rssys/on-demand-fork, mm/memory.c copy_pmd_range_tfork): share every PTE table that one
// private anonymous VMA fully covers, with no per-page work at all. Pages are then counted once
// per table (refcount, mapcount) and charged to one holder (RSS, the table's 4 KiB); the per-page
// work happens when a fault copies the table (src/fault/cow_pte.cpp).
#include "mm/kernel.hpp"

namespace cowpte {

// is_vma_odf_incompatible: ODF shares tables of anonymous private VMAs only. The paper also
// leaves out the heap (brk) VMA; the model has no brk. A VMA the child gets empty
// (VM_WIPEONFORK) or not at all is never copied by dup_mmap in the first place.
bool Kernel::is_vma_odf_incompatible(const Vma& vma) noexcept {
  return !vma_is_anonymous(vma) || (vma.vm_flags & (VM_SHARED | VM_WIPEONFORK | VM_DONTCOPY));
}

// copy_pmd_range_tfork: share the table of addr's span if src_vma covers the whole span; false
// sends the span to copy_pte_range. Differences from the paper, on purpose:
//  - the parent's PMD is write-protected for every VMA, not only VM_WRITE ones (the paper keeps
//    it writable for read-only VMAs, so an mprotect to writable would let a write through into
//    the shared table);
//  - an mm that ever pinned a page (MMF_HAS_PINNED) copies instead of sharing: with no per-page
//    look at fork, a possibly pinned page would otherwise end up shared (the paper ignores pins;
//    the patch-set version added COW_PTE_OWNER_EXCLUSIVE for them).
bool Kernel::copy_pmd_range_tfork(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                                  vaddr_t addr) {
  MmStruct& src_mm = *src_vma.vm_mm;
  MmStruct& dst_mm = *dst_vma.vm_mm;
  const vaddr_t span = addr & PMD_MASK;
  if (span < src_vma.vm_start || span + PMD_SIZE > src_vma.vm_end) return false;
  if (is_vma_odf_incompatible(src_vma)) return false;
  // A table already shared holds no pinned page: every pin breaks the sharing first.
  if (pmd_write(src_pmd.get()) && src_mm.test_flag(MMF_HAS_PINNED)) return false;
  if (!pmd_none(dst_pmd.get())) [[unlikely]]
    throw InvariantViolation("copy_pmd_range_tfork: the child's PMD is already populated");
  Page& table = table_of(src_pmd.get());
  SpinGuard ptl(pte_lockptr(src_mm, table));
  if (pmd_write(src_pmd.get())) {
    // A private table becomes shared: its pages and its 4 KiB stay charged to the parent.
    table.pt_owner = &src_mm;
    SpinGuard pl(pmd_lockptr(src_mm, *src_pmd.table));
    pmdp_set_wrprotect(src_mm, src_pmd);
  }
  pmd_get_pte(table);
  tm_page(table, 1);  // the table's refcount
  SpinGuard pl(pmd_lockptr(src_mm, *dst_pmd.table));
  set_pmd_at(dst_mm, dst_pmd, src_pmd.get());  // no nr_ptes: the owner carries the table
  tm_entry(dst_pmd);
  return true;
}

}  // namespace cowpte
