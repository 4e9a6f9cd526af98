#!/usr/bin/env python3
"""Plots of cowpte-sim trace replays, one bar per run (usually one per fork policy).

    sim_plot.py RUN.json... --out PLOT.png [--title TEXT] [--real-fork-us US]

Each RUN.json is cowpte-sim --json output of a trace replay (docs/cowpte-sim.md). The panels
show the first fork of each run: its simulated latency (with --real-fork-us, the program's own
measured fork as a line), the parent's store latencies while the child lived (p50, p99, max),
and the memory the copies took beyond what was in use before the fork.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--real-fork-us", type=float)
    a = ap.parse_args()
    rows = []
    for path in a.runs:
        try:
            with open(path) as f:
                d = json.load(f)
            fk = d["result"]["forks"][0]
        except (OSError, ValueError, KeyError, IndexError) as e:
            ap.error(f"{path}: not a cowpte-sim trace replay with a fork ({e!r})")
        g = d["ghz"]
        ps = fk["parent_stores"]
        rows.append((d["policy"], fk["cycles"] / g / 1e3, [ps[k] / g / 1e3 for k in ("p50", "p99", "max")],
                     fk["extra_frames_max"] * 4096 / 2**20))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r[0] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    ax[0].bar(names, [r[1] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax[0].set_yscale("log")
    ax[0].set_ylabel("fork latency (us, simulated)")
    if a.real_fork_us:
        ax[0].axhline(a.real_fork_us, color="k", ls="--", label=f"real fork {a.real_fork_us / 1000:.1f} ms")
        ax[0].legend()
    x = range(len(rows))
    for i, q in enumerate(("p50", "p99", "max")):
        ax[1].bar([j + (i - 1) * 0.27 for j in x], [r[2][i] for r in rows], width=0.27, label=q)
    ax[1].set_xticks(list(x), names)
    ax[1].set_yscale("log")
    ax[1].set_ylabel("parent's stores while the child lived (us)")
    ax[1].legend()
    ax[2].bar(names, [r[3] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax[2].set_ylabel("extra memory (MiB)")
    for a_ in ax:
        a_.tick_params(axis="x", labelrotation=20)
    fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=90)
    print(f"sim_plot: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
