// Replaying a trace through the facade (include/cowpte/trace.hpp): each recorded pid becomes a
// simulated task, each event the call a program would make, each touched page one 8-byte load
// or store at the page's start. With the timing model on, every call and access is timed on its
// task's CPU, as the benchmarks time theirs.
#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "cowpte/trace.hpp"

namespace cowpte {

namespace {

// The simulated cycles of one kind of event, kept whole until the end for the percentiles.
class Samples {
 public:
  void add(std::uint64_t c) { v_.push_back(c); }
  void clear() { v_.clear(); }
  CycleStats stats() {
    CycleStats s;
    s.count = v_.size();
    if (v_.empty()) return s;
    for (std::uint64_t c : v_) s.total += c;
    std::sort(v_.begin(), v_.end());
    auto rank = [this](double q) {  // nearest rank
      const auto r = std::size_t(q * double(v_.size()) + 0.999999);
      return v_[std::clamp<std::size_t>(r, 1, v_.size()) - 1];
    };
    s.p50 = rank(0.5);
    s.p99 = rank(0.99);
    s.max = v_.back();
    return s;
  }

 private:
  std::vector<std::uint64_t> v_;
};

std::int64_t rss_total(const RssStat& r) { return r.anon + r.file + r.shmem; }

class Replayer {
 public:
  Replayer(Machine& m, TraceReader& r, const ReplayOptions& o) : m_(m), r_(r), o_(o) {}

  ReplayResult run() {
    TraceEvent e;
    while (r_.next(e)) {
      if (e.kind == TraceKind::step && !begin_step()) break;
      ++res_.events;
      apply(e);
    }
    end_step();
    for (auto& [pid, p] : live_) procs_[index_.at(pid)].out.hw_stats_json = p->hw_stats_json();
    while (!live_forks_.empty()) end_fork(live_forks_.begin()->first, false);
    finish();
    return std::move(res_);
  }

 private:
  struct Proc {
    ReplayResult::PerProcess out;
    Samples loads, stores;
  };
  // A fork whose child still lives: what the machine held before it, the parent's stores since.
  struct LiveFork {
    std::size_t index;  // into forks_
    std::uint64_t frames_before, tables_before;
    Samples parent_stores;
  };

  // A step record: the step before it ends; false when the measured steps are all done.
  bool begin_step() {
    if (steps_ > 0 || res_.events > 0) end_step();  // not before the first, if nothing preceded it
    ++steps_;
    if (steps_ == o_.warmup_steps + 1 && o_.warmup_steps > 0) reset();
    if (o_.max_steps && steps_ > o_.warmup_steps + o_.max_steps) return false;
    ++res_.steps;
    return true;
  }
  void end_step() {
    for (auto& [pid, p] : live_) {
      RssStat& mx = procs_[index_.at(pid)].out.rss_max;
      const RssStat now = p->rss();
      if (rss_total(now) > rss_total(mx)) mx = now;
    }
    for (auto& [child, lf] : live_forks_) track(lf);
    res_.pgtable_frames_max = std::max(res_.pgtable_frames_max, m_.pgtable_frames());
    res_.used_frames_max = std::max(res_.used_frames_max, m_.total_pages() - m_.free_pages());
    if (o_.on_step) o_.on_step(steps_, r_.offset());
  }
  std::uint64_t used_frames() const { return m_.total_pages() - m_.free_pages(); }
  void track(const LiveFork& lf) {
    ReplayResult::Fork& f = forks_[lf.index];
    const std::uint64_t used = used_frames(), tables = m_.pgtable_frames();
    if (used > lf.frames_before)
      f.extra_frames_max = std::max(f.extra_frames_max, used - lf.frames_before);
    if (tables > lf.tables_before)
      f.extra_table_frames_max = std::max(f.extra_table_frames_max, tables - lf.tables_before);
  }
  // The warm-up ends: the machine's statistics and ours start again.
  void reset() {
    m_.reset_stats();
    for (Samples* s : {&fork_, &exit_, &mmap_, &munmap_, &loads_, &stores_}) s->clear();
    for (Proc& p : procs_) p.loads.clear(), p.stores.clear();
    forks_.clear();
    live_forks_.clear();  // a fork of the warm-up is not measured
    res_.errors.clear();
    res_.steps = 0;
    res_.pgtable_frames_max = res_.used_frames_max = 0;
  }

