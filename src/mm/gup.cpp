// get_user_pages and pinning (mm/gup.c): follow the tables, fault pages in where they are
// missing or must be unshared, and take a reference (FOLL_GET) or a pin (FOLL_PIN).
#include <limits>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

namespace {
// try_grab_page refuses (-ENOMEM) a reference that would overflow page_ref_count. Linux notices
// the overflow once the count has gone negative; the model refuses before it, keeping a margin
// for the unchecked references that mappings take (get_page at fault and fork time).
constexpr std::int32_t kGrabLimit = std::numeric_limits<std::int32_t>::max() - (1 << 20);
}  // namespace

// check_vma_flags: may GUP access this VMA this way?
int Kernel::check_vma_flags(const Vma& vma, unsigned gup_flags) noexcept {
  const std::uint64_t vm_flags = vma.vm_flags;
  if (gup_flags & FOLL_WRITE) {
    if (!(vm_flags & VM_WRITE)) {
      if (!(gup_flags & FOLL_FORCE) || !is_cow_mapping(vm_flags)) return -EFAULT;
    }
  } else if (!(vm_flags & VM_READ)) {
    if (!(gup_flags & FOLL_FORCE) || !(vm_flags & VM_MAYREAD)) return -EFAULT;
  }
  return 0;
}

// gup_must_unshare: a read-only pin must not land on a page a COW could replace later.
bool Kernel::gup_must_unshare(const Vma& vma, unsigned flags, const Page& page) noexcept {
  if ((flags & (FOLL_WRITE | FOLL_PIN)) != FOLL_PIN) return false;
  if (!PageAnon(page)) {
    // The zero page or a page-cache page in a COW mapping (v6.2: reliable R/O long-term pins).
    return (flags & FOLL_LONGTERM) && is_cow_mapping(vma.vm_flags);
  }
  return !PageAnonExclusive(page);
}

// follow_page_pte: the page behind a present PTE that allows this access, with a reference or
// pin taken under the PTE lock; nullptr when a fault is needed (unshare says which kind).
Page* Kernel::follow_page_pte(Vma& vma, vaddr_t addr, unsigned flags, bool& unshare, bool& oom) {
  unshare = false;
  oom = false;
  EntryRef pmd = walk_to_pmd(*vma.vm_mm, addr);
  if (!pmd || pmd_none(pmd.get())) return nullptr;
  // A pin or a write must not land in a shared table: break it, then look again (v3 broke
  // here; v4 returns -EMLINK and breaks in the fault GUP then takes, which for a read-only pin
  // would have to be an unshare fault, copying even the zero page that a classic fork's child
  // pins as it is).
  if ((flags & (FOLL_PIN | FOLL_WRITE)) && pmd_cow_pte(*vma.vm_mm, pmd.get())) {
    if (break_cow_pte(*vma.vm_mm, pmd, addr)) {
      oom = true;
      return nullptr;
    }
  }
  if (pmd_trans_huge(pmd.get())) return follow_trans_huge_pmd(vma, pmd, addr, flags, unshare, oom);
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(*vma.vm_mm, *pte.table));  // pte_offset_map_lock
  const pteval_t v = pte.get();
  if (!pte_present(v) || pte_protnone(v)) return nullptr;
  if ((flags & FOLL_WRITE) && !pte_write(v)) return nullptr;  // can_follow_write_pte
  Page* page = &mem.page(pte_pfn(v));                         // vm_normal_page, or the zero page
  if (!pte_write(v) && gup_must_unshare(vma, flags, *page)) {
    unshare = true;
    return nullptr;
  }
  if (!try_grab_page(*page, flags)) {
    oom = true;  // -ENOMEM: __get_user_pages returns what it grabbed so far, or the error
    return nullptr;
  }
  if (flags & FOLL_TOUCH) {  // mark_page_accessed / set_page_dirty on a write
    if ((flags & FOLL_WRITE) && !PageAnon(*page)) page->set(PG_dirty);
  }
  return page;
}

