// mmap, munmap and VMA split/merge (mm/mmap.c, mm/util.c vm_mmap_pgoff, mm/shmem.c
// shmem_zero_setup, arch/x86/kernel/sys_x86_64.c get_unmapped_area, arch/x86/mm/pgprot.c).
#include <algorithm>

#include "mm/kernel.hpp"

namespace cowpte {

namespace {
constexpr std::uint64_t kMapSupported = 0x01 | 0x02 | 0x10 | 0x20 | 0x4000 | 0x8000 | 0x100000;
constexpr std::uint64_t MAP_FIXED = 0x10, MAP_FIXED_NOREPLACE = 0x100000, MAP_POPULATE = 0x8000,
                        MAP_NORESERVE = 0x4000, MAP_TYPE = 0x0f;

bool range_intersects(MmStruct& mm, vaddr_t start, vaddr_t end) {
  const Vma* v = mm.find_vma(start);
  return v && v->vm_start < end;
}
}  // namespace

// vm_get_page_prot: x86-64's protection_map. Private writable memory maps without RW (COW);
// RW comes per PTE from maybe_mkwrite for exclusive pages.
pteval_t Kernel::vm_get_page_prot(std::uint64_t vm_flags) noexcept {
  constexpr pteval_t P = _PAGE_PRESENT, U = _PAGE_USER, A = _PAGE_ACCESSED, NX = _PAGE_NX,
                     RW = _PAGE_RW;
  const bool r = vm_flags & VM_READ, w = vm_flags & VM_WRITE, x = vm_flags & VM_EXEC;
  if (!r && !w && !x) return PAGE_NONE;
  pteval_t prot = P | U | A | (x ? 0 : NX);     // PAGE_READONLY(_EXEC), PAGE_COPY(_EXEC)
  if (w && (vm_flags & VM_SHARED)) prot |= RW;  // PAGE_SHARED(_EXEC)
  return prot;
}

// vma_set_page_prot: shared writable memory under soft-dirty tracking needs write faults
// (vma_wants_writenotify); shmem has no page_mkwrite and no dirty accounting otherwise.
void Kernel::vma_set_page_prot(Vma& vma) {
  std::uint64_t flags = vma.vm_flags;
  const bool writenotify =
      (flags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE) && vma_soft_dirty_enabled(vma);
  if (writenotify) flags &= ~VM_SHARED;  // vm_pgprot_modify(vm_page_prot, vm_flags & ~VM_SHARED)
  vma.vm_page_prot = vm_get_page_prot(flags);
}

Vma* Kernel::vm_area_alloc(MmStruct& mm) {
  if (mem.should_fail_alloc()) return nullptr;
  Vma* v = new Vma();
  v->vm_mm = &mm;
  return v;
}

Vma* Kernel::vm_area_dup(const Vma& orig) {
  if (mem.should_fail_alloc()) return nullptr;
  Vma* v = new Vma();
  v->vm_start = orig.vm_start;
  v->vm_end = orig.vm_end;
  v->vm_flags = orig.vm_flags;
  v->vm_page_prot = orig.vm_page_prot;
  v->vm_mm = orig.vm_mm;
  v->anon_vma = orig.anon_vma;
  v->anon_vma_chain = orig.anon_vma_chain;
  v->vm_file = orig.vm_file;  // get_file
  v->vm_pgoff = orig.vm_pgoff;
  return v;
}

void Kernel::vm_area_free(Vma* vma) { delete vma; }

// remove_vma: drop the file and anon_vma references with the VMA.
void Kernel::remove_vma(Vma* vma) { vm_area_free(vma); }

// __split_vma: one VMA becomes two at addr; the new one shares anon_vma and file.
bool Kernel::split_vma(MmStruct& mm, Vma& vma, vaddr_t addr, bool new_below) {
  if (mm.mm_mt.size() >= kMaxMapCount) return false;
  // [PATCH 03/14]: a table shared across the split address is broken first (the error
  // propagates). Tables never straddle a 2 MiB-aligned address.
  if ((addr & ~PMD_MASK) && break_cow_pte_range(mm, addr, addr + 1)) return false;
  Vma* nw = vm_area_dup(vma);
  if (!nw) return false;
  // vma_adjust_trans_huge: no huge PMD may straddle the new boundary.
  if (addr & ~PMD_MASK) split_huge_pmd_address(vma, addr);
  mm.mm_mt.erase(mm.mm_mt.iterator_to(vma));
  if (new_below) {
    nw->vm_end = addr;
    vma.vm_pgoff += (addr - vma.vm_start) >> PAGE_SHIFT;
    vma.vm_start = addr;
  } else {
    nw->vm_start = addr;
    nw->vm_pgoff += (addr - vma.vm_start) >> PAGE_SHIFT;
    vma.vm_end = addr;
  }
  mm.mm_mt.insert(vma);
  mm.mm_mt.insert(*nw);
  return true;
}

// The split half of vma_modify (mm/mmap.c): make [start, end) a VMA of its own.
Vma* Kernel::split_vma_range(MmStruct& mm, Vma& vma, vaddr_t start, vaddr_t end) {
  Vma* v = &vma;
  if (start > v->vm_start) {
    if (!split_vma(mm, *v, start, false)) return nullptr;
    v = mm.vma_lookup(start);
  }
  if (end < v->vm_end) {
    if (!split_vma(mm, *v, end, false)) return nullptr;
    v = mm.vma_lookup(start);
  }
  return v;
}

namespace {
// is_mergeable_anon_vma: equal anon_vmas, or the neighbour links to exactly one anon_vma and
// the other side has none yet.
bool mergeable_anon_vma(const Vma& neighbour, const Vma& vma) {
  if (neighbour.anon_vma == vma.anon_vma) return true;
  return !vma.anon_vma && neighbour.anon_vma && neighbour.anon_vma_chain == 1;
}
// can_vma_merge_after/before: a directly follows b's end.
bool can_merge(const Vma& a, const Vma& b, const Vma& neighbour, const Vma& changed) {
  if (a.vm_end != b.vm_start) return false;
  if ((a.vm_flags ^ b.vm_flags) & ~VM_SOFTDIRTY) return false;
  if (a.vm_file != b.vm_file) return false;
  // Offsets must run on: anonymous VMAs too (their offset is the address they were mapped at,
  // and a VMA mremap moved keeps its old one).
  if (a.vm_pgoff + a.pages() != b.vm_pgoff) return false;
  return mergeable_anon_vma(neighbour, changed);
}
}  // namespace

// vma_merge: join the changed VMA with its neighbours where Linux would.
Vma* Kernel::vma_merge(MmStruct& mm, Vma& vma) {
  Vma* cur = &vma;
  if (Vma* prev = mm.vma_prev(*cur); prev && can_merge(*prev, *cur, *prev, *cur)) {
    mm.mm_mt.erase(mm.mm_mt.iterator_to(*cur));
    mm.mm_mt.erase(mm.mm_mt.iterator_to(*prev));
    prev->vm_end = cur->vm_end;
    prev->vm_flags |= cur->vm_flags & VM_SOFTDIRTY;
    mm.mm_mt.insert(*prev);
    remove_vma(cur);
    cur = prev;
  }
  if (Vma* next = mm.vma_next(*cur); next && can_merge(*cur, *next, *next, *cur)) {
    mm.mm_mt.erase(mm.mm_mt.iterator_to(*next));
    mm.mm_mt.erase(mm.mm_mt.iterator_to(*cur));
    cur->vm_end = next->vm_end;
    if (!cur->anon_vma) {
      cur->anon_vma = next->anon_vma;
      cur->anon_vma_chain = next->anon_vma_chain;
    }
    cur->vm_flags |= next->vm_flags & VM_SOFTDIRTY;
    mm.mm_mt.insert(*cur);
    remove_vma(next);
  }
  return cur;
}

// arch_get_unmapped_area_topdown without randomisation: the hint if it fits, else the highest
// gap below mmap_base.
Result<vaddr_t> Kernel::get_unmapped_area(MmStruct& mm, vaddr_t addr, std::uint64_t len,
                                          MapFlags flags) {
  if (len > TASK_SIZE - MMAP_MIN_ADDR) return Errno::nomem;
  if (!(static_cast<std::uint64_t>(flags) & MAP_FIXED)) {
    if (addr) {
      addr &= PAGE_MASK;
      if (addr >= MMAP_MIN_ADDR && addr <= TASK_SIZE - len &&
          !range_intersects(mm, addr, addr + len))
        return addr;
    }
    vaddr_t high = MMAP_BASE;
    for (auto it = mm.mm_mt.rbegin(); it != mm.mm_mt.rend(); ++it) {
      if (it->vm_start >= high) continue;
      if (it->vm_end < high && high - it->vm_end >= len) return high - len;
      high = std::min(high, it->vm_start);
    }
    if (high >= MMAP_MIN_ADDR && high - MMAP_MIN_ADDR >= len) return high - len;
    return Errno::nomem;
  }
  if (addr > TASK_SIZE - len) return Errno::nomem;
  if (addr & ~PAGE_MASK) return Errno::inval;
  if (addr < MMAP_MIN_ADDR) return Errno::perm;  // security_mmap_addr, unprivileged
  return addr;
}

// vm_mmap_pgoff -> do_mmap -> mmap_region, then mm_populate outside the lock.
Result<vaddr_t> Kernel::do_mmap(MmStruct& mm, vaddr_t addr, std::uint64_t len, Prot prot,
                                MapFlags mflags) {
  std::uint64_t flags = static_cast<std::uint64_t>(mflags);
  if (!(flags & 0x20)) return Errno::badf;  // not MAP_ANONYMOUS: fd -1 is no file
  const std::uint64_t type = flags & MAP_TYPE;
  // Anonymous memory takes MAP_SHARED or MAP_PRIVATE only (MAP_SHARED_VALIDATE is for files).
  if (type != 0x01 && type != 0x02) return Errno::inval;
  if (flags & ~kMapSupported) return Errno::inval;  // flags the model cannot honour
  if (static_cast<std::uint32_t>(prot) & ~7u) return Errno::inval;
  if (!len) return Errno::inval;
  const std::uint64_t alen = (len + PAGE_SIZE - 1) & PAGE_MASK;
  if (!alen || alen < len) return Errno::nomem;
  len = alen;
  if (flags & MAP_FIXED_NOREPLACE) flags |= MAP_FIXED;
  if (!(flags & MAP_FIXED) && addr < MMAP_MIN_ADDR && addr) addr = MMAP_MIN_ADDR;  // round_hint
  {
    MmapWriteGuard lock(mm);
    auto r = mmap_region(mm, addr, len, flags, static_cast<std::uint64_t>(prot));
    if (!r) return r;
    addr = *r;
  }
  if (flags & MAP_POPULATE) mm_populate(mm, addr, len);  // errors are ignored, as Linux does
  return addr;
}

// get_unmapped_area + mmap_region, under the write-locked mmap_lock.
Result<vaddr_t> Kernel::mmap_region(MmStruct& mm, vaddr_t addr, std::uint64_t len,
                                    std::uint64_t flags, std::uint64_t prot) {
  if (mm.mm_mt.size() > kMaxMapCount) return Errno::nomem;
  auto area = get_unmapped_area(mm, addr, len, MapFlags(flags));
  if (!area) return area.error();
  addr = *area;
  if ((flags & MAP_FIXED_NOREPLACE) && range_intersects(mm, addr, addr + len)) return Errno::exist;
  const bool shared = (flags & MAP_TYPE) != 0x02;
  std::uint64_t vm_flags = prot | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
  if (shared) vm_flags |= VM_SHARED | VM_MAYSHARE;
  if (flags & MAP_NORESERVE) vm_flags |= VM_NORESERVE;
  // accountable_mapping: private writable memory is charged, and the VMA says so (it then
  // merges only with charged neighbours).
  if ((vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE)) == VM_WRITE) vm_flags |= VM_ACCOUNT;