  Process& task(std::uint32_t pid) {
    auto it = live_.find(pid);
    if (it == live_.end())
      throw TraceError("trace replay, offset " + std::to_string(r_.offset()) + ": pid " +
                       std::to_string(pid) + " was never spawned or forked, or has exited");
    return *it->second;
  }
  void add_task(std::uint32_t pid, std::uint32_t parent, Process& p) {
    if (live_.count(pid))
      throw TraceError("trace replay, offset " + std::to_string(r_.offset()) + ": pid " +
                       std::to_string(pid) + " is already live");
    live_[pid] = &p;
    index_[pid] = procs_.size();
    procs_.emplace_back();
    procs_.back().out.pid = pid;
    procs_.back().out.parent = parent;
  }
  template <class R>
  bool ok(const R& r, TraceKind k) {
    if (r) return true;
    ++res_.errors[std::string(to_string(k)) + ":" + std::string(to_string(r.error()))];
    return false;
  }
  // f() on p's CPU; its busy cycles go to s when the timing model is on.
  template <class F>
  void timed(Process& p, Samples* s, F&& f) {
    if (!m_.timed()) return f();
    const unsigned cpu = p.cpu();
    const std::uint64_t before = m_.busy_cycles(cpu);
    f();
    if (s) s->add(m_.busy_cycles(cpu) - before);
  }

  void apply(const TraceEvent& e) {
    switch (e.kind) {
      case TraceKind::step:
      case TraceKind::end:
        return;
      case TraceKind::spawn:
        return spawn(e.pid);
      case TraceKind::fork:
      case TraceKind::clone:
        return fork(e);
      case TraceKind::exit:
        return exit(e.pid);
      case TraceKind::mmap: {
        Process& p = task(e.pid);
        // The recorded address is where the mapping is: replay puts it there.
        timed(p, &mmap_,
              [&] { ok(p.mmap(e.addr, e.length, e.prot, e.flags | MapFlags::fixed), e.kind); });
        return;
      }
      case TraceKind::munmap: {
        Process& p = task(e.pid);
        timed(p, &munmap_, [&] { ok(p.munmap(e.addr, e.length), e.kind); });
        return;
      }
      case TraceKind::mprotect: {
        Process& p = task(e.pid);
        timed(p, nullptr, [&] { ok(p.mprotect(e.addr, e.length, e.prot), e.kind); });
        return;
      }
      case TraceKind::madvise: {
        Process& p = task(e.pid);
        timed(p, nullptr, [&] { ok(p.madvise(e.addr, e.length, e.advice), e.kind); });
        return;
      }
      case TraceKind::load:
        return access(task(e.pid), e.pid, e.addr, false, 0);
      case TraceKind::store:
        return access(task(e.pid), e.pid, e.addr, true, e.value);
      case TraceKind::touch: {
        Process& p = task(e.pid);
        for (vaddr_t a : e.pages) access(p, e.pid, a, e.write, ++stamp_);
        return;
      }
    }
  }

  void access(Process& p, std::uint32_t pid, vaddr_t a, bool write, std::uint64_t value) {
    Proc& pr = procs_[index_.at(pid)];
    Samples& mine = write ? pr.stores : pr.loads;
    Samples& all = write ? stores_ : loads_;
    if (!m_.timed()) {
      write ? (void)ok(p.store(a, value), TraceKind::store) : (void)ok(p.load(a), TraceKind::load);
      return;
    }
    const unsigned cpu = p.cpu();
    const std::uint64_t before = m_.busy_cycles(cpu);
    write ? (void)ok(p.store(a, value), TraceKind::store) : (void)ok(p.load(a), TraceKind::load);
    const std::uint64_t c = m_.busy_cycles(cpu) - before;
    mine.add(c);
    all.add(c);
    if (write)
      for (auto& [child, lf] : live_forks_)
        if (forks_[lf.index].parent == pid) lf.parent_stores.add(c);
  }

  void spawn(std::uint32_t pid) {
    Result<Process*> p = m_.try_spawn();
    if (!ok(p, TraceKind::spawn))
      throw TraceError("trace replay: cannot spawn pid " + std::to_string(pid) +
                       " on the simulated machine");
    if (o_.policy != "classic") {
      if (!(*p)->set_cow_pte(o_.policy))
        throw TraceError("trace replay: unknown fork policy '" + o_.policy + "'");
    }
    add_task(pid, 0, **p);
  }
  void fork(const TraceEvent& e) {
    Process& p = task(e.pid);
    const bool is_fork = e.kind == TraceKind::fork;
    LiveFork lf{forks_.size(), used_frames(), m_.pgtable_frames(), {}};
    Result<Process*> c = Errno::inval;
    const std::uint64_t before = m_.busy_cycles(p.cpu());
    timed(p, is_fork ? &fork_ : nullptr, [&] { c = is_fork ? p.fork() : p.clone_vm(); });
    if (!ok(c, e.kind)) return;
    add_task(e.child, e.pid, **c);
    if (!is_fork) return;
    ReplayResult::Fork f;
    f.parent = e.pid, f.child = e.child, f.step = res_.steps;
    f.cycles = m_.busy_cycles(p.cpu()) - before;
    f.frames = used_frames() - lf.frames_before;
    f.table_frames = m_.pgtable_frames() - lf.tables_before;
    forks_.push_back(f);
    live_forks_.emplace(e.child, std::move(lf));
  }
  // The child of a measured fork exits (or the replay ends): its record is complete.
  void end_fork(std::uint32_t child, bool exited) {
    auto it = live_forks_.find(child);
    if (it == live_forks_.end()) return;
    track(it->second);
    ReplayResult::Fork& f = forks_[it->second.index];
    f.parent_stores = it->second.parent_stores.stats();
    f.lifetime_steps = res_.steps - f.step;
    f.child_exited = exited;
    live_forks_.erase(it);
  }
  void exit(std::uint32_t pid) {
    Process& p = task(pid);
    procs_[index_.at(pid)].out.hw_stats_json = p.hw_stats_json();
    end_fork(pid, true);
    timed(p, &exit_, [&] { p.exit(); });
    live_.erase(pid);
  }

