#!/usr/bin/env python3
"""Tables and plots of the fork-latency comparison.

Reads the Google Benchmark JSON that cowpte_bench_policies wrote (--benchmark_out), prints the
comparison as tables (plain text, or Markdown with --markdown) and, with --plots DIR, renders PNG
plots with matplotlib:

    report.py results/compare.json [--markdown] [--plots results/plots]

Every figure is simulated time unless a column says "host" or "real".
"""
import argparse
import json
import math
import statistics
import sys
from collections import defaultdict

# Fork policies by their registry names (cowpte::fork_policy_names()). The built-in ones come
# first, in this order, with these labels; any other policy in the JSON (a policy added to
# src/fork/policies/builtin.def) follows under its own name.
KNOWN = ["classic", "seed", "on_demand_fork", "rfc_v2"]
LABEL = {"classic": "classic fork", "seed": "COW PTE (seed, v3)",
         "on_demand_fork": "On-demand-fork", "rfc_v2": "COW PTE RFC v2"}
POLICIES = list(KNOWN)  # set from the data by main()
MARKERS = "os^vD<>ph"


def label(p):
    return LABEL.get(p, p)


def color(p):
    return f"C{POLICIES.index(p) % 10}"


def nsof(ns, p):
    """The value of policy p in a list aligned with POLICIES, or None."""
    return ns[POLICIES.index(p)] if p in POLICIES else None


def parse(path):
    """{kind: [record]}, a record being the name's key:value pairs plus the counters. With
    --benchmark_repetitions, each number is the median of the repetitions."""
    with open(path) as f:
        doc = json.load(f)
    runs = defaultdict(list)
    for b in doc["benchmarks"]:
        if b.get("run_type") != "aggregate":
            runs[b["run_name"]].append(b)
    out = defaultdict(list)
    for name, reps in runs.items():
        parts = name.split("/")
        rec = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
        for k in ("mib", "touch", "every", "timed", "swapped", "tasks"):
            if k in rec:
                rec[k] = int(rec[k])
        errors = [b.get("error_message", "error") for b in reps if b.get("error_occurred")]
        if errors:
            rec["error"] = errors[0]
        keys = {k for b in reps for k, v in b.items() if isinstance(v, (int, float))}
        rec.update({k: statistics.median(b[k] for b in reps if k in b) for k in keys})
        out[parts[0]].append(rec)
    return doc.get("context", {}), out


def index(recs, *keys):
    return {tuple(r.get(k) for k in keys): r for r in recs if "error" not in r}


def size(mib):
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def fmt(v, unit=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    for lim, div, u in ((1e9, 1e9, "s"), (1e6, 1e6, "ms"), (1e3, 1e3, "us"), (0, 1, "ns")):
        if unit == "ns" and abs(v) >= lim:
            return f"{v / div:.3g} {u}"
    if unit == "x":
        return f"{v:.3g}x"
    if unit == "%":
        return f"{v:+.0f}%"
    return f"{v:.4g}"


class Table:
    def __init__(self, title, header, note=None):
        self.title, self.header, self.rows, self.note = title, header, [], note

    def add(self, *cells):
        self.rows.append([str(c) for c in cells])

    def render(self, markdown):
        if not self.rows:
            return ""
        if markdown:
            lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
                     "|" + "---|" * len(self.header)]
            lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        else:
            w = [max(len(str(x)) for x in col) for col in zip(self.header, *self.rows)]
            line = lambda cells: "  ".join(c.rjust(n) for c, n in zip(cells, w))
            lines = [self.title, line(self.header), line(["-" * n for n in w])]
            lines += [line(r) for r in self.rows]
        if self.note:
            lines += ["", self.note] if markdown else [self.note]
        return "\n".join(lines) + "\n"


