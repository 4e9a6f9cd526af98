// Threads (issue 14): Process::clone_vm() makes a task that shares its creator's mm, as
// clone(CLONE_VM | CLONE_THREAD) does. The mm lives until its last task exits; the views
// (pagemap, smaps, rss) are the mm's; a fork of a multithreaded parent copies the mm once and
// shoots the parent's TLB entries down on every CPU its threads ran on. check_invariants()
// after every step (it checks mm_users against the live tasks of each mm).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "scenario_util.hpp"

namespace cowpte::scen {
namespace {

constexpr vaddr_t kBase = 0x7f0000000000;  // 2 MiB aligned: one PTE table

class Threads : public ScenarioTest {
 protected:
  Threads() : ScenarioTest(MachineConfig{.memory_bytes = 64ull << 20, .cpus = 4}) {}

  Process& clone_vm(Process& p, const loc_t& loc = loc_t::current()) {
    auto r = p.clone_vm();
    if (!r) abort_step("clone_vm failed with " + std::string(to_string(r.error())), loc);
    inv(loc);
    return **r;
  }
};

TEST_F(Threads, ATaskMadeByCloneVmSharesTheMm) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 16, kBase);
  populate(p, a, 8, 1);
  Process& t = clone_vm(p);
  EXPECT_NE(t.pid(), p.pid());
  EXPECT_EQ(t.tgid(), p.pid()) << "a thread of p's group";
  EXPECT_EQ(p.tgid(), p.pid());
  EXPECT_EQ(t.cpu(), 1u) << "on the CPU after its creator's";
  EXPECT_EQ(load(t, a), pattern(1, 0)) << "the same memory";
  store(t, a + 8 * kPage, 77);  // a fault in the thread maps a page for both
  EXPECT_EQ(load(p, a + 8 * kPage), 77u);
  EXPECT_EQ(pfn_of(t, a + 8 * kPage), pfn_of(p, a + 8 * kPage));
  EXPECT_EQ(m.walk(t, a).table[0], m.walk(p, a).table[0]) << "one pgd";
  EXPECT_EQ(t.rss().anon, 9u);
  EXPECT_EQ(p.rss().anon, 9u);
  EXPECT_EQ(t.pgtables_bytes(), p.pgtables_bytes());
  ASSERT_EQ(t.smaps().size(), p.smaps().size());
  EXPECT_EQ(t.smaps()[0].rss, p.smaps()[0].rss);
  // An mmap by one task is the other's too.
  const vaddr_t b = map_anon(t, 4);
  store(p, b, 5);
  EXPECT_EQ(load(t, b), 5u);
  finish();
}

TEST_F(Threads, TheMmStaysUntilItsLastTaskExits) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 32, kBase);
  populate(p, a, 32, 2);
  Process& t1 = clone_vm(p);
  Process& t2 = clone_vm(t1);
  EXPECT_EQ(t2.tgid(), p.pid());
  EXPECT_EQ(t2.cpu(), 2u);
  const std::uint64_t free_with_mm = m.free_pages();
  exit(p);  // the group leader goes first: its threads keep the memory
  EXPECT_EQ(m.free_pages(), free_with_mm) << "nothing freed while tasks use the mm";
  EXPECT_EQ(load(t1, a + 31 * kPage), pattern(2, 31));
  store(t2, a, 9);
  EXPECT_EQ(load(t1, a), 9u);
  EXPECT_EQ(t1.rss().anon, 32u);
  fails(p.clone_vm(), Errno::srch, "clone_vm of an exited task");
  exit(t1);
  EXPECT_EQ(m.free_pages(), free_with_mm);
  exit(t2);  // the last one: exit_mmap
  EXPECT_EQ(m.free_pages(), free0) << "the mm went with its last task";
  finish();
}

TEST_F(Threads, AForkOfAThreadCopiesTheSharedMmOnce) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 16, kBase);
  populate(p, a, 16, 3);
  Process& t = clone_vm(p);
  Process& c = fork(t);  // fork from the thread: the child gets a copy of the one mm
  EXPECT_EQ(c.tgid(), c.pid()) << "a new thread group";
  EXPECT_EQ(c.rss().anon, 16u);
  store(t, a, 1);  // COW: the parent's side (either task) gets its own page
  EXPECT_EQ(load(p, a), 1u);
  EXPECT_EQ(load(c, a), pattern(3, 0));
  store(c, a + kPage, 2);
  EXPECT_EQ(load(p, a + kPage), pattern(3, 1));
  EXPECT_EQ(load(t, a + kPage), pattern(3, 1));
  finish();
}

// Pins are the thread group's: a pin taken by one thread is released when the mm's last task
// exits, not when the thread that took it does.
TEST_F(Threads, PinsOfAThreadLastAsLongAsItsGroup) {
  Process& p = spawn();
  const vaddr_t a = map_anon(p, 4, kBase);
  populate(p, a, 4, 4);
  Process& t = clone_vm(p);
  ok(t.pin(a, kPage, PinFlags::write | PinFlags::longterm), "pin");
  const pfn_t pfn = pfn_of(p, a);
  const std::int64_t pinned = page(pfn).refcount;
  exit(t);
  EXPECT_EQ(page(pfn).refcount, pinned) << "the pin outlives the thread";
  EXPECT_EQ(*p.read_gup(a), pattern(4, 0)) << "the group reads through it";
  ok(p.unpin(a, kPage), "unpin from another task of the group");
  EXPECT_EQ(page(pfn).refcount, pinned - 1024) << "GUP_PIN_COUNTING_BIAS dropped";
  finish();
}

