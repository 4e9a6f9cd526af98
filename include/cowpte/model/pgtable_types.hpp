// x86-64 four-level paging: the entry bit layout, address split and Linux's swap-entry encoding.
// Models arch/x86/include/asm/pgtable_types.h, pgtable_64.h, pgtable_64_types.h and
// pgtable-invert.h. Entries are raw 64-bit words, exactly as they sit in a table frame.
#pragma once

#include <cstdint>

#include "cowpte/types.hpp"

namespace cowpte {

using pteval_t = std::uint64_t;

// Page-table geometry (pgtable_64_types.h); p4d is folded into the pgd.
inline constexpr unsigned PAGE_SHIFT = 12;
inline constexpr std::uint64_t PAGE_SIZE = 1ull << PAGE_SHIFT;
inline constexpr std::uint64_t PAGE_MASK = ~(PAGE_SIZE - 1);
inline constexpr unsigned PMD_SHIFT = 21;
inline constexpr std::uint64_t PMD_SIZE = 1ull << PMD_SHIFT;
inline constexpr std::uint64_t PMD_MASK = ~(PMD_SIZE - 1);
inline constexpr unsigned PUD_SHIFT = 30;
inline constexpr std::uint64_t PUD_SIZE = 1ull << PUD_SHIFT;
inline constexpr std::uint64_t PUD_MASK = ~(PUD_SIZE - 1);
inline constexpr unsigned PGDIR_SHIFT = 39;
inline constexpr std::uint64_t PGDIR_SIZE = 1ull << PGDIR_SHIFT;
inline constexpr std::uint64_t PGDIR_MASK = ~(PGDIR_SIZE - 1);
inline constexpr unsigned PTRS_PER_TABLE = 512;
// The highest user address plus one (TASK_SIZE_MAX for 4-level paging: one guard page less
// than 2^47) and the bottom of the top-down mmap area (no ASLR: TASK_SIZE - 128 MiB stack gap).
inline constexpr vaddr_t TASK_SIZE = (1ull << 47) - PAGE_SIZE;
inline constexpr vaddr_t MMAP_BASE = TASK_SIZE - (128ull << 20);
inline constexpr vaddr_t MMAP_MIN_ADDR = 0x10000;  // vm.mmap_min_addr

// Entry bits (pgtable_types.h).
inline constexpr pteval_t _PAGE_PRESENT = 1ull << 0;
inline constexpr pteval_t _PAGE_RW = 1ull << 1;
inline constexpr pteval_t _PAGE_USER = 1ull << 2;
inline constexpr pteval_t _PAGE_PWT = 1ull << 3;
inline constexpr pteval_t _PAGE_PCD = 1ull << 4;
inline constexpr pteval_t _PAGE_ACCESSED = 1ull << 5;
inline constexpr pteval_t _PAGE_DIRTY = 1ull << 6;
inline constexpr pteval_t _PAGE_PSE = 1ull << 7;
inline constexpr pteval_t _PAGE_GLOBAL = 1ull << 8;
inline constexpr pteval_t _PAGE_PROTNONE = _PAGE_GLOBAL;  // only meaningful when P is clear
inline constexpr pteval_t _PAGE_SPECIAL = 1ull << 9;      // SOFTW1
inline constexpr pteval_t _PAGE_UFFD_WP = 1ull << 10;     // SOFTW2
inline constexpr pteval_t _PAGE_SOFT_DIRTY = 1ull << 11;  // SOFTW3
inline constexpr pteval_t _PAGE_DEVMAP = 1ull << 58;      // SOFTW4
inline constexpr pteval_t _PAGE_NX = 1ull << 63;
inline constexpr pteval_t PTE_PFN_MASK = ((1ull << 52) - 1) & PAGE_MASK;

// Protections (pgtable_types.h): user tables, and the PAGE_* values of vm_get_page_prot().
inline constexpr pteval_t _PAGE_TABLE =
    _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;
inline constexpr pteval_t PAGE_NONE = _PAGE_PROTNONE | _PAGE_ACCESSED;
inline constexpr pteval_t _PAGE_CHG_MASK = PTE_PFN_MASK | _PAGE_PCD | _PAGE_PWT | _PAGE_SPECIAL |
                                           _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SOFT_DIRTY |
                                           _PAGE_DEVMAP | _PAGE_UFFD_WP;

// ---- pte predicates and modifiers (pgtable.h) ----
constexpr bool pte_none(pteval_t v) noexcept {
  // A and D may be set spuriously on non-present entries (Knights Landing erratum).
  return (v & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) == 0;
}
constexpr bool pte_present(pteval_t v) noexcept { return v & (_PAGE_PRESENT | _PAGE_PROTNONE); }
constexpr bool pte_protnone(pteval_t v) noexcept {
  return (v & (_PAGE_PROTNONE | _PAGE_PRESENT)) == _PAGE_PROTNONE;
}
constexpr bool pte_write(pteval_t v) noexcept { return v & _PAGE_RW; }
constexpr bool pte_dirty(pteval_t v) noexcept { return v & _PAGE_DIRTY; }
constexpr bool pte_young(pteval_t v) noexcept { return v & _PAGE_ACCESSED; }
constexpr bool pte_special(pteval_t v) noexcept { return v & _PAGE_SPECIAL; }
constexpr bool pte_soft_dirty(pteval_t v) noexcept { return v & _PAGE_SOFT_DIRTY; }
constexpr bool pte_uffd_wp(pteval_t v) noexcept { return v & _PAGE_UFFD_WP; }
constexpr pteval_t pte_wrprotect(pteval_t v) noexcept { return v & ~_PAGE_RW; }
constexpr pteval_t pte_mkwrite(pteval_t v) noexcept { return v | _PAGE_RW; }
constexpr pteval_t pte_mkold(pteval_t v) noexcept { return v & ~_PAGE_ACCESSED; }
constexpr pteval_t pte_mkyoung(pteval_t v) noexcept { return v | _PAGE_ACCESSED; }
constexpr pteval_t pte_mkclean(pteval_t v) noexcept { return v & ~_PAGE_DIRTY; }
// On x86 pte_mkdirty sets soft-dirty too.
constexpr pteval_t pte_mkdirty(pteval_t v) noexcept { return v | _PAGE_DIRTY | _PAGE_SOFT_DIRTY; }
constexpr pteval_t pte_mkspecial(pteval_t v) noexcept { return v | _PAGE_SPECIAL; }
constexpr pteval_t pte_clear_soft_dirty(pteval_t v) noexcept { return v & ~_PAGE_SOFT_DIRTY; }
constexpr pteval_t pte_mksoft_dirty(pteval_t v) noexcept { return v | _PAGE_SOFT_DIRTY; }
constexpr pteval_t pte_clear_uffd_wp(pteval_t v) noexcept { return v & ~_PAGE_UFFD_WP; }

// L1TF inversion (pgtable-invert.h): a non-present, non-zero entry stores its pfn inverted.
constexpr pteval_t protnone_mask(pteval_t v) noexcept {
  return (v && !(v & _PAGE_PRESENT)) ? ~0ull : 0ull;
}
constexpr pteval_t flip_protnone_guard(pteval_t oldval, pteval_t val, pteval_t mask) noexcept {
  // Entering or leaving PROT_NONE flips the pfn field.
  if (!(oldval & _PAGE_PRESENT) != !(val & _PAGE_PRESENT)) val = (val & ~mask) | (~val & mask);
  return val;
}
constexpr Pfn pte_pfn(pteval_t v) noexcept {
  return Pfn{((v ^ protnone_mask(v)) & PTE_PFN_MASK) >> PAGE_SHIFT};
}
constexpr pteval_t pfn_pte(Pfn pfn, pteval_t prot) noexcept {
  pteval_t v = (raw(pfn) << PAGE_SHIFT) & PTE_PFN_MASK;
  v ^= protnone_mask(prot) & PTE_PFN_MASK;
  return v | prot;
}
// pte_modify: keep the pfn, A, D and software bits, take the protection from newprot.
constexpr pteval_t pte_modify(pteval_t v, pteval_t newprot) noexcept {
  pteval_t val = v & _PAGE_CHG_MASK;
  val |= newprot & ~_PAGE_CHG_MASK;
  return flip_protnone_guard(v, val, PTE_PFN_MASK);
}

// ---- upper levels: pmd/pud/pgd entries that point at tables ----
constexpr bool pmd_none(pteval_t v) noexcept { return v == 0; }
constexpr bool pmd_present(pteval_t v) noexcept {
  return v & (_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE);
}
constexpr bool pmd_write(pteval_t v) noexcept { return v & _PAGE_RW; }
constexpr bool pmd_trans_huge(pteval_t v) noexcept { return v & _PAGE_PSE; }
// Huge PMDs (a 2 MiB leaf: PSE set) carry a PTE's bits otherwise (pgtable.h's pmd_* forms).
constexpr pteval_t pmd_mkhuge(pteval_t v) noexcept { return v | _PAGE_PSE; }
constexpr pteval_t mk_huge_pmd(Pfn pfn, pteval_t prot) noexcept {
  return pmd_mkhuge(pfn_pte(pfn, prot));
}
constexpr bool pmd_young(pteval_t v) noexcept { return v & _PAGE_ACCESSED; }
constexpr bool pmd_dirty(pteval_t v) noexcept { return v & _PAGE_DIRTY; }
constexpr bool pmd_soft_dirty(pteval_t v) noexcept { return v & _PAGE_SOFT_DIRTY; }
constexpr pteval_t pmd_mkold(pteval_t v) noexcept { return v & ~_PAGE_ACCESSED; }
constexpr pteval_t pmd_mkyoung(pteval_t v) noexcept { return v | _PAGE_ACCESSED; }
constexpr pteval_t pmd_mkdirty(pteval_t v) noexcept { return v | _PAGE_DIRTY | _PAGE_SOFT_DIRTY; }
constexpr pteval_t pmd_mksoft_dirty_huge(pteval_t v) noexcept { return v | _PAGE_SOFT_DIRTY; }
constexpr pteval_t pmd_modify(pteval_t v, pteval_t newprot) noexcept {
  return pte_modify(v, newprot) | _PAGE_PSE;
}
constexpr pteval_t pmd_wrprotect(pteval_t v) noexcept { return v & ~_PAGE_RW; }
constexpr pteval_t pmd_mkwrite(pteval_t v) noexcept { return v | _PAGE_RW; }
constexpr Pfn pmd_pfn(pteval_t v) noexcept { return Pfn{(v & PTE_PFN_MASK) >> PAGE_SHIFT}; }
constexpr pteval_t mk_table_entry(Pfn table) noexcept {
  return (raw(table) << PAGE_SHIFT) | _PAGE_TABLE;
}
// pmd_bad: a table entry whose flags are not _KERNPG_TABLE-like. The COW PTE series notes
// that a write-protected table PMD would look bad, so RW is ignored here (see series §2.1).
constexpr bool pmd_bad(pteval_t v) noexcept {
  return (v & ~PTE_PFN_MASK & ~_PAGE_USER & ~_PAGE_RW) != (_PAGE_TABLE & ~_PAGE_USER & ~_PAGE_RW);
}

// ---- address split ----
constexpr unsigned pgd_index(vaddr_t a) noexcept { return (a >> PGDIR_SHIFT) & 511; }
constexpr unsigned pud_index(vaddr_t a) noexcept { return (a >> PUD_SHIFT) & 511; }
constexpr unsigned pmd_index(vaddr_t a) noexcept { return (a >> PMD_SHIFT) & 511; }
constexpr unsigned pte_index(vaddr_t a) noexcept { return (a >> PAGE_SHIFT) & 511; }
constexpr vaddr_t pgd_addr_end(vaddr_t a, vaddr_t end) noexcept {
  vaddr_t b = (a + PGDIR_SIZE) & PGDIR_MASK;
  return (b - 1 < end - 1) ? b : end;
}
constexpr vaddr_t pud_addr_end(vaddr_t a, vaddr_t end) noexcept {
  vaddr_t b = (a + PUD_SIZE) & PUD_MASK;
  return (b - 1 < end - 1) ? b : end;
}
constexpr vaddr_t pmd_addr_end(vaddr_t a, vaddr_t end) noexcept {
  vaddr_t b = (a + PMD_SIZE) & PMD_MASK;
  return (b - 1 < end - 1) ? b : end;
}
// 48-bit canonical form: bits 63..47 all equal.
constexpr bool is_canonical(vaddr_t a) noexcept {
  return (static_cast<std::int64_t>(a << 16) >> 16) == static_cast<std::int64_t>(a);
}

// ---- swap entries (pgtable_64.h, swapops.h) ----
// Non-present PTE: type in bits 59-63, the bitwise NOT of the offset in bits 9-58, bit 3 the
// exclusive marker, bit 2 uffd-wp, bit 1 soft-dirty; P, PSE and PROTNONE stay clear.
inline constexpr unsigned SWP_TYPE_BITS = 5;
inline constexpr unsigned SWP_OFFSET_FIRST_BIT = 9;  // _PAGE_BIT_PROTNONE + 1
inline constexpr unsigned SWP_OFFSET_SHIFT = SWP_OFFSET_FIRST_BIT + SWP_TYPE_BITS;
inline constexpr pteval_t _PAGE_SWP_EXCLUSIVE = _PAGE_PWT;
inline constexpr pteval_t _PAGE_SWP_UFFD_WP = _PAGE_USER;
inline constexpr pteval_t _PAGE_SWP_SOFT_DIRTY = _PAGE_RW;
inline constexpr unsigned MAX_SWAPFILES = 23;  // v6.2 with migration, device and hwpoison types

struct SwpEntry {
  unsigned type;
  std::uint64_t offset;
  friend constexpr bool operator==(SwpEntry, SwpEntry) = default;
};
// __swp_entry + swp_entry_to_pte.
constexpr pteval_t swp_entry_to_pte(SwpEntry e) noexcept {
  return ((~e.offset << SWP_OFFSET_SHIFT) >> SWP_TYPE_BITS) |
         (static_cast<pteval_t>(e.type) << (64 - SWP_TYPE_BITS));
}
// pte_to_swp_entry: strips the exclusive, soft-dirty and uffd-wp bits first.
constexpr SwpEntry pte_to_swp_entry(pteval_t v) noexcept {
  v &= ~(_PAGE_SWP_EXCLUSIVE | _PAGE_SWP_UFFD_WP | _PAGE_SWP_SOFT_DIRTY);
  return SwpEntry{static_cast<unsigned>(v >> (64 - SWP_TYPE_BITS)),
                  (~v << SWP_TYPE_BITS) >> SWP_OFFSET_SHIFT};
}
constexpr bool is_swap_pte(pteval_t v) noexcept { return !pte_none(v) && !pte_present(v); }
constexpr bool pte_swp_exclusive(pteval_t v) noexcept { return v & _PAGE_SWP_EXCLUSIVE; }
constexpr pteval_t pte_swp_mkexclusive(pteval_t v) noexcept { return v | _PAGE_SWP_EXCLUSIVE; }
constexpr pteval_t pte_swp_clear_exclusive(pteval_t v) noexcept { return v & ~_PAGE_SWP_EXCLUSIVE; }
constexpr bool non_swap_entry(SwpEntry e) noexcept { return e.type >= MAX_SWAPFILES; }

// Migration entries (swapops.h, v6.1): types after SWP_HWPOISON (= MAX_SWAPFILES); the offset
// is the frame, with the accessed and dirty bits above it (x86-64 has the offset bits for them:
// migration_entry_supports_ad).
inline constexpr unsigned SWP_MIGRATION_READ = MAX_SWAPFILES + 1;
inline constexpr unsigned SWP_MIGRATION_READ_EXCLUSIVE = MAX_SWAPFILES + 2;
inline constexpr unsigned SWP_MIGRATION_WRITE = MAX_SWAPFILES + 3;
inline constexpr unsigned SWP_PFN_BITS = 46 - PAGE_SHIFT;  // MAX_PHYSMEM_BITS - PAGE_SHIFT
inline constexpr std::uint64_t SWP_PFN_MASK = (1ull << SWP_PFN_BITS) - 1;
inline constexpr std::uint64_t SWP_MIG_YOUNG = 1ull << SWP_PFN_BITS;
inline constexpr std::uint64_t SWP_MIG_DIRTY = 1ull << (SWP_PFN_BITS + 1);
constexpr bool is_migration_entry(SwpEntry e) noexcept {
  return e.type >= SWP_MIGRATION_READ && e.type <= SWP_MIGRATION_WRITE;
}
constexpr Pfn pfn_swap_entry_to_pfn(SwpEntry e) noexcept { return Pfn{e.offset & SWP_PFN_MASK}; }
constexpr bool pte_swp_soft_dirty(pteval_t v) noexcept { return v & _PAGE_SWP_SOFT_DIRTY; }
constexpr pteval_t pte_swp_mksoft_dirty(pteval_t v) noexcept { return v | _PAGE_SWP_SOFT_DIRTY; }
constexpr pteval_t pte_swp_clear_soft_dirty(pteval_t v) noexcept {
  return v & ~_PAGE_SWP_SOFT_DIRTY;
}
// move_soft_dirty_pte (mm/mremap.c): a moved entry is soft-dirty; a swap entry keeps the bit
// in its own place (bit 11 of a swap PTE is part of the offset).
constexpr pteval_t move_soft_dirty_pte(pteval_t v) noexcept {
  if (pte_present(v)) return pte_mksoft_dirty(v);
  if (is_swap_pte(v)) return pte_swp_mksoft_dirty(v);
  return v;
}

}  // namespace cowpte
