// libFuzzer target: the facade (cowpte.hpp) under decoded call sequences with hostile
// arguments. The input picks a machine (small memories, so that allocations run out; sometimes
// a configuration out of range, which must be refused with std::invalid_argument), then a
// sequence of calls on its processes: mmap/munmap/mprotect/madvise/mremap with any address, length,
// protection and flags, loads and stores, fork under every sound policy, pins and GUP references,
// exits, fault injection (fail_nth_allocation), the read-only windows, and a Process handed to
// another Machine. After every call the machine's invariants must hold, and every load that
// succeeds in MAP_PRIVATE anonymous memory must read what a flat model says was stored there.
//
// The flat model: per process, the private anonymous ranges it maps and the last value stored
// in each word of them (an unwritten word reads 0), copied at fork. Shared memory is not
// modelled (a load there is not checked), nor is a process whose ancestor used MADV_DONTFORK,
// nor a range after a failed MAP_FIXED mmap, munmap or MADV_DONTNEED (Linux leaves those
// partly done).
//
// Any exception other than the documented ones escapes and is reported as a crash, as is a
// broken invariant or a load that disagrees with the model (__builtin_trap).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

// Any registered fork policy (fork_policy_names(): classic, seed, on_demand_fork, rfc_v2, ...).
std::string registered_policy(FuzzedDataProvider& in) {
  static const std::vector<std::string> names = cowpte::sound_fork_policy_names();
  return names[in.ConsumeIntegralInRange<std::size_t>(0, names.size() - 1)];
}
// A registered policy, or now and then a name no policy has (set_cow_pte must answer EINVAL).
std::string any_policy(FuzzedDataProvider& in) {
  return in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeRandomLengthString(12)
                                                   : registered_policy(in);
}

using namespace cowpte;

constexpr std::uint64_t kPage = 4096;
constexpr vaddr_t kTaskSize = 0x7ffffffff000;
constexpr vaddr_t kBase = 0x10000000;  // most addresses fall in a 64 MiB window from here

// COWPTE_FUZZ_STATS=1: print at exit how many loads the model checked (and how many of those
// read a stored, non-zero value), to see that the harness reaches the checked paths.
struct Stats {
  std::uint64_t checked = 0, nonzero = 0, forks = 0, calls = 0, mmaps = 0, priv_mmaps = 0,
                loads = 0, loads_ok = 0, dead = 0, stores_ok = 0, mremaps = 0, mremaps_ok = 0;
  ~Stats() {
    if (std::getenv("COWPTE_FUZZ_STATS"))
      std::fprintf(stderr,
                   "fuzz_facade: %llu calls, %llu forks, %llu loads checked, %llu non-zero\n",
                   (unsigned long long)calls, (unsigned long long)forks,
                   (unsigned long long)checked, (unsigned long long)nonzero);
    if (std::getenv("COWPTE_FUZZ_STATS"))
      std::fprintf(stderr, "mmaps %llu priv %llu loads %llu ok %llu dead %llu stores ok %llu\n",
                   (unsigned long long)mmaps, (unsigned long long)priv_mmaps,
                   (unsigned long long)loads, (unsigned long long)loads_ok,
                   (unsigned long long)dead, (unsigned long long)stores_ok);
    if (std::getenv("COWPTE_FUZZ_STATS"))
      std::fprintf(stderr, "mremaps %llu ok %llu\n", (unsigned long long)mremaps,
                   (unsigned long long)mremaps_ok);
  }
} stats;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_facade: %s\n", what.c_str());
  __builtin_trap();
}

// Half-open address ranges, disjoint and coalesced.
class Ranges {
 public:
  void add(vaddr_t a, vaddr_t b) {
    remove(a, b);
    auto it = r_.lower_bound(a);
    if (it != r_.begin() && std::prev(it)->second == a) {
      --it;
      a = it->first;
      r_.erase(it);
    }
    if (auto n = r_.find(b); n != r_.end()) {
      b = n->second;
      r_.erase(n);
    }
    r_[a] = b;
  }
  void remove(vaddr_t a, vaddr_t b) {
    if (a >= b) return;
    auto it = r_.lower_bound(a);
    if (it != r_.begin() && std::prev(it)->second > a) --it;
    while (it != r_.end() && it->first < b) {
      const vaddr_t s = it->first, e = it->second;
      it = r_.erase(it);
      if (s < a) r_[s] = a;
      if (e > b) r_[b] = e;
    }
  }
  bool contains(vaddr_t x) const {
    auto it = r_.upper_bound(x);
    return it != r_.begin() && std::prev(it)->second > x;
  }

