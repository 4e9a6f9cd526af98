// mremap(2): the syscall, vma_to_resize, mremap_to, move_vma and move_page_tables with its
// whole-table moves (mm/mremap.c, v6.1; copy_vma from mm/mmap.c). Growing in place merges with
// the next VMA where it can, as v6.3+ (vma_merge_extend) and this project's hosts do.
//
// COW PTE: [PATCH v3 03/14] breaks the source table before moving and ignores a failed break.
// cowpte breaks the source and the destination span (entries moved into a table another process
// shares would appear in that process) and a failed break fails the move cleanly; the policy's
// SeriesQuirks bring back the series' behaviour ("seed_exact").
#include <algorithm>
#include <optional>

#include "mm/kernel.hpp"

namespace cowpte {

namespace {
constexpr std::uint64_t MREMAP_MAYMOVE = 1, MREMAP_FIXED = 2, MREMAP_DONTUNMAP = 4;
constexpr std::uint64_t page_align(std::uint64_t len) noexcept {
  return (len + PAGE_SIZE - 1) & PAGE_MASK;
}

// get_extent: how far the next step may go so that neither side crosses its next boundary of
// the given size (PMD or PUD).
std::uint64_t get_extent(std::uint64_t size, vaddr_t old_addr, vaddr_t old_end, vaddr_t new_addr) {
  const std::uint64_t mask = ~(size - 1);
  std::uint64_t extent = ((old_addr + size) & mask) - old_addr;
  extent = std::min(extent, old_end - old_addr);
  return std::min(extent, ((new_addr + size) & mask) - new_addr);
}
}  // namespace

// do_mas_munmap (v6.1's do_munmap with the argument checks): mmap_lock held for write.
Result<void> Kernel::do_mas_munmap(MmStruct& mm, vaddr_t start, std::uint64_t len) {
  if ((start & ~PAGE_MASK) || start > TASK_SIZE || len > TASK_SIZE - start) return Errno::inval;
  len = page_align(len);
  if (!len) return Errno::inval;
  return do_vmi_munmap(mm, start, start + len);
}

// SYSCALL_DEFINE5(mremap): check the flags and lengths, then shrink, grow in place, or move.
Result<vaddr_t> Kernel::do_mremap(MmStruct& mm, vaddr_t addr, std::uint64_t old_len,
                                  std::uint64_t new_len, std::uint64_t flags, vaddr_t new_addr) {
  if (flags & ~(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP)) return Errno::inval;
  if ((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE)) return Errno::inval;
  // MREMAP_DONTUNMAP is always a move, and never a resize.
  if ((flags & MREMAP_DONTUNMAP) && (!(flags & MREMAP_MAYMOVE) || old_len != new_len))
    return Errno::inval;
  if (addr & ~PAGE_MASK) return Errno::inval;
  old_len = page_align(old_len);
  new_len = page_align(new_len);
  if (!new_len) return Errno::inval;  // a zero old_len duplicates a shared mapping; see below

  MmapWriteGuard lock(mm);
  Vma* vma = mm.vma_lookup(addr);
  if (!vma) return Errno::fault;
  if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP))
    return mremap_to(mm, addr, old_len, new_addr, new_len, flags);

  // Always allow a shrinking remap: that just unmaps the tail. (An error unmapping is reported
  // only when there was something to unmap.)
  if (old_len >= new_len) {
    auto r = do_mas_munmap(mm, addr + new_len, old_len - new_len);
    if (!r && old_len != new_len) return r.error();
    return addr;
  }
  auto resized = vma_to_resize(mm, addr, old_len, new_len, flags);
  if (!resized) return resized.error();
  vma = *resized;
  // old_len reaches exactly the end of the VMA: can it just grow?
  if (old_len == vma->vm_end - addr && vma_expandable(mm, *vma, new_len - old_len)) {
    mm.mm_mt.erase(mm.mm_mt.iterator_to(*vma));
    vma->vm_end = addr + new_len;
    mm.mm_mt.insert(*vma);
    vma_merge(mm, *vma);  // vma_merge_extend (v6.3+): the next VMA may join
    COWPTE_TRACE(*this, "mremap: pid {} {:#x} grows to {:#x} in place", mm.pid, addr, new_len);
    return addr;
  }
  // Move to a free range of the new length.
  if (!(flags & MREMAP_MAYMOVE)) return Errno::nomem;
  const MapFlags map_flags = (vma->vm_flags & VM_MAYSHARE) ? MapFlags::shared : MapFlags{};
  auto area = get_unmapped_area(mm, 0, new_len, map_flags);
  if (!area) return area.error();
  return move_vma(mm, *vma, addr, old_len, new_len, *area, flags);
}

