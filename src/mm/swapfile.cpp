// The swap device's counts: slot allocation, swap_map references with their count
// continuations, freeing slots and their swap-cache pages (mm/swapfile.c).
#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// get_swap_pages / scan_swap_map_slots for one slot: next fit from where the last allocation
// ended, as the cluster scan hands out consecutive slots. Its swap_map starts at
// SWAP_HAS_CACHE: the caller puts the page in the swap cache. Offset 0 (the header) on failure.
std::uint64_t Kernel::get_swap_page() {
  SwapInfo* si = swap.get();
  if (!si || !si->writeok || si->nr_free() == 0) return 0;
  std::uint64_t off = si->cluster_next;
  for (std::uint64_t n = 0; n < si->pages; ++n, ++off) {
    if (off >= si->pages) off = 1;
    if (si->swap_map[off] == 0) {
      si->swap_map[off] = SWAP_HAS_CACHE;
      ++si->inuse_pages;
      si->cluster_next = off + 1;
      return off;
    }
  }
  return 0;
}

// swap_range_free: the slot's last reference went; its data is gone.
void Kernel::swap_range_free(std::uint64_t offset) {
  swap->swap_map[offset] = 0;
  --swap->inuse_pages;
  swap->contents.erase(offset);
}

// __swap_duplicate: one more reference (usage 1) or the cache's (SWAP_HAS_CACHE). -ENOENT for a
// free slot, -EEXIST for a second cache reference, -ENOMEM when the count needs a continuation
// frame that is not there yet.
int Kernel::__swap_duplicate(SwpEntry entry, std::uint8_t usage) {
  SwapInfo& si = *swap;
  std::uint8_t count = si.swap_map[entry.offset];
  if (swap_count(count) == SWAP_MAP_BAD) return -ENOENT;
  std::uint8_t has_cache = count & SWAP_HAS_CACHE;
  count &= ~SWAP_HAS_CACHE;
  if (!count && !has_cache) return -ENOENT;
  if (usage == SWAP_HAS_CACHE) {
    if (has_cache) return -EEXIST;
    has_cache = SWAP_HAS_CACHE;
  } else if ((count & ~COUNT_CONTINUED) > SWAP_MAP_MAX) {
    return -EINVAL;
  } else if ((count & ~COUNT_CONTINUED) < SWAP_MAP_MAX) {
    count += usage;
  } else if (swap_count_continued(entry.offset, count)) {
    count = COUNT_CONTINUED;
  } else {
    return -ENOMEM;
  }
  si.swap_map[entry.offset] = count | has_cache;
  return 0;
}

// swap_duplicate: a reference for one more PTE; a continuation frame comes from an atomic
// allocation (the caller holds a PTE lock). -ENOMEM if that allocation failed.
int Kernel::swap_duplicate(SwpEntry entry) {
  int err = 0;
  while (!err && __swap_duplicate(entry, 1) == -ENOMEM)
    err = add_swap_count_continuation(entry, Gfp::atomic);
  return err;
}

// add_swap_count_continuation: the count of entry's slot is at SWAP_MAP_MAX (or every digit
// is full): link one more continuation frame to the slot's page of swap_map. The frame is
// allocated first, as Linux does, and freed again if it turned out not to be needed: GFP_ATOMIC
// under a PTE lock (fork, try_to_unmap), GFP_KERNEL after fork dropped it.
int Kernel::add_swap_count_continuation(SwpEntry entry, Gfp gfp) {
  Page* page = alloc_page(gfp);
  SwapInfo& si = *swap;
  std::uint8_t count = swap_count(si.swap_map[entry.offset]);
  int ret = 0;
  if ((count & ~COUNT_CONTINUED) == SWAP_MAP_MAX) {
    if (!page) {
      ret = -ENOMEM;
    } else {
      std::vector<Page*>& list = si.continuations[entry.offset / PAGE_SIZE];
      const unsigned off = entry.offset % PAGE_SIZE;
      bool attach = true;
      for (Page* cont : list) {
        // A continuation frame with room for this slot's digit is there already.
        if (!(count & COUNT_CONTINUED)) {
          attach = false;
          break;
        }
        count = mem.load_byte(*cont, off);
        if ((count & ~COUNT_CONTINUED) != SWAP_CONT_MAX) {
          attach = false;
          break;
        }
      }
      if (attach) {
        list.push_back(page);
        ++vm_events.swap_cont_pages;
        page = nullptr;
      }
    }
  }
  if (page) mem.put_page(*page);
  return ret;
}

