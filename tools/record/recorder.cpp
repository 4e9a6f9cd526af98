// cowpte-record's recorder (recorder.hpp).
#include "record/recorder.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <utility>

namespace cowpte::record {

namespace {

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// The VMA of sorted, disjoint maps that holds a, if any.
const Vma* vma_at(const std::vector<Vma>& maps, vaddr_t a) {
  auto it = std::upper_bound(maps.begin(), maps.end(), a,
                             [](vaddr_t x, const Vma& v) { return x < v.start; });
  if (it == maps.begin()) return nullptr;
  --it;
  return a < it->end ? &*it : nullptr;
}

}  // namespace

const char* to_string(WriteMethod m) {
  return m == WriteMethod::soft_dirty ? "soft-dirty" : "frame-change";
}

Recorder::Recorder(pid_t root, TraceWriter& out, WriteMethod method, bool follow_children,
                   std::chrono::milliseconds interval, IdleBitmap* idle)
    : root_(root),
      out_(out),
      method_(method),
      idle_(idle),
      follow_(follow_children),
      interval_(interval),
      start_(std::chrono::steady_clock::now()) {}

void Recorder::emit_range(TraceKind k, pid_t pid, vaddr_t a, vaddr_t b, const Vma* v) {
  TraceEvent e;
  e.kind = k;
  e.pid = std::uint32_t(pid);
  e.addr = a;
  e.length = b - a;
  if (v) {
    e.prot = v->prot;
    // The model has anonymous memory only: a file mapping is replayed as anonymous memory.
    e.flags = (v->shared ? MapFlags::shared : MapFlags::private_) | MapFlags::anonymous;
  }
  out_.write(e);
}

void Recorder::emit_exit(pid_t pid) {
  TraceEvent e;
  e.kind = TraceKind::exit;
  e.pid = std::uint32_t(pid);
  out_.write(e);
}

// The differences between the VMAs seen last and now, over each stretch between boundaries of
// either: mapped now only (mmap), then only (munmap), both with other rights (mprotect) or
// another sharing (munmap and mmap). Adjacent stretches of one change are one event.
void Recorder::diff_maps(Proc& p, const std::vector<Vma>& now) {
  std::vector<vaddr_t> bounds;
  for (const std::vector<Vma>* maps : {&std::as_const(p.maps), &now})
    for (const Vma& v : *maps) bounds.push_back(v.start), bounds.push_back(v.end);
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  struct Pending {
    TraceKind kind;
    vaddr_t start, end;
    Vma attrs;
  };
  std::optional<Pending> pend;
  std::vector<Pending> maps_after;  // mmaps of a re-shared stretch follow its munmap
  auto push = [&](TraceKind k, vaddr_t a, vaddr_t b, const Vma& attrs) {
    if (pend && pend->kind == k && pend->end == a && pend->attrs.prot == attrs.prot &&
        pend->attrs.shared == attrs.shared) {
      pend->end = b;
      return;
    }
    if (pend) emit_range(pend->kind, p.pid, pend->start, pend->end, &pend->attrs);
    pend = Pending{k, a, b, attrs};
  };
  for (std::size_t i = 0; i + 1 < bounds.size(); ++i) {
    const vaddr_t a = bounds[i], b = bounds[i + 1];
    const Vma* was = vma_at(p.maps, a);
    const Vma* is = vma_at(now, a);
    if (!was && is) push(TraceKind::mmap, a, b, *is);
    if (was && !is) push(TraceKind::munmap, a, b, *was);
    if (was && is && was->shared != is->shared) {
      push(TraceKind::munmap, a, b, *was);
      maps_after.push_back({TraceKind::mmap, a, b, *is});
    } else if (was && is && was->prot != is->prot) {
      push(TraceKind::mprotect, a, b, *is);
    }
  }
  if (pend) emit_range(pend->kind, p.pid, pend->start, pend->end, &pend->attrs);
  for (const Pending& m : maps_after) emit_range(m.kind, p.pid, m.start, m.end, &m.attrs);
  p.maps = now;
}

// The pages written and first touched since the last scan, as two touch events.
void Recorder::scan(Proc& p) {
  Pagemap pm(p.pid);
  std::vector<Seen> now;
  std::vector<PageBits> bits;
  for (const Vma& v : p.maps) {
    if (!pm.ok() || !pm.read(v.start, v.end, bits)) return;  // gone: its exit comes next
    stats_.pages_scanned += bits.size();
    for (std::size_t i = 0; i < bits.size(); ++i)
      if (bits[i].present() || bits[i].swapped())
        now.push_back({v.start / kPage + i, bits[i], any(v.prot & Prot::write)});
  }
  // With the idle-page bitmap: which of the pages that kept their frame were accessed.
  std::vector<std::uint64_t> kept;  // their frames, ascending by page (not by frame)
  std::vector<std::size_t> kept_at;
  if (idle_) {
    std::size_t k = 0;
    for (std::size_t n = 0; n < now.size(); ++n) {
      while (k < p.seen.size() && p.seen[k].page < now[n].page) ++k;
      const PageBits& b = now[n].bits;
      if (k < p.seen.size() && p.seen[k].page == now[n].page && b.present() &&
          p.seen[k].bits.present() && b.pfn() == p.seen[k].bits.pfn() && b.pfn()) {
        kept.push_back(b.pfn());
        kept_at.push_back(n);
      }
    }
  }
  std::vector<bool> accessed(now.size(), false);
  if (!kept.empty()) {
    std::vector<std::size_t> order(kept.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return kept[a] < kept[b]; });
    std::vector<std::uint64_t> sorted;
    for (std::size_t i : order) sorted.push_back(kept[i]);
    const std::vector<bool> idle = idle_->still_idle(sorted);
    for (std::size_t i = 0; i < order.size(); ++i) accessed[kept_at[order[i]]] = !idle[i];
  }
  TraceEvent w, r;
  w.kind = r.kind = TraceKind::touch;
  w.pid = r.pid = std::uint32_t(p.pid);
  w.write = true;
  std::size_t j = 0;
  for (std::size_t n = 0; n < now.size(); ++n) {
    const Seen& s = now[n];
    while (j < p.seen.size() && p.seen[j].page < s.page) ++j;
    const bool known = j < p.seen.size() && p.seen[j].page == s.page;
    bool written = false, first = !known;
    if (method_ == WriteMethod::soft_dirty) {
      written = s.bits.soft_dirty();
    } else if (known) {
      const PageBits& old = p.seen[j].bits;
      written = s.bits.present() && old.present() && s.bits.pfn() != old.pfn();
    } else {
      written = true;  // a first touch: a write or a read, indistinguishable here
    }
    written = written && s.writable;
    if (first) ++stats_.pages_first_touched;
    if (written) {
      w.pages.push_back(s.page * kPage);
      ++stats_.pages_written;
    } else if (first || accessed[n]) {
      r.pages.push_back(s.page * kPage);
    }
    if (idle_ && s.bits.present() && s.bits.pfn()) to_mark_.push_back(s.bits.pfn());
  }
  if (!w.pages.empty()) out_.write(w);
  if (!r.pages.empty()) out_.write(r);
  p.seen = std::move(now);
  if (method_ == WriteMethod::soft_dirty) clear_soft_dirty(p.pid);
}

