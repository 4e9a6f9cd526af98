// A flat reference model of a process's memory for the differential test (test_differential.cpp).
//
// No page tables, no struct page, no COW: each process is a list of VMAs and a map from virtual
// page to its 512 words. Private pages belong to the process and fork deep-copies them;
// MAP_SHARED|MAP_ANONYMOUS regions are backed by a shared object (shmem) that fork shares. The
// model answers every facade call with the result Linux (v6.1/v6.2) gives, which the test then
// compares against the simulator, on the way to an error too: mprotect over a hole changes the
// VMAs before it and then fails with ENOMEM; madvise applies the advice to every mapped part and
// then fails with ENOMEM.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "cowpte/cowpte.hpp"

namespace cowpte::flat {

inline constexpr std::uint64_t kPageSize = 4096;
inline constexpr std::uint64_t kWordsPerPage = kPageSize / 8;
inline constexpr vaddr_t kTaskSize = (1ull << 47) - kPageSize;
inline constexpr vaddr_t kMmapMinAddr = 0x10000;
using PageWords = std::array<std::uint64_t, kWordsPerPage>;

inline constexpr Errno kOk = Errno{0};

inline bool has(Prot p, Prot bit) { return any(p & bit); }
inline bool has(MapFlags f, MapFlags bit) { return any(f & bit); }
inline bool has(PinFlags f, PinFlags bit) { return any(f & bit); }
inline bool has(MremapFlags f, MremapFlags bit) { return any(f & bit); }
// x86 has no write-only or exec-only pages: any access right lets a user load.
inline bool user_readable(Prot p) { return any(p & (Prot::read | Prot::write | Prot::exec)); }
inline std::uint64_t page_align(std::uint64_t len) {
  return (len + kPageSize - 1) & ~(kPageSize - 1);
}
inline std::uint64_t vpn(vaddr_t a) { return a / kPageSize; }

// What the model predicts for one call: an errno (kOk on success) and, for loads, the value.
struct Outcome {
  Errno err = kOk;
  std::uint64_t value = 0;
  // MADV_COLLAPSE only: err is the result if every span's pages allow the collapse; what the
  // model does not see (a VMA without anon memory yet, read-only or empty spans, pins, no free
  // 2 MiB block) may instead give EINVAL, EAGAIN or ENOMEM at the first private VMA reached.
  bool collapse_uncertain = false;
  bool ok() const { return err == kOk; }
};

struct FlatVma {
  vaddr_t start = 0, end = 0;
  Prot prot = Prot::none;
  bool shared = false;      // MAP_SHARED|MAP_ANONYMOUS: backed by shm object `obj`
  std::uint64_t obj = 0;    // shm object id (shared only)
  std::uint64_t pgoff = 0;  // page offset of `start` in the object (shared only)
  bool dontfork = false;    // VM_DONTCOPY
  bool wipe = false;        // VM_WIPEONFORK: the child gets this range empty
  std::uint8_t thp = 0;     // 1: VM_HUGEPAGE, 2: VM_NOHUGEPAGE (MADV_(NO)HUGEPAGE)
};

// One page's reference from one pin call. unpin(addr, len) drops the newest pin of every page
// in the range (or, if a page has none, nothing: EINVAL); read_gup(addr) reads through the
// newest pin of addr's page.
//
// What a pin reads is known once a FOLL_LONGTERM pin holds the page (the COW-vs-pin property):
// while the process keeps the page mapped, the pinned page is the one it maps (`live`); after
// munmap, MADV_DONTNEED or MAP_FIXED take it away, a private page is held only by the pin and
// nobody can write it any more (`frozen`), and a shmem page stays in its object (`shm`). After
// mremap moved the page, or MADV_REMOVE took it out of its object, the model stops predicting
// what the pin reads (`unknown`).
enum class PinView { live, frozen, shm, unknown };

struct FlatPin {
  std::uint64_t vpn = 0;
  PinFlags flags = PinFlags::none;
  std::uint64_t stamp = 0;  // operation stamp at which it was taken
  PinView view = PinView::live;
  std::shared_ptr<const PageWords> frozen;  // view == frozen: the page's last contents
  std::uint64_t obj = 0, obj_page = 0;      // view == shm: where the page lives
};

enum class CowPte { off, ready, on };  // prctl(PR_SET_COW_PTE): MMF_COW_PTE_READY, MMF_COW_PTE

struct FlatProc {
  bool alive = true;
  std::map<vaddr_t, FlatVma> vmas;                           // by start address
  std::unordered_map<std::uint64_t, PageWords> priv;         // vpn -> words (private pages)
  std::vector<FlatPin> pins;                                 // oldest first
  std::vector<std::pair<vaddr_t, std::uint64_t>> pin_calls;  // ranges pinned (for the test)
  std::unordered_map<std::uint64_t, std::uint64_t> changed;  // vpn -> stamp of last unmap
  // Pages MADV_FREE made uncertain: reclaim (MADV_PAGEOUT) may have dropped them, so a page
  // holds one of `worlds` (or zeros, while `lazy`: still droppable). `priv` is not consulted
  // for them; loads narrow the worlds, a store redirties the page (no longer droppable).
  struct Uncertain {
    std::vector<PageWords> worlds;
    bool lazy = true;
  };
  std::unordered_map<std::uint64_t, Uncertain> unc;
  CowPte cow_pte = CowPte::off;
};

struct FlatShm {
  std::uint64_t pages = 0;
  std::unordered_map<std::uint64_t, PageWords> data;  // page index -> words
};

class FlatModel {
 public:
  // Loads of MADV_FREE'd pages that told a dropped page (zeros only) or a kept one apart.
  std::uint64_t lazy_dropped_seen = 0, lazy_kept_seen = 0;

