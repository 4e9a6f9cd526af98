// The concurrency explorer: a small concurrent scenario (tasks on different CPUs, each a short
// list of operations) run under many schedules of its kernel paths. Every simulated task runs on
// a host thread of its own and only one runs at a time; at each interleaving point of a kernel
// path (a lock, a lockless entry read, an entry write, a refcount atomic, an allocation that may
// sleep, a user access; include/cowpte/model/interleave.hpp) a scheduler picks the task that
// goes on, from a seed, so every schedule is reproducible. Locks exclude: a task that meets a
// lock another holds waits. After each schedule the explorer checks the Machine's invariants,
// the lock checker's verdicts, and the values every load returned and the memory left behind
// against every outcome the same operations have when run one at a time (linearisability).
//
// Strategies: random (a switch probability drawn per schedule), PCT (random task priorities and
// depth-1 priority change points: a bug of depth d shows with probability at least
// 1/(n k^(d-1)) per schedule, n tasks, k points), and exhaustive up to a number of preemptions.
// A failing schedule is printed as a trace (the decisions that left the default: run the
// current task on, or the lowest-numbered one when it cannot) and shortened by removing
// decisions while it still fails; explore_replay() runs a trace again.
//
// The explorer needs a functional Machine (MachineConfig::timing off): it has no TLB, so the
// walk of a user access and the access itself are one step.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cowpte/machine.hpp"

namespace cowpte {

// One operation of a task; the task acts as the process in its slot.
struct ExploreOp {
  enum class Kind : std::uint8_t {
    load,      // load(addr)
    store,     // store(addr, value)
    fork,      // fork(); the child goes to slot `target`
    clone_vm,  // clone_vm(); the thread goes to slot `target`
    exit,      // exit()
    munmap,    // munmap(addr, length)
    dontneed,  // madvise(addr, length, MADV_DONTNEED)
    pin,       // pin(addr, length, write | longterm): pin_user_pages
    pin_fast,  // pin(addr, length, write | longterm | fast): pin_user_pages_fast
    unpin,     // unpin(addr, length)
    read_pin,  // read_gup(addr): what the newest pin on the page sees
  };
  Kind kind = Kind::load;
  vaddr_t addr = 0;
  std::uint64_t value = 0;   // store: the value
  std::uint64_t length = 0;  // munmap, dontneed, pin, unpin: bytes
  unsigned target = 0;       // fork, clone_vm: the slot that receives the new task
};

struct ExploreTask {
  unsigned slot = 0;  // the process this task runs as; it waits until a fork or clone fills it
  std::vector<ExploreOp> ops;
};

struct ExploreScenario {
  std::string name;
  std::string summary;
  std::string policy;  // the fork policy set by setup (for reports)
  MachineConfig config;
  unsigned slots = 1;
  // Builds the starting state on a fresh Machine (every schedule, every sequential run): the
  // processes of the slots it fills, their mappings and contents. Must not depend on anything
  // but its arguments.
  std::function<void(Machine&, std::vector<Process*>& slots)> setup;
  std::vector<ExploreTask> tasks;
  std::vector<vaddr_t> watch;  // loaded in every live slot's process after each run
};

enum class ExploreStrategy : std::uint8_t { random, pct, exhaustive };

struct ExploreOptions {
  ExploreStrategy strategy = ExploreStrategy::random;
  std::uint64_t seed = 1;
  unsigned schedules = 200;       // at most this many schedules (exhaustive: stops earlier if done)
  unsigned pct_depth = 3;         // PCT: d, the bug depth it aims at (d - 1 change points)
  unsigned preemption_bound = 2;  // exhaustive: schedules with at most this many decisions
  bool stop_at_first = true;      // stop at the first failing schedule
  bool minimize = true;           // shorten the first failing schedule's trace
  // Run each schedule in a child process of the host (fork): a schedule whose races corrupt
  // the model badly enough to crash fails alone ("the model crashed"). Off: in this process,
  // for a debugger.
  bool isolate = true;
};

// A schedule: at decision number `step` (counting the points where two or more tasks could
// run), run `task`; everywhere else the default. Printed as "3>1 17>0".
struct ExploreTrace {
  std::vector<std::pair<std::uint64_t, unsigned>> decisions;
  std::string str() const;
  static std::optional<ExploreTrace> parse(std::string_view text);
};

struct ExploreFailure {
  std::string what;  // the broken invariant, the lock checker's message, a deadlock, or "not
                     // linearisable" (every load and the memory left match no sequential order)
  std::uint64_t schedule = 0;  // its number in the run (0-based)
  ExploreTrace trace;          // as found
  ExploreTrace minimized;      // as short as removing decisions could make it
  std::string outcome;         // what each operation returned, and the memory left
};

struct ExploreReport {
  std::string scenario;
  std::string policy;
  ExploreStrategy strategy = ExploreStrategy::random;
  unsigned schedules = 0;               // schedules run
  unsigned failing = 0;                 // of which failed
  bool exhausted = false;               // exhaustive: every schedule within the bound was run
  std::uint64_t max_decisions = 0;      // the most decision points one schedule had
  std::size_t sequential_outcomes = 0;  // distinct outcomes of the one-at-a-time orders
  std::optional<ExploreFailure> first;  // minimised if ExploreOptions::minimize
  // Every failing schedule, in order (at most 64; traces as found): what kinds of failure the
  // scenario has, and their outcomes.
  std::vector<ExploreFailure> failures;
};

// Run the scenario under opts.schedules schedules. Throws std::invalid_argument for a scenario
// that cannot be run (timing on, a slot no task or setup fills, too many operations for the
// sequential oracle: more than 12).
ExploreReport explore(const ExploreScenario& scenario, const ExploreOptions& opts);
// Run one schedule again: what failed, or nothing.
std::optional<std::string> explore_replay(const ExploreScenario& scenario,
                                          const ExploreTrace& trace, bool isolate = true);

// The built-in scenarios of the race classes the COW PTE review raised, for one fork policy:
// "break_vs_fault", "break_vs_exit", "fork_vs_fault", "fork_vs_pin_fast", "munmap_vs_fault".
std::vector<ExploreScenario> explore_scenarios(std::string_view policy);

}  // namespace cowpte
