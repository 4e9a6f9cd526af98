// fork's page-table copy: copy_page_range and the levels below it (mm/memory.c).
#include <algorithm>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// vma_needs_copy: only VMAs whose PTEs cannot be refaulted are copied at fork: those with an
// anon_vma (COWed pages live only in the tables). uffd-wp and PFNMAP are not modelled.
bool Kernel::vma_needs_copy(const Vma&, const Vma& src_vma) noexcept {
  return static_cast<bool>(src_vma.anon_vma);
}

// page_copy_prealloc: a page for a child whose parent page may be pinned.
Page* Kernel::page_copy_prealloc(MmStruct&) { return mem.alloc_page(); }

// copy_nonpresent_pte: a swap entry gets one more reference for the child, and stops being
// exclusive in the parent (the child may swap the page in too). With COW PTE dst_pte is
// src_pte. -EIO when the count needs a continuation frame the atomic allocation could not get:
// the caller drops its locks, allocates one that may sleep, and comes back to this entry.
int Kernel::copy_nonpresent_pte(EntryRef dst_pte, EntryRef src_pte, RssVec& rss) {
  pteval_t pte = src_pte.get();
  const SwpEntry entry = pte_to_swp_entry(pte);
  if (!is_device_swp_entry(entry)) [[unlikely]]
    throw InvariantViolation("copy_nonpresent_pte: an entry that is no swap slot of the device");
  tm_op(Op::pte);
  if (swap_duplicate(entry) < 0) return -EIO;
  if (pte_swp_exclusive(pte)) {  // mark the swap entry as shared
    pte = pte_swp_clear_exclusive(pte);
    set_pte_at(src_pte, pte);
  }
  ++rss[MM_SWAPENTS];
  pte &= ~_PAGE_SWP_UFFD_WP;  // the child VMA is never uffd-wp in the model
  set_pte_at(dst_pte, pte);
  tm_entry(dst_pte);
  return 0;
}

// copy_pte_range: one PTE table, child's lock first, then the parent's nested. A page that
// must be copied needs a preallocated page, a swap count a continuation frame: drop the locks,
// allocate, and resume at that entry. The loop runs without hooks when none can act
// (with_hooks).
int Kernel::copy_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                           vaddr_t addr, vaddr_t end) {
  MmStruct& dst_mm = *dst_vma.vm_mm;
  Page* prealloc = nullptr;
  int ret = 0;
  SwpEntry entry{};
again:
  RssVec rss{};
  if (!pte_alloc(dst_mm, dst_pmd)) return -ENOMEM;  // pte_alloc_map_lock
  EntryRef dst_pte = pte_offset_map(dst_pmd, addr);
  EntryRef src_pte = pte_offset_map(src_pmd, addr);
  SpinLockRef dst_ptl = pte_lockptr(dst_mm, *dst_pte.table);
  SpinLockRef src_ptl = pte_lockptr(dst_mm, *src_pte.table);
  dst_ptl.lock();
  src_ptl.lock();  // spin_lock_nested(src_ptl, SINGLE_DEPTH_NESTING)
  with_hooks(hooks_on(), [&](auto hooks) {
    constexpr bool H = decltype(hooks)::value;
    do {
      const pteval_t v = src_pte.get();
      tm_entry<H>(src_pte);
      if (pte_none(v)) continue;
      if (!pte_present(v)) [[unlikely]] {
        ret = copy_nonpresent_pte(dst_pte, src_pte, rss);
        if (ret == -EIO) {
          entry = pte_to_swp_entry(v);
          break;
        }
        continue;
      }
      ret = copy_present_pte<H>(dst_vma, src_vma, dst_pte, src_pte, rss, prealloc);
      if (ret == -EAGAIN) [[unlikely]]
        break;
      if (prealloc) [[unlikely]] {
        mem.put_page(*prealloc);  // not used for this address: never reuse it at another one
        prealloc = nullptr;
      }
    } while (++dst_pte.p, ++src_pte.p, addr += PAGE_SIZE, addr != end);
  });
  src_ptl.unlock();
  add_mm_rss_vec(dst_mm, rss);
  dst_ptl.unlock();

  if (ret == -EIO) {
    ++vm_events.fork_swap_retries;
    if (add_swap_count_continuation(entry, Gfp::kernel) < 0) {
      if (prealloc) mem.put_page(*prealloc);
      return -ENOMEM;
    }
    ret = 0;
  } else if (ret == -EAGAIN) {
    prealloc = page_copy_prealloc(*src_vma.vm_mm);
    if (!prealloc) return -ENOMEM;
    ret = 0;
  }
  if (addr != end) goto again;
  if (prealloc) mem.put_page(*prealloc);
  return 0;
}