// With the timing model: fork of a multithreaded parent write-protects the parent's PTEs and
// flushes the mm's TLB entries on every CPU in mm_cpumask: one shootdown IPI per other CPU its
// threads ran on. A single-threaded parent sends none.
TEST(ThreadsTimed, ForkShootsDownTheParentsTlbOnEveryCpuItsThreadsRanOn) {
  for (unsigned threads : {1u, 2u, 4u}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    MachineConfig cfg{.memory_bytes = 64ull << 20, .cpus = 4};
    cfg.timing.enabled = true;
    Machine m(cfg);
    Process& p = m.spawn();
    ASSERT_TRUE(p.mmap(kBase, 64 * kPage, kRWProt, kPrivAnon | MapFlags::fixed));
    std::vector<Process*> tasks{&p};
    for (unsigned i = 1; i < threads; ++i) tasks.push_back(*tasks.back()->clone_vm());
    for (std::uint64_t i = 0; i < 64; ++i)
      ASSERT_TRUE(tasks[i % threads]->store(kBase + i * kPage, i + 1));
    const HwStats before = p.hw_stats();
    const nlohmann::json cpus0 = nlohmann::json::parse(m.hw_stats_json())["cpus"];
    Process& c = *p.fork().value();
    const nlohmann::json cpus1 = nlohmann::json::parse(m.hw_stats_json())["cpus"];
    EXPECT_EQ(p.hw_stats().shootdowns_sent - before.shootdowns_sent, threads - 1);
    for (unsigned cpu = 1; cpu < 4; ++cpu) {
      const auto got = cpus1[cpu]["flush"]["shootdowns_received"].get<std::uint64_t>() -
                       cpus0[cpu]["flush"]["shootdowns_received"].get<std::uint64_t>();
      EXPECT_EQ(got, cpu < threads ? 1u : 0u) << "CPU " << cpu;
    }
    // The threads' cached translations are gone: each thread's next store write-faults (COW).
    for (unsigned i = 1; i < threads; ++i) {
      const HwStats t0 = tasks[i]->hw_stats();
      ASSERT_TRUE(tasks[i]->store(kBase + i * kPage, 100 + i));
      const HwStats t1 = tasks[i]->hw_stats();
      EXPECT_EQ(t1.phase[std::size_t(Phase::fault_wp)].count,
                t0.phase[std::size_t(Phase::fault_wp)].count + 1);
      EXPECT_EQ(*c.load(kBase + i * kPage), i + 1) << "the child keeps the value at fork";
    }
    m.check_invariants();
  }
}

// The README's example ("Time on several CPUs"), run as written.
TEST(ThreadsTimed, ReadmeExample) {
  MachineConfig cfg{.memory_bytes = 1ull << 30, .cpus = 4};
  cfg.timing.enabled = true;
  Machine m(cfg);
  Process& p = m.spawn();
  Process& t = *p.clone_vm().value();
  vaddr_t a =
      *p.mmap(0, 1 << 20, Prot::read | Prot::write, MapFlags::private_ | MapFlags::anonymous);
  t.store(a, 1).value();
  EXPECT_EQ(*p.load(a), 1u);
  Process& c = *p.fork().value();
  EXPECT_EQ(p.hw_stats().shootdowns_sent, 1u);
  EXPECT_EQ(*c.load(a), 1u);
  m.check_invariants();
}

// The OOM killer kills the whole thread group of its victim: every task of the mm.
TEST(ThreadsOom, TheVictimsThreadsDieWithIt) {
  Machine m(MachineConfig{.memory_bytes = 8ull << 20});
  Process& big = m.spawn();
  ASSERT_TRUE(big.mmap(kBase, 5ull << 20, kRWProt, kPrivAnon | MapFlags::fixed));
  Process& t = *big.clone_vm().value();
  for (std::uint64_t i = 0; i < 1280; ++i) ASSERT_TRUE(t.store(kBase + i * kPage, i));
  Process& small = m.spawn();
  ASSERT_TRUE(small.mmap(0x7e0000000000, 4ull << 20, kRWProt, kPrivAnon | MapFlags::fixed));
  Result<void> r;  // 1024 pages more do not fit next to big's 1280 in 2048 frames
  for (std::uint64_t i = 0; i < 1024 && (r = small.store(0x7e0000000000 + i * kPage, i)); ++i) {
  }
  ASSERT_TRUE(r) << "small's stores succeed once the killer freed the big group: "
                 << to_string(r.error());
  EXPECT_EQ(m.vmstat().oom_kill, 1u);
  EXPECT_FALSE(big.alive());
  EXPECT_FALSE(t.alive()) << "the thread died with its group";
  EXPECT_EQ(t.store(kBase, 1).error(), Errno::srch);
  m.check_invariants();
}

}  // namespace
}  // namespace cowpte::scen
