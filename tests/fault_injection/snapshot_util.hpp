// A machine-state snapshot for the tests: everything the facade shows, read through its read-only
// windows (free_pages, page_info, smaps, rss, VmPTE, pagemap, walk). Two snapshots compare equal
// exactly when no window shows a difference; DiffSnapshots() lists the differences readably.
#pragma once

#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <exception>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace cowpte_test {

inline constexpr std::uint64_t kSnapPage = 4096;

// One page of a VMA: its pagemap word and its page-table path.
struct PageSnap {
  cowpte::vaddr_t va = 0;
  std::uint64_t pagemap_raw = 0;
  cowpte::PtWalk walk{};
};

// What one live process shows.
struct ProcSnap {
  int pid = 0;
  std::vector<cowpte::SmapsEntry> smaps;
  cowpte::RssStat rss{};
  std::uint64_t pgtables_bytes = 0;
  std::vector<PageSnap> pages;  // every page of every VMA, in address order
};

struct MachineSnapshot {
  std::uint64_t free_pages = 0;
  std::vector<cowpte::PageInfo> frames;  // page_info(pfn) for pfn < total_pages()
  std::vector<ProcSnap> procs;           // the live processes, in pid order
};

inline bool SamePageInfo(const cowpte::PageInfo& a, const cowpte::PageInfo& b) {
  return a.refcount == b.refcount && a.mapcount == b.mapcount && a.free == b.free &&
         a.anon == b.anon && a.anon_exclusive == b.anon_exclusive && a.page_table == b.page_table &&
         a.zero_page == b.zero_page && a.swapcache == b.swapcache && a.dirty == b.dirty;
}

inline bool SameSmaps(const cowpte::SmapsEntry& a, const cowpte::SmapsEntry& b) {
  return a.start == b.start && a.end == b.end && a.rss == b.rss && a.pss == b.pss &&
         a.shared_clean == b.shared_clean && a.shared_dirty == b.shared_dirty &&
         a.private_clean == b.private_clean && a.private_dirty == b.private_dirty &&
         a.anonymous == b.anonymous && a.swap == b.swap;
}

inline bool SameWalk(const cowpte::PtWalk& a, const cowpte::PtWalk& b) {
  return a.levels == b.levels && a.entry == b.entry && a.table == b.table;
}

inline std::string Describe(const cowpte::PageInfo& p) {
  return fmt::format(
      "{{ref={} map={} free={} anon={} excl={} pt={} zero={} swapcache={} dirty={}}}", p.refcount,
      p.mapcount, p.free, p.anon, p.anon_exclusive, p.page_table, p.zero_page, p.swapcache,
      p.dirty);
}

inline std::string Describe(const cowpte::SmapsEntry& s) {
  return fmt::format(
      "{{[{:#x},{:#x}) rss={} pss={} sh_clean={} sh_dirty={} pr_clean={} pr_dirty={} anon={} "
      "swap={}}}",
      s.start, s.end, s.rss, s.pss, s.shared_clean, s.shared_dirty, s.private_clean,
      s.private_dirty, s.anonymous, s.swap);
}

inline std::string Describe(const cowpte::RssStat& r) {
  return fmt::format("{{file={} anon={} swapents={} shmem={}}}", r.file, r.anon, r.swapents,
                     r.shmem);
}

inline std::string Describe(const cowpte::PtWalk& w) {
  return fmt::format("{{levels={} entry=[{:#x} {:#x} {:#x} {:#x}] table=[{} {} {} {}]}}", w.levels,
                     w.entry[0], w.entry[1], w.entry[2], w.entry[3], w.table[0], w.table[1],
                     w.table[2], w.table[3]);
}

// The view of one live process: smaps, rss, VmPTE, and pagemap + walk of every page of every VMA.
inline ProcSnap TakeProcSnap(const cowpte::Machine& m, const cowpte::Process& p) {
  ProcSnap s;
  s.pid = p.pid();
  s.smaps = p.smaps();
  s.rss = p.rss();
  s.pgtables_bytes = p.pgtables_bytes();
  for (const auto& v : s.smaps) {
    for (cowpte::vaddr_t va = v.start; va < v.end; va += kSnapPage) {
      s.pages.push_back(PageSnap{va, p.pagemap(va).raw, m.walk(p, va)});
    }
  }
  return s;
}

inline MachineSnapshot TakeSnapshot(cowpte::Machine& m) {
  MachineSnapshot s;
  s.free_pages = m.free_pages();
  const std::uint64_t total = m.total_pages();
  s.frames.reserve(total);
  for (cowpte::pfn_t pfn = 0; pfn < total; ++pfn) s.frames.push_back(m.page_info(pfn));
  for (cowpte::Process* p : m.processes()) s.procs.push_back(TakeProcSnap(m, *p));
  return s;
}

