// PCIDs (arch/x86/mm/tlb.c keeps a few ASIDs per CPU; the model gives each live mm its own):
// x86 has 12 bits, PCID 0 is the kernel's, so 4095 mms can be live at once. The Kernel flushes
// a PCID from every CPU before it frees it, so that a reused PCID finds no stale translation.
#pragma once

#include <bitset>
#include <cstddef>

namespace cowpte {

class PcidAllocator {
 public:
  static constexpr unsigned kPcids = 4096;  // CR3 bits 0-11

  // The lowest free PCID, taken; 0 when all are in use.
  unsigned alloc() noexcept {
    for (unsigned i = 1; i < kPcids; ++i)
      if (!used_[i]) {
        used_[i] = true;
        return i;
      }
    return 0;
  }
  void free(unsigned pcid) noexcept {
    if (pcid > 0 && pcid < kPcids) used_[pcid] = false;
  }
  bool in_use(unsigned pcid) const noexcept { return pcid < kPcids && used_[pcid]; }
  std::size_t count() const noexcept { return used_.count(); }

 private:
  std::bitset<kPcids> used_;
};

}  // namespace cowpte
