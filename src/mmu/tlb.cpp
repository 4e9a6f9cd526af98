// TLB maintenance (arch/x86/mm/tlb.c): flush_tlb_range, flush_tlb_mm and flush_tlb_page.
// Counted always (Kernel::tlb_stats); with the timing model, INVLPG up to flush_ceiling pages,
// else a PCID flush, on this CPU, and a shootdown IPI to every other CPU in mm_cpumask.
#include "mm/kernel.hpp"

namespace cowpte {

namespace {
// Run a flush on every CPU of mm_cpumask: the current CPU pays it, every other one takes a
// shootdown IPI (the initiator sends and waits for the acknowledgement; the target runs the
// interrupt and the flush).
template <class Flush>
void flush_on_cpus(Kernel& k, MmStruct& mm, Flush&& flush) {
  Hardware& hw = *k.hw;
  for (unsigned i = 0; i < hw.cpus.size(); ++i) {
    if (!(mm.cpumask & (1ull << i))) continue;
    Cpu& cpu = hw.cpus[i];
    const std::uint64_t cost = flush(cpu);
    if (&cpu == k.cur_cpu) {
      cpu.clock += cost;
      continue;
    }
    // The IPI arrives at the initiator's time: an idle target was idle until then.
    if (k.cur_cpu) CostModel::idle_until(cpu, k.cur_cpu->clock);
    cpu.clock += hw.cfg.ipi_handle + cost;
    ++cpu.stats.shootdowns_received;
    if (k.cur_cpu) {
      k.cur_cpu->clock += hw.cfg.ipi_send;
      ++k.cur_cpu->stats.shootdowns_sent;
    }
  }
}
}  // namespace

// stride_shift: PMD_SHIFT for a range of huge PMDs (flush_pmd_tlb_range), one INVLPG per 2 MiB.
void Kernel::flush_tlb_range(MmStruct& mm, vaddr_t start, vaddr_t end, unsigned stride_shift) {
  ++tlb_stats.flush_range;
  if (!hw) return;
  const std::uint64_t pages = (end - start) >> stride_shift;
  flush_on_cpus(*this, mm, [&](Cpu& cpu) -> std::uint64_t {
    if (pages > hw->cfg.flush_ceiling) {
      hw->flush_pcid(cpu, mm.pcid);
      return hw->cfg.full_flush;
    }
    for (vaddr_t a = start; a < end; a += 1ull << stride_shift) hw->invlpg(cpu, mm.pcid, a);
    return pages * hw->cfg.invlpg;
  });
}

void Kernel::flush_tlb_mm(MmStruct& mm) {
  ++tlb_stats.flush_mm;
  if (!hw) return;
  flush_on_cpus(*this, mm, [&](Cpu& cpu) -> std::uint64_t {
    hw->flush_pcid(cpu, mm.pcid);
    return hw->cfg.full_flush;
  });
}

void Kernel::flush_tlb_page(MmStruct& mm, vaddr_t addr) {
  ++tlb_stats.flush_page;
  if (!hw) return;
  flush_on_cpus(*this, mm, [&](Cpu& cpu) -> std::uint64_t {
    hw->invlpg(cpu, mm.pcid, addr);
    return hw->cfg.invlpg;
  });
}

}  // namespace cowpte
