// The fork-policy interface: how fork treats a PTE table, and how a table that fork shared is
// broken, zapped, freed and accounted. The kernel paths call these hooks where the COW PTE
// series hooks its own code (copy_pmd_range, break_cow_pte, zap_pte_range, free_pte_range), so a
// policy is one object; the built-in ones are "classic", "seed", "seed_exact", "on_demand_fork"
// and "rfc_v2" (src/fork/policies/, one file each). Research code defines its own ForkPolicy,
// registers it with register_fork_policy() and arms it per process with
// Process::set_cow_pte(name).
//
// Part of the model layer (<cowpte/model/model.hpp>): the hooks see the model's own types.
#pragma once

#include <cstdint>
#include <string_view>

#include "cowpte/model/mm_types.hpp"
#include "cowpte/model/mmu_gather.hpp"
#include "cowpte/model/pgtable.hpp"
#include "cowpte/result.hpp"

namespace cowpte {

// ---- COW PTE state (include/linux/mm.h of the series) ----

// The table's share count lives on the table frame's _refcount: the pte-page constructor sets
// it to 1, each fork that shares the table adds one, and a holder leaving drops one.
inline int pmd_get_pte(Page& pte_table) noexcept {
  interleave_point(Point::atomic, &pte_table);
  return ++pte_table._refcount;
}
// page_ref_add_unless(page, -1, 1): drop a holder unless it is the last; false for the last.
inline bool pmd_put_pte(Page& pte_table) noexcept {
  interleave_point(Point::atomic, &pte_table);
  if (pte_table._refcount == 1) return false;
  --pte_table._refcount;
  return true;
}
inline int cow_pte_count(const Page& pte_table) noexcept { return pte_table._refcount; }
inline bool mm_cow_pte(const MmStruct& mm) noexcept { return mm.test_flag(MMF_COW_PTE); }
// A COW-ed PTE table: a present, write-protected PMD in an mm with MMF_COW_PTE (the series'
// is_cow_pte_available / !pmd_write test). A write-protected huge PMD maps a THP, no table.
inline bool pmd_cow_pte(const MmStruct& mm, pteval_t pmd) noexcept {
  return !pmd_none(pmd) && !pmd_write(pmd) && !pmd_trans_huge(pmd) && mm_cow_pte(mm);
}

// What the kernel offers a policy (implemented by the library). A policy composes these with
// the model's entry helpers (<cowpte/model/pgtable.hpp>), and may delegate any hook to a
// built-in policy (find_fork_policy).
class PolicyOps {
 public:
  // copy_pte_range (mm/memory.c): the classic fork of [addr, end) of one PMD, entry by entry,
  // into a private table of the child. 0 or -ENOMEM.
  virtual int copy_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                             vaddr_t addr, vaddr_t end) = 0;
  // The table frame a PMD entry points at.
  virtual Page& table_of(pteval_t pmd) noexcept = 0;

 protected:
  ~PolicyOps() = default;
};

// One PMD of one VMA at fork: the child's and the parent's PMD entries for [addr, end), the part
// of src_vma inside addr's 2 MiB span.
struct ForkPmd {
  Vma& dst_vma;
  Vma& src_vma;
  EntryRef dst_pmd;
  EntryRef src_pmd;
  vaddr_t addr;
  vaddr_t end;
};

// How a shared table's pages are accounted; check_invariants() checks RSS, VmPTE, refcounts and
// mapcounts against it.
enum class TableAccounting : std::uint8_t {
  // Every holder is charged for every page of a shared table, as if it had its own copy: fork
  // did the per-page work (the series v3 and later, "dedup only").
  per_holder,
  // Pages are counted once per table (one reference and one mapping per entry), and one holder,
  // the table's owner (Page::pt_owner), carries its RSS and its 4 KiB (On-demand-fork, RFC v2).
  owner,
};