  // The stamp of the operation being modelled; mapping changes and pins record it.
  void set_stamp(std::uint64_t s) { stamp_ = s; }

  int spawn() {
    procs_.emplace_back();
    return static_cast<int>(procs_.size()) - 1;
  }
  const FlatProc& proc(int p) const { return procs_.at(p); }
  const FlatShm& shm(std::uint64_t id) const { return shms_.at(id); }

  const FlatVma* vma_at(int p, vaddr_t a) const {
    const auto& vmas = procs_.at(p).vmas;
    auto it = vmas.upper_bound(a);
    if (it == vmas.begin()) return nullptr;
    --it;
    return a < it->second.end ? &it->second : nullptr;
  }

  bool range_free(int p, vaddr_t a, std::uint64_t len) const {
    const auto& vmas = procs_.at(p).vmas;
    auto it = vmas.lower_bound(a);
    if (it != vmas.end() && it->first < a + len) return false;
    if (it != vmas.begin() && std::prev(it)->second.end > a) return false;
    return true;
  }

  // The VMAs intersecting [a, a+len), in address order, and whether the range has a hole.
  std::vector<const FlatVma*> vmas_in(int p, vaddr_t a, std::uint64_t len, bool* hole) const {
    std::vector<const FlatVma*> out;
    const auto& vmas = procs_.at(p).vmas;
    auto it = vmas.upper_bound(a);
    if (it != vmas.begin() && std::prev(it)->second.end > a) --it;
    vaddr_t cur = a, end = a + len;
    bool h = false;
    for (; it != vmas.end() && it->first < end; ++it) {
      if (it->first > cur) h = true;
      out.push_back(&it->second);
      cur = it->second.end;
    }
    if (cur < end) h = true;
    if (hole) *hole = h;
    return out;
  }

  // Pages of memory the model's state can hold at most: every mapped private page, every shm
  // object still mapped somewhere, and every pinned range. The test keeps this below capacity.
  std::uint64_t footprint_pages() const {
    std::uint64_t n = 0;
    std::set<std::uint64_t> objs;
    for (const auto& pr : procs_) {
      if (!pr.alive) continue;
      for (const auto& [s, v] : pr.vmas) {
        if (v.shared)
          objs.insert(v.obj);
        else
          n += (v.end - v.start) / kPageSize;
      }
      n += pr.pins.size();
    }
    for (auto o : objs) n += shms_.at(o).pages;
    return n;
  }

  // ---- mmap: plan, then apply at the address the simulator chose ----
  struct MmapPlan {
    Errno err = kOk;
    bool exact = false;  // the result must be `addr`; otherwise any free range will do
    vaddr_t addr = 0;
  };

  MmapPlan plan_mmap(int p, vaddr_t addr, std::uint64_t len, Prot /*prot*/, MapFlags flags) const {
    MmapPlan plan;
    if (len == 0) return {Errno::inval};
    const bool fixed = has(flags, MapFlags::fixed) || has(flags, MapFlags::fixed_noreplace);
    if (!fixed && addr != 0) addr = std::max(page_align(addr), kMmapMinAddr);
    len = page_align(len);
    if (fixed) {
      if (addr % kPageSize) return {Errno::inval};
      if (addr > kTaskSize || len > kTaskSize - addr) return {Errno::nomem};
      if (has(flags, MapFlags::fixed_noreplace) && !range_free(p, addr, len)) return {Errno::exist};
    }
    const auto type = flags & (MapFlags::shared | MapFlags::private_);
    if (type != MapFlags::shared && type != MapFlags::private_) return {Errno::inval};
    if (fixed || (addr != 0 && len <= kTaskSize - addr && range_free(p, addr, len))) {
      plan.exact = true;
      plan.addr = addr;
    }
    return plan;
  }

  void apply_mmap(int p, vaddr_t addr, std::uint64_t len, Prot prot, MapFlags flags) {
    len = page_align(len);
    remove_range(p, addr, len);
    FlatVma v;
    v.start = addr;
    v.end = addr + len;
    v.prot = prot;
    if (has(flags, MapFlags::shared)) {
      v.shared = true;
      v.obj = next_obj_++;
      shms_[v.obj].pages = len / kPageSize;
    }
    procs_.at(p).vmas[addr] = v;
  }

