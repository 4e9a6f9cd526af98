// The explorer's built-in scenarios (explore_scenarios in include/cowpte/explore.hpp): the race
// classes of the COW PTE review, each small enough for the sequential oracle.
#include <functional>
#include <string>

#include "cowpte/explore.hpp"
#include "cowpte/model/pgtable_types.hpp"

namespace cowpte {

namespace {

using K = ExploreOp::Kind;

constexpr vaddr_t kBase = 0x40000000;  // 1 GiB: one PTE table maps the scenario's pages
constexpr vaddr_t kPage0 = kBase;
constexpr vaddr_t kPage1 = kBase + PAGE_SIZE;
constexpr std::uint64_t kLen = 4 * PAGE_SIZE;

MachineConfig small_machine() {
  MachineConfig c;
  c.memory_bytes = 64ull << 20;
  c.cpus = 4;
  return c;
}

// A process with four private anonymous pages at kBase, page 0 and 1 written, and `policy` for
// its next fork. Unwraps every result: a setup that fails is a bug in the scenario.
Process& populated(Machine& m, const std::string& policy) {
  Process& p = m.spawn();
  p.mmap(kBase, kLen, Prot::read | Prot::write,
         MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed)
      .value();
  p.store(kPage0, 0xa0).value();
  p.store(kPage1, 0xa1).value();
  if (policy != "classic") p.set_cow_pte(policy).value();
  return p;
}

// The setup of a scenario: the populated parent in slot 0, then (each if asked) a thread of it
// and a child forked from it, in the next slots.
std::function<void(Machine&, std::vector<Process*>&)> setup(std::string policy, bool thread,
                                                            bool child) {
  return [policy = std::move(policy), thread, child](Machine& m, std::vector<Process*>& slot) {
    Process& p = populated(m, policy);
    unsigned n = 0;
    slot[n++] = &p;
    if (thread) slot[n++] = p.clone_vm().value();
    if (child) slot[n++] = p.fork().value();
  };
}

ExploreOp store(vaddr_t a, std::uint64_t v) { return {K::store, a, v, 0, 0}; }
ExploreOp load(vaddr_t a) { return {K::load, a, 0, 0, 0}; }
ExploreOp with_len(K k, vaddr_t a, std::uint64_t len) { return {k, a, 0, len, 0}; }
ExploreOp to_slot(K k, unsigned slot) { return {k, 0, 0, 0, slot}; }

ExploreScenario base(std::string name, std::string summary, std::string_view policy) {
  ExploreScenario s;
  s.name = std::move(name);
  s.summary = std::move(summary);
  s.policy = std::string(policy);
  s.config = small_machine();
  s.watch = {kPage0, kPage1};
  return s;
}

}  // namespace

std::vector<ExploreScenario> explore_scenarios(std::string_view policy) {
  const std::string pol(policy);
  std::vector<ExploreScenario> out;

  // Two threads of a parent write two pages of a table shared with a child: both faults break
  // the table, holding mmap_lock for read. v4's break clears the PMD meanwhile.
  {
    ExploreScenario s =
        base("break_vs_fault", "two threads of a forked parent write two pages of one shared table",
             policy);
    s.slots = 3;  // 0 parent, 1 its thread, 2 the child
    s.setup = setup(pol, true, true);
    s.tasks = {{0, {store(kPage0, 0xb0)}}, {1, {store(kPage1, 0xb1)}}};
    out.push_back(std::move(s));
  }
  // The parent breaks the shared table while the child, its other holder, exits.
  {
    ExploreScenario s =
        base("break_vs_exit",
             "a parent writes into a shared table while the child holding it exits", policy);
    s.slots = 2;
    s.setup = setup(pol, false, true);
    s.tasks = {{0, {store(kPage0, 0xb0), load(kPage1)}}, {1, {ExploreOp{K::exit}}}};
    out.push_back(std::move(s));
  }
  // One thread forks while another writes a present page and faults in a new one.
  {
    ExploreScenario s =
        base("fork_vs_fault", "a thread forks while another thread of the parent writes", policy);
    s.slots = 3;
    s.setup = setup(pol, true, false);
    s.tasks = {{0, {to_slot(K::fork, 2)}},
               {1, {store(kPage0, 0xb0), store(kBase + 2 * PAGE_SIZE, 0xb2)}}};
    s.watch = {kPage0, kPage1, kBase + 2 * PAGE_SIZE};
    out.push_back(std::move(s));
  }
  // One thread forks while another pins a page with GUP-fast, writes it and reads it through
  // the pin: the pin must see the parent's write (write_protect_seq makes GUP-fast back off).
  {
    ExploreScenario s =
        base("fork_vs_pin_fast", "a thread forks while another pins a page with GUP-fast", policy);
    s.slots = 3;
    s.setup = setup(pol, true, false);
    s.tasks = {{0, {to_slot(K::fork, 2)}},
               {1,
                {with_len(K::pin_fast, kPage0, PAGE_SIZE),
                 store(kPage0, 0xb0),
                 {K::read_pin, kPage0, 0, 0, 0}}}};
    out.push_back(std::move(s));
  }
  // One thread unmaps a page of a (shared) table while another writes it and its neighbour.
  {
    ExploreScenario s = base(
        "munmap_vs_fault", "a thread unmaps a page while another writes it, after a fork", policy);
    s.slots = 3;
    s.setup = setup(pol, true, true);
    s.tasks = {{0, {with_len(K::munmap, kPage0, PAGE_SIZE)}},
               {1, {store(kPage0, 0xb0), store(kPage1, 0xb1)}}};
    out.push_back(std::move(s));
  }
  // MADV_DONTNEED (mmap_lock for read) in one thread while another breaks the shared table.
  {
    ExploreScenario s =
        base("dontneed_vs_break", "MADV_DONTNEED of one page while another thread writes the other",
             policy);
    s.slots = 3;
    s.setup = setup(pol, true, true);
    s.tasks = {{0, {with_len(K::dontneed, kPage1, PAGE_SIZE)}}, {1, {store(kPage0, 0xb0)}}};
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace cowpte
