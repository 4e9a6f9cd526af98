// Entry decoding and the ptdump listing (arch/x86/mm/dump_pagetables.c).
#include "cowpte/model/format.hpp"

#include <stdexcept>

#include "mm/kernel.hpp"

namespace cowpte {

std::string decode_entry_flags(pteval_t v, int level) {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(v & _PAGE_PRESENT, "P");
  add(!(v & _PAGE_PRESENT) && (v & _PAGE_PROTNONE) && level == 3, "PROTNONE");
  add(v & _PAGE_RW, "RW");
  add(v & _PAGE_USER, "USR");
  add(v & _PAGE_PWT, "PWT");
  add(v & _PAGE_PCD, "PCD");
  add(v & _PAGE_ACCESSED, "A");
  add(v & _PAGE_DIRTY, "D");
  add(v & _PAGE_PSE, level == 3 ? "PAT" : "PSE");
  add((v & _PAGE_GLOBAL) && (v & _PAGE_PRESENT), "GLB");
  add(v & _PAGE_SPECIAL, "SPECIAL");
  add(v & _PAGE_UFFD_WP, "UFFD_WP");
  add(v & _PAGE_SOFT_DIRTY, "SOFT_DIRTY");
  add(v & _PAGE_NX, "NX");
  return s;
}

namespace {
const char* kLevel[] = {"pgd", "pud", "pmd", "pte"};
}

std::string Machine::ptdump(const Process& p) const {
  if (&const_cast<Process&>(p).machine() != this)
    throw std::invalid_argument("cowpte: Machine::ptdump: the Process belongs to another Machine");
  std::string out = fmt::format("---[ pid {} ]---\n", p.pid());
  const MmStruct* mm = p.mm();
  if (!mm) return out + "(exited)\n";
  Kernel& k = const_cast<Kernel&>(*kernel_);
  out += fmt::format("pgd frame {:#x}\n", raw(k.mem.pfn(*mm->pgd)));
  // Walk the user half; print table entries and runs of PTEs with equal flags.
  auto walk = [&](auto& self, const Page& table, int level, vaddr_t base) -> void {
    const pteval_t* e = table_base(const_cast<Page&>(table));
    const unsigned shift = PGDIR_SHIFT - 9 * level;
    const unsigned limit = level == 0 ? 256 : 512;
    for (unsigned i = 0; i < limit; ++i) {
      if (pte_none(e[i])) continue;
      const vaddr_t va = base | (vaddr_t(i) << shift);
      if (level < 3) {
        out += fmt::format("{:{}}{} {:#014x} {}\n", "", level * 2, kLevel[level], va,
                           EntryFmt{e[i], level});
        if (level > 0 && pmd_trans_huge(e[i])) {  // a huge leaf: one 2 MiB (or 1 GiB) run
          out +=
              fmt::format("{:{}}huge {:#014x}-{:#014x} {:4} pages pfn {:#x}..\n", "", 6, va,
                          va + (1ull << shift), (1ull << shift) >> PAGE_SHIFT, raw(pmd_pfn(e[i])));
          continue;
        }
        self(self, k.table_of(e[i]), level + 1, va);
        continue;
      }
      unsigned j = i;
      const pteval_t flags = e[i] & ~PTE_PFN_MASK;
      while (j + 1 < PTRS_PER_TABLE && (e[j + 1] & ~PTE_PFN_MASK) == flags && !pte_none(e[j + 1]))
        ++j;
      out += fmt::format("{:{}}pte {:#014x}-{:#014x} {:4} pages [{}] pfn {:#x}{}\n", "", 6, va,
                         base + (vaddr_t(j + 1) << shift), j - i + 1, decode_entry_flags(e[i], 3),
                         raw(pte_pfn(e[i])), j > i ? ".." : "");
      i = j;
    }
  };
  walk(walk, *mm->pgd, 0, 0);
  return out;
}

}  // namespace cowpte