def fork_tables(d):
    forks = index(d["fork"], "layout", "policy", "mib", "timed")
    real = index(d["real_fork"], "mib")
    sizes = sorted({k[2] for k in forks if k[0] == "plain" and k[3] == 1})
    own = max((r.get("own_rss_MiB", 0) for r in d["real_fork"]), default=0)
    t = Table("Fork latency, simulated, one VMA of populated 4 KiB anonymous memory",
              ["size"] + [label(p) for p in POLICIES] +
              ["COW PTE vs fork", "ODF speed-up", "real fork (this machine)",
               "simulated classic vs real"],
              note=f"Real: the median of this machine's kernel forking a process with the same "
                   f"memory populated; that process also has the benchmark's own {own:.1f} MiB "
                   f"resident, which the simulated one has not (cowpte_calibrate simulates it "
                   f"too), so small sizes compare the fixed costs of a real process."
              if d["real_fork"] else None)
    for s in sizes:
        ns = [forks.get(("plain", p, s, 1), {}).get("sim_ns") for p in POLICIES]
        r = real.get((s,), {}).get("median_ns")
        c, sd, odf = nsof(ns, "classic"), nsof(ns, "seed"), nsof(ns, "on_demand_fork")
        rel = (sd / c - 1) * 100 if c and sd else None
        t.add(size(s), *[fmt(v, "ns") for v in ns], fmt(rel, "%"),
              fmt(c / odf, "x") if c and odf else "-", fmt(r, "ns"),
              fmt((c / r - 1) * 100, "%") if r and c else "-")
    m = Table("Page-table memory after fork (plain layout)",
              ["size"] + [f"child VmPTE, {p}" for p in POLICIES] +
              [f"table frames fork allocated, {p}" for p in POLICIES])
    for s in sizes:
        rs = [forks.get(("plain", p, s, 1), {}) for p in POLICIES]
        m.add(size(s), *[f"{r.get('child_VmPTE_kB', 0):.0f} kB" for r in rs],
              *[f"{r.get('table_frames_allocated', 0):.0f}" for r in rs])
    lay = Table("Fork latency by layout (simulated)",
                ["layout", "size"] + [label(p) for p in POLICIES] + ["ODF speed-up"])
    for (l, p0, s, tm) in sorted(forks, key=lambda k: (k[0], k[2])):
        if l == "plain" or p0 != "classic" or tm != 1:
            continue
        ns = [forks.get((l, p, s, 1), {}).get("sim_ns") for p in POLICIES]
        c, odf = nsof(ns, "classic"), nsof(ns, "on_demand_fork")
        lay.add(l, size(s), *[fmt(v, "ns") for v in ns], fmt(c / odf, "x") if c and odf else "-")
    return [t, m, lay]


def speed_table(d):
    forks = index(d["fork"], "layout", "policy", "mib", "timed")
    real = index(d["real_fork"], "mib")
    t = Table("Simulator speed: host time per populated page of one fork",
              ["size"] + [f"{p}, {'timed' if tm else 'functional'}" for tm in (0, 1)
                          for p in POLICIES] + ["real fork per page"])
    sizes = sorted({k[2] for k in forks if k[0] == "plain" and k[3] == 0})
    for s in sizes:
        cells = [forks.get(("plain", p, s, tm), {}).get("host_s_per_page")
                 for tm in (0, 1) for p in POLICIES]
        r = real.get((s,), {}).get("median_ns")
        t.add(size(s), *[fmt(c * 1e9 if c else None, "ns") for c in cells], fmt(r / (s * 256) if r else None, "ns"))
    return [t]


def write_tables(d):
    w = index(d["write_after_fork"], "policy", "pattern")
    mib = next((r["mib"] for r in d["write_after_fork"] if "mib" in r), None)
    t = Table(f"The parent's writes after a fork of {size(int(mib)) if mib else '?'} "
              "(per store, simulated)",
              ["pattern", "policy", "mean", "p50", "p90", "p99", "p99.9", "max",
               "first store per 2 MiB", "extra per 2 MiB vs fork"])
    for pat in ("sequential", "random"):
        base = w.get(("classic", pat), {}).get("first_in_span_cycles")
        for p in POLICIES:
            r = w.get((p, pat))
            if not r:
                continue
            extra = r["first_in_span_cycles"] - base if base is not None else None
            t.add(pat, label(p), *[fmt(r[k], "ns") for k in
                                   ("mean_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns")],
                  fmt(r["first_in_span_mean_ns"], "ns"),
                  f"{extra:+.0f} cycles" if extra is not None else "-")
    return [t]