 private:
  std::map<vaddr_t, vaddr_t> r_;
};

struct Model {
  bool valid = true;           // false: nothing about this process is checked
  bool dontfork_used = false;  // a child's model would need per-VMA VM_DONTCOPY
  Ranges priv;                 // private anonymous memory
  std::vector<std::pair<vaddr_t, std::uint64_t>> regions;  // what mmap returned (inherited)
  std::map<vaddr_t, std::uint64_t> words;

  void forget(vaddr_t a, vaddr_t b) {  // [a, b) is no longer (known) private anonymous memory
    priv.remove(a, b);
    words.erase(words.lower_bound(a), words.lower_bound(b));
  }
  void zero(vaddr_t a, vaddr_t b) { words.erase(words.lower_bound(a), words.lower_bound(b)); }
};

struct Harness {
  FuzzedDataProvider& in;
  Machine& m;
  std::vector<Process*> procs;        // every task made, live or exited
  std::vector<Model> model;           // one per mm
  std::vector<std::size_t> model_of;  // by index in procs: the model of the task's mm (threads
                                      // made by clone_vm share their creator's)

  std::vector<std::pair<vaddr_t, std::uint64_t>>* regions = nullptr;  // the current process's
  std::uint64_t stores = 0;

  // Usually an address inside something this process mapped: most calls should hit memory.
  vaddr_t in_region(bool word) {
    const auto& [start, len] =
        in.ConsumeBool()
            ? regions->back()
            : (*regions)[in.ConsumeIntegralInRange<std::size_t>(0, regions->size() - 1)];
    const std::uint64_t span = std::min<std::uint64_t>(len, 1u << 20);
    if (word && in.ConsumeIntegralInRange<int>(0, 3)) {  // a few words: loads meet stores
      const std::uint64_t pages = std::min<std::uint64_t>(span / kPage, 4);
      return start + in.ConsumeIntegralInRange<std::uint64_t>(0, pages - 1) * kPage +
             in.ConsumeIntegralInRange<std::uint64_t>(0, 3) * 8;
    }
    if (word) return start + in.ConsumeIntegralInRange<std::uint64_t>(0, span / 8 - 1) * 8;
    return start + in.ConsumeIntegralInRange<std::uint64_t>(0, span / kPage - 1) * kPage;
  }

