// The timing model's caches and the invalidation of TLBs and paging-structure caches.
#include "mmu/hw.hpp"

#include <nlohmann/json.hpp>

namespace cowpte {

const char* to_string(Phase p) noexcept {
  static constexpr const char* kNames[] = {"user_access", "fork",          "fault_anonymous",
                                           "fault_wp",    "fault_shmem",   "fault_swap",
                                           "reclaim",     "break_cow_pte", "tfork_one_pte_table",
                                           "zap",         "exit",          "other_syscall",
                                           "collapse"};
  static_assert(std::size(kNames) == std::size_t(Phase::count));
  return kNames[std::size_t(p)];
}

namespace {
// Apply f to every counter of a and the same counter of b.
template <class F>
void each_counter(HwStats& a, const HwStats& b, F f) {
  for (std::size_t i = 0; i < a.phase.size(); ++i) {
    f(a.phase[i].count, b.phase[i].count);
    f(a.phase[i].cycles, b.phase[i].cycles);
  }
  std::uint64_t HwStats::*const fields[] = {&HwStats::dtlb_hits,
                                            &HwStats::stlb_hits,
                                            &HwStats::tlb_misses,
                                            &HwStats::walks,
                                            &HwStats::walk_cycles,
                                            &HwStats::walk_dirty_rewalks,
                                            &HwStats::pwc_pml4e_hits,
                                            &HwStats::pwc_pdpte_hits,
                                            &HwStats::pwc_pde_hits,
                                            &HwStats::l1d_hits,
                                            &HwStats::l2_hits,
                                            &HwStats::llc_hits,
                                            &HwStats::dram_accesses,
                                            &HwStats::invlpg,
                                            &HwStats::full_flushes,
                                            &HwStats::shootdowns_sent,
                                            &HwStats::shootdowns_received,
                                            &HwStats::lock_waits,
                                            &HwStats::lock_wait_cycles,
                                            &HwStats::idle_cycles};
  for (auto f_ : fields) f(a.*f_, b.*f_);
}
}  // namespace

HwStats& HwStats::operator+=(const HwStats& o) noexcept {
  each_counter(*this, o, [](std::uint64_t& x, std::uint64_t y) { x += y; });
  return *this;
}
HwStats& HwStats::operator-=(const HwStats& o) noexcept {
  each_counter(*this, o, [](std::uint64_t& x, std::uint64_t y) { x -= y; });
  return *this;
}

namespace {
// One level's access and is_mru, with its geometry as constants (S sets of W ways) or, for
// S == 0, read at run time.
template <std::uint32_t S, std::uint32_t W>
[[gnu::always_inline]] inline bool level_access(SetAssoc<>& c, std::uint64_t line) noexcept {
  if constexpr (S != 0) {
    return c.access_fixed<S, W>(line);
  } else {
    return c.access(line);
  }
}
template <std::uint32_t S, std::uint32_t W>
[[gnu::always_inline]] inline bool level_is_mru(const SetAssoc<>& c, std::uint64_t line) noexcept {
  if constexpr (S != 0) {
    return c.is_mru_fixed<S, W>(line);
  } else {
    return c.is_mru(line);
  }
}
}  // namespace

Hardware::Hardware(const TimingConfig& c, unsigned ncpus, std::uint64_t memory_bytes)
    : cfg(c),
      llc(c.llc.sets, c.llc.ways),
      vmemmap_base((memory_bytes + (1ull << 30) - 1) & ~((1ull << 30) - 1)) {
  cpus.reserve(ncpus);
  for (unsigned i = 0; i < ncpus; ++i) cpus.emplace_back(c);
  fixed_geometry_ = llc.has_geometry(kLlcSets, kLlcWays);
  for (const Cpu& cpu : cpus)
    fixed_geometry_ = fixed_geometry_ && cpu.l1d.has_geometry(kL1Sets, kL1Ways) &&
                      cpu.l2.has_geometry(kL2Sets, kL2Ways);
}

// An access the inline checks did not answer: look it up level by level; each level's latency
// adds up. The default geometry takes a copy of the path compiled with its constants.
std::uint64_t Hardware::miss_path(Cpu& cpu, std::uint64_t line) noexcept {
  if (fixed_geometry_)
    return miss_path_for<kL1Sets, kL1Ways, kL2Sets, kL2Ways, kLlcSets, kLlcWays>(cpu, line);
  return miss_path_for<0, 0, 0, 0, 0, 0>(cpu, line);
}

template <std::uint32_t L1S, std::uint32_t L1W, std::uint32_t L2S, std::uint32_t L2W,
          std::uint32_t LlcS, std::uint32_t LlcW>
std::uint64_t Hardware::miss_path_for(Cpu& cpu, std::uint64_t line) noexcept {
  // SetAssoc::access fills a level it misses in the same pass. An L2 hit on its set's most
  // recent line (the line the last next-line prefetch brought, in a stream) changes nothing
  // there and is answered first.
  std::uint64_t lat = cfg.l1d.latency;
  if (level_access<L1S, L1W>(cpu.l1d, line)) {
    ++cpu.stats.l1d_hits;
  } else {
    lat += cfg.l2.latency;
    if (level_is_mru<L2S, L2W>(cpu.l2, line) || level_access<L2S, L2W>(cpu.l2, line)) {
      ++cpu.stats.l2_hits;
    } else {
      lat += cfg.llc.latency;
      if (level_access<LlcS, LlcW>(llc, line)) {
        ++cpu.stats.llc_hits;
      } else {
        lat += cfg.dram_latency;
        ++cpu.stats.dram_accesses;
      }
    }
    // Next-line prefetch on every L1 miss (a tagged prefetcher: a sequential stream stays one
    // line ahead, as the L2 streamers of real cores do), into L2 and the LLC.
    if (cfg.next_line_prefetch && !level_access<L2S, L2W>(cpu.l2, line + 1))
      level_access<LlcS, LlcW>(llc, line + 1);
  }
  cpu.clock += lat;
  return lat;
}

// Every TLB entry that translates va, whatever its page size (INVLPG, and a #PF's own).
void Hardware::drop_translation(Cpu& cpu, unsigned pcid, vaddr_t va) noexcept {
  cpu.dtlb_4k.invalidate(tlb_key(pcid, va, 12));
  cpu.stlb.invalidate(tlb_key(pcid, va, 12));
  cpu.dtlb_2m.invalidate(tlb_key(pcid, va, 21));
  cpu.stlb.invalidate(stlb_key_2m(pcid, va));
  cpu.dtlb_1g.invalidate(tlb_key(pcid, va, 30));
}

void Hardware::invlpg(Cpu& cpu, unsigned pcid, vaddr_t va) noexcept {
  drop_translation(cpu, pcid, va);
  auto same_pcid = [pcid](const auto& w) { return (w.key >> 36) == pcid; };
  cpu.pml4e.invalidate_if(same_pcid);
  cpu.pdpte.invalidate_if(same_pcid);
  cpu.pde.invalidate_if(same_pcid);
  ++cpu.stats.invlpg;
}

void Hardware::flush_pcid(Cpu& cpu, unsigned pcid) noexcept {
  auto same_pcid = [pcid](const auto& w) { return (w.key >> 36) == pcid; };
  cpu.dtlb_4k.invalidate_if(same_pcid);
  cpu.dtlb_2m.invalidate_if(same_pcid);
  cpu.dtlb_1g.invalidate_if(same_pcid);
  cpu.stlb.invalidate_if(same_pcid);
  cpu.pml4e.invalidate_if(same_pcid);
  cpu.pdpte.invalidate_if(same_pcid);
  cpu.pde.invalidate_if(same_pcid);
  ++cpu.stats.full_flushes;
}

nlohmann::json hw_stats_to_json(const HwStats& s) {
  nlohmann::json j;
  for (std::size_t i = 0; i < s.phase.size(); ++i)
    j["phases"][to_string(Phase(i))] = {{"count", s.phase[i].count}, {"cycles", s.phase[i].cycles}};
  j["tlb"] = {{"dtlb_hits", s.dtlb_hits},     {"stlb_hits", s.stlb_hits},
              {"misses", s.tlb_misses},       {"walks", s.walks},
              {"walk_cycles", s.walk_cycles}, {"dirty_rewalks", s.walk_dirty_rewalks}};
  j["pwc"] = {{"pml4e_hits", s.pwc_pml4e_hits},
              {"pdpte_hits", s.pwc_pdpte_hits},
              {"pde_hits", s.pwc_pde_hits}};
  j["cache"] = {{"l1d_hits", s.l1d_hits},
                {"l2_hits", s.l2_hits},
                {"llc_hits", s.llc_hits},
                {"dram", s.dram_accesses}};
  j["flush"] = {{"invlpg", s.invlpg},
                {"full", s.full_flushes},
                {"shootdowns_sent", s.shootdowns_sent},
                {"shootdowns_received", s.shootdowns_received}};
  j["locks"] = {{"waits", s.lock_waits}, {"wait_cycles", s.lock_wait_cycles}};
  j["idle_cycles"] = s.idle_cycles;
  return j;
}

std::string Hardware::stats_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (std::size_t i = 0; i < cpus.size(); ++i) {
    nlohmann::json c = hw_stats_to_json(cpus[i].stats);
    c["cpu"] = i;
    c["cycles"] = cpus[i].clock;
    c["cycles_since_reset"] = cpus[i].clock - cpus[i].clock_at_reset;
    j.push_back(std::move(c));
  }
  return j.dump(2);
}

}  // namespace cowpte
