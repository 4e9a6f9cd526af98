// The concurrency explorer (include/cowpte/explore.hpp): runs a scenario's tasks under
// schedules chosen by a strategy, and judges each run against the scenario's sequential
// outcomes.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "cowpte/explore.hpp"
#include "explore/scheduler.hpp"
#include "facade/access.hpp"

namespace cowpte {

std::string ExploreTrace::str() const {
  std::string s;
  for (const auto& [step, task] : decisions)
    s += fmt::format("{}{}>{}", s.empty() ? "" : " ", step, task);
  return s.empty() ? "(default)" : s;
}

std::optional<ExploreTrace> ExploreTrace::parse(std::string_view text) {
  ExploreTrace t;
  if (text == "(default)") return t;
  while (!text.empty()) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    if (text.empty()) break;
    std::uint64_t step = 0;
    unsigned task = 0;
    auto r = std::from_chars(text.data(), text.data() + text.size(), step);
    if (r.ec != std::errc{} || r.ptr == text.data() + text.size() || *r.ptr != '>')
      return std::nullopt;
    text.remove_prefix(static_cast<std::size_t>(r.ptr - text.data()) + 1);
    r = std::from_chars(text.data(), text.data() + text.size(), task);
    if (r.ec != std::errc{}) return std::nullopt;
    text.remove_prefix(static_cast<std::size_t>(r.ptr - text.data()));
    if (!t.decisions.empty() && step <= t.decisions.back().first) return std::nullopt;
    t.decisions.emplace_back(step, task);
  }
  return t;
}

