#!/usr/bin/env python3
"""Check the simulator's speed against this machine's real fork and its cores, measured in the same run.

    speed_check.py RUN.json [RUN.json...] [--baseline bench/speed-baseline.json] [--update]

RUN.json is cowpte_bench_speed's --benchmark_out. Every time figure (host ns per page of fork,
exit and the first write after fork; ns per load of the walks) is divided by the real fork's
ns per page of the same run (its fastest fork), and by the host anchor's ns per step of a fixed
loop (speed/host_anchor, the host's core speed), and both ratios are compared with the
baseline's. A figure fails when both its ratios are more than twice the baseline's (the real
fork's ratio alone moved 4x between VMs; the two anchors do not mislead the same way), or, for
figures too small to time on a shared machine (On-demand-fork's fork and exit of a few tables,
microseconds), more than 2 x 0.01. A baseline without the host anchor's ratios holds each
figure to the real fork alone. Host memory figures (bytes per page, MiB kept after exit) are
not times; they fail above twice the baseline. With several runs, a figure fails only if it
fails in every run (noise on a shared 2-core machine comes and goes; a regression stays).
--update writes the baseline instead: each figure's largest value over the runs given (the
slowest run sets the bar, so that a quiet moment does not). Prints a table; exits 1 on a
failure, 2 on bad input.
"""

import argparse
import json
import re
import sys

TIME_COUNTERS = ("fork_ns_per_page", "exit_ns_per_page", "write_ns_per_page", "loads_per_s")
ANCHOR_COUNTERS = ("min_ns_per_page", "ns_per_page", "cpu_ns_per_op")
MEMORY_COUNTERS = ("bytes_per_page", "after_exit_host_MiB")
FLOOR = 0.01


def figures(path):
    """{figure: value}, times as ratios to the real fork (/real) and to the host anchor (/host)
    when the run has it, and the real fork's ns per page."""
    with open(path) as f:
        doc = json.load(f)
    raw = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate" or b.get("error_occurred"):
            continue
        name = re.sub(r"/iterations:\d+|/manual_time|/real_time", "",
                      b["run_name"].removeprefix("speed/"))
        for k, v in b.items():
            if k in TIME_COUNTERS or k in MEMORY_COUNTERS or k in ANCHOR_COUNTERS:
                raw[f"{name}:{k}"] = float(v)
    real = [v for k, v in raw.items() if k.startswith("real_fork/") and k.endswith(":min_ns_per_page")]
    if not real:
        raise ValueError(f"no real_fork figure in {path}")
    host = [v for k, v in raw.items() if k.endswith(":cpu_ns_per_op")]
    out = {}
    for k, v in raw.items():
        counter = k.rsplit(":", 1)[1]
        if counter in ANCHOR_COUNTERS:
            continue
        if counter in TIME_COUNTERS:
            ns = 1e9 / v if counter == "loads_per_s" else v
            k = k.replace("loads_per_s", "ns_per_load")
            out[k + "/real"] = ns / real[0]
            if host:
                out[k + "/host"] = ns / host[0]
        else:
            out[k] = v
    return out, real[0]


def limit(base, k):
    return 2 * (max(base[k], FLOOR) if k.endswith("/real") else base[k])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--baseline", default="bench/speed-baseline.json")
    ap.add_argument("--update", action="store_true")
    a = ap.parse_args()
    try:
        runs = [figures(p) for p in a.runs]
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"cannot read the run: {e!r}")
    if a.update:
        figs = {k: max(r[0][k] for r in runs if k in r[0]) for k in runs[0][0]}
        real = min(r[1] for r in runs)
        with open(a.baseline, "w") as f:
            json.dump({"real_fork_ns_per_page": real, "figures": figs}, f, indent=1,
                      sort_keys=True)
            f.write("\n")
        print(f"speed_check: wrote {len(figs)} figures to {a.baseline}")
        return 0
    try:
        with open(a.baseline) as f:
            base = json.load(f)["figures"]
    except (OSError, ValueError, KeyError) as e:
        ap.error(f"cannot read the baseline {a.baseline}: {e!r}")
    failed = []
    print(f"{'figure':72} {'baseline':>10} " + " ".join(f"{'run ' + str(i + 1):>10}"
                                                        for i in range(len(runs))))
    for k in sorted(base):
        vals = [r[0].get(k) for r in runs]
        over = [v is None or v > limit(base, k) for v in vals]
        # A time figure fails in a run when its ratio to the host anchor is over the bar too
        # (if the baseline has that ratio); the /host rows are shown, and judged with /real.
        if k.endswith("/real") and k[:-5] + "/host" in base:
            h = k[:-5] + "/host"
            over = [o and (r[0].get(h) is None or r[0][h] > limit(base, h))
                    for o, r in zip(over, runs)]
        bad = not k.endswith("/host") and all(over)
        print(f"{k:72} {base[k]:10.4g} " +
              " ".join(f"{'-' if v is None else format(v, '.4g'):>10}" for v in vals) +
              ("  REGRESSED" if bad else ""))
        if bad:
            failed.append(k)
    print("real fork ns/page (fastest of the run): " + ", ".join(f"{r[1]:.1f}" for r in runs))
    if failed:
        print(f"speed_check: {len(failed)} figures more than 2x their baseline in every run: "
              + ", ".join(failed), file=sys.stderr)
        return 1
    n = sum(not k.endswith("/host") for k in base)
    print(f"speed_check: {n} figures within 2x of their baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
