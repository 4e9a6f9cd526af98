// Shared helpers for the COW scenario tests (test_scenarios_anon.cpp, test_scenarios_kernel.cpp).
//
// ScenarioTest owns a small Machine and wraps every mutating facade call in a step helper that
// (1) fails the test with the call site and errno if the call fails and (2) runs
// Machine::check_invariants() right after it. A failed step throws ScenarioAbort, which GoogleTest
// reports as a failure of the test body; the test stops there. State checks in the tests use
// EXPECT_* so that one wrong bit does not hide the next.
#pragma once

#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cowpte::scen {

inline constexpr std::uint64_t kPage = 4096;

// x86-64 PTE bits (arch/x86/include/asm/pgtable_types.h; reference section 7).
inline constexpr std::uint64_t kP = 1ull << 0;
inline constexpr std::uint64_t kRW = 1ull << 1;
inline constexpr std::uint64_t kUser = 1ull << 2;
inline constexpr std::uint64_t kA = 1ull << 5;
inline constexpr std::uint64_t kD = 1ull << 6;
inline constexpr std::uint64_t kSpecial = 1ull << 9;
inline constexpr std::uint64_t kUffdWp = 1ull << 10;
inline constexpr std::uint64_t kSoftDirty = 1ull << 11;
inline constexpr std::uint64_t kNX = 1ull << 63;
inline constexpr std::uint64_t kPfnMask = ((1ull << 52) - 1) & ~0xfffull;  // bits 12-51
// PAGE_COPY (PAGE_COPY_NOEXEC): the vm_page_prot of a private PROT_READ|PROT_WRITE VMA.
inline constexpr std::uint64_t kPageCopy = kP | kUser | kA | kNX;

inline constexpr pfn_t pte_pfn(std::uint64_t e) { return (e & kPfnMask) >> 12; }
inline constexpr std::uint64_t pte_flags(std::uint64_t e) { return e & ~kPfnMask; }

inline constexpr Prot kRWProt = Prot::read | Prot::write;
inline constexpr MapFlags kPrivAnon = MapFlags::private_ | MapFlags::anonymous;
inline constexpr std::uint64_t kFF = ~0ull;  // cow.c's writers store 0xff

// A recognisable per-page value for write-populating page i of a test area.
inline constexpr std::uint64_t pattern(std::uint64_t seed, std::uint64_t i) {
  return 0x5a5a000000000000ull | (seed << 24) | (i + 1);
}

inline std::string pte_str(std::uint64_t e) {
  std::ostringstream os;
  os << "0x" << std::hex << e << std::dec << " [";
  const struct {
    std::uint64_t bit;
    const char* name;
  } names[] = {{kP, "P"},  {kRW, "RW"},           {kUser, "U"},         {kA, "A"},
               {kD, "D"},  {kSpecial, "SPECIAL"}, {kUffdWp, "UFFD_WP"}, {kSoftDirty, "SOFT_DIRTY"},
               {kNX, "NX"}};
  for (const auto& n : names)
    if (e & n.bit) os << ' ' << n.name;
  os << " ] pfn " << pte_pfn(e);
  return os.str();
}

