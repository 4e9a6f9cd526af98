#!/usr/bin/env python3
"""Check the simulator's speed against this machine's real fork, measured in the same run.

    speed_check.py RUN.json [RUN.json...] [--baseline bench/speed-baseline.json] [--update]

RUN.json is cowpte_bench_speed's --benchmark_out. Every time figure (host ns per page of fork,
exit and the first write after fork; ns per load of the walks) is divided by the real fork's
ns per page of the same run (its fastest fork), and that ratio is compared with the baseline's: a figure fails
when its ratio is more than twice the baseline's (or than 2 x 0.01, for figures too small to
time on a shared machine: On-demand-fork's fork and exit of a few tables, microseconds). Host memory figures (bytes per page, MiB kept
after exit) are not times; they fail above twice the baseline. With several runs, a figure
fails only if it fails in every run (noise on a shared 2-core machine comes and goes; a
regression stays). --update writes the baseline instead: each figure's largest value over the
runs given (the slowest run sets the bar, so that a quiet moment does not). Prints a table;
exits 1 on a failure, 2 on bad input.
"""
import argparse
import json
import re
import sys

TIME_COUNTERS = ("fork_ns_per_page", "exit_ns_per_page", "write_ns_per_page")
MEMORY_COUNTERS = ("bytes_per_page", "after_exit_host_MiB")
FLOOR = 0.01


def figures(path):
    """{figure: value}, times as ratios to the real fork, and the real fork's ns per page."""
    with open(path) as f:
        doc = json.load(f)
    raw = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate" or b.get("error_occurred"):
            continue
        name = re.sub(r"/iterations:\d+|/manual_time|/real_time", "",
                      b["run_name"].removeprefix("speed/"))
        for k, v in b.items():
            if k in TIME_COUNTERS or k in MEMORY_COUNTERS or k in ("min_ns_per_page", "loads_per_s"):
                raw[f"{name}:{k}"] = float(v)
    real = [v for k, v in raw.items() if k.startswith("real_fork/") and k.endswith(":min_ns_per_page")]
    if not real:
        raise ValueError(f"no real_fork figure in {path}")
    out = {}
    for k, v in raw.items():
        counter = k.rsplit(":", 1)[1]
        if k.startswith("real_fork/"):
            continue
        if counter == "loads_per_s":
            out[k.replace("loads_per_s", "ns_per_load") + "/real"] = 1e9 / v / real[0]
        elif counter in TIME_COUNTERS:
            out[k + "/real"] = v / real[0]
        else:
            out[k] = v
    return out, real[0]


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
        limit = 2 * (max(base[k], FLOOR) if k.endswith("/real") else base[k])
        vals = [r[0].get(k) for r in runs]
        bad = all(v is None or v > limit for v in vals)
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
    print(f"speed_check: {len(base)} figures within 2x of their baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