  // ---- the other calls: each predicts the outcome and applies it on success ----
  Outcome munmap(int p, vaddr_t a, std::uint64_t len) {
    if (a % kPageSize || a > kTaskSize || len > kTaskSize - a) return {Errno::inval};
    len = page_align(len);
    if (len == 0) return {Errno::inval};
    remove_range(p, a, len);
    return {};
  }

  Outcome mprotect(int p, vaddr_t a, std::uint64_t len, Prot prot) {
    if (a % kPageSize) return {Errno::inval};
    if (len == 0) return {};
    len = page_align(len);
    if (a + len <= a) return {Errno::nomem};
    // v6.1's do_mprotect_pkey: VMA after VMA from a, each changed before the next is looked up;
    // the first hole ends the call with ENOMEM and what came before it stays changed.
    vaddr_t done = a;
    while (done < a + len) {
      const FlatVma* v = vma_at(p, done);
      if (!v) break;
      done = std::min(a + len, v->end);
    }
    // mprotect never replaces a page, so pins stay coherent (the facade brief counted it as a
    // change to be safe; Linux's can_change_pte_writable/do_wp_page keep a pinned exclusive
    // page in place, which is exactly what the test checks).
    if (done > a) for_range(p, a, done - a, [&](FlatVma& v) { v.prot = prot; });
    if (done < a + len) return {Errno::nomem};
    return {};
  }

  Outcome madvise(int p, vaddr_t a, std::uint64_t len, Advice advice) {
    switch (advice) {
      case Advice::dontneed:
      case Advice::dontfork:
      case Advice::dofork:
      case Advice::wipeonfork:
      case Advice::keeponfork:
      case Advice::cold:
      case Advice::pageout:
      case Advice::remove:
      case Advice::free_:
      case Advice::populate_read:
      case Advice::populate_write:
      case Advice::hugepage:
      case Advice::nohugepage:
      case Advice::collapse:
        break;
      default:
        return {Errno::inval};  // the test sends nothing else
    }
    if (a % kPageSize) return {Errno::inval};
    const std::uint64_t alen = page_align(len);
    if (len && !alen) return {Errno::inval};
    if (a + alen < a) return {Errno::inval};
    if (alen == 0) return {};
    len = alen;
    bool hole = false;
    auto vs = vmas_in(p, a, len, &hole);
    if (advice == Advice::populate_read || advice == Advice::populate_write) {
      // Linux since 6.10 (the hosts run 6.18): VMA after VMA in address order, the first hole
      // gives ENOMEM and the first VMA that forbids the access EINVAL, whichever comes first.
      const Prot need = advice == Advice::populate_read ? Prot::read : Prot::write;
      for (vaddr_t va = a; va < a + len;) {
        const FlatVma* v = vma_at(p, va);
        if (!v) return {Errno::nomem};
        if (!has(v->prot, need)) return {Errno::inval};
        const vaddr_t e = std::min(a + len, v->end);
        if (past_eof(*v, e - kPageSize)) return {Errno::fault};  // SIGBUS
        va = e;
      }
      return {};  // contents do not change
    }
    // MADV_COLLAPSE never changes contents. VMA after VMA: shared memory (no shmem THPs) and
    // MADV_NOHUGEPAGE stop the walk with EINVAL; a private VMA's spans collapse or not as their
    // pages decide; then a hole gives ENOMEM.
    if (advice == Advice::collapse) {
      Outcome out;
      for (const FlatVma* v : vs) {
        if (v->shared || v->thp == 2) {
          out.err = Errno::inval;
          return out;
        }
        out.collapse_uncertain = true;
      }
      if (hole) out.err = Errno::nomem;
      return out;
    }
    // madvise_walk_vmas: the advice goes to every mapped part of the range, then a hole gives
    // ENOMEM.
    if (advice == Advice::wipeonfork || advice == Advice::keeponfork) {
      // In address order; WIPEONFORK stops with EINVAL at a shared VMA, the parts before it
      // already marked.
      std::vector<std::tuple<vaddr_t, vaddr_t, bool>> parts;
      for (const FlatVma* v : vs)
        parts.emplace_back(std::max(a, v->start), std::min(a + len, v->end), v->shared);
      for (const auto& [s, e, shared] : parts) {
        if (advice == Advice::wipeonfork && shared) return {Errno::inval};
        for_range(p, s, e - s, [&](FlatVma& v) { v.wipe = advice == Advice::wipeonfork; });
      }
      if (hole) return {Errno::nomem};
      return {};
    }
    // No content changes: COLD ages pages; PAGEOUT without swap drops only MADV_FREE'd clean
    // pages (the test sends no MADV_FREE) and shmem pages never written (which read zero).
    if (advice == Advice::cold || advice == Advice::pageout) return {hole ? Errno::nomem : kOk};
    // THP policy changes where pages come from, never what they hold; the flags split VMAs.
    if (advice == Advice::hugepage || advice == Advice::nohugepage) {
      const std::uint8_t t = advice == Advice::hugepage ? 1 : 2;
      for_range(p, a, len, [&](FlatVma& v) { v.thp = t; });
      return {hole ? Errno::nomem : kOk};
    }
    if (advice == Advice::free_) {
      // VMA after VMA: a shared one (not anonymous) stops the walk with EINVAL; a private one's
      // pages become lazily freeable, then a hole gives ENOMEM.
      std::vector<std::tuple<vaddr_t, vaddr_t, bool>> parts;
      for (const FlatVma* v : vs)
        parts.emplace_back(std::max(a, v->start), std::min(a + len, v->end), v->shared);
      auto& pr = procs_.at(p);
      for (const auto& [s, e, shared] : parts) {
        if (shared) return {Errno::inval};
        for (vaddr_t va = s; va < e; va += kPageSize) {
          auto u = pr.unc.find(vpn(va));
          if (u != pr.unc.end()) {
            u->second.lazy = true;
            continue;
          }
          auto it = pr.priv.find(vpn(va));
          if (it == pr.priv.end()) continue;  // reads zero either way
          pr.unc[vpn(va)] = {{it->second}, true};
          pr.priv.erase(it);
        }
      }
      return {hole ? Errno::nomem : kOk};
    }
    if (advice == Advice::remove) {
      // VMA after VMA: a private one stops the walk with EINVAL (no file), a shared one has its
      // object's pages punched out (every mapper reads zeros), then a hole gives ENOMEM.
      std::vector<std::tuple<vaddr_t, vaddr_t, bool, std::uint64_t, std::uint64_t>> parts;
      for (const FlatVma* v : vs) {
        const vaddr_t s = std::max(a, v->start), e = std::min(a + len, v->end);
        parts.emplace_back(s, e, v->shared, v->obj, v->pgoff + (s - v->start) / kPageSize);
      }
      for (const auto& [s, e, shared, obj, first] : parts) {
        if (!shared) return {Errno::inval};
        punch_hole(obj, first, first + (e - s) / kPageSize);
      }
      return {hole ? Errno::nomem : kOk};
    }
    auto& pr = procs_.at(p);
    if (advice == Advice::dontneed) {
      // Private pages are dropped and read back as zeros; shmem keeps its pages. Per VMA: a
      // range may span huge holes.
      for (const FlatVma* v : vs) {
        const vaddr_t s = std::max(a, v->start), e = std::min(a + len, v->end);
        const bool priv = !v->shared;
        detach_pins(p, s, e - s);
        if (priv)
          for (vaddr_t va = s; va < e; va += kPageSize) {
            pr.priv.erase(vpn(va));
            pr.unc.erase(vpn(va));
          }
        mark_changed(p, s, e - s);
      }
    } else {
      const bool dontfork = advice == Advice::dontfork;
      for_range(p, a, len, [&](FlatVma& v) { v.dontfork = dontfork; });
    }
    if (hole) return {Errno::nomem};
    return {};
  }