def server_tables(d):
    s = index(d["fork_server"], "policy", "mib", "touch")
    t = Table("Fork server (AFL): fork, the child writes K pages and exits",
              ["memory", "K", "policy", "execs per second", "vs fork", "fork", "child", "exit"])
    for (p0, mib, k) in sorted(s, key=lambda x: (x[1], x[2])):
        if p0 != "classic":
            continue
        base = s[(p0, mib, k)]["execs_per_sim_s"]
        for p in POLICIES:
            r = s.get((p, mib, k))
            if r:
                t.add(size(mib), k, label(p), f"{r['execs_per_sim_s']:.0f}",
                      fmt(r["execs_per_sim_s"] / base, "x"),
                      *[fmt(r[c], "ns") for c in ("fork_ns", "child_ns", "exit_ns")])
    return [t]


def snapshot_tables(d):
    s = index(d["snapshot"], "policy", "mib", "every")
    t = Table("Snapshot (Redis BGSAVE): the child reads every page, the parent writes a random "
              "page every E pages the child reads",
              ["memory", "E", "policy", "fork", "write p50", "write p99", "write max",
               "copied pages", "copied tables", "extra memory", "of which tables"])
    for (p0, mib, e) in sorted(s, key=lambda x: (x[1], x[2])):
        if p0 != "classic":
            continue
        for p in POLICIES:
            r = s.get((p, mib, e))
            if r:
                t.add(size(mib), e, label(p), fmt(r["fork_ns"], "ns"),
                      *[fmt(r[c], "ns") for c in ("write_p50_ns", "write_p99_ns", "write_max_ns")],
                      f"{r['copied_pages']:.0f}", f"{r['copied_tables']:.0f}",
                      f"{r['extra_MiB']:.2f} MiB", f"{r['extra_table_kB']:.0f} kB")
    return [t]


def trace_real(trace):
    """The real run's figures next to a committed trace (docs/traces/T.json), or {}."""
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "traces",
                        f"{trace}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def trace_tables(d):
    s = index(d["trace"], "policy", "trace")
    t = Table("Recorded traces replayed (docs/traces/): the first fork and, while its child "
              "lived, the parent's writes and the memory the copies took",
              ["trace", "policy", "fork", "real fork", "writes", "write p50", "write p99",
               "write max", "copied pages", "copied tables", "extra memory", "refused calls"],
              note="real fork: what the recorded program reported for its fork (Redis INFO's "
                   "latest_fork_usec), from the trace's .json; the simulated fork is of the "
                   "pages the trace saw present or touched")
    for (p0, trace) in sorted(s, key=lambda x: x[1]):
        if p0 != "classic":
            continue
        real = trace_real(trace).get("latest_fork_usec")
        for p in POLICIES:
            r = s.get((p, trace))
            if r:
                t.add(trace, label(p), fmt(r["fork_ns"], "ns"),
                      fmt(real * 1000, "ns") if real is not None else "-",
                      f"{r['writes']:.0f}",
                      *[fmt(r[c], "ns") for c in ("write_p50_ns", "write_p99_ns", "write_max_ns")],
                      f"{r['copied_pages']:.0f}", f"{r['copied_tables']:.0f}",
                      f"{r['extra_MiB']:.2f} MiB", f"{r['refused_calls']:.0f}")
    return [t] if s else []


