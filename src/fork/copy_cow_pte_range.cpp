// fork with COW PTE, the seed's policy: copy_cow_pte_range and recover_pte_range (mm/memory.c of
// "[PATCH v3 02/14] mm: Add Copy-On-Write PTE to fork()", with the v4 changes). Fork still does
// every page's accounting (David Hildenbrand's "dedup only" design); only the prepared table is
// shared instead of allocated and copied.
#include <algorithm>
#include <cstring>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// copy_cow_pte_range: share the parent's table of the 2 MiB span holding addr with the child.
// Every entry of every VMA in the span goes through copy_present_pte with dst == src (a later
// VMA might be skipped by lazy fork and leave the table half-prepared), the child's RSS grows,
// and on success both PMDs are write-protected. A page that may be pinned, or a VMA the child
// does not get, returns -EAGAIN with recover_end where the fallback starts.
int Kernel::copy_cow_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                               vaddr_t addr, vaddr_t, vaddr_t& recover_end, bool as_posted) {
  MmStruct& dst_mm = *dst_vma.vm_mm;
  MmStruct& src_mm = *src_vma.vm_mm;
  Page* pte_table = &table_of(src_pmd.get());
  const vaddr_t end = (addr + PMD_SIZE) & PMD_MASK;
  // The series walks from addr: called again for a later VMA of a span whose table fell back
  // (the child's PMD then points at a private, writable table), it prepares that VMA's entries
  // a second time and replaces the child's private table below (leaking it).
  if (!as_posted) addr &= PMD_MASK;

  {  // One reference per child per table; pmd_install charges the child's nr_ptes.
    SpinGuard ptl(pte_lockptr(dst_mm, *pte_table));
    pmd_get_pte(*pte_table);
    tm_page(*pte_table, 1);
    Page* t = pte_table;
    pmd_install(dst_mm, dst_pmd, t);
    tm_entry(dst_pmd);
  }

  for (Vma* curr = src_mm.find_vma(addr); curr && curr->vm_start < end;
       curr = src_mm.vma_next(*curr)) {
    const vaddr_t vm_end = std::min(end, curr->vm_end);
    addr = std::max(addr, curr->vm_start);
    // v4: the child does not get a VM_DONTCOPY VMA's entries (nor, in the model, a
    // VM_WIPEONFORK one's, which the child gets empty): the table can't be shared.
    if (curr->vm_flags & (VM_DONTCOPY | (as_posted ? VM_NONE : VM_WIPEONFORK))) {
      recover_end = addr;
      return -EAGAIN;
    }
    int ret = 0;
    SwpEntry entry{};
    for (;;) {  // again:
      RssVec rss{};
      EntryRef pte = pte_offset_map(src_pmd, addr);
      {
        SpinGuard ptl(pte_lockptr(dst_mm, *pte_table));
        SharedPteWrites shared;  // dst == src: the "child-side" changes land in the parent's
        Page* no_prealloc = nullptr;
        with_hooks(hooks_on(), [&](auto hooks) {
          constexpr bool H = decltype(hooks)::value;
          do {
            const pteval_t v = pte.get();
            tm_entry<H>(pte);
            if (pte_none(v)) continue;
            if (!pte_present(v)) [[unlikely]] {  // the swap stuff, though the table is COW-ed
              ret = copy_nonpresent_pte(pte, pte, rss);
              if (ret == -EIO) {
                entry = pte_to_swp_entry(v);
                break;
              }
              continue;
            }
            ret = copy_present_pte<H>(*curr, *curr, pte, pte, rss, no_prealloc);
            if (ret == -EAGAIN) [[unlikely]]
              break;  // may be pinned: needs a preallocated page, so the table can't be shared
          } while (++pte.p, addr += PAGE_SIZE, addr != vm_end);
        });
        add_mm_rss_vec(dst_mm, rss);
      }
      if (ret != -EIO) break;
      // The swap count needs a continuation frame: with the lock dropped, allocate one that
      // may sleep and resume at the entry. If even that fails, the seed shares the half-prepared
      // table and returns -ENOMEM; the model takes back what the child got and fails cleanly.
      ++vm_events.fork_swap_retries;
      int err;
      {
        TableInHand hold(*this, *pte_table);
        err = add_swap_count_continuation(entry, Gfp::kernel);
      }
      if (err < 0) {
        uncharge_cow_pte_range(*curr, dst_mm, dst_pmd, src_pmd, addr);
        return -ENOMEM;
      }
      ret = 0;
    }
    if (ret == -EAGAIN) {
      recover_end = addr;
      return -EAGAIN;
    }
  }

  // All the entries can be COW-ed: share. Fork holds both mmap_locks; the model also takes
  // the PMD locks its checker asks for.
  {
    SpinGuard pl(pmd_lockptr(dst_mm, *src_pmd.table));
    pmdp_set_wrprotect(src_mm, src_pmd);
  }
  SpinGuard pl(pmd_lockptr(dst_mm, *dst_pmd.table));
  set_pmd_at(dst_mm, dst_pmd, pmd_wrprotect(src_pmd.get()));
  COWPTE_TRACE(*this, "cow_pte: pid {} shares table {:#x} at {:#x}, count {}", src_mm.pid,
               raw(mem.pfn(*pte_table)), end - PMD_SIZE, cow_pte_count(*pte_table));
  return 0;
}