// EXPECT_TRUE(PteBits(e, must_be_set, must_be_clear))
inline ::testing::AssertionResult PteBits(std::uint64_t e, std::uint64_t set, std::uint64_t clear) {
  if ((e & set) == set && (e & clear) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "pte " << pte_str(e) << " lacks " << pte_str(set & ~e & ~kPfnMask) << " / has "
         << pte_str(e & clear & ~kPfnMask);
}

// EXPECT_TRUE(PteFlagsAre(e, exact_flags)): every bit outside the pfn field as given.
inline ::testing::AssertionResult PteFlagsAre(std::uint64_t e, std::uint64_t flags) {
  if (pte_flags(e) == flags) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "pte " << pte_str(e) << ", expected flags " << pte_str(flags);
}

inline std::string page_str(const PageInfo& pi) {
  std::ostringstream os;
  os << "refcount " << pi.refcount << " mapcount " << pi.mapcount << (pi.free ? " free" : "")
     << (pi.anon ? " anon" : "") << (pi.anon_exclusive ? " anon_exclusive" : "")
     << (pi.zero_page ? " zero_page" : "") << (pi.page_table ? " page_table" : "");
  return os.str();
}

// EXPECT_TRUE(AnonPage(info, refcount, mapcount, anon_exclusive)): a live anon page.
inline ::testing::AssertionResult AnonPage(const PageInfo& pi, std::int64_t refcount,
                                           std::int64_t mapcount, bool exclusive) {
  if (!pi.free && pi.anon && !pi.zero_page && !pi.page_table && pi.refcount == refcount &&
      pi.mapcount == mapcount && pi.anon_exclusive == exclusive)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "page is {" << page_str(pi) << "}, expected {refcount " << refcount << " mapcount "
         << mapcount << " anon" << (exclusive ? " anon_exclusive" : "") << "}";
}

// EXPECT_TRUE(HeldPage(info, refcount)): a page no PTE maps any more that references (a pipe,
// a pin) keep off the free lists. Only the counts are checked: what an unmapped page's flags say
// until it is freed is not part of any rule here.
inline ::testing::AssertionResult HeldPage(const PageInfo& pi, std::int64_t refcount) {
  if (!pi.free && pi.refcount == refcount && pi.mapcount == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "page is {" << page_str(pi) << "}, expected {refcount "
                                       << refcount << " mapcount 0, not free}";
}

// Thrown by a failed step; GoogleTest reports it and ends the test body.
struct ScenarioAbort : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The call site of a helper, like std::source_location (which clang 14 with libstdc++ 12 lacks).
class SrcLoc {
 public:
  static constexpr SrcLoc current(const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) noexcept {
    return SrcLoc(file, line);
  }
  constexpr const char* file_name() const noexcept { return file_; }
  constexpr int line() const noexcept { return line_; }

 private:
  constexpr SrcLoc(const char* file, int line) noexcept : file_(file), line_(line) {}
  const char* file_;
  int line_;
};

inline std::string where(const SrcLoc& loc) {
  return std::string(loc.file_name()) + ":" + std::to_string(loc.line());
}

class ScenarioTest : public ::testing::Test {
 protected:
  using loc_t = SrcLoc;

  ScenarioTest() : ScenarioTest(MachineConfig{.memory_bytes = 64ull << 20}) {}
  explicit ScenarioTest(const MachineConfig& cfg) : m(cfg), free0(m.free_pages()) {}

  Machine m;
  const std::uint64_t free0;  // right after construction

  [[noreturn]] void abort_step(const std::string& msg, const loc_t& loc) {
    ADD_FAILURE_AT(loc.file_name(), loc.line()) << msg;
    throw ScenarioAbort(where(loc) + ": " + msg);
  }

  void inv(const loc_t& loc = loc_t::current()) {
    try {
      m.check_invariants();
    } catch (const InvariantViolation& e) {
      abort_step(std::string("check_invariants: InvariantViolation: ") + e.what(), loc);
    }
  }

  // A facade call returning Result<void>: must succeed, then the invariants must hold.
  void ok(const Result<void>& r, const char* what, const loc_t& loc = loc_t::current()) {
    if (!r)
      abort_step(std::string(what) + " failed with " + std::string(to_string(r.error())), loc);
    inv(loc);
  }
  // A facade call that must fail with `e` (and change nothing that breaks an invariant).
  template <class T>
  void fails(const Result<T>& r, Errno e, const char* what, const loc_t& loc = loc_t::current()) {
    if (r.has_value()) abort_step(std::string(what) + " succeeded, expected an error", loc);
    EXPECT_EQ(r.error(), e) << what << " at " << where(loc) << ": got " << to_string(r.error());
    inv(loc);
  }

  Process& spawn(const loc_t& loc = loc_t::current()) {
    Process& p = m.spawn();
    inv(loc);
    return p;
  }

  vaddr_t map_anon(Process& p, std::uint64_t npages, vaddr_t fixed = 0,
                   const loc_t& loc = loc_t::current()) {
    MapFlags f = kPrivAnon;
    if (fixed) f |= MapFlags::fixed;
    auto r = p.mmap(fixed, npages * kPage, kRWProt, f);
    if (!r) abort_step("mmap failed with " + std::string(to_string(r.error())), loc);
    if (fixed && *r != fixed) abort_step("MAP_FIXED mmap returned another address", loc);
    inv(loc);
    return *r;
  }

  std::uint64_t load(Process& p, vaddr_t va, const loc_t& loc = loc_t::current()) {
    auto r = p.load(va);
    if (!r) abort_step("load failed with " + std::string(to_string(r.error())), loc);
    inv(loc);
    return *r;
  }
  void store(Process& p, vaddr_t va, std::uint64_t v, const loc_t& loc = loc_t::current()) {
    ok(p.store(va, v), "store", loc);
  }
  std::uint64_t read_gup(Process& p, vaddr_t va, const loc_t& loc = loc_t::current()) {
    auto r = p.read_gup(va);
    if (!r) abort_step("read_gup failed with " + std::string(to_string(r.error())), loc);
    inv(loc);
    return *r;
  }

  // V01: write-populate npages base pages, page i gets pattern(seed, i) at offset 0.
  void populate(Process& p, vaddr_t a, std::uint64_t npages, std::uint64_t seed,
                const loc_t& loc = loc_t::current()) {
    for (std::uint64_t i = 0; i < npages; ++i) store(p, a + i * kPage, pattern(seed, i), loc);
  }

  Process& fork(Process& p, const loc_t& loc = loc_t::current()) {
    auto r = p.fork();
    if (!r) abort_step("fork failed with " + std::string(to_string(r.error())), loc);
    if (*r == nullptr || *r == &p) abort_step("fork returned no new child", loc);
    inv(loc);
    return **r;
  }

  void exit(Process& p, const loc_t& loc = loc_t::current()) {
    const int pid = p.pid();
    p.exit();
    inv(loc);
    EXPECT_FALSE(p.alive()) << where(loc);
    EXPECT_EQ(m.find(pid), nullptr) << where(loc);
  }

  // GUP (FOLL_GET) references: drop what gup_get took on [va, va+len) until the first page's
  // refcount is back to `target`. Works whether gup_put drops one get or every get per call.
  void gup_put_until(Process& p, vaddr_t va, std::uint64_t len, pfn_t pfn, std::int64_t target,
                     const loc_t& loc = loc_t::current()) {
    for (int i = 0; i < 4096 && m.page_info(pfn).refcount > target; ++i)
      ok(p.gup_put(va, len), "gup_put", loc);
    EXPECT_EQ(m.page_info(pfn).refcount, target) << where(loc);
  }

  // The raw PTE that maps va in p; the walk must reach the PTE level.
  std::uint64_t pte(const Process& p, vaddr_t va, const loc_t& loc = loc_t::current()) {
    PtWalk w = m.walk(p, va);
    EXPECT_EQ(w.levels, 4) << "walk of 0x" << std::hex << va << std::dec << " at " << where(loc);
    return w.entry[3];
  }
  pfn_t pfn_of(const Process& p, vaddr_t va, const loc_t& loc = loc_t::current()) {
    return pte_pfn(pte(p, va, loc));
  }
  pfn_t pte_table(const Process& p, vaddr_t va) { return m.walk(p, va).table[3]; }
  // No translation for va: the walk stops above the PTE level or the PTE is none.
  bool pte_none(const Process& p, vaddr_t va) {
    PtWalk w = m.walk(p, va);
    return w.levels < 4 || w.entry[3] == 0;
  }
  PageInfo page(pfn_t pfn) { return m.page_info(pfn); }

  // Exit every live process (checking the invariants after each exit) and check that every
  // frame is back on the free lists. Call at the end of every test.
  void finish(const loc_t& loc = loc_t::current()) {
    std::vector<Process*> live = m.processes();
    for (Process* p : live) exit(*p, loc);
    EXPECT_TRUE(m.processes().empty()) << where(loc);
    EXPECT_EQ(m.free_pages(), free0) << "frames leaked, at " << where(loc);
    inv(loc);
  }
};

// STEP(p.mprotect(...)): run a Result<void> facade call, require success, check invariants.
#define STEP(expr) ok((expr), #expr)
// FAILS(p.load(a), Errno::fault): require that exact error, check invariants.
#define FAILS(expr, err) fails((expr), (err), #expr)

}  // namespace cowpte::scen