// copy_pmd_range: each present PMD goes to the mm's fork policy, which shares its PTE table or
// copies it (the classic fork: copy_pte_range). The series hooks copy_cow_pte_range in here.
int Kernel::copy_pmd_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pud, EntryRef src_pud,
                           vaddr_t addr, vaddr_t end) {
  EntryRef dst_pmd = pmd_alloc(*dst_vma.vm_mm, dst_pud, addr);
  if (!dst_pmd) return -ENOMEM;
  EntryRef src_pmd = pmd_offset(src_pud, addr);
  const ForkPolicy& policy = fork_policy(*src_vma.vm_mm);
  do {
    const vaddr_t next = pmd_addr_end(addr, end);
    tm_entry(src_pmd);
    // A huge PMD is copied whole (every policy: COW PTE shares PTE tables, a THP has none);
    // one that may be pinned was split, and its table is copied below.
    if (pmd_trans_huge(src_pmd.get())) {
      const int err = copy_huge_pmd(dst_vma, src_vma, dst_pmd, src_pmd, addr);
      if (err == -ENOMEM) return -ENOMEM;
      if (!err) continue;
    }
    if (pmd_none(src_pmd.get())) continue;  // pmd_none_or_clear_bad
    if (policy.copy_pmd(*this, ForkPmd{dst_vma, src_vma, dst_pmd, src_pmd, addr, next}))
      return -ENOMEM;
  } while (++dst_pmd.p, ++src_pmd.p, addr = pmd_addr_end(addr, end), addr != end);
  return 0;
}

int Kernel::copy_pud_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pgd, EntryRef src_pgd,
                           vaddr_t addr, vaddr_t end) {
  EntryRef dst_pud = pud_alloc(*dst_vma.vm_mm, dst_pgd, addr);
  if (!dst_pud) return -ENOMEM;
  EntryRef src_pud = pud_offset(src_pgd, addr);
  do {
    const vaddr_t next = pud_addr_end(addr, end);
    if (pmd_none(src_pud.get())) continue;  // pud_none_or_clear_bad
    if (copy_pmd_range(dst_vma, src_vma, dst_pud, src_pud, addr, next)) return -ENOMEM;
  } while (++dst_pud.p, ++src_pud.p, addr = pud_addr_end(addr, end), addr != end);
  return 0;
}

// copy_page_range: for a COW mapping, write_protect_seq is odd while the copy runs, which is
// what makes page_needs_cow_for_dma() valid (GUP-fast backs off meanwhile).
int Kernel::copy_page_range(Vma& dst_vma, Vma& src_vma) {
  if (!vma_needs_copy(dst_vma, src_vma)) return 0;
  MmStruct& src_mm = *src_vma.vm_mm;
  const bool is_cow = is_cow_mapping(src_vma.vm_flags);
  if (is_cow) ++src_mm.write_protect_seq;  // raw_write_seqcount_begin
  vaddr_t addr = src_vma.vm_start;
  const vaddr_t end = src_vma.vm_end;
  EntryRef dst_pgd = pgd_offset(*dst_vma.vm_mm, addr);
  EntryRef src_pgd = pgd_offset(src_mm, addr);
  int ret = 0;
  do {
    const vaddr_t next = pgd_addr_end(addr, end);
    if (pmd_none(src_pgd.get())) continue;  // pgd_none_or_clear_bad
    if (copy_pud_range(dst_vma, src_vma, dst_pgd, src_pgd, addr, next)) {
      ret = -ENOMEM;
      break;
    }
  } while (++dst_pgd.p, ++src_pgd.p, addr = pgd_addr_end(addr, end), addr != end);
  if (is_cow) ++src_mm.write_protect_seq;  // raw_write_seqcount_end
  return ret;
}

}  // namespace cowpte