// try_grab_page: a reference (FOLL_GET) or a pin (FOLL_PIN) on page's folio: a small folio's
// pin is GUP_PIN_COUNTING_BIAS references, a large folio's one reference and one in its pin
// count. False (-ENOMEM) where the count would overflow.
bool Kernel::try_grab_page(Page& page, unsigned flags) {
  Page& folio = compound_head(page);
  const bool large = PageHead(folio);
  const std::int32_t refs = (flags & FOLL_PIN) && !large ? GUP_PIN_COUNTING_BIAS : 1;
  if (folio._refcount <= 0 || folio._refcount > kGrabLimit - refs) return false;
  folio._refcount += refs;
  if (large && (flags & FOLL_PIN)) ++compound_pincount_of(folio);
  return true;
}

// follow_trans_huge_pmd: the subpage of a huge PMD's THP at addr (or of the huge zero page).
Page* Kernel::follow_trans_huge_pmd(Vma& vma, EntryRef pmd, vaddr_t addr, unsigned flags,
                                    bool& unshare, bool& oom) {
  SpinGuard ptl(pmd_lockptr(*vma.vm_mm, *pmd.table));  // pmd_lock
  const pteval_t v = pmd.get();
  if ((flags & FOLL_WRITE) && !pmd_write(v)) return nullptr;  // can_follow_write_pmd
  // A PMD-mapped THP keeps its exclusive bit in the head page only (__split_huge_pmd_locked
  // hands it to the subpages), so the unshare check reads the head, as Linux does.
  Page& head = mem.page(pmd_pfn(v));
  if (!pmd_write(v) && gup_must_unshare(vma, flags, head)) {
    unshare = true;
    return nullptr;
  }
  Page* page = &head + ((addr & ~PMD_MASK) >> PAGE_SHIFT);
  if (!try_grab_page(*page, flags)) {
    oom = true;
    return nullptr;
  }
  return page;
}

// lockless_pages_from_mm with gup_pte_range (mm/gup.c): GUP-fast. No mmap_lock and no table
// lock: the walk reads the entries as they are (Linux disables interrupts, so the tables cannot
// be freed under it), grabs each page, and drops it again if its entry changed meanwhile. A pin
// gives everything back if write_protect_seq was odd or moved: a fork (or a COW PTE break) was
// write-protecting this mm, and the page it pinned may now be shared with a child.
std::uint64_t Kernel::lockless_pages_from_mm(MmStruct& mm, vaddr_t start, std::uint64_t nr_pages,
                                             unsigned flags, std::vector<Page*>& pages) {
  std::uint64_t seq = 0;
  if (flags & FOLL_PIN) {
    interleave_point(Point::entry_read, &mm.write_protect_seq);
    seq = mm.write_protect_seq;  // raw_read_seqcount
    if (seq & 1) return 0;
  }
  for (std::uint64_t i = 0; i < nr_pages; ++i) {
    const vaddr_t addr = start + (i << PAGE_SHIFT);
    interleave_point(Point::entry_read, &mm);
    EntryRef pmd = walk_to_pmd(mm, addr);
    if (!pmd || pmd_none(pmd.get()) || pmd_trans_huge(pmd.get())) break;  // huge: the slow path
    // A pin or a write must not land in a shared PTE table (its entries may still be writable
    // under On-demand-fork): the slow path breaks it first, as follow_page_pte does. The
    // differential test found GUP-fast pinning a page of a table shared with a child.
    if ((flags & (FOLL_PIN | FOLL_WRITE)) && pmd_cow_pte(mm, pmd.get())) break;
    EntryRef pte = pte_offset_map(pmd, addr);
    const pteval_t v = pte.get();  // ptep_get_lockless
    if (!pte_present(v) || pte_special(v) || pte_protnone(v) || !(v & _PAGE_USER)) break;
    if ((flags & FOLL_WRITE) && !pte_write(v)) break;  // pte_access_permitted
    Page& page = mem.page(pte_pfn(v));
    interleave_point(Point::atomic, &page);
    if (!try_grab_page(page, flags)) break;  // try_grab_folio
    interleave_point(Point::entry_read, pte.p);
    bool back_off = pte.get() != v;  // the entry changed under us
    // gup_must_unshare without a VMA: an anon page must be exclusive; a long-term pin of
    // anything else needs the VMA, which only the slow path has.
    if (!back_off && !pte_write(v) && (flags & (FOLL_WRITE | FOLL_PIN)) == FOLL_PIN)
      back_off = PageAnon(page) ? !PageAnonExclusive(page) : (flags & FOLL_LONGTERM) != 0;
    if (back_off) {
      (flags & FOLL_PIN) ? unpin_user_page(page) : mem.put_page(page);
      break;
    }
    pages.push_back(&page);
  }
  if (flags & FOLL_PIN) {
    interleave_point(Point::entry_read, &mm.write_protect_seq);
    if (mm.write_protect_seq != seq) {  // read_seqcount_retry: a fork ran; unpin it all
      for (Page* p : pages) unpin_user_page(*p);
      pages.clear();
      return 0;
    }
  }
  return pages.size();
}

