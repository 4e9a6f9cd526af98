#!/usr/bin/env python3
"""Run a Google Benchmark program's benchmarks on every core, one process per benchmark.

    sweep.py [--jobs N] --out FILE.json -- PROGRAM [ARGS...]

Lists PROGRAM's benchmarks (--benchmark_list_tests), runs this machine's real forks first and
alone (their timing would suffer from a simulation on the other core), then every other
benchmark in its own process, N at a time (default: every core), the largest first, printing a
line as each one ends. The results merge into one Google Benchmark JSON in the listed order,
which scripts/report.py reads as it reads a serial run's. Each benchmark builds its own Machine,
so the simulated figures are the same as in a serial run; only host times differ.
Exits 1 if a benchmark's process fails (its output is shown).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed


def cost(name):
    """A rough guess of a benchmark's host time, to start the largest first."""
    mib = re.search(r"/mib:(\d+)", name)
    c = int(mib.group(1)) if mib else 1
    if "/timed:1" in name or name.startswith(("write_after_fork", "snapshot", "fork_server")):
        c *= 10
    if name.startswith(("write_after_fork", "snapshot")):
        c *= 4
    return c


def run_one(prog, args, name, tmp, index):
    out = os.path.join(tmp, f"{index}.json")
    cmd = [prog, *args, f"--benchmark_filter=^{name}$", f"--benchmark_out={out}",
           "--benchmark_out_format=json"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.monotonic() - t0
    if p.returncode != 0 or not os.path.exists(out):
        return name, None, dt, p.stdout
    with open(out) as f:
        return name, json.load(f), dt, p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no program to run (put it after --)")
    if a.jobs < 1:
        ap.error(f"--jobs '{a.jobs}' must be at least 1")
    prog, args = cmd[0], cmd[1:]
    listed = subprocess.run([prog, *args, "--benchmark_list_tests=true"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if listed.returncode != 0:
        sys.stderr.write(listed.stdout)
        return 1
    names = [n.strip() for n in listed.stdout.splitlines() if n.strip()]
    real = [n for n in names if n.startswith("real_fork")]
    sims = sorted((n for n in names if n not in real), key=cost, reverse=True)
    results, failed, done, t0 = {}, [], 0, time.monotonic()

    def finish(name, doc, dt, log):
        nonlocal done
        done += 1
        if doc is None:
            failed.append(name)
            sys.stderr.write(log)
        else:
            results[name] = doc
        print(f"[{done}/{len(names)}] {time.monotonic() - t0:6.1f} s  {name} ({dt:.1f} s)"
              f"{'  FAILED' if doc is None else ''}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for n in real:
            finish(*run_one(prog, args, n, tmp, names.index(n)))
        with ThreadPoolExecutor(max_workers=a.jobs) as ex:
            futures = [ex.submit(run_one, prog, args, n, tmp, names.index(n)) for n in sims]
            for f in as_completed(futures):
                finish(*f.result())
    if failed:
        print(f"sweep: {len(failed)} of {len(names)} benchmarks failed", file=sys.stderr)
        return 1
    merged = None
    for n in names:
        doc = results[n]
        if merged is None:
            merged = {"context": doc["context"], "benchmarks": []}
        merged["benchmarks"].extend(doc["benchmarks"])
    merged["context"]["sweep_jobs"] = a.jobs
    merged["context"]["sweep_wall_s"] = round(time.monotonic() - t0, 3)
    with open(a.out, "w") as f:
        json.dump(merged, f, indent=1)
    print(f"sweep: {len(names)} benchmarks in {time.monotonic() - t0:.1f} s on {a.jobs} jobs "
          f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
