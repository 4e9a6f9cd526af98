// The swap cache and the device's I/O: add_to_swap, the cache's lookups and deletions
// (mm/swap_state.c), swap_writepage and swap_readpage (mm/page_io.c).
#include <cstring>

#include "mm/errno.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

// add_to_swap_cache: the page holds the slot's data in memory; the cache holds a reference.
void Kernel::add_to_swap_cache(Page& page, SwpEntry entry) {
  get_page(page);
  page.set(PG_swapcache);
  page.set(PG_swapbacked);
  page.swap_offset = static_cast<std::uint32_t>(entry.offset);
  swap->cache.emplace(entry.offset, &page);
}

// add_to_swap: give an anon page a slot and put it in the swap cache, dirty (what is on the
// device is not its data yet). False when swap is full or off.
bool Kernel::add_to_swap(Page& page) {
  const std::uint64_t offset = get_swap_page();
  if (!offset) return false;
  add_to_swap_cache(page, SwpEntry{swap->type, offset});
  page.set(PG_dirty);  // folio_mark_dirty
  return true;
}

// delete_from_swap_cache: the page leaves the cache; the slot loses the cache's reference (and
// is freed if no PTE holds one), the page the cache's reference.
void Kernel::delete_from_swap_cache(Page& page) {
  const SwpEntry entry = page_swap_entry(page);
  swap->cache.erase(entry.offset);
  page.clear(PG_swapcache);
  page.swap_offset = 0;
  put_swap_page(entry);
  mem.put_page(page);
}

// lookup_swap_cache (swap_cache_get_folio): the cached page of entry, with a reference for
// the caller, or nullptr.
Page* Kernel::lookup_swap_cache(SwpEntry entry) {
  Page* page = swap->lookup(entry.offset);
  if (page) get_page(*page);
  return page;
}

// __read_swap_cache_async: a new page for entry in the swap cache, read from the device; the
// caller gets a reference besides the cache's. nullptr when no frame is free or the slot was
// freed meanwhile (swapcache_prepare: -ENOENT). No readahead: vm.page-cluster is 0 here.
Page* Kernel::read_swap_cache_async(SwpEntry entry) {
  Page* page = alloc_page(Gfp::kernel);  // vma_alloc_folio(GFP_HIGHUSER_MOVABLE)
  if (!page) return nullptr;
  if (__swap_duplicate(entry, SWAP_HAS_CACHE)) {  // swapcache_prepare
    mem.put_page(*page);
    return nullptr;
  }
  add_to_swap_cache(*page, entry);
  swap_readpage(*page);
  return page;
}

// swap_writepage: the page's data goes to its slot (synchronously in the model); the page is
// clean. A page of zeros writes a slot that reads back zeros.
void Kernel::swap_writepage(Page& page) {
  const std::uint64_t offset = page.swap_offset;
  if (page.data) {
    auto& slot = swap->contents[offset];
    if (!slot) slot = std::make_unique<std::uint64_t[]>(PAGE_SIZE / 8);
    std::memcpy(slot.get(), page.data, PAGE_SIZE);
  } else {
    swap->contents.erase(offset);
  }
  page.clear(PG_dirty);
  ++vm_events.pswpout;
  if (hw) tm_cycles(hw->cfg.swap_out);
}

// swap_readpage: the slot's data into the page.
void Kernel::swap_readpage(Page& page) {
  auto it = swap->contents.find(page.swap_offset);
  mem.read_contents(page, it == swap->contents.end() ? nullptr : it->second.get());
  ++vm_events.pswpin;
  if (hw) tm_cycles(hw->cfg.swap_in);
}

}  // namespace cowpte