// swap_count_continued: carry into (count == SWAP_MAP_MAX or SWAP_MAP_MAX|COUNT_CONTINUED) or
// borrow from (count == COUNT_CONTINUED) the slot's continuation digits, like adding 1 to 999
// or taking 1 from 1000. Incrementing: false when a new continuation frame is needed.
// Decrementing: whether the continuation still holds more.
bool Kernel::swap_count_continued(std::uint64_t offset, std::uint8_t count) {
  SwapInfo& si = *swap;
  auto it = si.continuations.find(offset / PAGE_SIZE);
  if (it == si.continuations.end() || it->second.empty()) {
    if (count & COUNT_CONTINUED) throw InvariantViolation("swap_count_continued: no continuation");
    return false;  // need to add a count continuation
  }
  std::vector<Page*>& list = it->second;
  const unsigned off = offset % PAGE_SIZE;
  std::size_t i = 0;
  auto digit = [&](std::size_t n) { return mem.load_byte(*list[n], off); };
  auto set_digit = [&](std::size_t n, std::uint8_t v) { mem.store_byte(*list[n], off, v); };
  if (count == SWAP_MAP_MAX) {  // the first increment from swap_map: this digit starts at 0
    set_digit(0, 1);
    return true;
  }
  if (count == (SWAP_MAP_MAX | COUNT_CONTINUED)) {  // incrementing
    while (digit(i) == (SWAP_CONT_MAX | COUNT_CONTINUED))
      if (++i == list.size()) throw InvariantViolation("swap_count_continued: digits overflow");
    if (digit(i) == SWAP_CONT_MAX) {
      if (++i == list.size()) return false;  // add a count continuation
      set_digit(i, 0);                       // Linux did not zero the frame
    }
    set_digit(i, digit(i) + 1);
    while (i-- > 0) set_digit(i, COUNT_CONTINUED);
    return true;
  }
  if (count != COUNT_CONTINUED) throw InvariantViolation("swap_count_continued: bad count");
  while (digit(i) == COUNT_CONTINUED)  // decrementing
    if (++i == list.size()) throw InvariantViolation("swap_count_continued: digits underflow");
  if (digit(i) == 0) throw InvariantViolation("swap_count_continued: a zero digit");
  set_digit(i, digit(i) - 1);
  std::uint8_t c = digit(i) == 0 ? 0 : COUNT_CONTINUED;
  while (i-- > 0) {
    set_digit(i, SWAP_CONT_MAX | c);
    c = COUNT_CONTINUED;
  }
  return c == COUNT_CONTINUED;
}

// __swap_entry_free_locked: drop one reference (usage 1) or the cache's; the slot is freed when
// nothing is left. Returns what is left of the swap_map byte (0: freed).
std::uint8_t Kernel::__swap_entry_free(SwpEntry entry, std::uint8_t usage) {
  SwapInfo& si = *swap;
  std::uint8_t count = si.swap_map[entry.offset];
  std::uint8_t has_cache = count & SWAP_HAS_CACHE;
  count &= ~SWAP_HAS_CACHE;
  if (usage == SWAP_HAS_CACHE) {
    if (!has_cache) throw InvariantViolation("put_swap_page: the slot has no cache reference");
    has_cache = 0;
  } else if (count == COUNT_CONTINUED) {
    count =
        swap_count_continued(entry.offset, count) ? (SWAP_MAP_MAX | COUNT_CONTINUED) : SWAP_MAP_MAX;
  } else if (count == 0) {
    throw InvariantViolation("swap_free: a slot with no references");
  } else {
    --count;
  }
  const std::uint8_t left = count | has_cache;
  if (left) {
    si.swap_map[entry.offset] = left;
  } else {
    swap_range_free(entry.offset);
  }
  return left;
}