  // A shared VMA mremap grew in place reaches past the end of its object: SIGBUS there.
  bool past_eof(const FlatVma& v, vaddr_t a) const {
    return v.shared && v.pgoff + (a - v.start) / kPageSize >= shms_.at(v.obj).pages;
  }

  // ---- mremap: Linux's steps, each applied as it happens (v6.1, growing in place as v6.3+) ----
  struct MremapOutcome {
    Errno err = kOk;
    vaddr_t addr = 0;      // the address Linux returns, unless `any`
    bool any = false;      // a move to a free range of Linux's choosing: the simulator's (`got`)
    bool bad_got = false;  // ...which was not a free range
  };

  // `got` is the simulator's result: its address decides a move to "anywhere", its errno the
  // cases the flat model cannot decide (resize_check).
  MremapOutcome mremap(int p, vaddr_t a, std::uint64_t old_len, std::uint64_t new_len,
                       MremapFlags f, vaddr_t na, const Result<vaddr_t>& sim_result) {
    const vaddr_t got = sim_result ? *sim_result : 0;
    const Errno sim = sim_result ? kOk : sim_result.error();
    const bool maymove = has(f, MremapFlags::maymove), fixed = has(f, MremapFlags::fixed),
               dontunmap = has(f, MremapFlags::dontunmap);
    const auto err = [](Errno e) { return MremapOutcome{e}; };
    if (any(f & ~(MremapFlags::maymove | MremapFlags::fixed | MremapFlags::dontunmap)))
      return err(Errno::inval);
    if (fixed && !maymove) return err(Errno::inval);
    if (dontunmap && (!maymove || old_len != new_len)) return err(Errno::inval);
    if (a % kPageSize) return err(Errno::inval);
    old_len = page_align(old_len);
    new_len = page_align(new_len);
    if (!new_len) return err(Errno::inval);
    if (!vma_at(p, a)) return err(Errno::fault);
    if (fixed || dontunmap) {  // mremap_to
      if (na % kPageSize) return err(Errno::inval);
      if (new_len > kTaskSize || na > kTaskSize - new_len) return err(Errno::inval);
      if (a + old_len > na && na + new_len > a) return err(Errno::inval);
      if (fixed) remove_range(p, na, new_len);
      if (old_len > new_len) {
        if (!munmap(p, a + new_len, old_len - new_len).ok()) return err(Errno::inval);
        old_len = new_len;
      }
      if (Errno e = resize_check(p, a, old_len, sim); e != kOk) return err(e);
      vaddr_t to = na;  // MREMAP_FIXED's address, or DONTUNMAP's hint if that range is free
      bool anywhere = false;
      if (fixed) {
        if (na < kMmapMinAddr) return err(Errno::perm);
      } else if (!(na >= kMmapMinAddr && na <= kTaskSize - new_len && range_free(p, na, new_len))) {
        if (!usable(p, got, new_len)) return {kOk, got, true, true};
        to = got;
        anywhere = true;
      }
      move(p, a, old_len, new_len, to, dontunmap);
      return {kOk, to, anywhere};
    }
    if (old_len >= new_len) {
      if (old_len != new_len)
        if (Outcome o = munmap(p, a + new_len, old_len - new_len); !o.ok()) return err(o.err);
      return {kOk, a};
    }
    if (Errno e = resize_check(p, a, old_len, sim); e != kOk) return err(e);
    FlatVma& v = vma_ref(p, a);
    const std::uint64_t delta = new_len - old_len;
    if (old_len == v.end - a && v.end + delta > v.end && v.end + delta <= kTaskSize &&
        range_free(p, v.end, delta)) {
      v.end += delta;  // grows in place
      return {kOk, a};
    }
    if (!maymove) return err(Errno::nomem);
    if (!usable(p, got, new_len)) return {kOk, got, true, true};
    move(p, a, old_len, new_len, got, false);
    return {kOk, got, true};
  }