// New children of recorded processes: a fork each, with the parent's VMAs and pages as they
// were last seen (the child's first scan then reports only what differs from them).
void Recorder::discover() {
  std::erase_if(ended_,
                [](pid_t pid) { return !std::filesystem::exists("/proc/" + std::to_string(pid)); });
  for (std::size_t i = 0; i < order_.size(); ++i) {
    const Proc& parent = *procs_.at(order_[i]);
    for (pid_t c : children(parent.pid)) {
      if (procs_.count(c) || ended_.count(c) || !alive(c)) continue;
      auto child = std::make_unique<Proc>(parent);
      child->pid = c;
      TraceEvent e;
      e.kind = TraceKind::fork;
      e.pid = std::uint32_t(parent.pid);
      e.child = std::uint32_t(c);
      out_.write(e);
      // Soft-dirty bits are inherited by the child's PTEs: the parent's writes since its last
      // scan would show as the child's. Start the child clean.
      if (method_ == WriteMethod::soft_dirty) clear_soft_dirty(c);
      procs_.emplace(c, std::move(child));
      order_.push_back(c);
      ++stats_.processes;
    }
  }
}

bool Recorder::step() {
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds();
  TraceEvent st;
  st.kind = TraceKind::step;
  st.time_ns =
      std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(t0 - start_).count());
  if (first_) st.time_ns = 0;
  out_.write(st);
  if (first_) {
    first_ = false;
    TraceEvent sp;
    sp.kind = TraceKind::spawn;
    sp.pid = std::uint32_t(root_);
    out_.write(sp);
    procs_.emplace(root_, std::make_unique<Proc>(Proc{root_, {}, {}}));
    order_.push_back(root_);
    ++stats_.processes;
    if (method_ == WriteMethod::soft_dirty) clear_soft_dirty(root_);  // the next scan's writes
  }
  if (follow_) discover();
  std::vector<pid_t> gone;
  for (pid_t pid : order_) {
    Proc& p = *procs_.at(pid);
    std::vector<Vma> now = read_maps(pid);
    if (!alive(pid) || now.empty()) {
      gone.push_back(pid);
      continue;
    }
    diff_maps(p, now);
    scan(p);
  }
  if (idle_) {  // after every process's check: a frame two processes share is seen by both
    std::sort(to_mark_.begin(), to_mark_.end());
    to_mark_.erase(std::unique(to_mark_.begin(), to_mark_.end()), to_mark_.end());
    idle_->mark_idle(to_mark_);
    to_mark_.clear();
  }
  bool root_gone = false;
  for (pid_t pid : gone) {
    emit_exit(pid);
    ended_.insert(pid);
    procs_.erase(pid);
    order_.erase(std::find(order_.begin(), order_.end(), pid));
    root_gone = root_gone || pid == root_;
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++stats_.intervals;
  stats_.scan_s_total += dt;
  stats_.scan_s_max = std::max(stats_.scan_s_max, dt);
  stats_.cpu_s += cpu_seconds() - cpu0;
  if (dt > std::chrono::duration<double>(interval_).count()) ++stats_.late_intervals;
  if (root_gone) finish();
  return !root_gone;
}

void Recorder::finish() {
  // Children before parents, as they would be reaped.
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) emit_exit(*it);
  order_.clear();
  procs_.clear();
}

}  // namespace cowpte::record
