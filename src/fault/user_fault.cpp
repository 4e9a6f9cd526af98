// The user page-fault handler: do_user_addr_fault and access_error (arch/x86/mm/fault.c).
#include "mm/kernel.hpp"

namespace cowpte {

// access_error: may this VMA be accessed this way at all?
bool Kernel::access_error(unsigned error_code, const Vma& vma) noexcept {
  if (error_code & X86_PF_WRITE) return !(vma.vm_flags & VM_WRITE);
  if (error_code & X86_PF_PROT) return true;  // read of a present page: protection keys
  return !vma_is_accessible(vma);             // x86: write or exec imply read
}

// do_user_addr_fault: find the VMA, check the access, and let handle_mm_fault fix the tables.
// No VMA, or a VMA that forbids the access, is SIGSEGV; the model has no stack to grow.
vm_fault_t Kernel::do_user_addr_fault(MmStruct& mm, vaddr_t address, unsigned error_code) {
  unsigned flags = FAULT_FLAG_USER;
  if (error_code & X86_PF_WRITE) flags |= FAULT_FLAG_WRITE;
  MmapReadGuard lock(mm);
  Vma* vma = mm.vma_lookup(address);
  if (!vma || access_error(error_code, *vma)) return VM_FAULT_SIGSEGV;  // bad_area
  return handle_mm_fault(*vma, address, flags);
}

}  // namespace cowpte