def thp_tables(d):
    """Fork of THP-backed memory against 4 KiB memory, the writes after it, and khugepaged."""
    thp = index(d["thp_fork"], "policy", "mib")
    if not thp:
        return []
    forks = index(d["fork"], "layout", "policy", "mib", "timed")
    real, real_thp = index(d["real_fork"], "mib"), index(d["real_thp_fork"], "mib")
    sizes = sorted({k[1] for k in thp})
    t = Table("Fork latency with THP \"always\" (2 MiB-aligned memory) against 4 KiB pages, "
              "simulated",
              ["size"] + [f"THP, {label(p)}" for p in POLICIES] +
              [f"4 KiB, {label(p)}" for p in POLICIES] +
              ["THPs", "real fork, MADV_HUGEPAGE", "real AnonHugePages", "real fork, 4 KiB"],
              note="4 KiB: the plain layout's forks of the same size (a size the sweep did not "
                   "run shows -). With THP every policy forks the same way: a PMD-mapped THP "
                   "takes copy_huge_pmd, COW PTE has no table to share.")
    for s in sizes:
        rt = real_thp.get((s,), {})
        t.add(size(s), *[fmt(thp.get((p, s), {}).get("sim_ns"), "ns") for p in POLICIES],
              *[fmt(forks.get(("plain", p, s, 1), {}).get("sim_ns"), "ns") for p in POLICIES],
              f"{thp.get(('classic', s), {}).get('anon_thp', 0):.0f}",
              fmt(rt.get("median_ns"), "ns"),
              f"{rt['anon_huge_MiB']:.0f} MiB" if "anon_huge_MiB" in rt else "-",
              fmt(real.get((s,), {}).get("median_ns"), "ns"))
    out = [t]
    w = index(d["thp_write_after_fork"], "policy")
    if w:
        mib = next((r["mib"] for r in d["thp_write_after_fork"] if "mib" in r), None)
        wt = Table(f"The parent's sequential writes after a THP fork of "
                   f"{size(int(mib)) if mib else '?'} (per store, simulated)",
                   ["policy", "first store per 2 MiB (split + 4 KiB copy)", "mean", "p99", "max",
                    "PMDs split"])
        for p in POLICIES:
            r = w.get((p,))
            if r:
                wt.add(label(p), fmt(r["first_in_span_mean_ns"], "ns"), fmt(r["mean_ns"], "ns"),
                       fmt(r["p99_ns"], "ns"), fmt(r["max_ns"], "ns"),
                       f"{r.get('thp_split_pmd', 0):.0f}")
        out.append(wt)
    k = index(d["khugepaged"], "policy", "mib")
    if k:
        kt = Table("One khugepaged pass over a parent and its live child sharing 4 KiB memory "
                   "(simulated)",
                   ["size", "policy", "pass", "per 2 MiB span", "table frames allocated",
                    "collapsed"],
                   note="Every page is shared, so nothing collapses (max_ptes_shared 256); under "
                        "COW PTE the scan breaks each shared table first (the series' patch 05).")
        for (p0, s) in sorted(k, key=lambda x: x[1]):
            if p0 != "classic":
                continue
            for p in POLICIES:
                r = k.get((p, s))
                if r:
                    kt.add(size(s), label(p), fmt(r["pass_ns"], "ns"),
                           fmt(r["pass_ns_per_span"], "ns"),
                           f"{r['table_frames_allocated']:.0f}", f"{r['collapsed']:.0f}")
        out.append(kt)
    return out