namespace {

using explore_detail::Scheduler;

constexpr std::size_t kMaxOracleOps = 12;
constexpr std::size_t kMaxOracleOrders = 100000;

// The processes of a run's slots. A slot a fork or clone failed to fill is `failed`: the ops
// of its task then find no process.
struct World {
  std::vector<Process*> slots;
  std::vector<char> failed;
  bool ready(unsigned s) const { return slots[s] || failed[s]; }
};

template <class T>
std::string show(const Result<T>& r) {
  if (!r) return fmt::format("E{}", to_string(r.error()));
  if constexpr (std::is_same_v<T, std::uint64_t>) {
    return fmt::format("{:#x}", *r);
  } else {
    return "ok";
  }
}

// One operation; the new task of a fork or clone goes to its slot (and wakes its task).
std::string run_op(World& w, Process* p, const ExploreOp& op, Scheduler* s) {
  using K = ExploreOp::Kind;
  if (!p) return "noproc";
  switch (op.kind) {
    case K::load:
      return show(p->load(op.addr));
    case K::store:
      return show(p->store(op.addr, op.value));
    case K::fork:
    case K::clone_vm: {
      Result<Process*> r = op.kind == K::fork ? p->fork() : p->clone_vm();
      if (r) {
        w.slots[op.target] = *r;
      } else {
        w.failed[op.target] = 1;
      }
      if (s) s->wake(&w.slots[op.target]);
      return r ? std::string("ok") : fmt::format("E{}", to_string(r.error()));
    }
    case K::exit:
      p->exit();
      return "ok";
    case K::munmap:
      return show(p->munmap(op.addr, op.length));
    case K::dontneed:
      return show(p->madvise(op.addr, op.length, Advice::dontneed));
    case K::pin:
      return show(p->pin(op.addr, op.length, PinFlags::write | PinFlags::longterm));
    case K::pin_fast:
      return show(
          p->pin(op.addr, op.length, PinFlags::write | PinFlags::longterm | PinFlags::fast));
    case K::unpin:
      return show(p->unpin(op.addr, op.length));
    case K::read_pin:
      return show(p->read_gup(op.addr));
  }
  return "?";
}

// What the scenario's watched addresses hold in every live slot's process.
std::string final_state(const ExploreScenario& sc, const World& w) {
  std::string s;
  for (unsigned i = 0; i < w.slots.size(); ++i) {
    Process* p = w.slots[i];
    if (!p || !p->alive()) continue;
    for (const vaddr_t a : sc.watch) s += fmt::format(" s{}[{:#x}]={}", i, a, show(p->load(a)));
  }
  return s;
}

// The end of a run: the memory left and the invariants' verdict (a policy that reproduces a
// posted patch's bugs may break an invariant one operation at a time too; a concurrent run is
// judged against what the same policy does sequentially).
std::string verdict(const ExploreScenario& sc, Machine& m, const World& w) {
  std::string inv = "invariants hold";
  try {
    m.check_invariants();
  } catch (const std::exception& e) {
    inv = fmt::format("invariant: {}", e.what());
  }
  std::string fin;
  try {
    fin = final_state(sc, w);
  } catch (const std::exception& e) {
    fin = fmt::format(" (the final loads threw: {})", e.what());
  }
  return "final:" + fin + " | " + inv;
}

std::string outcome_of(const std::vector<std::vector<std::string>>& results) {
  std::string s;
  for (unsigned t = 0; t < results.size(); ++t) {
    s += fmt::format("t{}:", t);
    for (const std::string& r : results[t]) s += " " + r;
    s += " | ";
  }
  return s;
}

World start(const ExploreScenario& sc, Machine& m) {
  World w{std::vector<Process*>(sc.slots, nullptr), std::vector<char>(sc.slots, 0)};
  sc.setup(m, w.slots);
  m.check_invariants();
  return w;
}

// One run of the scenario with its operations in `order` (task numbers), one at a time; empty
// when the order runs a task before its slot has a process.
std::optional<std::string> run_sequential(const ExploreScenario& sc,
                                          const std::vector<unsigned>& order) {
  Machine m(sc.config);
  World w = start(sc, m);
  std::vector<std::vector<std::string>> results(sc.tasks.size());
  for (const unsigned t : order) {
    const ExploreTask& task = sc.tasks[t];
    if (!w.ready(task.slot)) return std::nullopt;
    results[t].push_back(run_op(w, w.slots[task.slot], task.ops[results[t].size()], nullptr));
  }
  return outcome_of(results) + verdict(sc, m, w);
}

// Every outcome of the one-at-a-time orders of the tasks' operations.
std::set<std::string> sequential_outcomes(const ExploreScenario& sc) {
  std::set<std::string> out;
  std::vector<std::size_t> left;
  std::size_t total = 0;
  for (const ExploreTask& t : sc.tasks) left.push_back(t.ops.size()), total += t.ops.size();
  if (total > kMaxOracleOps)
    throw std::invalid_argument(
        fmt::format("explore: {} operations, at most {}", total, kMaxOracleOps));
  std::vector<unsigned> order;
  std::size_t orders = 0;
  auto rec = [&](auto& self) -> void {
    if (order.size() == total) {
      if (++orders > kMaxOracleOrders) throw std::invalid_argument("explore: too many orders");
      if (auto o = run_sequential(sc, order)) out.insert(std::move(*o));
      return;
    }
    for (unsigned t = 0; t < left.size(); ++t) {
      if (!left[t]) continue;
      --left[t];
      order.push_back(t);
      self(self);
      order.pop_back();
      ++left[t];
    }
  };
  rec(rec);
  if (out.empty())
    throw std::invalid_argument("explore: no order can run (a slot is never filled)");
  return out;
}

// A decision point of a run: its step, the default task, the tasks that could run.
struct Choice {
  std::uint64_t step = 0;
  unsigned fallback = 0;
  std::vector<unsigned> runnable;
};

struct RunResult {
  std::string violation;  // empty: none found
  std::string outcome;
  std::uint64_t steps = 0;
  ExploreTrace trace;
  std::vector<Choice> choices;
};

// One concurrent run under `choose`, in this process.
void write_all(int fd, const std::string& out) {
  for (std::size_t done = 0; done < out.size();) {
    const ssize_t n = write(fd, out.data() + done, out.size() - done);
    if (n <= 0) _exit(3);
    done += static_cast<std::size_t>(n);
  }
}

// report_fd >= 0: each decision is also written there as it is made ("c STEP DEFAULT CHOSEN
// RUNNABLE..."), so that a run that crashes still leaves its trace.
RunResult run_concurrent(const ExploreScenario& sc, const Scheduler::Chooser& choose,
                         const std::set<std::string>* oracle, int report_fd = -1) {
  Machine m(sc.config);
  World w = start(sc, m);
  Kernel& k = detail::Access::kernel(m);
  k.procs.reserve(k.procs.size() + 64);  // a fork in one task must not move another's iterator
  std::vector<Choice> choices;
  Scheduler sched(k, [&](std::uint64_t step, int cur, const std::vector<unsigned>& r) {
    choices.push_back({step, cur >= 0 ? static_cast<unsigned>(cur) : r[0], r});
    const unsigned c = choose(step, cur, r);
    if (report_fd >= 0) {
      std::string line = fmt::format("c {} {} {}", step, choices.back().fallback, c);
      for (const unsigned t : r) line += fmt::format(" {}", t);
      write_all(report_fd, line + "\n");
    }
    return c;
  });
  std::vector<std::vector<std::string>> results(sc.tasks.size());
  std::vector<std::string> errors(sc.tasks.size());
  std::vector<std::function<void()>> bodies;
  for (unsigned t = 0; t < sc.tasks.size(); ++t) {
    bodies.emplace_back([&, t] {
      const ExploreTask& task = sc.tasks[t];
      for (const ExploreOp& op : task.ops) {
        while (!w.ready(task.slot)) sched.wait_for(&w.slots[task.slot]);
        try {
          results[t].push_back(run_op(w, w.slots[task.slot], op, &sched));
        } catch (const explore_detail::ScheduleAborted&) {
          throw;
        } catch (const std::exception& e) {
          errors[t] = fmt::format("task {} op {}: {}", t, results[t].size(), e.what());
          return;
        }
      }
    });
  }
  sched.run(bodies);
  RunResult r;
  r.steps = sched.steps();
  r.trace.decisions = sched.deviations();
  r.choices = std::move(choices);
  for (const std::string& e : errors)
    if (r.violation.empty() && !e.empty()) r.violation = e;
  if (r.violation.empty()) r.violation = sched.deadlock();
  r.outcome = outcome_of(results);
  if (!r.violation.empty()) return r;
  r.outcome += verdict(sc, m, w);
  if (!oracle || oracle->count(r.outcome)) return r;
  const std::size_t inv = r.outcome.rfind(" | ");
  const std::string judged = r.outcome.substr(inv + 3);
  const bool known = std::any_of(oracle->begin(), oracle->end(), [&](const std::string& o) {
    return o.size() >= judged.size() &&
           o.compare(o.size() - judged.size(), judged.size(), judged) == 0;
  });
  r.violation = known ? "not linearisable: no one-at-a-time order of the operations gives this "
                        "outcome"
                      : judged;
  return r;
}

// The same run in a child process of the host (fork): a schedule that corrupts the model's
// state badly enough to corrupt host memory (a policy reproducing a posted patch's races can
// free a page that is still mapped) fails alone, as "the model crashed", and the explorer goes
// on. The child reports through a pipe, one field per line.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

RunResult run_isolated(const ExploreScenario& sc, const Scheduler::Chooser& choose,
                       const std::set<std::string>* oracle) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("explore: pipe failed");
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("explore: fork failed");
  if (pid == 0) {
    close(fds[0]);
    std::string out;
    try {
      const RunResult r = run_concurrent(sc, choose, oracle, fds[1]);
      out = fmt::format("v {}\no {}\n", one_line(r.violation), one_line(r.outcome));
    } catch (const std::exception& e) {
      out = fmt::format("v the run threw: {}\n", one_line(e.what()));
    }
    write_all(fds[1], out);
    _exit(0);
  }
  close(fds[1]);
  std::string in;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    in.append(buf, static_cast<std::size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  RunResult r;
  std::istringstream lines(in);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() < 2) continue;
    const std::string rest = line.substr(2);
    if (line[0] == 'v') {
      r.violation = rest;
    } else if (line[0] == 'o') {
      r.outcome = rest;
    } else if (line[0] == 'c') {
      std::istringstream f(rest);
      Choice c;
      unsigned chosen = 0;
      f >> c.step >> c.fallback >> chosen;
      for (unsigned t; f >> t;) c.runnable.push_back(t);
      if (chosen != c.fallback) r.trace.decisions.emplace_back(c.step, chosen);
      r.steps = c.step + 1;
      r.choices.push_back(std::move(c));
    }
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    r.violation = WIFSIGNALED(status)
                      ? fmt::format("the model crashed (host signal {}): its state was corrupt",
                                    WTERMSIG(status))
                      : fmt::format("the run's process exited with {}", WEXITSTATUS(status));
  }
  return r;
}

