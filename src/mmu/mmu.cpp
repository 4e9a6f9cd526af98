// The hardware side of a user access: the x86-64 page walk through the real entries in their
// table frames (permission checks at every level, A set on access, D on write), and the retry
// after the kernel's fault handler ran (arch/x86/mm/fault.c exc_page_fault).
#include "mm/kernel.hpp"

namespace cowpte {

// A user access whose fault the handler answered still faults after this many retries: the
// handler made no progress (a model bug, reported as such). One retry is the normal case; a
// break of a shared table, then the COW of the page, takes two.
constexpr int kMaxFaultRetries = 8;

namespace {
struct HwWalk {
  Page* page = nullptr;     // the data frame, when the translation succeeded
  unsigned error_code = 0;  // the #PF error code otherwise
  pteval_t pte = 0;         // the leaf entry (PTE, or a PS=1 PDE or PDPTE), after A/D were set
  bool writable = false;    // RW at every level
  unsigned shift = 12;      // the page size of the translation: 12, 21 (PS=1 PDE) or 30
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

// The walk the MMU does for a user access, read from the real entries in their table frames;
// the hardware sets A (and D on a write) with an atomic update of the entry, taking no kernel
// lock. With the timing model (cpu non-null) the same walk is also timed: the paging-structure
// caches let it skip the upper levels (the PDE cache all three), every entry it reads is a data
// access through the caches, and setting A or D is a locked update. The structure caches only
// ever change the time: the entries are always read from the tables.
static HwWalk hw_walk(Kernel& k, Cpu* cpu, MmStruct& mm, vaddr_t addr, bool write) {
  const unsigned pcid = mm.pcid;
  unsigned first = 0;  // the first level whose entry costs a data access
  if (cpu) {
    if (cpu->pde.lookup(tlb_key(pcid, addr, PMD_SHIFT))) {
      first = 3, ++cpu->stats.pwc_pde_hits;
    } else if (cpu->pdpte.lookup(tlb_key(pcid, addr, PUD_SHIFT))) {
      first = 2, ++cpu->stats.pwc_pdpte_hits;
    } else if (cpu->pml4e.lookup(tlb_key(pcid, addr, PGDIR_SHIFT))) {
      first = 1, ++cpu->stats.pwc_pml4e_hits;
    }
    cpu->clock += k.hw->cfg.pwc_pde.latency;
  }
  HwWalk w;
  w.error_code = X86_PF_USER | (write ? unsigned(X86_PF_WRITE) : 0u);
  Page* table = mm.pgd;
  bool writable = true;
  const unsigned idx[4] = {pgd_index(addr), pud_index(addr), pmd_index(addr), pte_index(addr)};
  // Unrolled, each level's tests (leaf, paging-structure cache) are constants: about 50 fewer
  // host instructions per walk, of some 1,040 per timed load that walks.
#pragma GCC unroll 4
  for (unsigned level = 0; level < 4; ++level) {
    pteval_t& e = table_base(*table)[idx[level]];
    const bool timed = cpu && level >= first;
    if (timed) k.hw->access(*cpu, (raw(k.mem.pfn(*table)) << PAGE_SHIFT) | idx[level] * 8);
    if (!entry_allows(e, write, w.error_code)) return w;
    // A PS=1 PDE (2 MiB) or PDPTE (1 GiB) is the leaf: the walk stops there, and the paging-
    // structure caches get no entry for its level (SDM 4.10.3.1).
    const bool leaf = level == 3 || ((level == 1 || level == 2) && (e & _PAGE_PSE));
    const pteval_t set = _PAGE_ACCESSED | (leaf && write ? _PAGE_DIRTY : 0);
    if ((e & set) != set) {
      e |= set;
      if (cpu) cpu->clock += k.hw->cfg.atomic_rmw;
    }
    writable &= (e & _PAGE_RW) != 0;
    if (leaf && level != 3) {
      w.shift = level == 2 ? PMD_SHIFT : PUD_SHIFT;
      w.pte = e;
      w.writable = writable;
      const std::uint64_t sub = (addr & ((1ull << w.shift) - 1)) >> PAGE_SHIFT;
      w.page = &k.mem.page(Pfn{raw(pmd_pfn(e)) + sub});
      return w;
    }
    if (level == 3) break;
    Page& next = k.table_of(e);
    if (timed) {
      static constexpr unsigned kShift[3] = {PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT};
      SetAssoc<PwcEntry>* pwc[3] = {&cpu->pml4e, &cpu->pdpte, &cpu->pde};
      pwc[level]->insert(tlb_key(pcid, addr, kShift[level]),
                         PwcEntry{raw(k.mem.pfn(next)), writable});
    }
    table = &next;
  }
  w.pte = table_base(*table)[idx[3]];
  w.writable = writable;
  w.page = &k.mem.page(pte_pfn(w.pte));
  return w;
}

// A user load or store that did not hit the DTLB way used last: with the timing model the
// DTLB, then the STLB, then a walk that fills both; without it, the walk alone. A TLB entry
// serves a read, and a write if it is writable and was filled with D set (otherwise the walk
// runs again, so that D gets set: blitz/vmmu issue #3). A fault drops the translation, pays the
// exception, and the kernel's handler runs (arch/x86/mm/fault.c exc_page_fault); then the
// instruction retries.
Result<std::uint64_t> Kernel::user_access_walk(MmStruct& mm, vaddr_t addr, bool write,
                                               std::uint64_t val) {
  Cpu* const cpu = cur_cpu;
  PhaseScope phase(*this, Phase::user_access);
  const std::uint64_t key = tlb_key(mm.pcid, addr, PAGE_SHIFT);
  const unsigned off = addr & (PAGE_SIZE - 1);
  auto data_access = [&](Page& page) -> std::uint64_t {
    if (cpu) hw->access(*cpu, (raw(mem.pfn(page)) << PAGE_SHIFT) | off);
    if (!write) return mem.load_word(page, off);
    mem.store_word(page, off, val);
    return val;
  };
  for (int attempt = 0; attempt < kMaxFaultRetries; ++attempt) {
    // Whether this attempt missed key in the DTLB and in the STLB: the fill after the walk
    // then need not search those sets again (the walk itself changes no TLB).
    bool dtlb_missed = false, stlb_missed = false;
    if (cpu) {
      const TimingConfig& c = hw->cfg;
      cpu->clock += c.dtlb_4k.latency;
      TlbEntry e;
      bool hit = false;
      bool in_stlb = false;
      // The DTLBs of each page size are looked up in parallel, then the STLB (4 KiB and 2 MiB).
      // A huge entry holds its first frame: the access goes to the subpage of addr. (A DTLB
      // that holds nothing, or an STLB that never held a 2 MiB entry, misses without a look.)
      std::uint64_t sub = 0;
      const TlbEntry* h = nullptr;
      const std::size_t slot = cpu->dtlb_4k.find(key);
      dtlb_missed = slot == cpu->dtlb_4k.npos;
      if (!dtlb_missed) {
        e = cpu->dtlb_4k.value_at(slot), hit = true;
        cpu->mru_key = key, cpu->mru_slot = slot;
      } else if (cpu->dtlb_2m.any_valid() &&
                 (h = cpu->dtlb_2m.lookup(tlb_key(mm.pcid, addr, PMD_SHIFT)))) {
        e = *h, hit = true, sub = pte_index(addr);
      } else if (cpu->dtlb_1g.any_valid() &&
                 (h = cpu->dtlb_1g.lookup(tlb_key(mm.pcid, addr, PUD_SHIFT)))) {
        e = *h, hit = true, sub = (addr & ~PUD_MASK) >> PAGE_SHIFT;
      } else {
        cpu->clock += c.stlb.latency;
        if (const TlbEntry* s = cpu->stlb.lookup(key)) {
          e = *s, hit = in_stlb = true;
          cpu->mru_key = key, cpu->mru_slot = cpu->dtlb_4k.insert_absent(key, e);
          dtlb_missed = false;  // it is there now
        } else if (const TlbEntry* s2 =
                       cpu->stlb_huge ? cpu->stlb.lookup(stlb_key_2m(mm.pcid, addr)) : nullptr) {
          e = *s2, hit = in_stlb = true, sub = pte_index(addr);
          cpu->dtlb_2m.insert(tlb_key(mm.pcid, addr, PMD_SHIFT), e);
        } else {
          stlb_missed = true;
        }
      }
      // A hit counts only when the entry serves the access; one that can't serve a write (read
      // only, or filled without D) walks again and counts as such.
      if (hit && (!write || (e.writable && e.dirty))) {
        ++(in_stlb ? cpu->stats.stlb_hits : cpu->stats.dtlb_hits);
        return data_access(mem.page(Pfn{e.pfn + sub}));
      }
      ++(hit ? cpu->stats.walk_dirty_rewalks : cpu->stats.tlb_misses);
    }
    // Under the explorer the walk and the data access are one step: the model has no TLB
    // there, so a translation is never used after another CPU changed its entries.
    interleave_point(Point::user_access, &mm);
    const std::uint64_t t0 = cpu ? cpu->clock : 0;
    const HwWalk w = hw_walk(*this, cpu, mm, addr, write);
    if (cpu) {
      ++cpu->stats.walks;
      cpu->stats.walk_cycles += cpu->clock - t0;
    }
    if (w.page) {
      if (cpu) {
        const bool dirty = (w.pte & _PAGE_DIRTY) != 0;
        if (w.shift == PAGE_SHIFT) {
          const TlbEntry fill{raw(mem.pfn(*w.page)), w.writable, dirty};
          if (stlb_missed)
            cpu->stlb.insert_absent(key, fill);
          else
            cpu->stlb.insert(key, fill);
          cpu->mru_key = key;
          cpu->mru_slot = dtlb_missed ? cpu->dtlb_4k.insert_absent(key, fill)
                                      : cpu->dtlb_4k.insert_slot(key, fill);
        } else {
          const TlbEntry fill{raw(pmd_pfn(w.pte)), w.writable, dirty};
          if (w.shift == PMD_SHIFT) {
            cpu->stlb.insert(stlb_key_2m(mm.pcid, addr), fill);
            cpu->stlb_huge = true;  // from now on a miss looks for 2 MiB entries too
            cpu->dtlb_2m.insert(tlb_key(mm.pcid, addr, PMD_SHIFT), fill);
          } else {
            cpu->dtlb_1g.insert(tlb_key(mm.pcid, addr, PUD_SHIFT), fill);
          }
        }
      }
      return data_access(*w.page);
    }
    if (cpu) {
      hw->drop_translation(*cpu, mm.pcid, addr);  // a #PF invalidates the faulting translation
      cpu->clock += hw->cfg.exception;
    }
    const vm_fault_t f = do_user_addr_fault(mm, addr, w.error_code);
    if (f & VM_FAULT_OOM) return Errno::nomem;  // Linux would OOM-kill; the model reports
    if (f & (VM_FAULT_SIGSEGV | VM_FAULT_SIGBUS)) return Errno::fault;
  }
  throw InvariantViolation("user access: the fault handler did not make progress");
}

}  // namespace cowpte