def thread_tables(d):
    """Fork of a multithreaded parent, and the parent's threads writing after a fork."""
    out = []
    f = index(d["threaded_fork"], "policy", "mib", "tasks")
    if f:
        for mib in sorted({k[1] for k in f}):
            threads = sorted({k[2] for k in f if k[1] == mib})
            t = Table(f"Fork of a {size(mib)} parent with threads, one CPU each (simulated)",
                      ["threads"] + [f"{label(p)}" for p in POLICIES] + ["shootdown IPIs"],
                      note="The fork write-protects the parent's PTEs and flushes its TLB "
                           "entries on every other CPU the mm ran on: one IPI each, charged "
                           "to both sides.")
            for n in threads:
                t.add(str(n), *[fmt(f.get((p, mib, n), {}).get("sim_ns"), "ns") for p in POLICIES],
                      f"{f.get(('classic', mib, n), {}).get('shootdowns_sent', 0):.0f}")
            out.append(t)
    w = index(d["threaded_writes"], "policy", "mib", "tasks")
    if w:
        for mib in sorted({k[1] for k in w}):
            t = Table(f"The parent's threads writing every page of {size(mib)} after a fork, "
                      f"round-robin within each table (simulated)",
                      ["threads", "policy", "writes per second", "makespan", "lock waits",
                       "waited"],
                      note="Thread t writes pages t, t+T, ... of each 2 MiB span, so their "
                           "faults meet on each table's split lock; under COW PTE the first "
                           "write breaks the shared table while the others wait.")
            for n in sorted({k[2] for k in w if k[1] == mib}):
                for p in POLICIES:
                    r = w.get((p, mib, n))
                    if r:
                        t.add(str(n), label(p), f"{r['writes_per_sim_s'] / 1e6:.2f} M",
                              fmt(r["makespan_ns"], "ns"), f"{r['lock_waits']:.0f}",
                              fmt(r["lock_wait_ns"], "ns"))
            out.append(t)
    return out


def plot_thp_fork(plt, d):
    thp = index(d["thp_fork"], "policy", "mib")
    forks = index(d["fork"], "layout", "policy", "mib", "timed")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, mk in zip(POLICIES, MARKERS):
        xs = sorted(s for (q, s) in thp if q == p)
        ax.plot(xs, [thp[(p, s)]["sim_ns"] / 1e6 for s in xs], marker=mk, color=color(p),
                label=f"THP, {label(p)}")
        xs = sorted(k[2] for k in forks if k[0] == "plain" and k[1] == p and k[3] == 1)
        ax.plot(xs, [forks[("plain", p, s, 1)]["sim_ns"] / 1e6 for s in xs], marker=mk,
                color=color(p), linestyle=":", fillstyle="none", label=f"4 KiB, {label(p)}")
    for kind, style, lab in (("real_thp_fork", "k--", "real kernel, MADV_HUGEPAGE"),
                             ("real_fork", "k:", "real kernel, 4 KiB")):
        r = index(d[kind], "mib")
        xs = sorted(k[0] for k in r)
        ax.plot(xs, [r[(s,)]["median_ns"] / 1e6 for s in xs], style, marker="x", label=lab)
    ax.set(xscale="log", yscale="log", xlabel="populated memory (MiB)", ylabel="fork latency (ms)",
           title="fork() of THP-backed memory against 4 KiB pages")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def swap_tables(d):
    s = index(d["swapped_fork"], "policy", "mib", "swapped")
    t = Table("Fork of swapped-out memory: the parent's first S% pages were paged out "
              "(MADV_PAGEOUT) before it forks",
              ["memory", "swapped", "policy", "fork", "vs classic", "swap entries"])
    for (p0, mib, sw) in sorted(s, key=lambda x: (x[1], x[2])):
        if p0 != "classic":
            continue
        base = s[(p0, mib, sw)]["sim_ns"]
        for p in POLICIES:
            r = s.get((p, mib, sw))
            if r:
                t.add(size(mib), f"{sw}%", label(p), fmt(r["sim_ns"], "ns"),
                      fmt(r["sim_ns"] / base, "x"), f"{r['swapped_pages']:.0f}")
    q = index(d["pressure_snapshot"], "policy", "mib", "every")
    u = Table("Snapshot under memory pressure: memory is 75% of the parent's plus the copies, "
              "with a swap device (NVMe latencies)",
              ["memory", "policy", "fork", "write p50", "write p99", "write max",
               "child read per page", "swap-ins", "swap-outs", "tables broken by rmap",
               "OOM kills"])
    for (p0, mib, e) in sorted(q, key=lambda x: (x[1], x[2])):
        if p0 != "classic":
            continue
        for p in POLICIES:
            r = q.get((p, mib, e))
            if r:
                u.add(size(mib), label(p), fmt(r["fork_ns"], "ns"),
                      *[fmt(r[c], "ns") for c in ("write_p50_ns", "write_p99_ns", "write_max_ns")],
                      fmt(r["child_read_ns_per_page"], "ns"), f"{r['swap_ins']:.0f}",
                      f"{r['swap_outs']:.0f}", f"{r['rmap_breaks']:.0f}", f"{r['oom_kills']:.0f}")
    return [t, u]