// Appends the differences between two views of a process to `out` (at most `max_lines` in all).
// compare_walks = false leaves out the page-table entries (walk()), e.g. where Linux may have
// write-protected PTEs without any other window showing it.
inline void DiffProcSnaps(const ProcSnap& a, const ProcSnap& b, std::vector<std::string>& out,
                          std::size_t max_lines, bool compare_walks = true) {
  auto add = [&](std::string line) {
    if (out.size() < max_lines) out.push_back(std::move(line));
  };
  const std::string who = fmt::format("pid {}", a.pid);
  if (a.pid != b.pid) add(fmt::format("pid {} vs pid {}", a.pid, b.pid));
  if (a.smaps.size() != b.smaps.size())
    add(fmt::format("{}: {} VMAs vs {}", who, a.smaps.size(), b.smaps.size()));
  for (std::size_t i = 0; i < a.smaps.size() && i < b.smaps.size(); ++i) {
    if (!SameSmaps(a.smaps[i], b.smaps[i]))
      add(fmt::format("{}: smaps[{}] {} vs {}", who, i, Describe(a.smaps[i]),
                      Describe(b.smaps[i])));
  }
  if (!(a.rss == b.rss))
    add(fmt::format("{}: rss {} vs {}", who, Describe(a.rss), Describe(b.rss)));
  if (a.pgtables_bytes != b.pgtables_bytes)
    add(fmt::format("{}: pgtables_bytes {} vs {}", who, a.pgtables_bytes, b.pgtables_bytes));
  if (a.pages.size() != b.pages.size())
    add(fmt::format("{}: {} VMA pages vs {}", who, a.pages.size(), b.pages.size()));
  for (std::size_t i = 0; i < a.pages.size() && i < b.pages.size(); ++i) {
    const PageSnap& x = a.pages[i];
    const PageSnap& y = b.pages[i];
    if (x.va != y.va) {
      add(fmt::format("{}: page #{} at {:#x} vs {:#x}", who, i, x.va, y.va));
      continue;
    }
    if (x.pagemap_raw != y.pagemap_raw)
      add(fmt::format("{}: pagemap({:#x}) {:#018x} vs {:#018x}", who, x.va, x.pagemap_raw,
                      y.pagemap_raw));
    if (compare_walks && !SameWalk(x.walk, y.walk))
      add(fmt::format("{}: walk({:#x}) {} vs {}", who, x.va, Describe(x.walk), Describe(y.walk)));
  }
}

// The differences between two snapshots, one per line ("before vs after"); empty when equal.
inline std::vector<std::string> SnapshotDifferences(const MachineSnapshot& a,
                                                    const MachineSnapshot& b,
                                                    std::size_t max_lines = 60) {
  std::vector<std::string> out;
  auto add = [&](std::string line) {
    if (out.size() < max_lines) out.push_back(std::move(line));
  };
  if (a.free_pages != b.free_pages)
    add(fmt::format("free_pages {} vs {}", a.free_pages, b.free_pages));
  if (a.frames.size() != b.frames.size())
    add(fmt::format("total_pages {} vs {}", a.frames.size(), b.frames.size()));
  for (std::size_t pfn = 0; pfn < a.frames.size() && pfn < b.frames.size(); ++pfn) {
    if (!SamePageInfo(a.frames[pfn], b.frames[pfn]))
      add(fmt::format("page_info({}) {} vs {}", pfn, Describe(a.frames[pfn]),
                      Describe(b.frames[pfn])));
  }
  if (a.procs.size() != b.procs.size())
    add(fmt::format("{} live processes vs {}", a.procs.size(), b.procs.size()));
  for (std::size_t i = 0; i < a.procs.size() && i < b.procs.size(); ++i)
    DiffProcSnaps(a.procs[i], b.procs[i], out, max_lines);
  return out;
}

inline std::string DiffSnapshots(const MachineSnapshot& a, const MachineSnapshot& b,
                                 std::size_t max_lines = 60) {
  std::string s;
  for (const auto& line : SnapshotDifferences(a, b, max_lines)) s += "  " + line + "\n";
  return s;
}

inline bool operator==(const MachineSnapshot& a, const MachineSnapshot& b) {
  return SnapshotDifferences(a, b, 1).empty();
}
inline bool operator!=(const MachineSnapshot& a, const MachineSnapshot& b) { return !(a == b); }

inline bool operator==(const ProcSnap& a, const ProcSnap& b) {
  std::vector<std::string> out;
  DiffProcSnaps(a, b, out, 1);
  return out.empty();
}
inline bool operator!=(const ProcSnap& a, const ProcSnap& b) { return !(a == b); }

inline std::string DiffProcs(const ProcSnap& a, const ProcSnap& b, std::size_t max_lines = 60,
                             bool compare_walks = true) {
  std::vector<std::string> out;
  DiffProcSnaps(a, b, out, max_lines, compare_walks);
  std::string s;
  for (const auto& line : out) s += "  " + line + "\n";
  return s;
}

// gtest printers, so that a failed EXPECT_EQ prints a summary instead of raw bytes.
inline void PrintTo(const MachineSnapshot& s, std::ostream* os) {
  *os << "MachineSnapshot{free_pages=" << s.free_pages << ", frames=" << s.frames.size()
      << ", live processes=" << s.procs.size() << "}";
}
inline void PrintTo(const ProcSnap& s, std::ostream* os) {
  *os << "ProcSnap{pid=" << s.pid << ", VMAs=" << s.smaps.size() << ", pages=" << s.pages.size()
      << "}";
}

// check_invariants() as a gtest assertion that reports what() of the violation.
inline ::testing::AssertionResult InvariantsHold(const cowpte::Machine& m) {
  try {
    m.check_invariants();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "check_invariants() threw: " << e.what();
  }
  return ::testing::AssertionSuccess();
}

// The errno of a Result as a printable name: "success" when it holds a value.
inline std::string ErrName(cowpte::Errno e) {
  if (e == cowpte::Errno{}) return "success";
  return std::string(cowpte::to_string(e));
}
template <class R>
cowpte::Errno ErrOf(const R& r) {
  return r.has_value() ? cowpte::Errno{} : r.error();
}

// Every (address, value) pair of `values` still loads the same in p (who names p in messages).
template <class Values>
void ExpectLoads(cowpte::Process& p, const Values& values, const char* who) {
  for (const auto& [va, v] : values) {
    const auto r = p.load(va);
    EXPECT_TRUE(r.has_value() && *r == v)
        << who << " load " << fmt::format("{:#x}", va) << ": expected " << fmt::format("{:#x}", v)
        << ", got " << (r.has_value() ? fmt::format("{:#x}", *r) : ErrName(r.error()));
  }
}

}  // namespace cowpte_test