  Outcome load(int p, vaddr_t a) const {
    const FlatVma* v = vma_at(p, a);
    if (!v || !user_readable(v->prot) || past_eof(*v, a)) return {Errno::fault};
    const std::uint64_t w = (a % kPageSize) / 8;
    if (v->shared) {
      const auto& d = shms_.at(v->obj).data;
      auto it = d.find(v->pgoff + (a - v->start) / kPageSize);
      return {kOk, it == d.end() ? 0 : it->second[w]};
    }
    const auto& d = procs_.at(p).priv;
    auto it = d.find(vpn(a));
    return {kOk, it == d.end() ? 0 : it->second[w]};
  }

  // A load that may meet a page MADV_FREE made uncertain: any world's word is right; the load
  // then tells which worlds remain. Returns the outcome to compare `got` against.
  Outcome observe_load(int p, vaddr_t a, std::uint64_t got) {
    Outcome want = load(p, a);
    auto& pr = procs_.at(p);
    const FlatVma* v = vma_at(p, a);
    auto u = pr.unc.find(vpn(a));
    if (!want.ok() || v->shared || u == pr.unc.end()) return want;
    const std::uint64_t w = (a % kPageSize) / 8;
    std::vector<PageWords> keep;
    for (const PageWords& world : u->second.worlds)
      if (world[w] == got) keep.push_back(world);
    const bool zero_ok = u->second.lazy && got == 0;
    if (keep.empty() && !zero_ok) {
      want.value = u->second.worlds.empty() ? 0 : u->second.worlds.front()[w];
      return want;  // no world has it: a mismatch
    }
    want.value = got;
    ++(keep.empty() ? lazy_dropped_seen : lazy_kept_seen);
    if (keep.empty()) {  // dropped: the page reads zeros from now on
      pr.unc.erase(u);
    } else if (keep.size() == 1 && !zero_ok) {  // kept so far (reclaim may still drop it)
      u->second.worlds = keep;
      if (!u->second.lazy) {
        pr.priv[vpn(a)] = keep.front();
        pr.unc.erase(u);
      }
    } else {
      u->second.worlds = keep;
    }
    return want;
  }

  Outcome store(int p, vaddr_t a, std::uint64_t value) {
    const FlatVma* v = vma_at(p, a);
    if (!v || !has(v->prot, Prot::write) || past_eof(*v, a)) return {Errno::fault};
    const std::uint64_t w = (a % kPageSize) / 8;
    PageWords* page;
    if (v->shared) {
      page = &page_of(shms_.at(v->obj).data, v->pgoff + (a - v->start) / kPageSize);
    } else if (auto u = procs_.at(p).unc.find(vpn(a)); u != procs_.at(p).unc.end()) {
      // The page was kept (it is redirtied now) or dropped (the store faults in a zeroed one).
      if (u->second.lazy) u->second.worlds.push_back(PageWords{});
      u->second.lazy = false;
      for (PageWords& world : u->second.worlds) world[w] = value;
      return {};
    } else {
      page = &page_of(procs_.at(p).priv, vpn(a));
    }
    (*page)[w] = value;
    return {};
  }