  if (shared && (len >> PAGE_SHIFT) > 0xffffffffull) return Errno::nomem;  // page->index is 32-bit
  // MAP_FIXED replaces what is there: unmap first, then allocate, in v6.1's order, so that an
  // allocation failure after the unmap loses the old mapping, as in Linux.
  if (range_intersects(mm, addr, addr + len))
    if (auto r = do_vmi_munmap(mm, addr, addr + len); !r) return Errno::nomem;
  Vma* vma = vm_area_alloc(mm);
  if (!vma) return Errno::nomem;
  if (shared) {  // shmem_zero_setup
    if (mem.should_fail_alloc()) {
      vm_area_free(vma);
      return Errno::nomem;
    }
    vma->vm_file = new ShmemFile(len >> PAGE_SHIFT);
    vma->vm_file->kernel = this;
  }
  vma->vm_start = addr;
  vma->vm_end = addr + len;
  vma->vm_flags = vm_flags | VM_SOFTDIRTY;  // a new VMA is soft-dirty as a whole
  vma->vm_pgoff = shared ? 0 : addr >> PAGE_SHIFT;
  vma_set_page_prot(*vma);
  mm.mm_mt.insert(*vma);
  // vma_merge; a VMA that merged into one with anon memory may be khugepaged's now.
  Vma& merged = *vma_merge(mm, *vma);
  khugepaged_enter_vma(merged, merged.vm_flags);
  COWPTE_TRACE(*this, "mmap: pid {} {:#x}-{:#x} flags {:#x}", mm.pid, addr, addr + len, vm_flags);
  return addr;
}