// vma_to_resize: the VMA at addr, if [addr, addr + old_len) may become new_len long.
Result<Vma*> Kernel::vma_to_resize(MmStruct& mm, vaddr_t addr, std::uint64_t old_len,
                                   std::uint64_t new_len, std::uint64_t flags) {
  Vma* vma = mm.vma_lookup(addr);
  if (!vma) return Errno::fault;
  // A zero old_len "duplicates" a mapping: meaningless for a private one.
  if (!old_len && !(vma->vm_flags & (VM_SHARED | VM_MAYSHARE))) return Errno::inval;
  (void)flags;  // MREMAP_DONTUNMAP refuses VM_DONTEXPAND and VM_PFNMAP: the model has neither
  if (old_len > vma->vm_end - addr) return Errno::fault;  // no remap across VMA boundaries
  if (new_len == old_len) return vma;
  const std::uint64_t pgoff = vma->vm_pgoff + ((addr - vma->vm_start) >> PAGE_SHIFT);
  if (pgoff + (new_len >> PAGE_SHIFT) < pgoff) return Errno::inval;
  return vma;  // may_expand_vm: the model sets no RLIMIT_AS
}

// vma_expandable: nothing mapped in the delta after the VMA, and the whole of it a valid range.
bool Kernel::vma_expandable(MmStruct& mm, Vma& vma, std::uint64_t delta) {
  const vaddr_t end = vma.vm_end + delta;
  if (end < vma.vm_end) return false;
  if (mm.find_vma_intersection(vma.vm_end, end)) return false;
  return bool(get_unmapped_area(mm, vma.vm_start, end - vma.vm_start, MapFlags::fixed));
}

// mremap_to: MREMAP_FIXED (unmap what is at new_addr first) or MREMAP_DONTUNMAP.
Result<vaddr_t> Kernel::mremap_to(MmStruct& mm, vaddr_t addr, std::uint64_t old_len,
                                  vaddr_t new_addr, std::uint64_t new_len, std::uint64_t flags) {
  if (new_addr & ~PAGE_MASK) return Errno::inval;
  if (new_len > TASK_SIZE || new_addr > TASK_SIZE - new_len) return Errno::inval;
  if (addr + old_len > new_addr && new_addr + new_len > addr) return Errno::inval;  // overlap
  // move_vma needs room for the splits of the unmaps below.
  if (mm.mm_mt.size() + 2 >= kMaxMapCount - 3) return Errno::nomem;
  if (flags & MREMAP_FIXED)
    if (auto r = do_mas_munmap(mm, new_addr, new_len); !r) return r.error();
  if (old_len > new_len) {
    if (auto r = do_mas_munmap(mm, addr + new_len, old_len - new_len); !r) return r.error();
    old_len = new_len;
  }
  auto resized = vma_to_resize(mm, addr, old_len, new_len, flags);
  if (!resized) return resized.error();
  Vma* vma = *resized;
  MapFlags map_flags = (flags & MREMAP_FIXED) ? MapFlags::fixed : MapFlags{};
  if (vma->vm_flags & VM_MAYSHARE) map_flags |= MapFlags::shared;
  auto area = get_unmapped_area(mm, new_addr, new_len, map_flags);
  if (!area) return area.error();
  if (!(flags & MREMAP_FIXED)) new_addr = *area;
  return move_vma(mm, *vma, addr, old_len, new_len, new_addr, flags);
}