// Where the series as posted and cowpte's fixed paths part ways outside the policy's own hooks
// ("seed_exact" sets every one; the built-in policies none). Each names the path that reads it.
struct SeriesQuirks {
  // mprotect (change_pte_range of [PATCH 09/14]) and mremap (move_page_tables of [PATCH 03/14])
  // go on when a break fails: mprotect skips the span and succeeds, mremap moves the entries
  // out of the still-shared table. Otherwise the call fails with ENOMEM and changes nothing.
  bool ignore_failed_breaks = false;
  // move_page_tables breaks the source table only: entries moved into a destination span
  // whose table another process shares land in that table. Otherwise both are broken.
  bool move_breaks_source_only = false;
  // The series' accounting bugs reach exit: check_mm logs "BUG: Bad rss-counter state" and
  // "non-zero pgtables_bytes" to the kernel log (Machine::dmesg), as Linux does, where the model
  // otherwise throws InvariantViolation (a model bug).
  bool check_mm_reports = false;
  // No page_table_check (v5 added it): an entry written into a table others share goes
  // unnoticed until check_invariants(), where the model's lock checker otherwise stops it.
  bool unchecked_shared_writes = false;
};

class ForkPolicy {
 public:
  virtual ~ForkPolicy() = default;
  // The name in the registry, the configuration, set_cow_pte(name), benchmark names and
  // reports: lower case, [a-z0-9_].
  virtual std::string_view name() const noexcept = 0;
  virtual std::string_view summary() const noexcept = 0;  // one line, for --help and reports
  virtual TableAccounting accounting() const noexcept { return TableAccounting::per_holder; }

  // Fork, for one PMD of src_vma whose parent entry is present: share the PTE table, or copy
  // (ops.copy_pte_range). 0, or -ENOMEM to fail the fork (dup_mmap then undoes it all).
  virtual int copy_pmd(PolicyOps& ops, const ForkPmd& f) const = 0;
  // A write, pin, mprotect, partial zap or split needs a private table for addr's span; pmd
  // points at a table this policy shared. 0, or -ENOMEM with nothing changed.
  virtual int break_table(PolicyOps& ops, MmStruct& mm, EntryRef pmd, vaddr_t addr) const = 0;
  // Does a page fault with these FAULT_FLAG_* bits in a shared table break it first?
  virtual bool fault_breaks_table(const Vma& vma, unsigned fault_flags) const noexcept {
    (void)vma, (void)fault_flags;
    return true;
  }
  // The series' behaviours outside these hooks that this policy keeps (SeriesQuirks).
  virtual SeriesQuirks quirks() const noexcept { return {}; }
  // True for a policy that reproduces a posted patch's bugs on purpose ("seed_exact"): a process
  // under it may see what Linux never shows (another process's page, a written zero page), so
  // sound_fork_policy_names() leaves it out.
  virtual bool as_posted() const noexcept { return false; }
  // A zap (munmap, exit, MADV_DONTNEED) meets a shared table at addr. True when the table is
  // dealt with and zap_pte_range has nothing left to do there.
  virtual bool zap_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd, vaddr_t addr) const = 0;
  // free_pgtables meets a PMD pointing at a shared table. True when this mm only let go of it
  // (others still hold it); false when the table is to be freed like a private one.
  virtual bool free_table(PolicyOps& ops, MmGather& tlb, EntryRef pmd) const = 0;
};

// The registry. find_fork_policy: nullptr for an unknown name. register_fork_policy: EEXIST for
// a name taken, EINVAL for a name outside [a-z0-9_]+; the policy must outlive every Machine that
// uses it. Registering is not thread-safe against concurrent Machines: register at start-up.
const ForkPolicy* find_fork_policy(std::string_view name) noexcept;

// The policy that governs mm's fork and shared tables: the one set_cow_pte() chose once
// MMF_COW_PTE is on, the classic fork before (src/fork/policies/).
const ForkPolicy& classic_fork_policy() noexcept;  // "classic"
inline const ForkPolicy& fork_policy(const MmStruct& mm) noexcept {
  return mm_cow_pte(mm) && mm.cow_pte_policy ? *mm.cow_pte_policy : classic_fork_policy();
}

Result<void> register_fork_policy(const ForkPolicy& policy);

}  // namespace cowpte