// faultin_page: a write, read or unshare fault on behalf of GUP.
int Kernel::faultin_page(Vma& vma, vaddr_t addr, unsigned flags, bool unshare) {
  unsigned fault_flags = 0;
  if (flags & FOLL_WRITE) fault_flags |= FAULT_FLAG_WRITE;
  if (unshare) fault_flags |= FAULT_FLAG_UNSHARE;
  const vm_fault_t ret = handle_mm_fault(vma, addr, fault_flags);
  if (ret & VM_FAULT_OOM) return -ENOMEM;
  if (ret & (VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV)) return -EFAULT;
  return 0;
}

// __get_user_pages under mmap_lock: returns the number of pages grabbed, or -errno if none.
long Kernel::get_user_pages(MmStruct& mm, vaddr_t start, std::uint64_t nr_pages, unsigned gup_flags,
                            std::vector<Page*>* pages, int* stopped) {
  if (gup_flags & FOLL_PIN) mm.set_flag(MMF_HAS_PINNED);  // mm_set_has_pinned_flag
  long done = 0;
  const auto stop = [&](int e) -> long {  // what cut the count short
    if (stopped) *stopped = e;
    return done ? done : e;
  };
  Vma* vma = nullptr;
  while (nr_pages) {
    if (!vma || start >= vma->vm_end) {
      vma = mm.vma_lookup(start);
      if (!vma) return stop(-EFAULT);
      if (int e = check_vma_flags(*vma, gup_flags)) return stop(e);
    }
    bool unshare = false, oom = false;
    Page* page = follow_page_pte(*vma, start, gup_flags, unshare, oom);
    if (oom) return stop(-ENOMEM);
    if (!page) {
      if (int e = faultin_page(*vma, start, gup_flags, unshare)) return stop(e);
      continue;  // retry the lookup
    }
    if (pages) {
      pages->push_back(page);
    } else if (gup_flags & FOLL_PIN) {
      unpin_user_page(*page);
    } else {
      mem.put_page(*page);
    }
    ++done;
    start += PAGE_SIZE;
    --nr_pages;
  }
  return done;
}

// unpin_user_page: drop a FOLL_PIN.
void Kernel::unpin_user_page(Page& page) {
  Page& folio = compound_head(page);
  if (PageHead(folio)) {
    --compound_pincount_of(folio);
  } else {
    folio._refcount -= GUP_PIN_COUNTING_BIAS - 1;
  }
  mem.put_page(folio);
}

// populate_vma_page_range: fault a VMA's range in as mm_populate does (MAP_POPULATE): a write
// fault per page of a private writable mapping, read faults otherwise.
long Kernel::populate_vma_page_range(Vma& vma, vaddr_t start, vaddr_t end) {
  unsigned gup_flags = FOLL_TOUCH;
  if ((vma.vm_flags & (VM_WRITE | VM_SHARED)) == VM_WRITE) gup_flags |= FOLL_WRITE;
  if (vma_is_accessible(vma)) gup_flags |= FOLL_FORCE;
  return get_user_pages(*vma.vm_mm, start, (end - start) >> PAGE_SHIFT, gup_flags, nullptr);
}

// __mm_populate: VMA by VMA; errors are the caller's to ignore.
void Kernel::mm_populate(MmStruct& mm, vaddr_t start, std::uint64_t len) {
  MmapReadGuard lock(mm);
  const vaddr_t end = start + len;
  for (vaddr_t nstart = start; nstart < end;) {
    Vma* vma = mm.find_vma(nstart);
    if (!vma || vma->vm_start >= end) break;
    nstart = std::max(nstart, vma->vm_start);
    const vaddr_t nend = std::min(end, vma->vm_end);
    if (populate_vma_page_range(*vma, nstart, nend) < 0) break;
    nstart = nend;
  }
}

}  // namespace cowpte