def plot_swapped_fork(plt, d):
    s = index(d["swapped_fork"], "policy", "mib", "swapped")
    mib = max(k[1] for k in s)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, mk in zip(POLICIES, MARKERS):
        xs = sorted(k[2] for k in s if k[0] == p and k[1] == mib)
        ax.plot(xs, [s[(p, mib, x)]["sim_ns"] / 1e6 for x in xs], marker=mk, color=color(p),
                label=label(p))
    ax.set(xlabel="share of the parent swapped out (%)", ylabel="fork latency (ms, simulated)",
           title=f"fork() of {size(mib)} partly on swap")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def plot_pressure_snapshot(plt, d):
    q = index(d["pressure_snapshot"], "policy", "mib", "every")
    mibs = sorted({k[1] for k in q})
    cols = [("fork_ns", "fork"), ("write_p99_ns", "parent write p99"),
            ("child_read_ns_per_page", "child read per page")]
    fig, axes = plt.subplots(1, len(cols), figsize=(12, 4))
    for ax, (key, title) in zip(axes, cols):
        for i, p in enumerate(POLICIES):
            wd = 0.8 / len(POLICIES)
            xs = [j + (i - (len(POLICIES) - 1) / 2) * wd for j in range(len(mibs))]
            ys = [q[(p, m, 16)][key] / 1e3 if (p, m, 16) in q else 0 for m in mibs]
            ax.bar(xs, ys, width=wd, color=color(p), label=label(p))
        ax.set_xticks(range(len(mibs)), [size(m) for m in mibs])
        ax.set(yscale="log" if key == "fork_ns" else "linear", ylabel="us (simulated)",
               title=title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("snapshot with memory at 75% of what it needs, NVMe swap")
    return fig


def plot_fork_latency(plt, d, forks, sizes):
    real = index(d["real_fork"], "mib")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, mk in zip(POLICIES, MARKERS):
        xs = [s for s in sizes if ("plain", p, s, 1) in forks]
        ax.plot(xs, [forks[("plain", p, s, 1)]["sim_ns"] / 1e6 for s in xs], marker=mk,
                color=color(p), label=f"{label(p)} (simulated)")
    xs = sorted(k[0] for k in real)
    ax.plot(xs, [real[(s,)]["median_ns"] / 1e6 for s in xs], "k--", marker="x",
            label="this machine's kernel (real)")
    ax.set(xscale="log", yscale="log", xlabel="populated memory (MiB)", ylabel="fork latency (ms)",
           title="fork() latency against populated 4 KiB anonymous memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_fault_latency(plt, d):
    w = index(d["write_after_fork"], "policy", "pattern")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    qs = [("mean_ns", "mean"), ("p50_ns", "p50"), ("p90_ns", "p90"), ("p99_ns", "p99"),
          ("p999_ns", "p99.9"), ("max_ns", "max")]
    for ax, pat in zip(axes, ("sequential", "random")):
        for i, p in enumerate(POLICIES):
            r = w.get((p, pat))
            if r:
                wd = 0.8 / len(POLICIES)
                ax.bar([j + (i - (len(POLICIES) - 1) / 2) * wd for j in range(len(qs))],
                       [r[k] for k, _ in qs], width=wd, color=color(p), label=label(p))
        ax.set_xticks(range(len(qs)), [q for _, q in qs])
        ax.set(yscale="log", ylabel="store latency (ns, simulated)",
               title=f"{pat} writes after fork")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_pgtable_memory(plt, forks, sizes):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, mk in zip(POLICIES, MARKERS):
        xs = [s for s in sizes if ("plain", p, s, 1) in forks]
        ax.plot(xs, [forks[("plain", p, s, 1)]["table_frames_allocated"] * 4 for s in xs],
                marker=mk, color=color(p), label=f"{label(p)}: table memory fork allocated")
        ax.plot(xs, [forks[("plain", p, s, 1)]["child_VmPTE_kB"] for s in xs], marker=mk,
                color=color(p), linestyle=":", fillstyle="none",
                label=f"{label(p)}: child's VmPTE")
    ax.set(xscale="log", yscale="log", xlabel="populated memory (MiB)", ylabel="kB",
           title="page-table memory of the child")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plots(d, outdir):
    """The PNGs whose data the run has; their file names."""
    import os
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    forks = index(d["fork"], "layout", "policy", "mib", "timed")
    sizes = sorted({k[2] for k in forks if k[0] == "plain" and k[3] == 1})
    figs = {}
    if sizes:
        figs["fork_latency.png"] = plot_fork_latency(plt, d, forks, sizes)
        figs["pgtable_memory.png"] = plot_pgtable_memory(plt, forks, sizes)
    if index(d["write_after_fork"], "policy"):
        figs["fault_latency.png"] = plot_fault_latency(plt, d)
    if index(d["swapped_fork"], "policy"):
        figs["swapped_fork.png"] = plot_swapped_fork(plt, d)
    if index(d["pressure_snapshot"], "policy"):
        figs["pressure_snapshot.png"] = plot_pressure_snapshot(plt, d)
    if index(d["thp_fork"], "policy"):
        figs["thp_fork.png"] = plot_thp_fork(plt, d)
    for name, fig in figs.items():
        fig.tight_layout()
        fig.savefig(f"{outdir}/{name}", dpi=110)
        plt.close(fig)
    return sorted(figs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--plots", metavar="DIR")
    ap.add_argument("--require-all", action="store_true",
                    help="fail unless every kind of benchmark ran (a filtered run need not)")
    a = ap.parse_args()
    try:
        ctx, d = parse(a.json)
    except (OSError, ValueError, KeyError, TypeError) as e:  # no file, or not benchmark JSON
        ap.error(f"cannot read {a.json} as Google Benchmark JSON: {e!r}")
    seen = {r["policy"] for recs in d.values() for r in recs if "policy" in r}
    POLICIES[:] = [p for p in KNOWN if p in seen] + sorted(seen - set(KNOWN))
    errors = [r for recs in d.values() for r in recs if "error" in r]
    tables = (fork_tables(d) + write_tables(d) + server_tables(d) + snapshot_tables(d) +
              trace_tables(d) + swap_tables(d) + thp_tables(d) + thread_tables(d) + speed_table(d))
    print(f"cowpte fork comparison, sweep '{ctx.get('cowpte_sweep', '?')}', "
          f"{ctx.get('date', '')}, {ctx.get('num_cpus', '?')} CPUs\n")
    for t in tables:
        print(t.render(a.markdown))
    if a.plots:
        for p in plots(d, a.plots):
            print(f"plot: {a.plots}/{p}")
    for r in errors:
        print(f"benchmark failed: {r}", file=sys.stderr)
    missing = [k for k in ("fork", "real_fork", "write_after_fork", "fork_server", "snapshot", "trace",
                           "swapped_fork", "pressure_snapshot", "thp_fork", "real_thp_fork",
                           "thp_write_after_fork", "khugepaged", "threaded_fork",
                           "threaded_writes")
               if not d.get(k)]
    if missing:
        print(f"report: no {', '.join(missing)} benchmarks in {a.json}", file=sys.stderr)
    if errors:
        print(f"report: {len(errors)} benchmarks failed", file=sys.stderr)
    return 1 if errors or (missing and a.require_all) else 0


if __name__ == "__main__":
    sys.exit(main())