// swap_free: a PTE's reference goes (the page came back from the cache or the device).
void Kernel::swap_free(SwpEntry entry) { __swap_entry_free(entry, 1); }

// put_swap_page: the swap cache's reference goes.
void Kernel::put_swap_page(SwpEntry entry) { __swap_entry_free(entry, SWAP_HAS_CACHE); }

// swp_swapcount: the full count of a slot, continuation digits included.
std::uint64_t Kernel::swp_swapcount(SwpEntry entry) const {
  const SwapInfo& si = *swap;
  std::uint8_t count = swap_count(si.swap_map[entry.offset]);
  if (count == SWAP_MAP_BAD) return 0;
  std::uint64_t total = count & ~COUNT_CONTINUED;
  if (!(count & COUNT_CONTINUED)) return total;
  const auto& list = si.continuations.at(entry.offset / PAGE_SIZE);
  std::uint64_t n = SWAP_MAP_MAX + 1;
  for (Page* cont : list) {
    count = mem.load_byte(*cont, entry.offset % PAGE_SIZE);
    total += (count & ~COUNT_CONTINUED) * n;
    if (!(count & COUNT_CONTINUED)) break;
    n *= SWAP_CONT_MAX + 1;
  }
  return total;
}

// vm_swap_full: more than half of swap is in use (try_to_free_swap frees slots eagerly then).
bool Kernel::vm_swap_full() const noexcept { return swap && swap->nr_free() * 2 < swap->pages - 1; }

// folio_free_swap (try_to_free_swap): a swap-cache page whose slot no PTE references any more
// leaves the cache, and the slot is freed; the page stays (dirty: its only copy now).
bool Kernel::folio_free_swap(Page& page) {
  if (!PageSwapCache(page)) return false;
  if (swap_count(swap->swap_map[page.swap_offset]) != 0) return false;  // folio_swapped
  delete_from_swap_cache(page);
  page.set(PG_dirty);
  return true;
}

// __try_to_reclaim_swap after a zap: the slot's only reference left is the cache's; free it
// with its page if no PTE maps the page (TTRS_UNMAPPED) or swap is more than half full
// (TTRS_FULL).
void Kernel::try_to_reclaim_swap(std::uint64_t offset) {
  Page* page = swap->lookup(offset);
  if (!page) return;
  if (page_mapcount(*page) == 0 || vm_swap_full()) {
    get_page(*page);
    folio_free_swap(*page);
    mem.put_page(*page);
  }
}

// free_swap_and_cache: a zap drops a swap PTE's reference; when only the cache's is left, the
// page in the cache goes too. False for an entry that is not a valid slot (print_bad_pte).
bool Kernel::free_swap_and_cache(SwpEntry entry) {
  if (!swap || entry.type != swap->type || entry.offset == 0 || entry.offset >= swap->pages)
    return false;
  if (__swap_entry_free(entry, 1) == SWAP_HAS_CACHE) try_to_reclaim_swap(entry.offset);
  return true;
}

// free_swap_count_continuations: swapoff frees every continuation frame.
void Kernel::free_swap_count_continuations() {
  for (auto& [idx, list] : swap->continuations)
    for (Page* page : list) mem.put_page(*page);
  swap->continuations.clear();
}

// unuse_pte: map the page swapoff brought back in place of its swap entry, read-only and old
// (as do_swap_page maps a shared one); the entry's reference goes. 0, or 1 if the PTE changed.
int Kernel::unuse_pte(Vma& vma, EntryRef pmd, vaddr_t addr, SwpEntry entry, Page& page) {
  MmStruct& mm = *vma.vm_mm;
  EntryRef pte = pte_offset_map(pmd, addr);
  SpinGuard ptl(pte_lockptr(mm, *pte.table));
  const pteval_t v = pte.get();
  if (!is_swap_pte(v) || pte_to_swp_entry(v) != entry) return 1;
  --mm.rss_stat[MM_SWAPENTS];
  ++mm.rss_stat[MM_ANONPAGES];
  get_page(page);
  page_add_anon_rmap(page, vma, addr, pte_swp_exclusive(v));
  pteval_t nw = pte_mkold(pfn_pte(mem.pfn(page), vma.vm_page_prot));
  if (pte_swp_soft_dirty(v)) nw = pte_mksoft_dirty(nw);
  set_pte_at(pte, nw);
  tm_entry(pte);
  swap_free(entry);
  return 0;
}

