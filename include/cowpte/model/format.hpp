// fmt formatters for page-table entries (raw value, decoded bits, pfn) and struct page, and a
// ptdump-style listing of a process's tables (arch/x86/mm/dump_pagetables.c).
#pragma once

#include <fmt/format.h>

#include <string>

#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable_types.hpp"

namespace cowpte {

// An entry to print: its raw word and the level it sits at (0 pgd .. 3 pte).
struct EntryFmt {
  pteval_t v;
  int level = 3;
};

// The decoded flags, in the order of arch/x86/mm/dump_pagetables.c.
std::string decode_entry_flags(pteval_t v, int level);

}  // namespace cowpte

template <>
struct fmt::formatter<cowpte::EntryFmt> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const cowpte::EntryFmt& e, Ctx& ctx) const {
    if (e.v == 0) return fmt::format_to(ctx.out(), "{:#018x} none", e.v);
    if (e.level == 3 && cowpte::is_swap_pte(e.v)) {
      const cowpte::SwpEntry s = cowpte::pte_to_swp_entry(e.v);
      return fmt::format_to(ctx.out(), "{:#018x} swap type {} offset {:#x}{}", e.v, s.type,
                            s.offset, cowpte::pte_swp_exclusive(e.v) ? " exclusive" : "");
    }
    return fmt::format_to(ctx.out(), "{:#018x} [{}] pfn {:#x}", e.v,
                          cowpte::decode_entry_flags(e.v, e.level), raw(cowpte::pte_pfn(e.v)));
  }
};

template <>
struct fmt::formatter<cowpte::Page> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const cowpte::Page& p, Ctx& ctx) const {
    using namespace cowpte;
    return fmt::format_to(
        ctx.out(), "page refcount {} mapcount {}{}{}{}{}{}{}", p._refcount, page_mapcount(p),
        p.test(PG_free) ? " free" : "", p.test(PG_anon) ? " anon" : "",
        p.test(PG_anon_exclusive) ? " exclusive" : "", p.test(PG_table) ? " table" : "",
        p.test(PG_zero) ? " zero" : "", p.test(PG_dirty) ? " dirty" : "");
  }
};