RunResult run_schedule(const ExploreScenario& sc, const Scheduler::Chooser& choose,
                       const std::set<std::string>* oracle, bool isolate) {
  return isolate ? run_isolated(sc, choose, oracle) : run_concurrent(sc, choose, oracle);
}

Scheduler::Chooser replay_chooser(const ExploreTrace& t) {
  std::map<std::uint64_t, unsigned> at(t.decisions.begin(), t.decisions.end());
  return [at = std::move(at)](std::uint64_t step, int cur, const std::vector<unsigned>& r) {
    if (auto it = at.find(step); it != at.end()) return it->second;
    return cur >= 0 ? static_cast<unsigned>(cur) : r[0];
  };
}

void validate(const ExploreScenario& sc) {
  if (sc.config.timing.enabled)
    throw std::invalid_argument("explore: the explorer needs a functional Machine (timing off)");
  if (sc.tasks.empty() || !sc.setup) throw std::invalid_argument("explore: no tasks or no setup");
  for (const ExploreTask& t : sc.tasks) {
    if (t.slot >= sc.slots) throw std::invalid_argument("explore: a task's slot is out of range");
    for (const ExploreOp& op : t.ops)
      if ((op.kind == ExploreOp::Kind::fork || op.kind == ExploreOp::Kind::clone_vm) &&
          op.target >= sc.slots)
        throw std::invalid_argument("explore: a fork's slot is out of range");
  }
}