  // prctl(PR_SET_COW_PTE): EINVAL once MMF_COW_PTE is set, else MMF_COW_PTE_READY.
  Outcome set_cow_pte(int p) {
    FlatProc& pr = procs_.at(p);
    if (pr.cow_pte == CowPte::on) return {Errno::inval};
    pr.cow_pte = CowPte::ready;
    return {};
  }

  int fork(int p) {
    const int c = spawn();
    FlatProc& parent = procs_.at(p);
    FlatProc& child = procs_.at(c);
    // kernel_clone turns READY into MMF_COW_PTE, which is in MMF_INIT_MASK: the child inherits.
    if (parent.cow_pte == CowPte::ready) parent.cow_pte = CowPte::on;
    if (parent.cow_pte == CowPte::on) child.cow_pte = CowPte::on;
    for (const auto& [s, v] : parent.vmas) {
      if (v.dontfork) continue;
      child.vmas[s] = v;
      if (v.shared || v.wipe) continue;  // a VM_WIPEONFORK range starts empty in the child
      for (auto it = parent.priv.begin(); it != parent.priv.end(); ++it)
        if (it->first >= vpn(v.start) && it->first < vpn(v.end)) child.priv.insert(*it);
      for (auto it = parent.unc.begin(); it != parent.unc.end(); ++it)
        if (it->first >= vpn(v.start) && it->first < vpn(v.end)) child.unc.insert(*it);
    }
    return c;
  }

  void exit(int p) {
    FlatProc& pr = procs_.at(p);
    pr = FlatProc{};
    pr.alive = false;
  }

  // pin_user_pages(FOLL_PIN | flags): every page must sit in a VMA that allows the access
  // (check_vma_flags: FOLL_WRITE needs VM_WRITE, otherwise VM_READ), or the call fails EFAULT.
  Outcome pin(int p, vaddr_t a, std::uint64_t len, PinFlags flags) {
    bool hole = false;
    auto vs = vmas_in(p, a, len, &hole);
    if (hole) return {Errno::fault};
    const Prot need = has(flags, PinFlags::write) ? Prot::write : Prot::read;
    for (const FlatVma* v : vs)
      if (!has(v->prot, need) || past_eof(*v, std::min(a + len, v->end) - kPageSize))
        return {Errno::fault};
    auto& pr = procs_.at(p);
    for (vaddr_t va = a; va < a + len; va += kPageSize) {
      FlatPin pin;
      pin.vpn = vpn(va);
      pin.flags = flags;
      pin.stamp = stamp_;
      pr.pins.push_back(std::move(pin));
    }
    pr.pin_calls.emplace_back(a, len);
    return {};
  }

  // unpin(a, len): the newest pin of every page in the range goes; EINVAL (and nothing goes)
  // when some page has no pin.
  Outcome unpin(int p, vaddr_t a, std::uint64_t len) {
    auto& pins = procs_.at(p).pins;
    std::vector<std::size_t> victims;
    for (vaddr_t va = a; va < a + len; va += kPageSize) {
      std::size_t i = pins.size();
      while (i > 0 && pins[i - 1].vpn != vpn(va)) --i;
      if (i == 0) return {Errno::inval};
      victims.push_back(i - 1);
    }
    std::sort(victims.rbegin(), victims.rend());
    for (std::size_t v : victims) pins.erase(pins.begin() + static_cast<std::ptrdiff_t>(v));
    return {};
  }

  // What read_gup(a) must return, when the model knows it (see PinView).
  std::optional<std::uint64_t> expected_gup(int p, vaddr_t a) const {
    const FlatProc& pr = procs_.at(p);
    const std::uint64_t w = (a % kPageSize) / 8;
    const FlatPin* newest = nullptr;
    for (const auto& pin : pr.pins)
      if (pin.vpn == vpn(a)) newest = &pin;
    if (!newest) return std::nullopt;
    switch (newest->view) {
      case PinView::frozen:
        return (*newest->frozen)[w];
      case PinView::shm:
        return shm_word(newest->obj, newest->obj_page, w);
      case PinView::live:
        if (!pin_coherent(p, a) || pr.unc.count(vpn(a))) return std::nullopt;
        return content(p, a);
      case PinView::unknown:
        return std::nullopt;
    }
    return std::nullopt;
  }

  // The COW-vs-pin property applies at `a`: a FOLL_LONGTERM pin covers it that was taken after
  // the process last unmapped that page, so read_gup(a) must equal load(a).
  bool pin_coherent(int p, vaddr_t a) const {
    return coherent_since(procs_.at(p), vpn(a)).has_value();
  }

 private:
  template <class Map>
  static PageWords& page_of(Map& m, std::uint64_t key) {
    auto it = m.find(key);
    if (it == m.end()) it = m.emplace(key, PageWords{}).first;
    return it->second;
  }

