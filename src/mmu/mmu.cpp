// The hardware side of a user access: the x86-64 page walk through the real entries in their
// table frames (permission checks at every level, A set on access, D on write), and the retry
// after the kernel's fault handler ran (arch/x86/mm/fault.c exc_page_fault).
#include "cowpte/kernel.hpp"

namespace cowpte {

namespace {
struct HwWalk {
  Page* page = nullptr;     // the data frame, when the translation succeeded
  unsigned error_code = 0;  // the #PF error code otherwise
};

// One entry of the walk: present, user, and writable if this is a write.
inline bool entry_allows(pteval_t e, bool write, unsigned& error_code) {
  if (!(e & _PAGE_PRESENT)) return false;
  if (!(e & _PAGE_USER) || (write && !(e & _PAGE_RW))) {
    error_code |= X86_PF_PROT;
    return false;
  }
  return true;
}
}  // namespace

// The walk the MMU does for a user access. The hardware sets A (and D on a write) with an
// atomic update of the entry, taking no kernel lock.
static HwWalk hw_walk(Kernel& k, MmStruct& mm, vaddr_t addr, bool write) {
  HwWalk w;
  w.error_code = X86_PF_USER | (write ? unsigned(X86_PF_WRITE) : 0u);
  pteval_t* table = table_base(*mm.pgd);
  const unsigned idx[3] = {pgd_index(addr), pud_index(addr), pmd_index(addr)};
  for (unsigned level = 0; level < 3; ++level) {
    pteval_t& e = table[idx[level]];
    if (!entry_allows(e, write, w.error_code)) return w;
    e |= _PAGE_ACCESSED;
    table = table_base(k.table_of(e));
  }
  pteval_t& pte = table[pte_index(addr)];
  if (!entry_allows(pte, write, w.error_code)) return w;
  pte |= _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0);
  w.page = &k.mem.page(pte_pfn(pte));
  return w;
}

// A user load or store: walk; on a fault let the kernel handle it and retry the instruction.
Result<std::uint64_t> Kernel::user_access(MmStruct& mm, vaddr_t addr, bool write,
                                          std::uint64_t val) {
  if (addr & 7) return Errno::inval;
  if (!is_canonical(addr) || addr >= TASK_SIZE) return Errno::fault;  // kernel half: SIGSEGV
  const unsigned off = addr & (PAGE_SIZE - 1);
  for (int attempt = 0; attempt < 8; ++attempt) {
    HwWalk w = hw_walk(*this, mm, addr, write);
    if (w.page) {
      if (!write) return mem.load_word(*w.page, off);
      mem.store_word(*w.page, off, val);
      return val;
    }
    const vm_fault_t f = do_user_addr_fault(mm, addr, w.error_code);
    if (f & VM_FAULT_OOM) return Errno::nomem;  // Linux would OOM-kill; the model reports
    if (f & (VM_FAULT_SIGSEGV | VM_FAULT_SIGBUS)) return Errno::fault;
  }
  throw InvariantViolation("user access: the fault handler did not make progress");
}

}  // namespace cowpte