// copy_vma (mm/mmap.c): the VMA the moved range will live in at [addr, addr + len), merged
// with a neighbour where vma_merge allows (which may be vma itself: see move_vma). nullptr on
// ENOMEM.
Vma* Kernel::copy_vma(MmStruct& mm, Vma& vma, vaddr_t addr, std::uint64_t len,
                      std::uint64_t pgoff) {
  // An anonymous VMA that has not been faulted may take the new address as its offset, which
  // lets it merge at the destination.
  if (vma_is_anonymous(vma) && !vma.anon_vma) pgoff = addr >> PAGE_SHIFT;
  Vma* nw = vm_area_dup(vma);
  if (!nw) return nullptr;
  if (nw->anon_vma && mem.should_fail_alloc()) {  // anon_vma_clone: the chain's links
    vm_area_free(nw);
    return nullptr;
  }
  nw->vm_start = addr;
  nw->vm_end = addr + len;
  nw->vm_pgoff = pgoff;
  mm.mm_mt.insert(*nw);
  return vma_merge(mm, *nw);
}

// move_vma: a VMA for the new range, the page tables moved into it, the old range unmapped
// (unless MREMAP_DONTUNMAP). A failed move puts back what moved and unmaps the new range.
Result<vaddr_t> Kernel::move_vma(MmStruct& mm, Vma& vma, vaddr_t old_addr, std::uint64_t old_len,
                                 std::uint64_t new_len, vaddr_t new_addr, std::uint64_t flags) {
  if (mm.mm_mt.size() >= kMaxMapCount - 3) return Errno::nomem;
  const std::uint64_t new_pgoff = vma.vm_pgoff + ((old_addr - vma.vm_start) >> PAGE_SHIFT);
  if (!copy_vma(mm, vma, new_addr, new_len, new_pgoff)) return Errno::nomem;
  // vma_merge may have joined the two (an unfaulted VMA moved next to itself) or freed either
  // object: find both ranges again.
  Vma* old_vma = mm.vma_lookup(old_addr);
  Vma* new_vma = mm.vma_lookup(new_addr);
  const std::uint64_t moved = move_page_tables(mm, old_addr, *new_vma, new_addr, old_len);
  Result<vaddr_t> ret = new_addr;
  if (moved < old_len) {
    // Move back what moved (the tables are still there), then unmap the new range instead.
    move_page_tables(mm, new_addr, *old_vma, old_addr, moved);
    old_addr = new_addr;
    old_len = new_len;
    ret = Errno::nomem;
  } else if (flags & MREMAP_DONTUNMAP) {
    // The old range stays mapped and empty; a VMA it was all of no longer needs its anon_vma.
    if (old_vma != new_vma && old_vma->vm_start == old_addr &&
        old_vma->vm_end == old_addr + old_len) {
      old_vma->anon_vma = nullptr;  // unlink_anon_vmas
      old_vma->anon_vma_chain = 0;
    }
    COWPTE_TRACE(*this, "mremap: pid {} {:#x} moved to {:#x}, old range kept", mm.pid, old_addr,
                 new_addr);
    return new_addr;
  }
  // An unmap that cannot split (ENOMEM) leaves the old range mapped, as in Linux.
  (void)do_mas_munmap(mm, old_addr, old_len);
  if (ret) COWPTE_TRACE(*this, "mremap: pid {} moved to {:#x}", mm.pid, new_addr);
  return ret;
}