// munmap(2): argument checks, then do_vmi_munmap under the write lock.
Result<void> Kernel::do_munmap(MmStruct& mm, vaddr_t start, std::uint64_t len) {
  if ((start & ~PAGE_MASK) || start > TASK_SIZE || len > TASK_SIZE - start) return Errno::inval;
  len = (len + PAGE_SIZE - 1) & PAGE_MASK;
  if (!len) return Errno::inval;
  MmapWriteGuard lock(mm);
  return do_vmi_munmap(mm, start, start + len);
}

// do_vmi_munmap: split at both ends, detach, zap and free the tables, drop the VMAs. Linux
// downgrades mmap_lock to read once the range is detached; the model keeps it for write, which
// excludes at least as much.
Result<void> Kernel::do_vmi_munmap(MmStruct& mm, vaddr_t start, vaddr_t end) {
  Vma* vma = mm.find_vma(start);
  if (!vma || vma->vm_start >= end) return {};
  // A shared table whose span keeps a VMA outside [start, end) must be broken before the zap
  // (v4's zap_pte_range breaks when the VMA does not cover the span; here the break comes
  // before anything changes, so that its failure is a clean ENOMEM). Spans holding only
  // unmapped VMAs keep their sharing: the zap de-accounts, free_pgtables drops the reference.
  for (const vaddr_t a : {start, end - 1}) {
    const vaddr_t span = a & PMD_MASK;
    const bool keeps_vma =
        (span < start && mm.find_vma_intersection(span, start)) ||
        (span + PMD_SIZE > end && mm.find_vma_intersection(end, span + PMD_SIZE));
    if (keeps_vma && break_cow_pte_range(mm, span, span + 1)) return Errno::nomem;
  }
  if (start > vma->vm_start) {
    if (!split_vma(mm, *vma, start, false)) return Errno::nomem;
    vma = mm.find_vma(start);
  }
  if (Vma* last = mm.find_vma(end - 1); last && end < last->vm_end && last->vm_start < end) {
    if (!split_vma(mm, *last, end, true)) return Errno::nomem;
    vma = mm.find_vma(start);  // the split may have moved vma above end
  }
  std::vector<Vma*> vmas;
  Vma* prev = mm.vma_prev(*vma);
  for (Vma* v = vma; v && v->vm_start < end;) {
    Vma* n = mm.vma_next(*v);
    vmas.push_back(v);
    v = n;
  }
  Vma* next = mm.vma_next(*vmas.back());
  const vaddr_t floor = prev ? prev->vm_end : 0;
  const vaddr_t ceiling = next ? next->vm_start : 0;
  for (Vma* v : vmas) mm.mm_mt.erase(mm.mm_mt.iterator_to(*v));
  unmap_region(mm, vmas, start, end, floor, ceiling);
  for (Vma* v : vmas) remove_vma(v);
  COWPTE_TRACE(*this, "munmap: pid {} {:#x}-{:#x}", mm.pid, start, end);
  return {};
}

// unmap_region: zap the pages, then free the tables no neighbour still needs.
void Kernel::unmap_region(MmStruct& mm, std::vector<Vma*>& vmas, vaddr_t start, vaddr_t end,
                          vaddr_t floor, vaddr_t ceiling) {
  MmGather tlb(mm, false);
  tlb.free_tables = true;
  unmap_vmas(tlb, vmas, start, end);
  free_pgtables(tlb, vmas, floor, ceiling);
  tlb_finish_mmu(tlb);
}

}  // namespace cowpte
