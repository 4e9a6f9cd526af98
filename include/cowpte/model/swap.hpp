// One swap device: swap_info_struct's swap_map with its count continuations, the swap cache
// and the device's contents. Models include/linux/swap.h, mm/swapfile.c's data and the swap
// cache's address_space (mm/swap_state.c). The kernel paths that use it are in src/mm/swapfile.cpp
// and src/mm/swap_state.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable_types.hpp"

namespace cowpte {

// swap_map byte values (include/linux/swap.h).
inline constexpr std::uint8_t SWAP_HAS_CACHE = 0x40;   // the swap cache holds a page for it
inline constexpr std::uint8_t COUNT_CONTINUED = 0x80;  // the count goes on in a continuation
inline constexpr std::uint8_t SWAP_MAP_MAX = 0x3e;     // the largest count swap_map holds
inline constexpr std::uint8_t SWAP_MAP_BAD = 0x3f;     // a bad slot (the header)
inline constexpr std::uint8_t SWAP_CONT_MAX = 0x7f;    // the largest digit a continuation holds

// struct swap_info_struct, for the one device the model has (type 0).
struct SwapInfo {
  explicit SwapInfo(std::uint64_t nr_pages) : pages(nr_pages), swap_map(nr_pages, 0) {
    if (nr_pages) swap_map[0] = SWAP_MAP_BAD;  // slot 0 holds the swap header
  }
  unsigned type = 0;
  std::uint64_t pages;  // slots, the header included (si->max)
  std::vector<std::uint8_t> swap_map;
  std::uint64_t inuse_pages = 0;   // slots with a count or a cache page
  std::uint64_t cluster_next = 1;  // where the next allocation scan starts
  bool writeok = true;             // SWP_WRITEOK: cleared while swapoff runs
  // Count continuations: for each PAGE_SIZE-slot page of swap_map that needed one, its list of
  // continuation frames (head->lru). Each frame's byte at (offset % PAGE_SIZE) is one digit.
  std::unordered_map<std::uint64_t, std::vector<Page*>> continuations;
  // The swap cache (swapper_spaces): slot -> the page that holds its data in memory.
  std::unordered_map<std::uint64_t, Page*> cache;
  // The device's contents: slot -> 4 KiB written by swap_writepage; a slot absent here reads
  // back as zeros.
  std::unordered_map<std::uint64_t, std::unique_ptr<std::uint64_t[]>> contents;

  std::uint64_t nr_free() const noexcept { return pages - 1 - inuse_pages; }
  Page* lookup(std::uint64_t offset) const {
    auto it = cache.find(offset);
    return it == cache.end() ? nullptr : it->second;
  }
};

// swap_count: the count in a swap_map byte, without the cache bit.
constexpr std::uint8_t swap_count(std::uint8_t ent) noexcept { return ent & ~SWAP_HAS_CACHE; }

// page->private of a swap-cache page: its swap entry (type 0 here).
inline SwpEntry page_swap_entry(const Page& p) noexcept { return SwpEntry{0, p.swap_offset}; }

}  // namespace cowpte
