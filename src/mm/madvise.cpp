// madvise(2): DONTNEED, DONTFORK, DOFORK, PAGEOUT and POPULATE_(READ|WRITE) (mm/madvise.c).
#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// madvise_update_vma: split or merge so that [start, end) carries newflags.
bool Kernel::madvise_update_vma(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end,
                                std::uint64_t newflags) {
  if (newflags == vma.vm_flags) return true;
  Vma* v = split_vma_range(mm, vma, start, end);
  if (!v) return false;
  v->vm_flags = newflags;
  vma_merge(mm, *v);
  return true;
}

// madvise_populate: fault the range in through GUP, as MADV_POPULATE_(READ|WRITE) do. In v6.1
// madvise_walk_vmas visits the VMAs in address order: the first incompatible VMA fails the
// call with EINVAL; holes give ENOMEM once every VMA was visited. The model finds the outcome
// before faulting anything, so a refused call changes nothing.
Result<void> Kernel::madvise_populate(MmStruct& mm, vaddr_t start, vaddr_t end, bool write) {
  const unsigned gup_flags = FOLL_TOUCH | (write ? FOLL_WRITE : 0u);
  MmapReadGuard lock(mm);
  bool hole = false;
  for (vaddr_t a = start; a < end;) {
    Vma* v = mm.find_vma(a);
    if (!v || v->vm_start >= end) {
      hole = true;
      break;
    }
    if (v->vm_start > a) hole = true;
    if (check_vma_flags(*v, gup_flags)) return Errno::inval;  // faultin_vma_page_range
    a = v->vm_end;
  }
  if (hole) return Errno::nomem;
  const long r = get_user_pages(mm, start, (end - start) >> PAGE_SHIFT, gup_flags, nullptr);
  if (r == -ENOMEM || (r >= 0 && static_cast<std::uint64_t>(r) < ((end - start) >> PAGE_SHIFT)))
    return Errno::nomem;
  if (r < 0) return Errno::fault;
  return {};
}

// do_madvise. The whole range is checked before anything changes: a hole gives ENOMEM with
// nothing changed (Linux applies the advice to the mapped parts first).
Result<void> Kernel::do_madvise(MmStruct& mm, vaddr_t start, std::uint64_t len_in, Advice advice) {
  switch (advice) {
    case Advice::dontneed:
    case Advice::dontfork:
    case Advice::dofork:
    case Advice::pageout:
    case Advice::populate_read:
    case Advice::populate_write:
      break;
    default:
      return Errno::inval;  // madvise_behavior_valid
  }
  if (start & ~PAGE_MASK) return Errno::inval;
  const std::uint64_t len = (len_in + PAGE_SIZE - 1) & PAGE_MASK;
  if (len_in && !len) return Errno::inval;
  const vaddr_t end = start + len;
  if (end < start) return Errno::inval;
  if (end == start) return {};
  if (advice == Advice::populate_read || advice == Advice::populate_write)
    return madvise_populate(mm, start, end, advice == Advice::populate_write);
  {
    MmapReadGuard lock(mm);
    for (vaddr_t a = start; a < end;) {  // madvise_walk_vmas: unmapped_error
      Vma* v = mm.vma_lookup(a);
      if (!v) return Errno::nomem;
      a = v->vm_end;
    }
  }
  COWPTE_TRACE(*this, "madvise: pid {} {:#x}-{:#x} advice {}", mm.pid, start, end,
               static_cast<int>(advice));
  switch (advice) {
    case Advice::dontneed: {
      MmapReadGuard lock(mm);
      // A shared table only partly in the range must be broken before the zap changes
      // entries others map (the series relies on zap_pte_range breaking it; see zap_cow_pte).
      auto break_partial = [&](vaddr_t a) {
        const vaddr_t span = a & PMD_MASK;
        return (span < start || span + PMD_SIZE > end) && break_cow_pte_range(mm, span, span + 1);
      };
      if (break_partial(start) || break_partial(end - 1)) return Errno::nomem;
      zap_page_range(mm, start, end);
      return {};
    }
    case Advice::dontfork:
    case Advice::dofork: {
      MmapWriteGuard lock(mm);
      for (vaddr_t a = start; a < end;) {
        Vma* v = mm.vma_lookup(a);
        const vaddr_t e = std::min(end, v->vm_end);
        const std::uint64_t nf =
            advice == Advice::dontfork ? (v->vm_flags | VM_DONTCOPY) : (v->vm_flags & ~VM_DONTCOPY);
        if (!madvise_update_vma(mm, *v, a, e, nf)) return Errno::nomem;
        a = e;
      }
      return {};
    }
    case Advice::pageout:
      return {};  // no swap device: reclaim finds nothing it could page out
    default:
      break;
  }
  return Errno::inval;
}

}  // namespace cowpte
