// Allocation failure injected at every allocation of a fork and of each kind of fault.
//
// Method: build a state deterministically on a fresh machine, count the allocations a successful
// operation makes (N), then for n = 1..N rebuild the same state, make the nth allocation fail and
// run the operation again. It must fail with ENOMEM (Linux: dup_mmap()/copy_page_range() return
// -ENOMEM, a fault returns VM_FAULT_OOM, GUP and MADV_POPULATE_* return -ENOMEM) and leave a
// consistent machine: invariants hold, what was written still reads back, the same operation
// succeeds once the failure is off, and after every process has exited all frames are free again
// (nothing leaked, no pin or reference left behind). n = N + 1 must succeed.
//
// MAP_POPULATE is the exception, as in Linux: vm_mmap_pgoff() ignores what mm_populate() returns,
// so only a failure to create the mapping itself fails mmap().
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "snapshot_util.hpp"

namespace {

using cowpte::Advice;
using cowpte::Errno;
using cowpte::Machine;
using cowpte::MachineConfig;
using cowpte::MapFlags;
using cowpte::PinFlags;
using cowpte::Process;
using cowpte::Prot;
using cowpte::vaddr_t;
using cowpte_test::ErrName;
using cowpte_test::ErrOf;
using cowpte_test::InvariantsHold;

constexpr std::uint64_t kPage = 4096;
constexpr std::int64_t kPinBias = 1024;  // GUP_PIN_COUNTING_BIAS
constexpr Prot kRW = Prot::read | Prot::write;
constexpr MapFlags kFixedPriv = MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed;
constexpr MapFlags kFixedShared = MapFlags::shared | MapFlags::anonymous | MapFlags::fixed;

// Addresses of the states below.
constexpr vaddr_t kA = 0x10000000;      // private RW, 16 pages
constexpr vaddr_t kB = 0x101fc000;      // private RW, 8 pages across a 2 MiB boundary
constexpr vaddr_t kC = 0x3fffc000;      // private RW, 8 pages across a 1 GiB (PUD entry) boundary
constexpr vaddr_t kD = 0x7ffffc000;     // private RW, 8 pages across 0x800000000 (32 GiB)
constexpr vaddr_t kE = 0x7fffffc000;    // private RW, 8 pages across a 512 GiB (PGD entry) boundary
constexpr vaddr_t kShm = 0x20000000;    // shared anonymous RW, 4 pages
constexpr vaddr_t kRo = 0x30000000;     // private R/O, 4 pages
constexpr vaddr_t kDf = 0x50000000;     // private RW, 4 pages, MADV_DONTFORK
constexpr vaddr_t kT = 0x7f0000000000;  // the target of the fault tests: a fresh PGD entry

std::string Hex(std::uint64_t v) { return fmt::format("{:#x}", v); }

// One machine with its processes and what they must read back.
struct World {
  std::unique_ptr<Machine> m;
  std::uint64_t baseline_free = 0;  // free_pages() right after construction
  Process* parent = nullptr;
  Process* child = nullptr;
  std::vector<std::pair<vaddr_t, std::uint64_t>> parent_values;
  std::vector<std::pair<vaddr_t, std::uint64_t>> child_values;
  std::vector<std::pair<vaddr_t, std::uint64_t>> pins;  // (addr, length) pinned in the parent
  std::vector<std::pair<vaddr_t, std::uint64_t>> gups;  // (addr, length) gup_get in the parent
  // Recorded by the harness just before the operation.
  std::uint64_t free_before_op = 0;
  cowpte_test::ProcSnap parent_before_op;
};

World MakeWorld(std::uint64_t swap_bytes = 0, cowpte::ThpMode thp = cowpte::ThpMode::never) {
  World w;
  w.m = std::make_unique<Machine>(
      MachineConfig{.memory_bytes = 32ull << 20, .swap_bytes = swap_bytes, .thp = thp});
  w.baseline_free = w.m->free_pages();
  w.parent = &w.m->spawn();
  return w;
}

#define AF_ASSERT_OK(expr)                                             \
  do {                                                                 \
    const auto af_r_ = (expr);                                         \
    ASSERT_EQ(ErrName(ErrOf(af_r_)), "success") << "setup: " << #expr; \
  } while (0)

void Map(World& w, vaddr_t addr, std::uint64_t pages, Prot prot, MapFlags flags) {
  const auto r = w.parent->mmap(addr, pages * kPage, prot, flags);
  ASSERT_TRUE(r.has_value()) << "mmap " << Hex(addr) << ": " << ErrName(ErrOf(r));
  ASSERT_EQ(*r, addr);
}

void Write(World& w, Process* p, vaddr_t va, std::uint64_t value) {
  AF_ASSERT_OK(p->store(va, value));
  auto& values = p == w.parent ? w.parent_values : w.child_values;
  for (auto& [a, v] : values) {
    if (a == va) {
      v = value;
      return;
    }
  }
  values.emplace_back(va, value);
}

// A store as the operation under test: on success the value is what va must read from now on.
Errno TryWrite(World& w, Process* p, vaddr_t va, std::uint64_t value) {
  const Errno e = ErrOf(p->store(va, value));
  if (e != Errno{}) return e;
  auto& values = p == w.parent ? w.parent_values : w.child_values;
  for (auto& [a, v] : values) {
    if (a == va) {
      v = value;
      return e;
    }
  }
  values.emplace_back(va, value);
  return e;
}

void Read(World& w, Process* p, vaddr_t va) {
  const auto r = p->load(va);
  ASSERT_TRUE(r.has_value()) << "load " << Hex(va) << ": " << ErrName(ErrOf(r));
  ASSERT_EQ(*r, 0u);
  auto& values = p == w.parent ? w.parent_values : w.child_values;
  values.emplace_back(va, 0);
}

// Every recorded value still loads the same in its process.
void ExpectValues(World& w) {
  cowpte_test::ExpectLoads(*w.parent, w.parent_values, "parent");
  if (w.child != nullptr) cowpte_test::ExpectLoads(*w.child, w.child_values, "child");
}

// Drops the parent's pins and references, exits every process, and checks that every frame the
// processes used is free again.
void TearDownWorld(World& w) {
  w.m->fail_nth_allocation(0);
  if (w.parent->alive()) {
    for (const auto& [va, len] : w.pins)
      EXPECT_EQ(ErrName(ErrOf(w.parent->unpin(va, len))), "success") << "unpin " << Hex(va);
    for (const auto& [va, len] : w.gups)
      EXPECT_EQ(ErrName(ErrOf(w.parent->gup_put(va, len))), "success") << "gup_put " << Hex(va);
  }
  for (Process* p : w.m->processes()) p->exit();
  EXPECT_TRUE(w.m->processes().empty());
  EXPECT_TRUE(InvariantsHold(*w.m));
  EXPECT_EQ(w.m->free_pages(), w.baseline_free) << "frames leaked after every process exited";
}

struct Scenario {
  std::string name;
  std::function<void(World&)> setup;  // builds the state (may fork)
  std::function<Errno(World&)> op;    // the operation under test; Errno{} on success
  // Checks after the operation failed with ENOMEM (injection already switched off).
  std::function<void(World&)> after_failure = [](World&) {};
  // Checks after the operation succeeded.
  std::function<void(World&)> after_success = [](World&) {};
  std::uint64_t swap_bytes = 0;  // a swap device in the machine
  cowpte::ThpMode thp = cowpte::ThpMode::never;
};

// A fresh world with the scenario's state, and what it showed just before the operation.
World Prepare(const Scenario& s) {
  World w = MakeWorld(s.swap_bytes, s.thp);
  s.setup(w);
  if (::testing::Test::HasFatalFailure()) return w;
  w.free_before_op = w.m->free_pages();
  w.parent_before_op = cowpte_test::TakeProcSnap(*w.m, *w.parent);
  return w;
}

// Counts the allocations of a successful op() on a fresh world.
std::uint64_t CountAllocations(const Scenario& s) {
  World w = Prepare(s);
  if (::testing::Test::HasFatalFailure()) return 0;
  EXPECT_TRUE(InvariantsHold(*w.m));
  const std::uint64_t before = w.m->allocations();
  const Errno e = s.op(w);
  const std::uint64_t n = w.m->allocations() - before;
  EXPECT_EQ(ErrName(e), "success") << s.name << " without injected failure";
  if (e != Errno{}) return 0;
  EXPECT_TRUE(InvariantsHold(*w.m));
  s.after_success(w);
  ExpectValues(w);
  TearDownWorld(w);
  return n;
}

void RunSweep(const Scenario& s) {
  const std::uint64_t total = CountAllocations(s);
  if (::testing::Test::HasFailure()) return;
  ASSERT_GT(total, 0u) << s.name << " made no allocation";
  std::printf("[ info     ] %s: %llu allocations\n", s.name.c_str(),
              static_cast<unsigned long long>(total));

  for (std::uint64_t n = 1; n <= total + 1; ++n) {
    SCOPED_TRACE(fmt::format("{}: allocation {} of {} fails", s.name, n, total));
    World w = Prepare(s);
    if (::testing::Test::HasFatalFailure()) return;
    const std::size_t procs_before = w.m->processes().size();

    w.m->fail_nth_allocation(n);
    const Errno e = s.op(w);
    w.m->fail_nth_allocation(0);

    EXPECT_TRUE(InvariantsHold(*w.m));
    if (n <= total) {
      EXPECT_EQ(ErrName(e), "ENOMEM");
      if (e == Errno{}) {  // keep the teardown meaningful
        TearDownWorld(w);
        continue;
      }
      EXPECT_EQ(w.m->processes().size(), procs_before) << "a process appeared";
      ExpectValues(w);
      s.after_failure(w);
      EXPECT_TRUE(InvariantsHold(*w.m));
      // Once the failure is gone, the same operation succeeds.
      const Errno again = s.op(w);
      EXPECT_EQ(ErrName(again), "success") << "retry after the failure";
      if (again == Errno{}) s.after_success(w);
    } else {
      EXPECT_EQ(ErrName(e), "success") << "no allocation failed";
      if (e == Errno{}) s.after_success(w);
    }
    EXPECT_TRUE(InvariantsHold(*w.m));
    ExpectValues(w);
    TearDownWorld(w);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// ---- fork ----

// Several VMAs: written pages, zero-page reads, untouched pages, data across 2 MiB, 1 GiB and
// 512 GiB boundaries, a shared anonymous mapping, a read-only one, a DONTFORK one, a pinned page
// (fork must copy it for the child) and a FOLL_GET reference (fork shares it).
void BuildForkState(World& w) {
  Process* p = w.parent;
  Map(w, kA, 16, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kA + i * kPage, 0xA000 + i);
  for (int i = 8; i < 12; ++i) Read(w, p, kA + i * kPage);
  Map(w, kB, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kB + i * kPage, 0xB000 + i);
  Map(w, kC, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; ++i) Write(w, p, kC + i * kPage, 0xC000 + i);
  Map(w, kD, 8, kRW, kFixedPriv);
  for (int i = 2; i < 6; ++i) Write(w, p, kD + i * kPage, 0xD000 + i);
  Map(w, kE, 8, kRW, kFixedPriv);
  for (int i = 0; i < 8; i += 2) Write(w, p, kE + i * kPage, 0xE000 + i);
  Read(w, p, kE + kPage);
  Map(w, kShm, 4, kRW, kFixedShared);
  Write(w, p, kShm, 0x5000);
  Write(w, p, kShm + kPage, 0x5001);
  Read(w, p, kShm + 2 * kPage);
  Map(w, kRo, 4, Prot::read, kFixedPriv);
  for (int i = 0; i < 4; ++i) Read(w, p, kRo + i * kPage);
  Map(w, kDf, 4, kRW, kFixedPriv);
  Write(w, p, kDf, 0xDF00);
  AF_ASSERT_OK(p->madvise(kDf, 4 * kPage, Advice::dontfork));
  AF_ASSERT_OK(p->pin(kA + 3 * kPage, kPage, PinFlags::write | PinFlags::longterm));
  w.pins.emplace_back(kA + 3 * kPage, kPage);
  AF_ASSERT_OK(p->gup_get(kA + 4 * kPage, kPage));
  w.gups.emplace_back(kA + 4 * kPage, kPage);
}

TEST(AllocFailure, Fork) {
  Scenario s;
  s.name = "fork";
  s.setup = BuildForkState;
  s.op = [](World& w) {
    auto r = w.parent->fork();
    if (!r.has_value()) return r.error();
    w.child = *r;
    // The child sees what the parent wrote, except in the DONTFORK mapping.
    w.child_values.clear();
    for (const auto& [va, v] : w.parent_values)
      if (va < kDf || va >= kDf + 4 * kPage) w.child_values.emplace_back(va, v);
    return Errno{};
  };
  s.after_failure = [](World& w) {
    // dup_mmap() failed and the half-built child was torn down (mmput -> exit_mmap): the parent
    // shows what it showed before (its PTEs may have lost RW, which no window but walk()
    // shows), and every frame the child took is free again.
    const cowpte_test::ProcSnap now = cowpte_test::TakeProcSnap(*w.m, *w.parent);
    const std::string diff =
        cowpte_test::DiffProcs(w.parent_before_op, now, 60, /*compare_walks=*/false);
    EXPECT_TRUE(diff.empty()) << "parent view changed (before vs after):\n" << diff;
    EXPECT_EQ(w.m->free_pages(), w.free_before_op) << "frames of the failed child leaked";
    // The pin and the FOLL_GET reference still see the parent's data.
    const auto pinned = w.parent->read_gup(kA + 3 * kPage);
    EXPECT_TRUE(pinned.has_value() && *pinned == 0xA003u);
    const auto got = w.parent->read_gup(kA + 4 * kPage);
    EXPECT_TRUE(got.has_value() && *got == 0xA004u);
    // The parent can still write everywhere (pages that fork began to share are reused or
    // copied), and reads back what it wrote.
    for (auto& [va, v] : w.parent_values) {
      if (va >= kRo && va < kRo + 4 * kPage) continue;
      v = v + 0x100000;
      EXPECT_EQ(ErrName(ErrOf(w.parent->store(va, v))), "success") << "store " << Hex(va);
    }
    EXPECT_TRUE(InvariantsHold(*w.m));
    ExpectValues(w);
  };
  s.after_success = [](World& w) {
    ASSERT_NE(w.child, nullptr);
    EXPECT_EQ(w.m->find(w.child->pid()), w.child);
    // The pinned page was copied for the child: different frames, the pin stays in the parent.
    const auto pp = w.parent->pagemap(kA + 3 * kPage);
    const auto cp = w.child->pagemap(kA + 3 * kPage);
    EXPECT_TRUE(pp.present && cp.present);
    EXPECT_NE(pp.pfn, cp.pfn);
    // The FOLL_GET page is shared, not copied.
    EXPECT_EQ(w.parent->pagemap(kA + 4 * kPage).pfn, w.child->pagemap(kA + 4 * kPage).pfn);
    // The DONTFORK mapping is absent in the child.
    EXPECT_EQ(ErrName(ErrOf(w.child->load(kDf))), "EFAULT");
  };
  RunSweep(s);
}

// ---- faults ----

// A parent with some memory already in use, and an untouched private RW mapping at kT in a PGD
// entry of its own: the first touch there needs a PUD, a PMD and a PTE table.
void BuildFaultState(World& w) {
  Map(w, kA, 16, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, w.parent, kA + i * kPage, 0xA000 + i);
  Read(w, w.parent, kA + 8 * kPage);
  Map(w, kT, 8, kRW, kFixedPriv);
}

// The pfn the snapshot's pagemap word shows for va (bits 0-54).
std::uint64_t PfnOf(const cowpte_test::ProcSnap& snap, vaddr_t va) {
  for (const auto& pg : snap.pages)
    if (pg.va == va) return pg.pagemap_raw & ((1ull << 55) - 1);
  ADD_FAILURE() << Hex(va) << " is not in the snapshot";
  return ~0ull;
}

void ExpectAbsent(World& w, Process* p, vaddr_t va) {
  const auto pm = p->pagemap(va);
  EXPECT_FALSE(pm.present) << Hex(va) << " is mapped after the failed fault";
  EXPECT_EQ(pm.pfn, 0u);
  (void)w;
}

TEST(AllocFailure, WriteFaultOnAbsentPage) {
  // do_anonymous_page(): anon_vma_prepare, PUD/PMD/PTE tables, the page.
  Scenario s;
  s.name = "write fault on an absent page";
  s.setup = BuildFaultState;
  s.op = [](World& w) { return TryWrite(w, w.parent, kT + 3 * kPage, 0x7777); };
  s.after_failure = [](World& w) {
    ExpectAbsent(w, w.parent, kT + 3 * kPage);
    EXPECT_TRUE(w.parent->rss() == w.parent_before_op.rss)
        << cowpte_test::Describe(w.parent->rss());
  };
  s.after_success = [](World& w) {
    const auto v = w.parent->load(kT + 3 * kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x7777u);
    const auto pm = w.parent->pagemap(kT + 3 * kPage);
    EXPECT_TRUE(pm.present && pm.exclusive);
    EXPECT_NE(pm.pfn, w.m->zero_pfn());
    EXPECT_EQ(w.parent->rss().anon, w.parent_before_op.rss.anon + 1);
  };
  RunSweep(s);
}

TEST(AllocFailure, ReadFaultMapsZeroPage) {
  // do_anonymous_page() read: only the tables are allocated; the zero page is mapped.
  Scenario s;
  s.name = "read fault";
  s.setup = BuildFaultState;
  s.op = [](World& w) {
    const auto r = w.parent->load(kT + 5 * kPage);
    if (!r.has_value()) return r.error();
    EXPECT_EQ(*r, 0u);
    return Errno{};
  };
  s.after_failure = [](World& w) { ExpectAbsent(w, w.parent, kT + 5 * kPage); };
  s.after_success = [](World& w) {
    const auto pm = w.parent->pagemap(kT + 5 * kPage);
    EXPECT_TRUE(pm.present);
    EXPECT_EQ(pm.pfn, w.m->zero_pfn());
  };
  RunSweep(s);
}

TEST(AllocFailure, WriteFaultOnZeroPage) {
  // do_wp_page() on the zero page -> wp_page_copy(): anon_vma_prepare and a zeroed page.
  Scenario s;
  s.name = "write fault on the zero page";
  s.setup = [](World& w) {
    BuildFaultState(w);
    Read(w, w.parent, kT + 2 * kPage);
  };
  s.op = [](World& w) { return TryWrite(w, w.parent, kT + 2 * kPage, 0x2222); };
  s.after_failure = [](World& w) {
    const auto pm = w.parent->pagemap(kT + 2 * kPage);
    EXPECT_TRUE(pm.present);
    EXPECT_EQ(pm.pfn, w.m->zero_pfn()) << "the zero-page PTE was replaced";
  };
  s.after_success = [](World& w) {
    const auto v = w.parent->load(kT + 2 * kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x2222u);
    const auto pm = w.parent->pagemap(kT + 2 * kPage);
    EXPECT_TRUE(pm.present);
    EXPECT_NE(pm.pfn, w.m->zero_pfn());
  };
  RunSweep(s);
}

// A parent that wrote kA pages 0-3 and forked.
// Fork the parent: the child holds everything the parent wrote.
void ForkChild(World& w) {
  auto c = w.parent->fork();
  ASSERT_TRUE(c.has_value()) << ErrName(ErrOf(c));
  w.child = *c;
  w.child_values = w.parent_values;
}

void BuildForkedState(World& w) {
  BuildFaultState(w);
  ForkChild(w);
}

TEST(AllocFailure, CowWriteFaultInParent) {
  // do_wp_page() on a page shared with the child -> wp_page_copy().
  Scenario s;
  s.name = "COW write fault in the parent";
  s.setup = BuildForkedState;
  s.op = [](World& w) { return TryWrite(w, w.parent, kA + kPage, 0x1111); };
  s.after_failure = [](World& w) {
    // Still the shared page in both.
    EXPECT_EQ(w.parent->pagemap(kA + kPage).pfn, PfnOf(w.parent_before_op, kA + kPage));
    EXPECT_EQ(w.parent->pagemap(kA + kPage).pfn, w.child->pagemap(kA + kPage).pfn);
  };
  s.after_success = [](World& w) {
    const auto v = w.parent->load(kA + kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x1111u);
    const auto cv = w.child->load(kA + kPage);
    EXPECT_TRUE(cv.has_value() && *cv == 0xA001u) << "the parent's write leaked into the child";
    EXPECT_NE(w.parent->pagemap(kA + kPage).pfn, w.child->pagemap(kA + kPage).pfn);
  };
  RunSweep(s);
}

TEST(AllocFailure, CowWriteFaultInChild) {
  Scenario s;
  s.name = "COW write fault in the child";
  s.setup = BuildForkedState;
  s.op = [](World& w) { return TryWrite(w, w.child, kA + 2 * kPage, 0x2222); };
  s.after_failure = [](World& w) {
    EXPECT_EQ(w.parent->pagemap(kA + 2 * kPage).pfn, w.child->pagemap(kA + 2 * kPage).pfn);
  };
  s.after_success = [](World& w) {
    const auto v = w.child->load(kA + 2 * kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x2222u);
    const auto pv = w.parent->load(kA + 2 * kPage);
    EXPECT_TRUE(pv.has_value() && *pv == 0xA002u) << "the child's write leaked into the parent";
  };
  RunSweep(s);
}

TEST(AllocFailure, WriteFaultInChildOnUncopiedRange) {
  // The child touches a page the parent never touched: its own tables and page.
  Scenario s;
  s.name = "write fault in the child on an absent page";
  s.setup = BuildForkedState;
  s.op = [](World& w) { return TryWrite(w, w.child, kT + kPage, 0x3333); };
  s.after_failure = [](World& w) { ExpectAbsent(w, w.child, kT + kPage); };
  s.after_success = [](World& w) {
    const auto v = w.child->load(kT + kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x3333u);
    EXPECT_FALSE(w.parent->pagemap(kT + kPage).present);
  };
  RunSweep(s);
}

// A parent with a shared anonymous (shmem) mapping at kShm, nothing touched there yet.
void BuildShmemState(World& w) {
  BuildFaultState(w);
  Map(w, kShm, 4, kRW, kFixedShared);
}

TEST(AllocFailure, ShmemWriteFault) {
  // shmem_fault(): a page for the shmem file, and the PTE table.
  Scenario s;
  s.name = "shmem write fault";
  s.setup = BuildShmemState;
  s.op = [](World& w) { return TryWrite(w, w.parent, kShm + kPage, 0x5151); };
  s.after_failure = [](World& w) { ExpectAbsent(w, w.parent, kShm + kPage); };
  s.after_success = [](World& w) {
    const auto v = w.parent->load(kShm + kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x5151u);
    const auto pm = w.parent->pagemap(kShm + kPage);
    EXPECT_TRUE(pm.present && pm.file_or_shared_anon);
    EXPECT_EQ(w.parent->rss().shmem, 1);
  };
  RunSweep(s);
}

TEST(AllocFailure, ShmemReadFault) {
  // A shmem read fault allocates a page too (there is no zero page for shmem).
  Scenario s;
  s.name = "shmem read fault";
  s.setup = BuildShmemState;
  s.op = [](World& w) {
    const auto r = w.parent->load(kShm + 2 * kPage);
    if (!r.has_value()) return r.error();
    EXPECT_EQ(*r, 0u);
    return Errno{};
  };
  s.after_failure = [](World& w) { ExpectAbsent(w, w.parent, kShm + 2 * kPage); };
  s.after_success = [](World& w) {
    const auto pm = w.parent->pagemap(kShm + 2 * kPage);
    EXPECT_TRUE(pm.present && pm.file_or_shared_anon);
    EXPECT_NE(pm.pfn, w.m->zero_pfn());
  };
  RunSweep(s);
}

TEST(AllocFailure, ShmemFaultInChildMapsTheSamePage) {
  // The child of a shmem writer faults the existing shmem page in: only its tables are new.
  Scenario s;
  s.name = "shmem fault in the child";
  s.setup = [](World& w) {
    BuildShmemState(w);
    Write(w, w.parent, kShm, 0x5000);
    auto c = w.parent->fork();
    ASSERT_TRUE(c.has_value()) << ErrName(ErrOf(c));
    w.child = *c;
    w.child_values = w.parent_values;
  };
  s.op = [](World& w) { return TryWrite(w, w.child, kShm, 0x5005); };
  s.after_failure = [](World& w) {
    const auto pv = w.parent->load(kShm);
    EXPECT_TRUE(pv.has_value() && *pv == 0x5000u);
  };
  s.after_success = [](World& w) {
    // Shared memory: the parent sees the child's write, through the same frame.
    for (auto* values : {&w.parent_values, &w.child_values})
      for (auto& [va, v] : *values)
        if (va == kShm) v = 0x5005;
    EXPECT_EQ(w.parent->pagemap(kShm).pfn, w.child->pagemap(kShm).pfn);
    const auto pv = w.parent->load(kShm);
    EXPECT_TRUE(pv.has_value() && *pv == 0x5005u);
  };
  RunSweep(s);
}

// ---- GUP ----

void ExpectNoPinOn(World& w, Process* p, vaddr_t va, std::uint64_t pages) {
  for (std::uint64_t i = 0; i < pages; ++i) {
    const auto pm = p->pagemap(va + i * kPage);
    if (!pm.present) continue;
    EXPECT_LT(w.m->page_info(pm.pfn).refcount, kPinBias)
        << "page at " << Hex(va + i * kPage) << " still pinned after the failed pin";
  }
}

TEST(AllocFailure, PinFaultsPagesIn) {
  // pin_user_pages(FOLL_PIN | FOLL_WRITE | FOLL_LONGTERM) over absent pages: faultin_page() for
  // each; on failure no pin is left behind.
  Scenario s;
  s.name = "R/W pin of absent pages";
  s.setup = BuildFaultState;
  s.op = [](World& w) {
    const Errno e = ErrOf(w.parent->pin(kT, 4 * kPage, PinFlags::write | PinFlags::longterm));
    if (e == Errno{}) w.pins.emplace_back(kT, 4 * kPage);
    return e;
  };
  s.after_failure = [](World& w) {
    ExpectNoPinOn(w, w.parent, kT, 4);
    EXPECT_EQ(ErrName(ErrOf(w.parent->unpin(kT, 4 * kPage))), "EINVAL")
        << "the failed pin left a pin";
  };
  s.after_success = [](World& w) {
    for (int i = 0; i < 4; ++i) {
      const auto pm = w.parent->pagemap(kT + i * kPage);
      ASSERT_TRUE(pm.present);
      EXPECT_NE(pm.pfn, w.m->zero_pfn());
      EXPECT_GE(w.m->page_info(pm.pfn).refcount, kPinBias);
    }
  };
  RunSweep(s);
}

TEST(AllocFailure, ReadOnlyPinUnsharesAfterFork) {
  // A R/O long-term pin of a COW-shared page: gup_must_unshare() -> FAULT_FLAG_UNSHARE ->
  // wp_page_copy() in unshare mode.
  Scenario s;
  s.name = "R/O pin of a COW-shared page";
  s.setup = BuildForkedState;
  s.op = [](World& w) {
    const Errno e = ErrOf(w.parent->pin(kA, kPage, PinFlags::longterm));
    if (e == Errno{}) w.pins.emplace_back(kA, kPage);
    return e;
  };
  s.after_failure = [](World& w) {
    ExpectNoPinOn(w, w.parent, kA, 1);
    EXPECT_EQ(w.parent->pagemap(kA).pfn, w.child->pagemap(kA).pfn);
  };
  s.after_success = [](World& w) {
    const auto pm = w.parent->pagemap(kA);
    EXPECT_NE(pm.pfn, w.child->pagemap(kA).pfn) << "the R/O pin did not unshare";
    EXPECT_TRUE(pm.exclusive);
    EXPECT_GE(w.m->page_info(pm.pfn).refcount, kPinBias);
    const auto g = w.parent->read_gup(kA);
    EXPECT_TRUE(g.has_value() && *g == 0xA000u);
  };
  RunSweep(s);
}

// ---- populate ----

TEST(AllocFailure, MadvisePopulateWrite) {
  Scenario s;
  s.name = "MADV_POPULATE_WRITE";
  s.setup = BuildFaultState;
  s.op = [](World& w) { return ErrOf(w.parent->madvise(kT, 8 * kPage, Advice::populate_write)); };
  s.after_success = [](World& w) {
    for (int i = 0; i < 8; ++i) {
      const auto pm = w.parent->pagemap(kT + i * kPage);
      EXPECT_TRUE(pm.present) << i;
      EXPECT_NE(pm.pfn, w.m->zero_pfn()) << i;
    }
  };
  RunSweep(s);
}

TEST(AllocFailure, MadvisePopulateRead) {
  Scenario s;
  s.name = "MADV_POPULATE_READ";
  s.setup = BuildFaultState;
  s.op = [](World& w) { return ErrOf(w.parent->madvise(kT, 8 * kPage, Advice::populate_read)); };
  s.after_success = [](World& w) {
    for (int i = 0; i < 8; ++i) {
      const auto pm = w.parent->pagemap(kT + i * kPage);
      EXPECT_TRUE(pm.present) << i;
      EXPECT_EQ(pm.pfn, w.m->zero_pfn()) << i;
    }
  };
  RunSweep(s);
}

TEST(AllocFailure, MadvisePopulateWriteAfterFork) {
  // Populating over pages shared with the child: a COW copy for each written page.
  Scenario s;
  s.name = "MADV_POPULATE_WRITE over COW-shared pages";
  s.setup = BuildForkedState;
  s.op = [](World& w) { return ErrOf(w.parent->madvise(kA, 4 * kPage, Advice::populate_write)); };
  s.after_success = [](World& w) {
    for (int i = 0; i < 4; ++i)
      EXPECT_NE(w.parent->pagemap(kA + i * kPage).pfn, w.child->pagemap(kA + i * kPage).pfn) << i;
  };
  RunSweep(s);
}

// MAP_POPULATE: do_mmap() fails only if the mapping cannot be made; the populate that follows in
// vm_mmap_pgoff() -> mm_populate() ignores errors (__mm_populate(..., ignore_errors = 1)).
void RunMapPopulateSweep(const std::string& name, MapFlags flags) {
  constexpr std::uint64_t kPages = 8;
  std::uint64_t total = 0;
  {
    World w = MakeWorld();
    BuildFaultState(w);
    if (::testing::Test::HasFatalFailure()) return;
    const std::uint64_t before = w.m->allocations();
    const auto r = w.parent->mmap(kShm, kPages * kPage, kRW, flags | MapFlags::populate);
    total = w.m->allocations() - before;
    ASSERT_TRUE(r.has_value()) << ErrName(ErrOf(r));
    for (std::uint64_t i = 0; i < kPages; ++i)
      EXPECT_TRUE(w.parent->pagemap(kShm + i * kPage).present) << "not populated: page " << i;
    EXPECT_TRUE(InvariantsHold(*w.m));
    TearDownWorld(w);
  }
  ASSERT_GT(total, 1u);
  std::printf("[ info     ] %s: %llu allocations\n", name.c_str(),
              static_cast<unsigned long long>(total));

  int failed = 0, succeeded = 0;
  for (std::uint64_t n = 1; n <= total + 1; ++n) {
    SCOPED_TRACE(fmt::format("{}: allocation {} of {} fails", name, n, total));
    World w = MakeWorld();
    BuildFaultState(w);
    if (::testing::Test::HasFatalFailure()) return;
    const cowpte_test::ProcSnap before = cowpte_test::TakeProcSnap(*w.m, *w.parent);
    const std::uint64_t free_before = w.m->free_pages();
    w.m->fail_nth_allocation(n);
    const auto r = w.parent->mmap(kShm, kPages * kPage, kRW, flags | MapFlags::populate);
    w.m->fail_nth_allocation(0);
    EXPECT_TRUE(InvariantsHold(*w.m));
    if (!r.has_value()) {
      ++failed;
      EXPECT_EQ(ErrName(r.error()), "ENOMEM");
      EXPECT_LE(n, total);
      // No mapping was made, nothing else changed.
      const cowpte_test::ProcSnap now = cowpte_test::TakeProcSnap(*w.m, *w.parent);
      EXPECT_TRUE(now == before) << cowpte_test::DiffProcs(before, now);
      EXPECT_EQ(w.m->free_pages(), free_before);
      EXPECT_EQ(ErrName(ErrOf(w.parent->load(kShm))), "EFAULT");
    } else {
      ++succeeded;
      EXPECT_EQ(*r, kShm);
      // The mapping exists whatever the populate managed; it reads as zeros and takes writes.
      bool found = false;
      for (const auto& v : w.parent->smaps())
        found |= v.start == kShm && v.end == kShm + kPages * kPage;
      EXPECT_TRUE(found) << "no VMA [kShm, +" << kPages << " pages) after a successful mmap";
      for (std::uint64_t i = 0; i < kPages; ++i) {
        const auto v = w.parent->load(kShm + i * kPage);
        EXPECT_TRUE(v.has_value() && *v == 0u) << "page " << i;
        EXPECT_EQ(ErrName(ErrOf(w.parent->store(kShm + i * kPage + 8, i))), "success");
      }
      if (n > total) {
        for (std::uint64_t i = 0; i < kPages; ++i)
          EXPECT_TRUE(w.parent->pagemap(kShm + i * kPage).present) << "page " << i;
      }
    }
    EXPECT_TRUE(InvariantsHold(*w.m));
    ExpectValues(w);
    TearDownWorld(w);
  }
  // The VMA allocation fails mmap; a failure while populating does not.
  EXPECT_GE(failed, 1) << "no injected failure made mmap fail";
  EXPECT_GE(succeeded, 2) << "a failure while populating failed mmap(MAP_POPULATE); Linux "
                             "ignores populate errors";
}

TEST(AllocFailure, MapPopulatePrivate) { RunMapPopulateSweep("MAP_POPULATE private", kFixedPriv); }

TEST(AllocFailure, MapPopulateShared) { RunMapPopulateSweep("MAP_POPULATE shared", kFixedShared); }

// ---- swap: fork of swapped-out memory, swap-in faults, swapoff, migration ----

constexpr std::uint64_t kSwapBytes = 16ull << 20;

// The fork state, with kA (but its pinned page, which stays) and kB paged out: swap entries,
// and a page GUP holds that stays in the swap cache.
void BuildSwappedForkState(World& w) {
  BuildForkState(w);
  AF_ASSERT_OK(w.parent->madvise(kA, 16 * kPage, Advice::pageout));
  AF_ASSERT_OK(w.parent->madvise(kB, 8 * kPage, Advice::pageout));
  ASSERT_TRUE(w.parent->pagemap(kA).swapped);
  ASSERT_TRUE(w.parent->pagemap(kB + 7 * kPage).swapped);
}

TEST(AllocFailure, ForkOfSwappedOutMemory) {
  Scenario s;
  s.name = "fork of swapped-out memory";
  s.swap_bytes = kSwapBytes;
  s.setup = BuildSwappedForkState;
  s.op = [](World& w) {
    auto r = w.parent->fork();
    if (!r.has_value()) return r.error();
    w.child = *r;
    w.child_values.clear();
    for (const auto& [va, v] : w.parent_values)
      if (va < kDf || va >= kDf + 4 * kPage) w.child_values.emplace_back(va, v);
    return Errno{};
  };
  // After a failure the harness reads every value back (swapping pages in), retries, and the
  // teardown finds every frame and slot free, or reports the leak.
  RunSweep(s);
}

// A fault on a swap entry reads the page back: the page and the tables it needs.
void BuildSwappedState(World& w) {
  Map(w, kT, 4, kRW, kFixedPriv);
  for (int i = 0; i < 4; ++i) Write(w, w.parent, kT + i * kPage, 0x7000 + i);
  AF_ASSERT_OK(w.parent->madvise(kT, 4 * kPage, Advice::pageout));
}

TEST(AllocFailure, SwapInReadFault) {
  Scenario s;
  s.name = "swap-in read fault";
  s.swap_bytes = kSwapBytes;
  s.setup = BuildSwappedState;
  s.op = [](World& w) { return ErrOf(w.parent->load(kT + kPage)); };
  RunSweep(s);
}

// The swapped state, forked: both processes hold the swap entries.
void BuildSwappedForkedState(World& w) {
  BuildSwappedState(w);
  ForkChild(w);
}

// After fork, the child's write to a swapped page: the swap-in, then the COW copy.
TEST(AllocFailure, SwapInWriteFaultInChild) {
  Scenario s;
  s.name = "swap-in write fault in the child";
  s.swap_bytes = kSwapBytes;
  s.setup = BuildSwappedForkedState;
  s.op = [](World& w) { return TryWrite(w, w.child, kT + 2 * kPage, 0x2222); };
  s.after_success = [](World& w) {
    const auto v = w.parent->load(kT + 2 * kPage);
    EXPECT_TRUE(v.has_value() && *v == 0x7002u) << "the child's write leaked into the parent";
  };
  RunSweep(s);
}

// swapoff reads every page back into both processes; ENOMEM leaves the rest on the device.
TEST(AllocFailure, Swapoff) {
  Scenario s;
  s.name = "swapoff";
  s.swap_bytes = kSwapBytes;
  s.setup = BuildSwappedForkedState;
  s.op = [](World& w) { return ErrOf(w.m->swapoff()); };
  s.after_success = [](World& w) {
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(w.child->pagemap(kT + i * kPage).present) << i;
  };
  RunSweep(s);
}

// migrate_page needs its target frame.
TEST(AllocFailure, MigratePage) {
  Scenario s;
  s.name = "migrate_page";
  s.setup = [](World& w) {
    Map(w, kT, 2, kRW, kFixedPriv);
    Write(w, w.parent, kT, 0x8000);
  };
  s.op = [](World& w) { return ErrOf(w.m->migrate_page(w.parent->pagemap(kT).pfn)); };
  RunSweep(s);
}

// ---- transparent huge pages ----

// Fork of THP-backed memory (THP "always"): each huge PMD needs the child's deposited table
// (copy_huge_pmd), beside the 4 KiB VMA's tables. Every failure is ENOMEM with the parent's
// THPs intact; a success shares them.
TEST(AllocFailure, ForkWithThps) {
  Scenario s;
  s.name = "fork with THPs";
  s.thp = cowpte::ThpMode::always;
  s.setup = [](World& w) {
    Map(w, kA, 16, kRW, kFixedPriv);
    for (int i = 0; i < 4; ++i) Write(w, w.parent, kA + i * kPage, 0xA000 + i);
    Map(w, kT, 1024, kRW, kFixedPriv);  // two 2 MiB spans
    Write(w, w.parent, kT + 5 * kPage, 0x7001);
    Write(w, w.parent, kT + 600 * kPage, 0x7002);
  };
  s.op = [](World& w) {
    auto r = w.parent->fork();
    if (!r.has_value()) return r.error();
    w.child = *r;
    w.child_values = w.parent_values;
    return Errno{};
  };
  s.after_failure = [](World& w) {
    EXPECT_EQ(w.m->free_pages(), w.free_before_op) << "frames of the failed child leaked";
    EXPECT_EQ(w.m->walk(*w.parent, kT).levels, 3) << "the parent's THP is no longer PMD-mapped";
  };
  s.after_success = [](World& w) {
    EXPECT_EQ(w.m->walk(*w.child, kT + 600 * kPage).levels, 3);
    EXPECT_EQ(w.parent->pagemap(kT).pfn, w.child->pagemap(kT).pfn);
  };
  RunSweep(s);
}

// The first write after a THP fork splits the parent's PMD (its deposited table: no
// allocation) and copies 4 KiB: without that page VM_FAULT_OOM, the PMD split, every value kept.
TEST(AllocFailure, CowWriteFaultOnAThpAfterFork) {
  Scenario s;
  s.name = "COW write fault on a THP";
  s.thp = cowpte::ThpMode::always;
  s.setup = [](World& w) {
    Map(w, kT, 512, kRW, kFixedPriv);
    Write(w, w.parent, kT + 9 * kPage, 0x9009);
    auto r = w.parent->fork();
    ASSERT_TRUE(r.has_value());
    w.child = *r;
    w.child_values = w.parent_values;
  };
  s.op = [](World& w) { return TryWrite(w, w.parent, kT + 9 * kPage, 0x9999); };
  s.after_failure = [](World& w) {
    EXPECT_EQ(w.m->walk(*w.parent, kT).levels, 4);        // split before the copy, as Linux
    EXPECT_EQ(w.m->walk(*w.child, kT).levels, 3);         // the child's THP stays
    EXPECT_EQ(*w.parent->load(kT + 9 * kPage), 0x9009u);  // the shared subpage, unchanged
  };
  s.after_success = [](World& w) {
    EXPECT_NE(w.parent->pagemap(kT + 9 * kPage).pfn, w.child->pagemap(kT + 9 * kPage).pfn);
  };
  RunSweep(s);
}

// MADV_COLLAPSE needs its 2 MiB page: without it ENOMEM, and the span keeps its 4 KiB pages.
TEST(AllocFailure, MadvCollapse) {
  Scenario s;
  s.name = "MADV_COLLAPSE";
  s.thp = cowpte::ThpMode::madvise;
  s.setup = [](World& w) {
    Map(w, kT, 512, kRW, kFixedPriv);
    for (int i = 0; i < 40; i += 3) Write(w, w.parent, kT + i * kPage, 0x6000 + i);
  };
  s.op = [](World& w) { return ErrOf(w.parent->madvise(kT, 512 * kPage, Advice::collapse)); };
  s.after_failure = [](World& w) {
    EXPECT_EQ(w.m->walk(*w.parent, kT).levels, 4);
    EXPECT_EQ(w.m->free_pages(), w.free_before_op);
  };
  s.after_success = [](World& w) { EXPECT_EQ(w.m->walk(*w.parent, kT).levels, 3); };
  RunSweep(s);
}

}  // namespace