  // The stamp of the oldest FOLL_LONGTERM pin of `page` taken since the page was last
  // unmapped: every pin from then on holds the page the process maps. (A pin before it may hold
  // the zero page, which a later write replaces.)
  static std::optional<std::uint64_t> coherent_since(const FlatProc& pr, std::uint64_t page) {
    std::uint64_t last = 0;
    if (auto it = pr.changed.find(page); it != pr.changed.end()) last = it->second;
    for (const auto& pin : pr.pins)
      if (pin.vpn == page && pin.view == PinView::live && has(pin.flags, PinFlags::longterm) &&
          pin.stamp > last)
        return pin.stamp;
    return std::nullopt;
  }

  std::uint64_t shm_word(std::uint64_t obj, std::uint64_t page, std::uint64_t w) const {
    const auto& d = shms_.at(obj).data;
    auto it = d.find(page);
    return it == d.end() ? 0 : it->second[w];
  }

  // The word at `a` whatever the protection (`a` must be mapped).
  std::uint64_t content(int p, vaddr_t a) const {
    const FlatVma* v = vma_at(p, a);
    const std::uint64_t w = (a % kPageSize) / 8;
    if (v->shared) return shm_word(v->obj, v->pgoff + (a - v->start) / kPageSize, w);
    const auto& d = procs_.at(p).priv;
    auto it = d.find(vpn(a));
    return it == d.end() ? 0 : it->second[w];
  }

  // [a, a+len) is about to be unmapped or zapped: the pins that hold the mapped pages keep
  // them, and from now on read what the pages hold now.
  void detach_pins(int p, vaddr_t a, std::uint64_t len) {
    FlatProc& pr = procs_.at(p);
    for (vaddr_t va = a; va < a + len; va += kPageSize) {
      auto since = coherent_since(pr, vpn(va));
      if (!since) continue;
      const FlatVma* v = vma_at(p, va);
      std::shared_ptr<const PageWords> snap;
      for (auto& pin : pr.pins) {
        if (pin.vpn != vpn(va) || pin.view != PinView::live || pin.stamp < *since) continue;
        if (v->shared) {
          pin.view = PinView::shm;
          pin.obj = v->obj;
          pin.obj_page = v->pgoff + (va - v->start) / kPageSize;
        } else if (pr.unc.count(vpn(va))) {
          pin.view = PinView::unknown;
        } else {
          if (!snap) {
            auto it = pr.priv.find(vpn(va));
            snap =
                std::make_shared<const PageWords>(it == pr.priv.end() ? PageWords{} : it->second);
          }
          pin.view = PinView::frozen;
          pin.frozen = snap;
        }
      }
    }
  }

  void mark_changed(int p, vaddr_t a, std::uint64_t len) {
    auto& ch = procs_.at(p).changed;
    for (vaddr_t va = a; va < a + len; va += kPageSize) ch[vpn(va)] = stamp_;
  }

  // MADV_REMOVE: the object's pages [first, last) go; a pin on one of them keeps the old page,
  // whose contents the model stops predicting.
  void punch_hole(std::uint64_t obj, std::uint64_t first, std::uint64_t last) {
    auto& data = shms_.at(obj).data;
    for (std::uint64_t i = first; i < last; ++i) data.erase(i);
    for (std::size_t p = 0; p < procs_.size(); ++p) {
      for (auto& pin : procs_[p].pins) {
        if (pin.view == PinView::shm && pin.obj == obj && pin.obj_page >= first &&
            pin.obj_page < last)
          pin.view = PinView::unknown;
        if (pin.view != PinView::live) continue;
        const FlatVma* v = vma_at(static_cast<int>(p), pin.vpn * kPageSize);
        if (!v || !v->shared || v->obj != obj) continue;
        const std::uint64_t page = v->pgoff + (pin.vpn * kPageSize - v->start) / kPageSize;
        if (page >= first && page < last) pin.view = PinView::unknown;
      }
    }
  }

