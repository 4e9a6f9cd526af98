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

namespace {
// madvise_walk_vmas (mm/madvise.c, v6.1): visit each VMA of [start, end) in address order with
// its part of the range. The first error a visit returns ends the walk, and what the earlier
// visits did stays done; a hole anywhere gives ENOMEM once every VMA was visited.
template <class Visit>
Result<void> madvise_walk_vmas(MmStruct& mm, vaddr_t start, vaddr_t end, Visit&& visit) {
  bool unmapped_error = false;
  while (start < end) {
    Vma* vma = mm.find_vma(start);
    if (!vma) return Errno::nomem;  // nothing mapped from here to end
    if (start < vma->vm_start) {
      unmapped_error = true;
      start = vma->vm_start;
      if (start >= end) break;
    }
    const vaddr_t tmp = std::min(end, vma->vm_end);
    if (Result<void> r = visit(*vma, start, tmp); !r) return r;
    start = tmp;
  }
  if (unmapped_error) return Errno::nomem;
  return {};
}
}  // namespace

// madvise_populate: fault the range in through GUP, as MADV_POPULATE_(READ|WRITE) do, VMA after
// VMA in address order. As in Linux since 6.10 (this project's hosts run 6.18; v6.1 ran it per
// VMA inside madvise_walk_vmas and went on past a hole): the first hole gives ENOMEM, a VMA
// that forbids the access EINVAL, a fault that fails ENOMEM or EFAULT, and the pages before
// stay populated.
Result<void> Kernel::madvise_populate(MmStruct& mm, vaddr_t start, vaddr_t end, bool write) {
  const unsigned gup_flags = FOLL_TOUCH | (write ? FOLL_WRITE : 0u);
  MmapReadGuard lock(mm);
  for (vaddr_t a = start; a < end;) {
    Vma* v = mm.vma_lookup(a);
    if (!v) return Errno::nomem;
    if (check_vma_flags(*v, gup_flags)) return Errno::inval;  // faultin_page_range
    const vaddr_t e = std::min(end, v->vm_end);
    const std::uint64_t nr = (e - a) >> PAGE_SHIFT;
    const long r = get_user_pages(mm, a, nr, gup_flags, nullptr);
    if (r == -EFAULT) return Errno::fault;  // VM_FAULT_SIGBUS or VM_FAULT_SIGSEGV
    // A short count is a fault that ran out of memory: Linux calls GUP again from that page,
    // which fails the same way while memory stays short (an injected failure is that).
    if (r < 0 || static_cast<std::uint64_t>(r) < nr) return Errno::nomem;
    a = e;
  }
  return {};
}

// do_madvise (v6.1): the advice goes to every mapped part of the range in address order
// (madvise_walk_vmas), then a hole gives ENOMEM: the mapped parts are changed either way, as
// in Linux.
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
  COWPTE_TRACE(*this, "madvise: pid {} {:#x}-{:#x} advice {}", mm.pid, start, end,
               static_cast<int>(advice));
  switch (advice) {
    case Advice::dontneed: {
      MmapReadGuard lock(mm);
      // A shared table only partly in the range must be broken before the zap changes
      // entries others map (the series relies on zap_pte_range breaking it; see zap_cow_pte).
      // Both ends first, so that a failed break changes nothing.
      auto break_partial = [&](vaddr_t a) {
        const vaddr_t span = a & PMD_MASK;
        const vaddr_t s = std::max(span, start), e = std::min(span + PMD_SIZE, end);
        return (span < start || span + PMD_SIZE > end) && mm.find_vma_intersection(s, e) &&
               break_cow_pte_range(mm, span, span + 1);
      };
      if (break_partial(start) || break_partial(end - 1)) return Errno::nomem;
      // madvise_dontneed_free zaps each VMA's part in turn; one gather over the range zaps the
      // same entries (a hole has none), and lets a shared table whose whole span goes be
      // dropped at once (zap_cow_pte).
      zap_page_range(mm, start, end);
      return madvise_walk_vmas(mm, start, end, [](Vma&, vaddr_t, vaddr_t) -> Result<void> {
        return {};  // the result: ENOMEM for a hole
      });
    }
    case Advice::dontfork:
    case Advice::dofork: {
      MmapWriteGuard lock(mm);
      return madvise_walk_vmas(mm, start, end, [&](Vma& v, vaddr_t s, vaddr_t e) -> Result<void> {
        const std::uint64_t nf =
            advice == Advice::dontfork ? (v.vm_flags | VM_DONTCOPY) : (v.vm_flags & ~VM_DONTCOPY);
        if (!madvise_update_vma(mm, v, s, e, nf)) return Errno::nomem;
        return {};
      });
    }
    case Advice::pageout: {
      MmapReadGuard lock(mm);
      // No swap device: reclaim finds nothing it could page out; a hole is still ENOMEM.
      return madvise_walk_vmas(mm, start, end,
                               [](Vma&, vaddr_t, vaddr_t) -> Result<void> { return {}; });
    }
    default:
      break;
  }
  return Errno::inval;
}

}  // namespace cowpte