// Remove decisions one at a time while the run still fails.
ExploreTrace minimize(const ExploreScenario& sc, ExploreTrace t,
                      const std::set<std::string>& oracle, bool isolate) {
  for (bool shorter = true; shorter;) {
    shorter = false;
    for (std::size_t i = 0; i < t.decisions.size(); ++i) {
      ExploreTrace u = t;
      u.decisions.erase(u.decisions.begin() + static_cast<std::ptrdiff_t>(i));
      if (!run_schedule(sc, replay_chooser(u), &oracle, isolate).violation.empty()) {
        t = std::move(u);
        shorter = true;
        break;
      }
    }
  }
  return t;
}

}  // namespace

ExploreReport explore(const ExploreScenario& sc, const ExploreOptions& opts) {
  validate(sc);
  const std::set<std::string> oracle = sequential_outcomes(sc);
  ExploreReport rep;
  rep.scenario = sc.name;
  rep.policy = sc.policy;
  rep.strategy = opts.strategy;
  rep.sequential_outcomes = oracle.size();

  auto record = [&](const RunResult& r) {
    ++rep.schedules;
    rep.max_decisions = std::max(rep.max_decisions, r.steps);
    if (r.violation.empty()) return false;
    ++rep.failing;
    if (rep.failures.size() < 64)
      rep.failures.push_back(
          ExploreFailure{r.violation, rep.schedules - 1, r.trace, r.trace, r.outcome});
    if (!rep.first) {
      rep.first = ExploreFailure{r.violation, rep.schedules - 1, r.trace, r.trace, r.outcome};
      if (opts.minimize) rep.first->minimized = minimize(sc, r.trace, oracle, opts.isolate);
    }
    return opts.stop_at_first;
  };

  if (opts.strategy == ExploreStrategy::exhaustive) {
    // Iterative preemption bounding: a schedule's extensions add one decision after its last.
    std::vector<ExploreTrace> work{ExploreTrace{}};
    while (!work.empty() && rep.schedules < opts.schedules) {
      ExploreTrace t = std::move(work.back());
      work.pop_back();
      const RunResult r = run_schedule(sc, replay_chooser(t), &oracle, opts.isolate);
      if (record(r)) return rep;
      if (t.decisions.size() >= opts.preemption_bound) continue;
      const std::uint64_t after = t.decisions.empty() ? 0 : t.decisions.back().first + 1;
      for (auto it = r.choices.rbegin(); it != r.choices.rend(); ++it) {
        if (it->step < after) continue;
        for (const unsigned task : it->runnable) {
          if (task == it->fallback) continue;
          ExploreTrace u = t;
          u.decisions.emplace_back(it->step, task);
          work.push_back(std::move(u));
        }
      }
    }
    rep.exhausted = work.empty();
    return rep;
  }

  std::uint64_t k = 1;  // PCT: the points of a schedule, from the default one
  if (opts.strategy == ExploreStrategy::pct) {
    const RunResult r = run_schedule(sc, replay_chooser({}), &oracle, opts.isolate);
    k = std::max<std::uint64_t>(1, r.steps);
    if (record(r)) return rep;
  }
  for (unsigned n = rep.schedules; n < opts.schedules; ++n) {
    std::mt19937_64 rng(opts.seed * 0x9e3779b97f4a7c15ull + n);
    Scheduler::Chooser choose;
    if (opts.strategy == ExploreStrategy::random) {
      static constexpr double kSwitch[] = {0.5, 0.2, 0.05, 0.01};
      const double p = kSwitch[rng() % 4];
      choose = [&rng, p](std::uint64_t, int cur, const std::vector<unsigned>& r) {
        if (cur >= 0 && std::uniform_real_distribution<double>(0, 1)(rng) >= p)
          return static_cast<unsigned>(cur);
        return r[rng() % r.size()];
      };
    } else {
      const unsigned d = std::max(1u, opts.pct_depth);
      std::vector<unsigned> prio(sc.tasks.size());
      for (unsigned i = 0; i < prio.size(); ++i) prio[i] = d + i;
      std::shuffle(prio.begin(), prio.end(), rng);
      std::map<std::uint64_t, unsigned> change;  // step -> the priority it lowers to
      for (unsigned i = 1; i < d; ++i) change[rng() % k] = d - i;
      choose = [prio, change, last = 0u](std::uint64_t step, int cur,
                                         const std::vector<unsigned>& r) mutable {
        if (cur >= 0) last = static_cast<unsigned>(cur);
        if (auto it = change.find(step); it != change.end()) prio[last] = it->second;
        unsigned best = r[0];
        for (const unsigned t : r)
          if (prio[t] > prio[best]) best = t;
        return last = best;
      };
    }
    if (record(run_schedule(sc, choose, &oracle, opts.isolate))) return rep;
  }
  return rep;
}

std::optional<std::string> explore_replay(const ExploreScenario& sc, const ExploreTrace& trace,
                                          bool isolate) {
  validate(sc);
  const std::set<std::string> oracle = sequential_outcomes(sc);
  RunResult r = run_schedule(sc, replay_chooser(trace), &oracle, isolate);
  if (r.violation.empty()) return std::nullopt;
  return r.violation;
}

}  // namespace cowpte