  // vma_to_resize's checks of the VMA at a. The flat model never merges VMAs, and whether
  // Linux merged two neighbours depends on anon_vma history it does not keep: a range across
  // neighbours that Linux may have merged (same protection and flags, the same object at
  // consecutive offsets) is EFAULT or not as the simulator says (the real-kernel test checks
  // the merges themselves); on success the model joins them.
  Errno resize_check(int p, vaddr_t a, std::uint64_t old_len, Errno sim) {
    const FlatVma* v = vma_at(p, a);
    if (!v) return Errno::fault;
    if (!old_len && !v->shared) return Errno::inval;  // "duplicating" a private mapping
    if (old_len <= v->end - a) return kOk;
    for (const FlatVma* prev = v; prev->end < a + old_len;) {
      const FlatVma* n = vma_at(p, prev->end);
      if (!n || !mergeable(*prev, *n)) return Errno::fault;  // across a VMA boundary
      prev = n;
    }
    if (sim == Errno::fault) return Errno::fault;
    for (const FlatVma* n; (n = vma_at(p, v->end)) && v->end < a + old_len;) {
      FlatVma& vv = vma_ref(p, a);
      vv.end = n->end;
      procs_.at(p).vmas.erase(n->start);
      v = &vv;
    }
    return kOk;
  }
  static bool mergeable(const FlatVma& l, const FlatVma& r) {
    return l.prot == r.prot && l.shared == r.shared && l.dontfork == r.dontfork &&
           l.wipe == r.wipe && l.thp == r.thp &&
           (!l.shared || (l.obj == r.obj && l.pgoff + (l.end - l.start) / kPageSize == r.pgoff));
  }
  FlatVma& vma_ref(int p, vaddr_t a) {
    auto& vmas = procs_.at(p).vmas;
    return std::prev(vmas.upper_bound(a))->second;
  }
  bool usable(int p, vaddr_t at, std::uint64_t len) const {
    return at % kPageSize == 0 && at >= kMmapMinAddr && at <= kTaskSize - len &&
           range_free(p, at, len);
  }

  // move_vma: [a, a + old_len) of one VMA moves to [to, to + new_len): its private pages go
  // with it, a shared range maps the same object pages there; the old range is unmapped, or
  // (MREMAP_DONTUNMAP) stays mapped with its private pages gone.
  void move(int p, vaddr_t a, std::uint64_t old_len, std::uint64_t new_len, vaddr_t to,
            bool dontunmap) {
    FlatProc& pr = procs_.at(p);
    const FlatVma& src = *vma_at(p, a);
    FlatVma nv = src;
    nv.start = to;
    nv.end = to + new_len;
    if (src.shared) nv.pgoff = src.pgoff + (a - src.start) / kPageSize;
    for (auto& pin : pr.pins)  // the pinned pages moved with the range
      if (pin.vpn >= vpn(a) && pin.vpn < vpn(a + old_len) && pin.view == PinView::live)
        pin.view = PinView::unknown;
    std::vector<std::pair<std::uint64_t, PageWords>> moved;
    std::vector<std::pair<std::uint64_t, FlatProc::Uncertain>> moved_unc;
    for (std::uint64_t i = 0; i < old_len / kPageSize; ++i) {
      if (auto it = pr.priv.find(vpn(a) + i); it != pr.priv.end()) {
        moved.emplace_back(vpn(to) + i, it->second);
        pr.priv.erase(it);
      }
      if (auto it = pr.unc.find(vpn(a) + i); it != pr.unc.end()) {
        moved_unc.emplace_back(vpn(to) + i, it->second);
        pr.unc.erase(it);
      }
    }
    mark_changed(p, a, old_len);
    if (!dontunmap && old_len) remove_range(p, a, old_len);
    pr.vmas[to] = nv;
    for (auto& [page, words] : moved) pr.priv[page] = words;
    for (auto& [page, u] : moved_unc) pr.unc[page] = u;
    mark_changed(p, to, new_len);
  }

  // Split the VMA containing `a` (if any) so that a VMA starts at `a`.
  void split_at(int p, vaddr_t a) {
    auto& vmas = procs_.at(p).vmas;
    auto it = vmas.upper_bound(a);
    if (it == vmas.begin()) return;
    --it;
    FlatVma& v = it->second;
    if (v.start >= a || v.end <= a) return;
    FlatVma right = v;
    right.start = a;
    if (right.shared) right.pgoff += (a - v.start) / kPageSize;
    v.end = a;
    vmas[a] = right;
  }

  template <class F>
  void for_range(int p, vaddr_t a, std::uint64_t len, F f) {
    split_at(p, a);
    split_at(p, a + len);
    auto& vmas = procs_.at(p).vmas;
    for (auto it = vmas.lower_bound(a); it != vmas.end() && it->first < a + len; ++it)
      f(it->second);
  }

  void remove_range(int p, vaddr_t a, std::uint64_t len) {
    detach_pins(p, a, len);
    split_at(p, a);
    split_at(p, a + len);
    auto& pr = procs_.at(p);
    auto it = pr.vmas.lower_bound(a);
    while (it != pr.vmas.end() && it->first < a + len) it = pr.vmas.erase(it);
    for (auto pit = pr.priv.begin(); pit != pr.priv.end();) {
      if (pit->first >= vpn(a) && pit->first < vpn(a + len))
        pit = pr.priv.erase(pit);
      else
        ++pit;
    }
    for (auto uit = pr.unc.begin(); uit != pr.unc.end();) {
      if (uit->first >= vpn(a) && uit->first < vpn(a + len))
        uit = pr.unc.erase(uit);
      else
        ++uit;
    }
    mark_changed(p, a, len);
  }

  std::vector<FlatProc> procs_;
  std::map<std::uint64_t, FlatShm> shms_;
  std::uint64_t next_obj_ = 1;
  std::uint64_t stamp_ = 0;
};

}  // namespace cowpte::flat