  void finish() {
    res_.fork = fork_.stats();
    res_.exit = exit_.stats();
    res_.mmap = mmap_.stats();
    res_.munmap = munmap_.stats();
    res_.loads = loads_.stats();
    res_.stores = stores_.stats();
    for (Proc& p : procs_) {
      p.out.loads = p.loads.stats();
      p.out.stores = p.stores.stats();
      res_.processes.push_back(std::move(p.out));
    }
    res_.forks = std::move(forks_);
  }

  Machine& m_;
  TraceReader& r_;
  const ReplayOptions& o_;
  ReplayResult res_;
  std::unordered_map<std::uint32_t, Process*> live_;
  std::unordered_map<std::uint32_t, std::size_t> index_;  // pid -> procs_ (latest with that pid)
  std::vector<Proc> procs_;
  std::vector<ReplayResult::Fork> forks_;
  std::map<std::uint32_t, LiveFork> live_forks_;  // by child pid
  Samples fork_, exit_, mmap_, munmap_, loads_, stores_;
  std::uint64_t steps_ = 0, stamp_ = 0;
};

}  // namespace

ReplayResult replay_trace(Machine& m, TraceReader& r, const ReplayOptions& o) {
  return Replayer(m, r, o).run();
}

TraceSummary summarize_trace(TraceReader& r) {
  TraceSummary s;
  TraceEvent e;
  // Live mappings per pid, page-granular, to follow the total mapped (fork copies the parent's).
  // A thread's calls act on its group's mappings (mm_of); a thread's exit leaves them.
  std::unordered_map<std::uint32_t, std::map<vaddr_t, vaddr_t>> maps;
  std::unordered_map<std::uint32_t, std::uint32_t> mm_of;
  auto mm = [&](std::uint32_t pid) {
    auto it = mm_of.find(pid);
    return it == mm_of.end() ? pid : it->second;
  };
  std::uint64_t mapped = 0;
  auto unmap = [&](std::map<vaddr_t, vaddr_t>& vm, vaddr_t a, vaddr_t end) {
    for (auto it = vm.begin(); it != vm.end();) {
      const auto [s0, e0] = *it;
      if (e0 <= a || s0 >= end) {
        ++it;
        continue;
      }
      it = vm.erase(it);
      mapped -= e0 - s0;
      if (s0 < a) vm[s0] = a, mapped += a - s0;
      if (e0 > end) vm[end] = e0, mapped += e0 - end;
    }
  };
  while (r.next(e)) {
    ++s.events[std::string(to_string(e.kind))];
    switch (e.kind) {
      case TraceKind::step:
        ++s.steps;
        s.duration_ns = e.time_ns;
        break;
      case TraceKind::spawn:
        ++s.processes;
        break;
      case TraceKind::fork:
      case TraceKind::clone:
        ++s.processes;
        if (e.kind == TraceKind::clone) mm_of[e.child] = mm(e.pid);
        if (e.kind == TraceKind::fork && maps.count(mm(e.pid))) {
          maps[e.child] = maps[mm(e.pid)];
          for (auto& [a, end] : maps[e.child]) mapped += end - a;
        }
        break;
      case TraceKind::exit:
        if (mm_of.erase(e.pid)) break;
        if (auto it = maps.find(e.pid); it != maps.end()) {
          for (auto& [a, end] : it->second) mapped -= end - a;
          maps.erase(it);
        }
        break;
      case TraceKind::mmap:
        unmap(maps[mm(e.pid)], e.addr, e.addr + e.length);
        maps[mm(e.pid)][e.addr] = e.addr + e.length;
        mapped += e.length;
        break;
      case TraceKind::munmap:
        unmap(maps[mm(e.pid)], e.addr, e.addr + e.length);
        break;
      case TraceKind::touch:
        (e.write ? s.pages_written : s.pages_read) += e.pages.size();
        break;
      default:
        break;
    }
    s.mapped_bytes_max = std::max(s.mapped_bytes_max, mapped);
  }
  return s;
}

}  // namespace cowpte