// unuse_pte_range: every swap entry of the device in [addr, end) of one table gets its page
// back, from the swap cache or read from the device. -ENOMEM when no frame is free.
int Kernel::unuse_pte_range(Vma& vma, EntryRef pmd, vaddr_t addr, vaddr_t end) {
  for (; addr != end; addr += PAGE_SIZE) {
    const pteval_t v = pte_offset_map(pmd, addr).get();
    if (!is_swap_pte(v)) continue;
    const SwpEntry entry = pte_to_swp_entry(v);
    if (!is_device_swp_entry(entry)) continue;
    Page* page = lookup_swap_cache(entry);
    if (!page) page = read_swap_cache_async(entry);  // swapin_readahead
    if (!page) {
      if (swap->swap_map[entry.offset] == 0) continue;  // freed meanwhile
      return -ENOMEM;
    }
    unuse_pte(vma, pmd, addr, entry, *page);
    folio_free_swap(*page);  // try_to_free_swap
    mem.put_page(*page);
  }
  return 0;
}

// unuse_mm: every anonymous VMA of mm. unuse_pmd_range breaks a shared table first ([PATCH v3
// 03/14]): the pages come back into this mm's private table (-ENOMEM if it can't get one).
int Kernel::unuse_mm(MmStruct& mm) {
  MmapReadGuard lock(mm);
  MmStruct* const prev = busy_mm;
  busy_mm = &mm;  // an OOM kill of this mm's process waits until swapoff is done with it
  struct Restore {
    Kernel& k;
    MmStruct* prev;
    ~Restore() { k.busy_mm = prev; }
  } restore{*this, prev};
  for (Vma& vma : mm.mm_mt) {
    if (!vma.anon_vma || vma.vm_file) continue;
    for (vaddr_t a = vma.vm_start, next; a < vma.vm_end; a = next) {
      EntryRef pmd = walk_to_pmd(mm, a, vma.vm_end, next);
      if (!pmd || pmd_none(pmd.get()) || pmd_trans_huge(pmd.get())) continue;  // no swap entries
      if (break_cow_pte(mm, pmd, a)) return -ENOMEM;
      if (int err = unuse_pte_range(vma, pmd, a, next)) return err;
    }
  }
  return 0;
}

// try_to_unuse: bring back what every mm has on the device, then free the swap-cache pages no
// PTE references any more. Reclaim may meanwhile unmap a page that came back into a slot some
// other reference keeps (the device takes no new slot while swapoff runs): go round again, as
// Linux does, while that makes progress. -ENOMEM when memory runs out first.
int Kernel::try_to_unuse() {
  for (std::uint64_t before = ~0ull; swap->inuse_pages && swap->inuse_pages < before;) {
    before = swap->inuse_pages;
    for (Process& p : procs)
      if (MmStruct* mm = p.mm())
        if (int err = unuse_mm(*mm)) return err;
    std::vector<Page*> cached;
    for (auto& [offset, page] : swap->cache) cached.push_back(page);
    for (Page* page : cached) {
      get_page(*page);
      folio_free_swap(*page);
      mem.put_page(*page);
    }
  }
  return swap->inuse_pages ? -ENOMEM : 0;
}

// sys_swapoff: the device stops taking pages (SWP_WRITEOK), every page comes back, and the
// device goes away with its continuation frames. On -ENOMEM it takes pages again, as
// reinsert_swap_info does; what came back stays in memory. EINVAL without a device.
Result<void> Kernel::sys_swapoff() {
  if (!swap) return Errno::inval;
  PhaseScope phase(*this, Phase::reclaim);
  swap->writeok = false;
  const int err = try_to_unuse();
  if (oom_pending && !busy_mm) oom_reap_pending();
  if (err) {
    swap->writeok = true;
    return Errno::nomem;
  }
  free_swap_count_continuations();
  swap.reset();
  return {};
}

}  // namespace cowpte