// move_page_tables: move [old_addr, old_addr + len)'s entries to new_addr, a whole PUD or PMD
// entry at a time where both sides are aligned to it and the range covers it, PTE by PTE
// otherwise. Returns how much was moved (less than len on ENOMEM).
std::uint64_t Kernel::move_page_tables(MmStruct& mm, vaddr_t old_addr, Vma& new_vma,
                                       vaddr_t new_addr, std::uint64_t len) {
  if (!len) return 0;
  const vaddr_t old_end = old_addr + len;
  const SeriesQuirks quirks = fork_policy(mm).quirks();
  std::optional<SharedPteWrites> unchecked;  // the series moves into a shared destination
  if (quirks.unchecked_shared_writes) unchecked.emplace();
  // Does the PMD table under pud point at a PTE table fork shared (a write-protected PMD)?
  const auto points_at_shared_tables = [&](MmStruct& m, EntryRef pud) {
    if (!mm_cow_pte(m)) return false;
    const pteval_t* pmd = table_base(table_of(pud.get()));
    return std::any_of(pmd, pmd + PTRS_PER_TABLE, [&](pteval_t e) { return pmd_cow_pte(m, e); });
  };
  std::uint64_t extent = 0;
  for (; old_addr < old_end; old_addr += extent, new_addr += extent) {
    extent = get_extent(PUD_SIZE, old_addr, old_end, new_addr);
    EntryRef old_pgd = pgd_offset(mm, old_addr);
    if (pmd_none(old_pgd.get())) continue;  // get_old_pud
    EntryRef old_pud = pud_offset(old_pgd, old_addr);
    if (pmd_none(old_pud.get())) continue;
    EntryRef new_pud = pud_alloc(mm, pgd_offset(mm, new_addr), new_addr);  // alloc_new_pud
    if (!new_pud) break;
    // A whole PMD table moves with the shared PTE tables it points at, which the series does not
    // break; cowpte moves such a range one PMD at a time so that each is broken (the holders'
    // accounting is by address: On-demand-fork's owner hand-over looks tables up by span).
    if (extent == PUD_SIZE &&
        (quirks.move_breaks_source_only || !points_at_shared_tables(mm, old_pud)) &&
        move_normal_pud(mm, old_addr, old_pud, new_pud))
      continue;

    extent = get_extent(PMD_SIZE, old_addr, old_end, new_addr);
    EntryRef old_pmd = pmd_offset(old_pud, old_addr);
    if (pmd_none(old_pmd.get())) continue;  // get_old_pmd
    if (pmd_trans_huge(old_pmd.get())) {
      // A huge PMD moves whole (with its deposited table) where the extent is all of it.
      EntryRef new_pmd = pmd_alloc(mm, new_pud, new_addr);
      if (!new_pmd) break;
      if (extent == PMD_SIZE && move_huge_pmd(mm, old_addr, old_pmd, new_pmd)) continue;
      if (Vma* vma = mm.vma_lookup(old_addr)) split_huge_pmd(*vma, old_pmd, old_addr);
    }
    // [PATCH v3 03/14]: break the old table before moving (the series ignores a failure).
    if (break_cow_pte(mm, old_pmd, old_addr) && !quirks.ignore_failed_breaks) break;
    EntryRef new_pmd = pmd_alloc(mm, new_pud, new_addr);  // alloc_new_pmd
    if (!new_pmd) break;
    if (extent == PMD_SIZE && move_normal_pmd(mm, old_addr, old_pmd, new_pmd)) continue;
    // The destination span may hold a table this mm shares (another VMA of the span was
    // forked with COW PTE): entries written there would appear in every holder.
    if (!quirks.move_breaks_source_only && break_cow_pte(mm, new_pmd, new_addr)) break;
    if (!pte_alloc(mm, new_pmd)) break;
    move_ptes(mm, old_pmd, old_addr, old_addr + extent, new_vma, new_pmd, new_addr);
  }
  return len - (old_end - std::min(old_addr, old_end));
}

// move_normal_pmd: hand the whole PTE table to the new PMD entry. Not when the new entry is
// in use (Linux warns: free_pgtables should have freed it); move_ptes does that span instead.
bool Kernel::move_normal_pmd(MmStruct& mm, vaddr_t old_addr, EntryRef old_pmd, EntryRef new_pmd) {
  if (!pmd_none(new_pmd.get())) return false;
  SpinGuard old_ptl(pmd_lockptr(mm, *old_pmd.table));  // pmd_lock
  std::optional<SpinGuard> new_ptl;
  if (new_pmd.table != old_pmd.table) new_ptl.emplace(pmd_lockptr(mm, *new_pmd.table));
  const pteval_t pmd = old_pmd.get();
  tm_entry(old_pmd);
  set_pmd_at(mm, old_pmd, 0);    // pmd_clear
  set_pmd_at(mm, new_pmd, pmd);  // pmd_populate
  tm_entry(new_pmd);
  flush_tlb_range(mm, old_addr, old_addr + PMD_SIZE);
  return true;
}