  vaddr_t addr() {
    if (!regions->empty() && in.ConsumeIntegralInRange<int>(0, 3)) return in_region(false);
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
        return in.ConsumeIntegral<std::uint64_t>();  // anything at all
      case 1:
        return kBase + in.ConsumeIntegralInRange<std::uint64_t>(0, 1 << 14);  // unaligned
      case 2:
        return kTaskSize - in.ConsumeIntegralInRange<std::uint64_t>(0, 64) * kPage;
      case 3:  // PMD boundaries: where PTE tables are shared and split
        return kBase + in.ConsumeIntegralInRange<std::uint64_t>(0, 32) * (2ull << 20) -
               in.ConsumeIntegralInRange<std::uint64_t>(0, 2) * kPage;
      default:
        return kBase + in.ConsumeIntegralInRange<std::uint64_t>(0, 16383) * kPage;
    }
  }
  vaddr_t word_addr() {  // loads and stores: usually aligned, in a mapping
    if (!regions->empty() && in.ConsumeIntegralInRange<int>(0, 7)) return in_region(true);
    vaddr_t a = addr();
    if (in.ConsumeIntegralInRange<int>(0, 7)) a &= ~7ull;
    return a;
  }
  std::uint64_t length() {
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
        return in.ConsumeIntegral<std::uint64_t>();
      case 1:
        return in.ConsumeIntegralInRange<std::uint64_t>(0, 3 * kPage);
      case 2:  // as long as the address space, or nearly
        return kTaskSize - in.ConsumeIntegralInRange<std::uint64_t>(0, 4) * kPage;
      case 3:
        return in.ConsumeIntegralInRange<std::uint64_t>(1, 4) << 21;
      default:
        return in.ConsumeIntegralInRange<std::uint64_t>(1, 64) * kPage;
    }
  }
  Prot prot() {
    if (in.ConsumeIntegralInRange<int>(0, 15) == 0)
      return Prot(in.ConsumeIntegral<std::uint32_t>());
    if (in.ConsumeBool()) return Prot::read | Prot::write;
    return Prot(in.ConsumeIntegralInRange<std::uint32_t>(0, 7));
  }
  MapFlags map_flags() {
    if (in.ConsumeIntegralInRange<int>(0, 15) == 0)
      return MapFlags(in.ConsumeIntegral<std::uint32_t>());
    std::uint32_t f = 0x20;  // anonymous
    f |= in.ConsumeIntegralInRange<int>(0, 5) ? 0x02 : 0x01;
    const std::uint32_t extra = in.ConsumeIntegral<std::uint8_t>();
    if (extra & 1) f |= 0x10;      // fixed
    if (extra & 2) f |= 0x8000;    // populate
    if (extra & 4) f |= 0x100000;  // fixed_noreplace
    if (extra & 8) f |= 0x4000;    // noreserve
    return MapFlags(f);
  }
  Advice advice() {
    static constexpr int kAdvice[] = {4, 8, 9, 10, 11, 14, 15, 18, 19, 20, 21, 22, 23, 25};
    if (in.ConsumeIntegralInRange<int>(0, 15) == 0) return Advice(in.ConsumeIntegral<int>());
    return Advice(kAdvice[in.ConsumeIntegralInRange<std::size_t>(0, std::size(kAdvice) - 1)]);
  }
  std::size_t pick() { return in.ConsumeIntegralInRange<std::size_t>(0, procs.size() - 1); }

  void check() {
    try {
      m.check_invariants();
    } catch (const std::exception& e) {
      fail(std::string("invariant: ") + e.what());
    }
  }

  void spawn() {
    auto r = m.try_spawn();
    if (!r) {
      if (r.error() != Errno::nomem && r.error() != Errno::again) fail("try_spawn: bad errno");
      return;
    }
    procs.push_back(*r);
    model.emplace_back();
    model_of.push_back(model.size() - 1);
    // A private mapping to start from, so that the first loads and stores hit memory. With a
    // small memory or an injected failure it may fail like any other call.
    auto a = (*r)->mmap(kBase, 16 * kPage, Prot::read | Prot::write,
                        MapFlags::private_ | MapFlags::anonymous);
    if (a) {
      model.back().priv.add(*a, *a + 16 * kPage);
      model.back().regions.emplace_back(*a, 16 * kPage);
    }
  }

  void step() {
    const std::size_t i = pick();
    Process& p = *procs[i];
    Model& md = model[model_of[i]];
    regions = &md.regions;
    const bool alive = p.alive();
    switch (in.ConsumeIntegralInRange<int>(0, 27)) {
      case 0:
      case 1: {
        const vaddr_t a = addr();
        const std::uint64_t len = length();
        MapFlags f = map_flags();
        // Populating terabytes fault by fault until memory runs out is correct but slow: keep
        // MAP_POPULATE to mappings up to 1 MiB, so that a run stays fast.
        if (len > (1u << 20)) f = MapFlags(static_cast<std::uint32_t>(f) & ~0x8000u);
        auto r = p.mmap(a, len, prot(), f);
        const auto fl = static_cast<std::uint32_t>(f);
        const std::uint64_t alen = (len + kPage - 1) & ~(kPage - 1);
        if (r) {
          if (!alive) fail("mmap on an exited process succeeded");
          if (*r & (kPage - 1) || *r >= kTaskSize || alen > kTaskSize - *r)
            fail("mmap returned a bad address");
          ++stats.mmaps;
          stats.priv_mmaps += (fl & 0x03) == 0x02;
          if (md.regions.size() < 64) md.regions.emplace_back(*r, alen);
          if ((fl & 0x03) == 0x02) {
            md.forget(*r, *r + alen);
            md.priv.add(*r, *r + alen);
          } else {
            md.forget(*r, *r + alen);
          }
        } else if ((fl & 0x10) && a < kTaskSize) {
          md.forget(a & ~(kPage - 1), alen > kTaskSize - a ? kTaskSize : a + alen);
        }
        break;
      }
      case 2: {
        const vaddr_t a = addr();
        const std::uint64_t len = length();
        auto r = p.munmap(a, len);
        const vaddr_t end = (a < kTaskSize && len <= kTaskSize - a) ? a + len : kTaskSize;
        if (a < kTaskSize) md.forget(a & ~(kPage - 1), (end + kPage - 1) & ~(kPage - 1));
        (void)r;
        break;
      }
      case 3:
        (void)p.mprotect(addr(), length(), prot());
        break;
      case 4: {
        const vaddr_t a = addr();
        std::uint64_t len = length();
        const Advice adv = advice();
        if ((adv == Advice::populate_read || adv == Advice::populate_write) && len > (1u << 20))
          len = 1u << 20;  // as MAP_POPULATE above
        auto r = p.madvise(a, len, adv);
        const vaddr_t end = (a < kTaskSize && len <= kTaskSize - a) ? a + len : kTaskSize;
        const vaddr_t s = a & ~(kPage - 1), e = (end + kPage - 1) & ~(kPage - 1);
        if (adv == Advice::dontneed && a < kTaskSize) {
          if (r) {
            md.zero(s, e);  // private anonymous memory reads zero again
          } else {
            md.forget(s, e);
          }
        }
        // A failed call over a hole still marks the mapped parts (partial application).
        if (adv == Advice::dontfork || adv == Advice::dofork || adv == Advice::wipeonfork ||
            adv == Advice::keeponfork)
          md.dontfork_used = true;
        // MADV_FREE: a later MADV_PAGEOUT may drop what was stored (unless written again).
        if (adv == Advice::free_ && a < kTaskSize) md.forget(s, e);
        break;
      }
      case 5:
      case 6:
      case 7: {
        const vaddr_t a = word_addr();
        auto r = p.load(a);
        ++stats.loads;
        stats.loads_ok += bool(r);
        stats.dead += !alive;
        if (r && !alive) fail("load on an exited process succeeded");
        if (r && md.valid && (a & 7) == 0 && md.priv.contains(a)) {
          auto w = md.words.find(a);
          const std::uint64_t want = w == md.words.end() ? 0 : w->second;
          ++stats.checked;
          stats.nonzero += want != 0;
          if (*r != want)
            fail("pid " + std::to_string(p.pid()) + " load " + std::to_string(a) + " read " +
                 std::to_string(*r) + ", the model says " + std::to_string(want));
        }
        break;
      }
      case 8:
      case 9:
      case 10: {
        const vaddr_t a = word_addr();
        // Mostly distinct non-zero values that cost no input; now and then any value.
        const std::uint64_t v = in.ConsumeIntegralInRange<int>(0, 7)
                                    ? ++stores * 0x9e3779b97f4a7c15ull
                                    : in.ConsumeIntegral<std::uint64_t>();
        auto r = p.store(a, v);
        stats.stores_ok += bool(r);
        if (r) {
          if (!alive) fail("store on an exited process succeeded");
          if (a & 7) {
            md.forget(a & ~7ull, (a & ~7ull) + 16);  // not a word the model knows
          } else if (md.priv.contains(a)) {
            md.words[a] = v;
          }
        }
        break;
      }
      case 11: {
        if (procs.size() >= 32) break;  // check_invariants() walks every process after each call
        auto r = p.fork();
        if (!r) {
          if (alive && r.error() != Errno::nomem && r.error() != Errno::again)
            fail("fork: unexpected errno");
          break;
        }
        ++stats.forks;
        procs.push_back(*r);
        Model child = md;  // md may move when model grows
        child.valid = md.valid && !md.dontfork_used;
        model.push_back(std::move(child));
        model_of.push_back(model.size() - 1);
        break;
      }
      case 12:
        if (in.ConsumeBool()) {
          (void)p.set_cow_pte();
        } else {
          (void)p.set_cow_pte(any_policy(in));
        }
        break;
      case 13: {
        std::uint32_t f = in.ConsumeIntegralInRange<std::uint32_t>(0, 7);
        f = (f & 1) | ((f & 2) ? 0x10000 : 0) | ((f & 4) ? 0x80000 : 0);  // write, longterm, fast
        if (in.ConsumeIntegralInRange<int>(0, 15) == 0) f = in.ConsumeIntegral<std::uint32_t>();
        (void)p.pin(addr(), in.ConsumeIntegralInRange<std::uint64_t>(0, 4) * kPage, PinFlags(f));
        break;
      }
      case 14:
        (void)p.unpin(addr(), in.ConsumeIntegralInRange<std::uint64_t>(0, 4) * kPage);
        break;
      case 15:
        if (in.ConsumeBool()) {
          (void)p.gup_get(addr(), in.ConsumeIntegralInRange<std::uint64_t>(0, 4) * kPage);
        } else {
          (void)p.gup_put(addr(), in.ConsumeIntegralInRange<std::uint64_t>(0, 4) * kPage);
        }
        break;
      case 16:
        (void)p.read_gup(word_addr());
        break;
      case 17:
        if (in.ConsumeIntegralInRange<int>(0, 3) == 0) p.exit();
        break;
      case 18:
        m.fail_nth_allocation(in.ConsumeIntegralInRange<std::uint64_t>(0, 40));
        break;
      case 19:
        if (procs.size() >= 32) break;
        if (in.ConsumeIntegralInRange<int>(0, 2)) {
          spawn();
        } else if (auto r = p.clone_vm()) {  // a thread: shares p's mm and its model
          if (!alive) fail("clone_vm of an exited task succeeded");
          procs.push_back(*r);
          model_of.push_back(model_of[i]);
        } else if (alive || r.error() != Errno::srch) {
          fail("clone_vm: unexpected errno");
        }
        break;
      case 20:
        (void)p.set_cpu(in.ConsumeIntegral<unsigned>() % 8);
        break;
      case 21:
        (void)p.clear_soft_dirty();
        break;
      case 22: {  // the read-only windows
        const vaddr_t a = addr();
        (void)p.pagemap(a);
        (void)p.smaps();
        (void)p.rss();
        (void)p.pgtables_bytes();
        (void)m.walk(p, a);
        (void)p.hw_stats();
        const pfn_t pfn = in.ConsumeIntegralInRange<pfn_t>(0, m.total_pages() + 4);
        try {
          (void)m.page_info(pfn);
          if (pfn >= m.total_pages()) fail("page_info beyond memory succeeded");
        } catch (const std::out_of_range&) {
          if (pfn < m.total_pages()) fail("page_info refused a valid pfn");
        }
        break;
      }
      case 23:
        if (in.ConsumeIntegralInRange<int>(0, 7) == 0) (void)m.ptdump(p);
        break;
      case 25:
      case 26: {  // mremap: any flags, lengths and addresses; mostly a region of this process
        const bool mine = !md.regions.empty() && in.ConsumeIntegralInRange<int>(0, 3);
        const vaddr_t a = mine ? in_region(false) : addr();
        const std::uint64_t old_len = length(), new_len = length();
        const auto f = MremapFlags(in.ConsumeIntegralInRange<std::uint32_t>(0, 8));
        const vaddr_t na = in.ConsumeBool() ? addr() : 0;
        auto r = p.mremap(a, old_len, new_len, f, na);
        if (r && !alive) fail("mremap on an exited process succeeded");
        if (r && (*r & (kPage - 1) || *r >= kTaskSize)) fail("mremap returned a bad address");
        ++stats.mremaps;
        stats.mremaps_ok += bool(r);
        // Whatever moved, shrank or was unmapped on the way (MREMAP_FIXED's destination goes
        // even when the call fails): the model forgets the ranges involved.
        const auto forget = [&](vaddr_t s, std::uint64_t len) {
          if (s >= kTaskSize) return;
          const vaddr_t e = len > kTaskSize - s ? kTaskSize : s + len;
          md.forget(s & ~(kPage - 1), (e + kPage - 1) & ~(kPage - 1));
        };
        forget(a, std::max(old_len, new_len));
        forget(na, new_len);
        if (r) {
          forget(*r, new_len);
          if (md.regions.size() < 64)
            md.regions.emplace_back(*r, (new_len + kPage - 1) & ~(kPage - 1));
        }
        break;
      }
      case 27: {  // swap, memory pressure and khugepaged, machine-wide
        switch (in.ConsumeIntegralInRange<int>(0, 5)) {
          case 0: {
            const Result<void> r = m.swapoff();
            if (!r && r.error() != Errno::nomem && r.error() != Errno::inval)
              fail("swapoff: bad errno");
            break;
          }
          case 1: {  // any frame, some beyond memory: EINVAL, EBUSY, ENOMEM or a new frame
            const pfn_t pfn = in.ConsumeIntegralInRange<pfn_t>(0, m.total_pages() + 4);
            const Result<pfn_t> r = m.migrate_page(pfn);
            if (r && *r >= m.total_pages()) fail("migrate_page: a frame beyond memory");
            if (!r && r.error() != Errno::inval && r.error() != Errno::busy &&
                r.error() != Errno::nomem)
              fail("migrate_page: bad errno");
            break;
          }
          case 2:
            (void)m.reclaim(in.ConsumeIntegralInRange<std::uint64_t>(0, 64));
            break;
          case 3:
            m.reset_stats();
            break;
          case 4:  // a collapse keeps every value: the model's words stay right
            (void)m.khugepaged_scan(in.ConsumeIntegralInRange<std::uint64_t>(0, 4096));
            break;
          default:
            (void)m.vmstat();
            (void)p.hw_stats_json();
            break;
        }
        break;
      }
      case 24: {  // a Process handed to another Machine
        static Machine other({.memory_bytes = 1 << 20});
        try {
          (void)other.walk(p, addr());
          fail("walk with a Process of another Machine succeeded");
        } catch (const std::invalid_argument&) {
        }
        try {
          (void)other.ptdump(p);
          fail("ptdump with a Process of another Machine succeeded");
        } catch (const std::invalid_argument&) {
        }
        break;
      }
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  MachineConfig cfg;
  // Mostly small memories (64 KiB to 4 MiB) so that allocations run out; now and then one
  // out of range, which the Machine must refuse.
  cfg.memory_bytes = in.ConsumeIntegralInRange<std::uint64_t>(16, 1024) * kPage;
  cfg.cpus = in.ConsumeIntegralInRange<unsigned>(1, 4);
  cfg.cow_pte_policy = registered_policy(in);
  const std::uint8_t knobs = in.ConsumeIntegral<std::uint8_t>();
  if ((knobs & 0x1f) == 1) cfg.timing.enabled = true;  // slower: now and then
  if ((knobs & 0x3f) == 2) cfg.memory_bytes = in.ConsumeIntegral<std::uint64_t>();
  if ((knobs & 0x3f) == 3) cfg.cpus = in.ConsumeIntegral<unsigned>();
  if ((knobs & 0x3f) == 4) cfg.timing.l1d.ways = in.ConsumeIntegralInRange<std::uint32_t>(0, 3);
  cfg.zero_page = !(knobs & 0x80);  // half the machines without the zero page
  // Half the machines with a swap device (now and then one below mkswap's minimum: refused).
  if (knobs & 0x40) cfg.swap_bytes = in.ConsumeIntegralInRange<std::uint64_t>(1, 4096) * kPage;
  // THP "always", "madvise" or "never", a third each; now and then a khugepaged limit, some
  // out of range (refused).
  const std::uint8_t thp = in.ConsumeIntegral<std::uint8_t>();
  cfg.thp = thp % 3 == 0 ? ThpMode::always : thp % 3 == 1 ? ThpMode::madvise : ThpMode::never;
  if ((thp & 0x38) == 0x08)
    cfg.khugepaged_max_ptes_none = in.ConsumeIntegralInRange<unsigned>(0, 600);
  if ((thp & 0x38) == 0x10)
    cfg.khugepaged_max_ptes_shared = in.ConsumeIntegralInRange<unsigned>(0, 600);
  std::unique_ptr<Machine> m;
  try {
    check_machine_config(cfg);
  } catch (const std::invalid_argument&) {
    try {
      Machine refused(cfg);
    } catch (const std::invalid_argument&) {
      return 0;
    }
    fail("Machine accepted a configuration check_machine_config refuses");
  }
  m = std::make_unique<Machine>(cfg);
  Harness h{in, *m, {}, {}, {}, nullptr, 0};
  h.spawn();
  if (h.procs.empty()) return 0;
  if (in.ConsumeBool()) {
    // Every process arms COW PTE with the machine's policy, or another registered one.
    if (in.ConsumeBool()) {
      (void)h.procs[0]->set_cow_pte();
    } else {
      (void)h.procs[0]->set_cow_pte(registered_policy(in));
    }
  }
  for (int n = 0; n < 400 && in.remaining_bytes(); ++n) {
    h.step();
    ++stats.calls;
    h.check();
  }
  m->fail_nth_allocation(0);
  for (Process* p : h.procs) p->exit();
  h.check();
  // A swap-cache page whose last user was a GUP reference (dropped at exit, as a vmsplice pipe
  // would drop it) stays in the swap cache, unmapped and clean, as in Linux, until reclaim takes
  // it; reclaim frees nothing else that no process uses, so any frame left after it leaked.
  const std::uint64_t reclaimed = m->reclaim(m->total_pages());
  h.check();
  if (m->free_pages() + 1 != m->total_pages())
    fail("frames leaked after every process exited (" + std::to_string(reclaimed) +
         " reclaimed from the swap cache)");
  return 0;
}
