// The page references GUP handed to each process's "driver" (io_uring buffers, vmsplice pipes,
// RDMA registrations): pins (FOLL_PIN) and FOLL_GET references, each on one page, released by
// unpin/gup_put or when the process exits. Not a Linux structure: in Linux the driver holds
// them; the model keeps them so that the facade can release them and the invariant checker can
// count them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable_types.hpp"
#include "cowpte/types.hpp"

namespace cowpte {

// One reference that GUP handed to a process's driver.
struct GupRef {
  vaddr_t addr;  // page address
  Page* page;
  bool pin;  // FOLL_PIN (else FOLL_GET)
};

class GupRefs {
 public:
  void add(int pid, GupRef r) { refs_[pid].push_back(r); }
  // The newest reference of pid on the page at addr (of the given kind, or of either when pin
  // is empty); nullptr if there is none.
  const GupRef* newest(int pid, vaddr_t addr, std::optional<bool> pin = {}) const {
    auto it = refs_.find(pid);
    if (it == refs_.end()) return nullptr;
    for (auto r = it->second.rbegin(); r != it->second.rend(); ++r)
      if (r->addr == addr && (!pin || r->pin == *pin)) return &*r;
    return nullptr;
  }
  // Remove the newest reference of the given kind on each page of [addr, addr + nr pages) and
  // return them, or nothing (an empty vector, nothing removed) if some page has none.
  std::vector<GupRef> take_range(int pid, vaddr_t addr, std::uint64_t nr, bool pin) {
    auto it = refs_.find(pid);
    if (it == refs_.end()) return {};
    std::vector<GupRef>& refs = it->second;
    std::vector<std::size_t> victims;
    for (std::uint64_t i = 0; i < nr; ++i) {
      const vaddr_t a = addr + (i << PAGE_SHIFT);
      auto r = std::find_if(refs.rbegin(), refs.rend(),
                            [&](const GupRef& g) { return g.addr == a && g.pin == pin; });
      if (r == refs.rend()) return {};
      victims.push_back(static_cast<std::size_t>(refs.rend() - r - 1));
    }
    std::sort(victims.rbegin(), victims.rend());  // erase from the back: indices stay valid
    std::vector<GupRef> out;
    for (std::size_t v : victims) {
      out.push_back(refs[v]);
      refs.erase(refs.begin() + static_cast<std::ptrdiff_t>(v));
    }
    if (refs.empty()) refs_.erase(it);
    return out;
  }
  // Every reference of pid, removed (exit).
  std::vector<GupRef> take_all(int pid) {
    auto it = refs_.find(pid);
    if (it == refs_.end()) return {};
    std::vector<GupRef> out = std::move(it->second);
    refs_.erase(it);
    return out;
  }
  template <class F>
  void for_each(F&& f) const {  // f(pid, const GupRef&)
    for (const auto& [pid, refs] : refs_)
      for (const GupRef& r : refs) f(pid, r);
  }

 private:
  std::unordered_map<int, std::vector<GupRef>> refs_;  // by pid, oldest first
};

}  // namespace cowpte