// move_huge_pmd (mm/huge_memory.c): hand a huge PMD and its deposited table to the new entry;
// the moved mapping is soft-dirty. Not when the new entry is in use.
bool Kernel::move_huge_pmd(MmStruct& mm, vaddr_t old_addr, EntryRef old_pmd, EntryRef new_pmd) {
  if (!pmd_none(new_pmd.get())) return false;
  SpinGuard old_ptl(pmd_lockptr(mm, *old_pmd.table));
  std::optional<SpinGuard> new_ptl;
  if (new_pmd.table != old_pmd.table) new_ptl.emplace(pmd_lockptr(mm, *new_pmd.table));
  const pteval_t pmd = old_pmd.get();
  tm_entry(old_pmd);
  set_pmd_at(mm, old_pmd, 0);  // pmdp_huge_get_and_clear
  if (new_pmd.table != old_pmd.table)
    pgtable_trans_huge_deposit(new_pmd, pgtable_trans_huge_withdraw(old_pmd));
  set_pmd_at(mm, new_pmd, pmd_mksoft_dirty_huge(pmd));  // move_soft_dirty_pmd
  tm_entry(new_pmd);
  flush_tlb_range(mm, old_addr, old_addr + PMD_SIZE, PMD_SHIFT);
  return true;
}

// move_normal_pud: the same one level up, a whole PMD table (1 GiB) at a time.
bool Kernel::move_normal_pud(MmStruct& mm, vaddr_t old_addr, EntryRef old_pud, EntryRef new_pud) {
  if (!pmd_none(new_pud.get())) return false;
  SpinGuard ptl(pud_lockptr(mm));  // pud_lock: mm->page_table_lock
  const pteval_t pud = old_pud.get();
  tm_entry(old_pud);
  set_pud(mm, old_pud, 0);  // pud_clear
  set_pud(mm, new_pud, pud);
  tm_entry(new_pud);
  flush_tlb_range(mm, old_addr, old_addr + PUD_SIZE);
  return true;
}

// move_ptes: entry by entry under both tables' locks; a moved entry is soft-dirty (the move is
// a change user space may want to see); the old translations go before the locks are dropped.
void Kernel::move_ptes(MmStruct& mm, EntryRef old_pmd, vaddr_t old_addr, vaddr_t old_end,
                       Vma& new_vma, EntryRef new_pmd, vaddr_t new_addr) {
  (void)new_vma;  // move_pte keeps the protection: both VMAs have the same vm_page_prot
  const vaddr_t start = old_addr;
  EntryRef old_pte = pte_offset_map(old_pmd, old_addr);
  EntryRef new_pte = pte_offset_map(new_pmd, new_addr);
  SpinGuard old_ptl(pte_lockptr(mm, *old_pte.table));  // pte_offset_map_lock
  std::optional<SpinGuard> new_ptl;
  if (new_pte.table != old_pte.table) new_ptl.emplace(pte_lockptr(mm, *new_pte.table));
  bool force_flush = false;
  for (; old_addr < old_end; ++old_pte.p, ++new_pte.p, old_addr += PAGE_SIZE) {
    tm_entry(old_pte);
    if (pte_none(old_pte.get())) continue;
    tm_op(Op::pte);
    pteval_t pte = ptep_get_and_clear(old_pte);
    if (pte_present(pte)) force_flush = true;
    set_pte_at(new_pte, move_soft_dirty_pte(pte));
    tm_entry(new_pte);
  }
  if (force_flush) flush_tlb_range(mm, start, old_end);
}

}  // namespace cowpte