// uncharge_cow_pte_range: the fallback could not get a table for the child. The seed returns
// -ENOMEM with the child's PMD cleared and its reference and accounting left behind; the
// model takes back what copy_cow_pte_range gave the child below end, so the failed fork
// leaks nothing. The parent's entries stay write-protected, as after a failed classic fork.
void Kernel::uncharge_cow_pte_range(Vma& src_vma, MmStruct& dst_mm, EntryRef dst_pmd,
                                    EntryRef src_pmd, vaddr_t end) {
  Page& table = table_of(src_pmd.get());
  vaddr_t addr = end & PMD_MASK;
  RssVec rss{};
  {
    SpinGuard ptl(pte_lockptr(dst_mm, table));
    for (EntryRef pte = pte_offset_map(src_pmd, addr); addr != end; ++pte.p, addr += PAGE_SIZE) {
      const pteval_t v = pte.get();
      if (pte_none(v)) continue;
      if (!pte_present(v)) {  // a swap entry the child got a reference to
        --rss[MM_SWAPENTS];
        swap_free(pte_to_swp_entry(v));
        continue;
      }
      Page* page = vm_normal_page(src_vma, v);
      if (!page) continue;
      --rss[mm_counter(*page)];
      page_remove_rmap(*page);
      mem.put_page(*page);  // the parent's mapping still holds it
    }
    pmd_put_pte(table);
  }
  add_mm_rss_vec(dst_mm, rss);
  SpinGuard pl(pmd_lockptr(dst_mm, *dst_pmd.table));
  set_pmd_at(dst_mm, dst_pmd, 0);      // pmd_clear
  dst_mm.pgtables_bytes -= PAGE_SIZE;  // mm_dec_nr_ptes
}

// recover_pte_range: give the child a private table holding, verbatim, the entries prepared
// before recover_end, and drop the child's reference on the shared one. The parent's PMD stays
// write-protected: the table may still be shared with others. The seed clears the child's PMD
// before allocating; the model allocates first so that a failure can be undone.
int Kernel::recover_pte_range(Vma& dst_vma, Vma& src_vma, EntryRef dst_pmd, EntryRef src_pmd,
                              vaddr_t end, bool as_posted) {
  MmStruct& dst_mm = *dst_vma.vm_mm;
  Page& src_table = table_of(src_pmd.get());
  TableInHand hold(*this, src_table);  // shared with the child until it gets its own
  if (as_posted) {
    // The series: pmd_clear (no mm_dec_nr_ptes: the child pays for the shared table and again
    // for its own), then pte_alloc_map_lock; on -ENOMEM the child's reference and the
    // accounting of the prepared entries stay behind.
    {
      SpinGuard pl(pmd_lockptr(dst_mm, *dst_pmd.table));
      set_pmd_at(dst_mm, dst_pmd, 0);
    }
    if (!pte_alloc(dst_mm, dst_pmd)) return -ENOMEM;
  } else {
    Page* table = pte_alloc_one(dst_mm);
    if (!table) {
      uncharge_cow_pte_range(src_vma, dst_mm, dst_pmd, src_pmd, end);
      return -ENOMEM;
    }
    // pmd_clear + pte_alloc: nr_ptes -1 +1
    SpinGuard pl(pmd_lockptr(dst_mm, *dst_pmd.table));
    set_pmd_at(dst_mm, dst_pmd, mk_table_entry(mem.pfn(*table)));
  }
  Page* table = &table_of(dst_pmd.get());
  vaddr_t addr = end & PMD_MASK;
  SpinGuard dst_ptl(pte_lockptr(dst_mm, *table));
  SpinGuard src_ptl(pte_lockptr(dst_mm, src_table));
  EntryRef dst_pte = pte_offset_map(dst_pmd, addr), src_pte = pte_offset_map(src_pmd, addr);
  for (; addr != end; ++dst_pte.p, ++src_pte.p, addr += PAGE_SIZE) {
    const pteval_t v = src_pte.get();
    if (pte_none(v)) continue;
    set_pte_at(dst_pte, v);  // COW-ed entries are already what a COW mapping needs
  }
  pmd_put_pte(src_table);  // release the child's hold before unlocking the source
  COWPTE_TRACE(*this, "cow_pte: pid {} falls back at {:#x}", dst_mm.pid, end);
  return 0;
}

}  // namespace cowpte
