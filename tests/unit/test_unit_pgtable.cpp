// Unit tests of the x86-64 entry layout (include/cowpte/model/pgtable_types.hpp): predicates and
// modifiers, pfn_pte/pte_pfn, pte_modify with the L1TF PROT_NONE inversion, the swap-entry
// encoding of reference linux-cow-semantics.md section 7, the address split and is_canonical.

#include <gtest/gtest.h>

#include <cowpte/model/pgtable_types.hpp>
#include <cstdint>
#include <random>

namespace cowpte {
namespace {

// Values spelled out from the section 7 table, independent of the header's constants.
constexpr pteval_t kP = 1ull << 0, kRW = 1ull << 1, kUser = 1ull << 2, kPwt = 1ull << 3,
                   kA = 1ull << 5, kD = 1ull << 6, kPse = 1ull << 7, kGlobal = 1ull << 8,
                   kSpecial = 1ull << 9, kUffdWp = 1ull << 10, kSoftDirty = 1ull << 11,
                   kNX = 1ull << 63;
constexpr pteval_t kPfnField = 0x000FFFFFFFFFF000ull;  // bits 12-51
constexpr pteval_t kPageCopy = kP | kUser | kA | kNX;
constexpr pteval_t kPageNone = kGlobal | kA;

TEST(UnitPgtable, BitConstantsMatchX86Layout) {
  EXPECT_EQ(_PAGE_PRESENT, kP);
  EXPECT_EQ(_PAGE_RW, kRW);
  EXPECT_EQ(_PAGE_USER, kUser);
  EXPECT_EQ(_PAGE_ACCESSED, kA);
  EXPECT_EQ(_PAGE_DIRTY, kD);
  EXPECT_EQ(_PAGE_PSE, kPse);
  EXPECT_EQ(_PAGE_PROTNONE, kGlobal);
  EXPECT_EQ(_PAGE_SPECIAL, kSpecial);
  EXPECT_EQ(_PAGE_UFFD_WP, kUffdWp);
  EXPECT_EQ(_PAGE_SOFT_DIRTY, kSoftDirty);
  EXPECT_EQ(_PAGE_DEVMAP, 1ull << 58);
  EXPECT_EQ(_PAGE_NX, kNX);
  EXPECT_EQ(PTE_PFN_MASK, kPfnField);
  EXPECT_EQ(_PAGE_TABLE, 0x67u);
  EXPECT_EQ(PAGE_NONE, kPageNone);
  EXPECT_EQ(_PAGE_SWP_EXCLUSIVE, kPwt);
  EXPECT_EQ(_PAGE_SWP_UFFD_WP, kUser);
  EXPECT_EQ(_PAGE_SWP_SOFT_DIRTY, kRW);
}

TEST(UnitPgtable, PresentAndProtnonePredicates) {
  EXPECT_FALSE(pte_present(0));
  EXPECT_TRUE(pte_present(kP));
  EXPECT_TRUE(pte_present(kPageCopy | (5ull << 12)));
  EXPECT_TRUE(pte_present(kPageNone)) << "PROT_NONE entries count as present";
  EXPECT_FALSE(pte_present(kRW | kUser | kA | kD)) << "no P, no PROTNONE";

  EXPECT_TRUE(pte_protnone(kPageNone));
  EXPECT_TRUE(pte_protnone(kGlobal));
  EXPECT_FALSE(pte_protnone(kP | kGlobal)) << "bit 8 with P set is GLOBAL, not PROTNONE";
  EXPECT_FALSE(pte_protnone(kP));
  EXPECT_FALSE(pte_protnone(0));
}

TEST(UnitPgtable, PteNoneIgnoresAccessedAndDirty) {
  EXPECT_TRUE(pte_none(0));
  EXPECT_TRUE(pte_none(kA));
  EXPECT_TRUE(pte_none(kD));
  EXPECT_TRUE(pte_none(kA | kD));
  EXPECT_FALSE(pte_none(kP));
  EXPECT_FALSE(pte_none(kRW));
  EXPECT_FALSE(pte_none(kGlobal));
  EXPECT_FALSE(pte_none(kSoftDirty));
  EXPECT_FALSE(pte_none(kA | kD | (1ull << 12)));
  EXPECT_FALSE(pte_none(kNX));
  // pmd_none has no erratum exception.
  EXPECT_TRUE(pmd_none(0));
  EXPECT_FALSE(pmd_none(kA));
}

TEST(UnitPgtable, ReadPredicates) {
  const pteval_t all = kP | kRW | kA | kD | kSpecial | kSoftDirty | kUffdWp;
  EXPECT_TRUE(pte_write(all));
  EXPECT_TRUE(pte_dirty(all));
  EXPECT_TRUE(pte_young(all));
  EXPECT_TRUE(pte_special(all));
  EXPECT_TRUE(pte_soft_dirty(all));
  EXPECT_TRUE(pte_uffd_wp(all));
  const pteval_t none = kP | kUser | kNX | kPfnField;
  EXPECT_FALSE(pte_write(none));
  EXPECT_FALSE(pte_dirty(none));
  EXPECT_FALSE(pte_young(none));
  EXPECT_FALSE(pte_special(none));
  EXPECT_FALSE(pte_soft_dirty(none));
  EXPECT_FALSE(pte_uffd_wp(none));
}

TEST(UnitPgtable, ModifiersTouchOnlyTheirBits) {
  const pteval_t base = kPageCopy | (0x12345ull << 12);
  EXPECT_EQ(pte_mkwrite(base), base | kRW);
  EXPECT_EQ(pte_wrprotect(base | kRW), base);
  EXPECT_EQ(pte_wrprotect(base), base);
  EXPECT_EQ(pte_mkold(base), base & ~kA);
  EXPECT_EQ(pte_mkyoung(base & ~kA), base);
  EXPECT_EQ(pte_mkclean(base | kD | kSoftDirty), base | kSoftDirty)
      << "pte_mkclean keeps soft-dirty";
  EXPECT_EQ(pte_mkdirty(base), base | kD | kSoftDirty) << "x86 pte_mkdirty sets soft-dirty too";
  EXPECT_EQ(pte_mkspecial(base), base | kSpecial);
  EXPECT_EQ(pte_clear_soft_dirty(base | kSoftDirty | kD), base | kD);
  EXPECT_EQ(pte_clear_uffd_wp(base | kUffdWp), base);
  EXPECT_EQ(pmd_wrprotect(0x67 | (7ull << 12)), 0x65 | (7ull << 12));
  EXPECT_EQ(pmd_mkwrite(0x65 | (7ull << 12)), 0x67 | (7ull << 12));
}

TEST(UnitPgtable, PfnPteRoundTrip) {
  for (std::uint64_t pfn :
       {0ull, 1ull, 0x1234ull, 0xABCDEull, (1ull << 40) - 1, (1ull << 39) | 0x55ull}) {
    const pteval_t v = pfn_pte(Pfn{pfn}, kPageCopy);
    EXPECT_EQ(v, (pfn << 12) | kPageCopy) << std::hex << pfn;
    EXPECT_EQ(raw(pte_pfn(v)), pfn) << std::hex << pfn;
    EXPECT_EQ(raw(pte_pfn(pte_mkdirty(pte_mkwrite(v)))), pfn) << "flag bits leave the pfn alone";
    EXPECT_EQ(raw(pmd_pfn(mk_table_entry(Pfn{pfn}))), pfn);
    EXPECT_EQ(mk_table_entry(Pfn{pfn}), (pfn << 12) | 0x67);
  }
  // Bits above 51 of an oversized pfn do not leak into NX or the software bits.
  const pteval_t v = pfn_pte(Pfn{~0ull}, kP);
  EXPECT_EQ(v, kPfnField | kP);
}

TEST(UnitPgtable, PfnPteWithProtNoneStoresInvertedPfn) {
  const std::uint64_t pfn = 0x1234;
  const pteval_t v = pfn_pte(Pfn{pfn}, kPageNone);
  EXPECT_EQ(v & kPfnField, (~(pfn << 12)) & kPfnField);
  EXPECT_EQ(v & ~kPfnField, kPageNone);
  EXPECT_EQ(raw(pte_pfn(v)), pfn);
  EXPECT_TRUE(pte_present(v));
  EXPECT_TRUE(pte_protnone(v));
}

TEST(UnitPgtable, PteModifyToProtNoneInvertsPfnAndBackRestores) {
  for (std::uint64_t pfn : {0x1ull, 0x1234ull, 0xFFFFFull, (1ull << 40) - 3}) {
    const pteval_t present = kPageCopy | kD | kSoftDirty | (pfn << 12);
    const pteval_t none = pte_modify(present, kPageNone);
    // The pfn field is stored bit-inverted, and the flags are PAGE_NONE plus the kept D/SD.
    EXPECT_EQ(none & kPfnField, ~(pfn << 12) & kPfnField) << std::hex << pfn;
    EXPECT_EQ(none & ~kPfnField, kPageNone | kD | kSoftDirty) << std::hex << none;
    EXPECT_FALSE(none & kP);
    EXPECT_FALSE(none & kNX) << "NX is not in _PAGE_CHG_MASK and PAGE_NONE lacks it";
    EXPECT_TRUE(pte_protnone(none));
    EXPECT_EQ(raw(pte_pfn(none)), pfn) << "pte_pfn undoes the inversion";
    EXPECT_EQ(raw(pte_pfn(present)), pfn);

    // PROT_NONE -> PROT_NONE keeps the inverted field (no second flip).
    EXPECT_EQ(pte_modify(none, kPageNone), none);
    // Back to PAGE_COPY restores the exact original word.
    const pteval_t back = pte_modify(none, kPageCopy);
    EXPECT_EQ(back, present) << std::hex << back << " vs " << present;
    // Present -> present changes only the protection bits.
    EXPECT_EQ(pte_modify(present, kP | kUser | kA | kRW | kNX), present | kRW);
  }
}

TEST(UnitPgtable, PteModifyKeepsChangeMaskBits) {
  const pteval_t v = kP | kUser | kA | kD | kSpecial | kSoftDirty | kUffdWp | (1ull << 58) |
                     (0x42ull << 12) | kNX | kRW;
  const pteval_t m = pte_modify(v, kP | kUser);  // PROT_READ|PROT_EXEC-like, without A
  EXPECT_EQ(
      m, kP | kUser | kA | kD | kSpecial | kSoftDirty | kUffdWp | (1ull << 58) | (0x42ull << 12));
}

// ---- swap entries ----

TEST(UnitPgtable, SwapEncodingWorkedExamples) {
  EXPECT_EQ(swp_entry_to_pte({0, 0}), 0x07FFFFFFFFFFFE00ull);
  EXPECT_EQ(swp_entry_to_pte({0, 1}), 0x07FFFFFFFFFFFC00ull);
  EXPECT_EQ(swp_entry_to_pte({0, 0x1234}), 0x07FFFFFFFFDB9600ull);
  EXPECT_EQ(swp_entry_to_pte({1, 0x1234}), 0x0FFFFFFFFFDB9600ull);
  EXPECT_EQ(swp_entry_to_pte({1, 0x1234}), swp_entry_to_pte({0, 0x1234}) | (1ull << 59));

  EXPECT_EQ(pte_to_swp_entry(0x07FFFFFFFFFFFE00ull), (SwpEntry{0, 0}));
  EXPECT_EQ(pte_to_swp_entry(0x07FFFFFFFFFFFC00ull), (SwpEntry{0, 1}));
  EXPECT_EQ(pte_to_swp_entry(0x07FFFFFFFFDB9600ull), (SwpEntry{0, 0x1234}));
  EXPECT_EQ(pte_to_swp_entry(0x0FFFFFFFFFDB9600ull), (SwpEntry{1, 0x1234}));
  // The top type.
  EXPECT_EQ(swp_entry_to_pte({31, 0}), 0xFFFFFFFFFFFFFE00ull);
  EXPECT_EQ(pte_to_swp_entry(0xFFFFFFFFFFFFFE00ull), (SwpEntry{31, 0}));
}

TEST(UnitPgtable, SwapRoundTripRandom) {
  std::mt19937_64 rng(0xC0FFEE);
  constexpr std::uint64_t kMaxOffset = 1ull << 50;
  for (int i = 0; i < 100000; ++i) {
    const SwpEntry e{static_cast<unsigned>(rng() % 32), rng() % kMaxOffset};
    const pteval_t v = swp_entry_to_pte(e);
    ASSERT_EQ(pte_to_swp_entry(v), e) << "type " << e.type << " offset " << std::hex << e.offset;
    // Type in bits 59-63, NOT offset in bits 9-58, nothing below bit 9.
    ASSERT_EQ(v >> 59, e.type);
    ASSERT_EQ((v >> 9) & (kMaxOffset - 1), ~e.offset & (kMaxOffset - 1));
    ASSERT_EQ(v & 0x1FFu, 0u);
    // Flag bits 1-3 (soft-dirty, uffd-wp, exclusive) do not disturb type or offset.
    for (pteval_t flags = 0; flags < 8; ++flags) {
      const pteval_t f = v | (flags << 1);
      ASSERT_EQ(pte_to_swp_entry(f), e) << "flags " << flags;
      ASSERT_EQ(pte_swp_exclusive(f), (flags & 4) != 0);
    }
    // Never P, PSE or PROTNONE: the entry must not look present to pte/pmd_present.
    const pteval_t f = pte_swp_mkexclusive(v) | kRW | kUser;
    ASSERT_EQ(f & (kP | kPse | kGlobal), 0u);
    ASSERT_FALSE(pte_present(f));
    ASSERT_FALSE(pmd_present(f));
    if (v != 0) {  // type 0 with offset 2^50-1 encodes to 0, which is pte_none
      ASSERT_TRUE(is_swap_pte(v));
      ASSERT_FALSE(pte_none(v));
    }
  }
}

TEST(UnitPgtable, SwapExclusiveMarker) {
  const pteval_t v = swp_entry_to_pte({3, 0x777});
  EXPECT_FALSE(pte_swp_exclusive(v));
  const pteval_t x = pte_swp_mkexclusive(v);
  EXPECT_EQ(x, v | kPwt);
  EXPECT_TRUE(pte_swp_exclusive(x));
  EXPECT_EQ(pte_swp_clear_exclusive(x), v);
  EXPECT_EQ(pte_to_swp_entry(x), (SwpEntry{3, 0x777}));
}

TEST(UnitPgtable, NonSwapEntryTypes) {
  EXPECT_EQ(MAX_SWAPFILES, 23u);
  EXPECT_FALSE(non_swap_entry({0, 5}));
  EXPECT_FALSE(non_swap_entry({22, 5}));
  EXPECT_TRUE(non_swap_entry({23, 5}));  // v6.2 HWPOISON
  EXPECT_TRUE(non_swap_entry({31, 5}));  // PTE_MARKER
}

// ---- upper levels ----

TEST(UnitPgtable, PmdPredicates) {
  const pteval_t table = mk_table_entry(Pfn{0x99});
  EXPECT_TRUE(pmd_present(table));
  EXPECT_FALSE(pmd_bad(table));
  EXPECT_FALSE(pmd_bad(pmd_wrprotect(table))) << "a write-protected table PMD is not bad";
  EXPECT_TRUE(pmd_write(table));
  EXPECT_FALSE(pmd_write(pmd_wrprotect(table)));
  EXPECT_TRUE(pmd_bad(table | kPse));
  EXPECT_TRUE(pmd_bad(table & ~kA));
  EXPECT_TRUE(pmd_bad(table & ~kP));
  EXPECT_TRUE(pmd_trans_huge(kPse));
  EXPECT_FALSE(pmd_trans_huge(table));
  EXPECT_TRUE(pmd_present(kPse)) << "a splitting THP has P clear";
  EXPECT_TRUE(pmd_present(kGlobal));
  EXPECT_FALSE(pmd_present(kRW | kUser | kA | kD));
}

// ---- address split ----

TEST(UnitPgtable, AddressSplit) {
  // pgd 254, pud 72, pmd 418, pte 359, offset 0xABC.
  const vaddr_t a = (254ull << 39) | (72ull << 30) | (418ull << 21) | (359ull << 12) | 0xABC;
  EXPECT_EQ(pgd_index(a), 254u);
  EXPECT_EQ(pud_index(a), 72u);
  EXPECT_EQ(pmd_index(a), 418u);
  EXPECT_EQ(pte_index(a), 359u);
  EXPECT_EQ(pgd_index(0), 0u);
  EXPECT_EQ(pte_index(0xFFF), 0u);
  EXPECT_EQ(pte_index(0x1000), 1u);
  EXPECT_EQ(pte_index(0x1FF000), 511u);
  EXPECT_EQ(pte_index(0x200000), 0u);
  EXPECT_EQ(pmd_index(0x200000), 1u);
  EXPECT_EQ(pud_index(0x40000000), 1u);
  EXPECT_EQ(pgd_index(0x8000000000), 1u);
  EXPECT_EQ(pgd_index(TASK_SIZE - 1), 255u);
  EXPECT_EQ(pgd_index(0xFFFF800000000000ull), 256u) << "the kernel half starts at index 256";
  EXPECT_EQ(PMD_SIZE, 2ull << 20);
  EXPECT_EQ(PUD_SIZE, 1ull << 30);
  EXPECT_EQ(PGDIR_SIZE, 1ull << 39);
  EXPECT_EQ(TASK_SIZE, 0x7FFFFFFFF000ull);
}

TEST(UnitPgtable, AddrEnd) {
  EXPECT_EQ(pmd_addr_end(0x1000, 0x5000), 0x5000u) << "end inside the PMD";
  EXPECT_EQ(pmd_addr_end(0x1000, 0x400000), 0x200000u) << "next PMD boundary";
  EXPECT_EQ(pmd_addr_end(0x200000, 0x400000), 0x400000u);
  EXPECT_EQ(pmd_addr_end(0x200000, 0x200000 + PMD_SIZE), 0x200000 + PMD_SIZE);
  EXPECT_EQ(pmd_addr_end(0x1FF000, 0x200000), 0x200000u);
  // end == 0 stands for the top of the address space; the boundary wraps to 0 there.
  EXPECT_EQ(pmd_addr_end(0x1000, 0), 0x200000u);
  EXPECT_EQ(pmd_addr_end(0xFFFFFFFFFFE01000ull, 0), 0u);
  EXPECT_EQ(pud_addr_end(0x1000, 0x80000000), 0x40000000u);
  EXPECT_EQ(pud_addr_end(0x1000, 0x3000), 0x3000u);
  EXPECT_EQ(pgd_addr_end(0x1000, TASK_SIZE), 0x8000000000u);
  EXPECT_EQ(pgd_addr_end(0x7F8000000000ull, TASK_SIZE), TASK_SIZE);
}

TEST(UnitPgtable, IsCanonical) {
  EXPECT_TRUE(is_canonical(0));
  EXPECT_TRUE(is_canonical(0x00007FFFFFFFFFFFull));
  EXPECT_FALSE(is_canonical(0x0000800000000000ull));
  EXPECT_FALSE(is_canonical(0x1000000000000000ull));
  EXPECT_FALSE(is_canonical(0xFFFF7FFFFFFFFFFFull));
  EXPECT_TRUE(is_canonical(0xFFFF800000000000ull));
  EXPECT_TRUE(is_canonical(~0ull));
  EXPECT_FALSE(is_canonical(0x8000000000000000ull));
}

}  // namespace
}  // namespace cowpte
