// fmt formatters for the facade's views: a page walk, a frame's struct page and a pagemap entry,
// so that research code can print what it inspects (`fmt::print("{}\n", m.walk(p, va))`).
#pragma once

#include <fmt/format.h>

#include "cowpte/types.hpp"

template <>
struct fmt::formatter<cowpte::PtWalk> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const cowpte::PtWalk& w, Ctx& ctx) const {
    static constexpr const char* kLevel[4] = {"pgd", "pud", "pmd", "pte"};
    auto out = fmt::format_to(ctx.out(), "walk: {} level{}", w.levels, w.levels == 1 ? "" : "s");
    for (int i = 0; i < w.levels && i < 4; ++i)
      out = fmt::format_to(out, "; {} {:#018x} in table {:#x}", kLevel[i], w.entry[i], w.table[i]);
    return out;
  }
};

template <>
struct fmt::formatter<cowpte::PageInfo> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const cowpte::PageInfo& p, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "page refcount {} mapcount {}{}{}{}{}{}{}{}", p.refcount,
                          p.mapcount, p.free ? " free" : "", p.anon ? " anon" : "",
                          p.anon_exclusive ? " exclusive" : "", p.page_table ? " table" : "",
                          p.zero_page ? " zero" : "", p.swapcache ? " swapcache" : "",
                          p.dirty ? " dirty" : "");
  }
};

template <>
struct fmt::formatter<cowpte::PagemapEntry> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const cowpte::PagemapEntry& e, Ctx& ctx) const {
    if (!e.present && !e.swapped) return fmt::format_to(ctx.out(), "pagemap {:#018x} none", e.raw);
    return fmt::format_to(ctx.out(), "pagemap {:#018x}{}{}{}{}{}", e.raw,
                          e.present ? fmt::format(" present pfn {:#x}", e.pfn) : std::string(),
                          e.swapped ? " swapped" : "", e.file_or_shared_anon ? " file/shared" : "",
                          e.exclusive ? " exclusive" : "", e.soft_dirty ? " soft-dirty" : "");
  }
};
