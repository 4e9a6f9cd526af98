// Faults on shared anonymous (shmem) memory: do_fault, do_read_fault, do_shared_fault,
// do_fault_around, finish_fault and do_set_pte (mm/memory.c); shmem_fault and the shmem page
// cache (mm/shmem.c); filemap_map_pages (mm/filemap.c).
#include <algorithm>

#include "mm/kernel.hpp"

namespace cowpte {

ShmemFile::~ShmemFile() {
  if (kernel) kernel->shmem_truncate(*this);
}

// shmem_evict_inode -> shmem_truncate_range: the cache drops its reference on every page.
void Kernel::shmem_truncate(ShmemFile& file) {
  for (auto& [index, p] : file.cache) {
    p->mapping = nullptr;
    mem.put_page(*p);
  }
  file.cache.clear();
}

// shmem_fault: find the page in the cache or allocate a zeroed one there. The caller gets a
// reference of its own, which becomes the mapping's.
vm_fault_t Kernel::shmem_fault(VmFault& vmf) {
  Vma& vma = *vmf.vma;
  ShmemFile& file = *vma.vm_file;
  const std::uint64_t index = vma.vm_pgoff + ((vmf.address - vma.vm_start) >> PAGE_SHIFT);
  // Past the end of the file (a shared mapping mremap grew): shmem_get_folio_gfp's -EINVAL.
  if (index >= file.size) return VM_FAULT_SIGBUS;
  Page* page = file.lookup(index);
  if (!page) {
    page = mem.alloc_page();  // shmem_alloc_and_acct_folio; the cache's reference
    if (!page) return VM_FAULT_OOM;
    tm_page_alloc(page, true);
    page->set(PG_swapbacked);
    page->mapping = &file;
    page->index = static_cast<std::uint32_t>(index);
    file.cache[index] = page;
  }
  get_page(*page);
  vmf.page = page;
  return 0;
}

// do_set_pte: map one page-cache page (the caller already holds the reference for the PTE).
void Kernel::do_set_pte(VmFault& vmf, Page& page, vaddr_t, EntryRef pte) {
  Vma& vma = *vmf.vma;
  const bool write = vmf.flags & FAULT_FLAG_WRITE;
  pteval_t entry = pfn_pte(mem.pfn(page), vma.vm_page_prot);  // young: x86 keeps prefaults young
  if (write) {
    entry = pte_mkdirty(entry);
    if (vma.vm_flags & VM_WRITE) entry = pte_mkwrite(entry);  // maybe_mkwrite
  }
  ++vma.vm_mm->rss_stat[mm_counter(page)];
  page_add_file_rmap(page);
  set_pte_at(pte, entry);
}

// finish_fault: install the PTE table if needed, then map vmf.page unless raced.
vm_fault_t Kernel::finish_fault(VmFault& vmf) {
  MmStruct& mm = *vmf.vma->vm_mm;
  if (pmd_none(vmf.pmd.get())) {
    if (vmf.prealloc_pte) {
      pmd_install(mm, vmf.pmd, vmf.prealloc_pte);
    } else if (!pte_alloc(mm, vmf.pmd)) {
      return VM_FAULT_OOM;
    }
  }
  vmf.pte = pte_offset_map(vmf.pmd, vmf.address);
  SpinGuard ptl(pte_lockptr(mm, *vmf.pte.table));
  if (!pte_none(vmf.pte.get())) return VM_FAULT_NOPAGE;  // vmf_pte_changed
  do_set_pte(vmf, *vmf.page, vmf.address, vmf.pte);
  return 0;
}

// do_fault_around -> filemap_map_pages: map the cached pages of the 64 KiB window around the
// fault that the VMA and this PTE table cover. VM_FAULT_NOPAGE when the faulting page itself
// was mapped.
vm_fault_t Kernel::do_fault_around(VmFault& vmf) {
  Vma& vma = *vmf.vma;
  MmStruct& mm = *vma.vm_mm;
  const std::uint64_t nr_pages = kFaultAroundBytes >> PAGE_SHIFT;
  const vaddr_t mask = ~(nr_pages * PAGE_SIZE - 1) & PAGE_MASK;
  const vaddr_t address = std::max(vmf.address & mask, vma.vm_start);
  const std::uint64_t off = ((vmf.address - address) >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1);
  const std::uint64_t fault_pgoff = vma.vm_pgoff + ((vmf.address - vma.vm_start) >> PAGE_SHIFT);
  const std::uint64_t start_pgoff = fault_pgoff - off;
  std::uint64_t end_pgoff =
      start_pgoff - ((address >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)) + PTRS_PER_TABLE - 1;
  end_pgoff = std::min({end_pgoff, vma.pages() + vma.vm_pgoff - 1, start_pgoff + nr_pages - 1});

  if (pmd_none(vmf.pmd.get())) {
    vmf.prealloc_pte = pte_alloc_one(mm);
    if (!vmf.prealloc_pte) return VM_FAULT_OOM;
  }
  // filemap_map_pages
  if (pmd_none(vmf.pmd.get())) pmd_install(mm, vmf.pmd, vmf.prealloc_pte);  // filemap_map_pmd
  vm_fault_t ret = 0;
  const ShmemFile& file = *vma.vm_file;
  EntryRef pte = pte_offset_map(vmf.pmd, address);
  SpinGuard ptl(pte_lockptr(mm, *pte.table));
  vaddr_t addr = address;
  for (std::uint64_t pgoff = start_pgoff; pgoff <= end_pgoff; ++pgoff, ++pte.p, addr += PAGE_SIZE) {
    Page* page = file.lookup(pgoff);
    if (!page || !pte_none(pte.get())) continue;
    if (addr == vmf.address) ret = VM_FAULT_NOPAGE;
    get_page(*page);
    do_set_pte(vmf, *page, addr, pte);
  }
  return ret;
}

// do_read_fault: fault around first; if that did not map the page, shmem_fault + finish_fault.
vm_fault_t Kernel::do_read_fault(VmFault& vmf) {
  vm_fault_t ret = do_fault_around(vmf);
  if (ret) return ret;
  ret = shmem_fault(vmf);  // __do_fault
  if (ret & VM_FAULT_ERROR) return ret;
  ret |= finish_fault(vmf);
  if (ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE)) mem.put_page(*vmf.page);
  return ret;
}

// do_shared_fault: a write to shared memory maps the page writable and dirties it.
vm_fault_t Kernel::do_shared_fault(VmFault& vmf) {
  vm_fault_t ret = shmem_fault(vmf);
  if (ret & VM_FAULT_ERROR) return ret;
  ret |= finish_fault(vmf);
  if (ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE)) {
    mem.put_page(*vmf.page);
    return ret;
  }
  vmf.page->set(PG_dirty);  // fault_dirty_shared_page
  return ret;
}

// do_fault: shared anonymous memory is the only file-backed memory of the model, so a write
// on a private file mapping (do_cow_fault) cannot occur.
vm_fault_t Kernel::do_fault(VmFault& vmf) {
  PhaseScope phase(*this, Phase::fault_shmem);
  vm_fault_t ret;
  if (!(vmf.flags & FAULT_FLAG_WRITE)) {
    ret = do_read_fault(vmf);
  } else if (vmf.vma->vm_flags & VM_SHARED) {
    ret = do_shared_fault(vmf);
  } else {
    throw InvariantViolation("do_cow_fault: private file mappings are not modelled");
  }
  if (vmf.prealloc_pte) {
    pgtable_free(*vmf.prealloc_pte);
    vmf.prealloc_pte = nullptr;
  }
  return ret;
}

}  // namespace cowpte
