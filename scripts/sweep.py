#!/usr/bin/env python3
"""Run a sweep, many independent simulations, on every core or as a SLURM job array.

    sweep.py [--jobs N] --out FILE.json -- PROGRAM [ARGS...]       benchmarks of a program
    sweep.py [--jobs N] --out FILE.json SWEEP.json                  cowpte-sim runs
    sweep.py --backend slurm [--slurm-dir DIR] [--slurm-tasks T] [--slurm-arg=ARG]... [--wait]
             --out FILE.json (SWEEP.json | -- PROGRAM [ARGS...])

A run is one process. For a Google Benchmark PROGRAM, each benchmark it lists is a run; this
machine's real forks (real_fork*) run first and alone (a simulation beside them would slow
them). A SWEEP.json names a cowpte-sim scenario and its overrides:
    {"scenario": "scenarios/fork.json", "sim": "build-release/tools/cowpte-sim",
     "grid": {"policy": ["classic", "seed"], "workload.mib": [64, 256]},
     "runs": [{"machine.cpus": 1}, {"machine.cpus": 2}]}
(runs: the grid's product times each "runs" entry; paths relative to the sweep file; "sim"
defaults to build-release/tools/cowpte-sim, then build/, then PATH).

The local backend (default) runs N at a time (default: every core), the largest first, and
prints a line as each ends. The slurm backend writes DIR (default results/slurm-TIME/) with the
runs, submits them as one job array (task t of T runs runs t, t+T, ...; real forks get a task of
their own) and a merge job that depends on it, and returns; with --wait it waits for the merge
and fails if any run failed. Results merge into one JSON in run order: Google Benchmark's
format for a program (report.py reads it), {"sweep", "runs": [{index, name, overrides,
result}]} for cowpte-sim. Every run builds its own Machine, so the simulated figures are those
of a serial run on any backend. docs/sweeps.md. Exits 1 if a run fails, 2 on bad arguments.
"""
import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --- the runs ------------------------------------------------------------------------------

def cost(name):
    """A rough guess of a benchmark's host time, to start the largest first."""
    mib = re.search(r"/mib:(\d+)", name)
    c = int(mib.group(1)) if mib else 1
    if "/timed:1" in name or name.startswith(("write_after_fork", "snapshot", "fork_server")):
        c *= 10
    if name.startswith(("write_after_fork", "snapshot")):
        c *= 4
    return c


def regex_escape(name):
    """name as a regular expression for --benchmark_filter (std::regex: no escaped '-')."""
    return re.sub(r"([.^$|()*+?{}\[\]\\])", r"\\\1", name)


def bench_runs(cmd):
    """One run per benchmark of a Google Benchmark program."""
    prog, args = cmd[0], cmd[1:]
    listed = subprocess.run([prog, *args, "--benchmark_list_tests=true"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if listed.returncode != 0:
        sys.stderr.write(listed.stdout)
        raise SystemExit(1)
    names = [n.strip() for n in listed.stdout.splitlines() if n.strip()]
    return [{"index": i, "name": n, "kind": "bench", "alone": n.startswith("real_"),
             "cost": cost(n),
             "cmd": [os.path.abspath(prog), *args, f"--benchmark_filter=^{regex_escape(n)}$",
                     "--benchmark_out={out}", "--benchmark_out_format=json"]}
            for i, n in enumerate(names)]


def find_sim(doc, base):
    if "sim" in doc:
        return os.path.abspath(os.path.join(base, doc["sim"]))
    for b in ("build-release/tools/cowpte-sim", "build/tools/cowpte-sim"):
        if os.access(os.path.join(ROOT, b), os.X_OK):
            return os.path.join(ROOT, b)
    found = shutil.which("cowpte-sim")
    if not found:
        raise SystemExit("sweep: no cowpte-sim (build the tools, or name it in the sweep's \"sim\")")
    return found


def sim_runs(path):
    """The cowpte-sim runs of a sweep file: the grid's product times each "runs" entry."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"sweep: cannot read the sweep file {path}: {e}")
    if not isinstance(doc, dict) or "scenario" not in doc:
        raise SystemExit(f"sweep: {path}: needs a \"scenario\"")
    unknown = set(doc) - {"scenario", "sim", "grid", "runs", "description"}
    if unknown:
        raise SystemExit(f"sweep: {path}: unknown keys {sorted(unknown)}")
    base = os.path.dirname(os.path.abspath(path))
    grid = doc.get("grid", {})
    extra = doc.get("runs", [{}]) or [{}]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SystemExit(f"sweep: {path}: \"grid\" maps keys to non-empty lists of values")
    if not isinstance(extra, list) or not all(isinstance(r, dict) for r in extra):
        raise SystemExit(f"sweep: {path}: \"runs\" is a list of objects of overrides")
    scenario = os.path.abspath(os.path.join(base, doc["scenario"]))
    sim = find_sim(doc, base)
    runs = []
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        for r in extra:
            over = dict(zip(keys, values), **r)
            sets = [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v)}")]
            name = " ".join(f"{k}={json.dumps(v)}" for k, v in over.items()) or "(no overrides)"
            runs.append({"index": len(runs), "name": name, "kind": "sim", "alone": False,
                         "cost": 1, "overrides": over,
                         "cmd": [sim, scenario, *sets, "--json", "{out}", "--quiet",
                                 "--progress", "never"]})
    doc["scenario"], doc["sim"] = scenario, sim
    return runs, doc


def run_one(run, outdir):
    """Runs one run; its JSON goes to outdir/INDEX.json, its output to outdir/INDEX.log."""
    out = os.path.join(outdir, f"{run['index']}.json")
    log = os.path.join(outdir, f"{run['index']}.log")
    cmd = [a.replace("{out}", out) for a in run["cmd"]]
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    ok = rc == 0 and os.path.exists(out)
    if ok and run["kind"] == "bench":  # a filter that matched nothing still writes a file
        try:
            with open(out) as f:
                ok = bool(json.load(f)["benchmarks"])
        except (OSError, ValueError, KeyError):
            ok = False
    return run, ok, time.monotonic() - t0


def merge(runs, outdir, header, out):
    """The runs' results, in run order, into one JSON; the failed runs' names."""
    docs, failed = {}, []
    for r in runs:
        try:
            with open(os.path.join(outdir, f"{r['index']}.json")) as f:
                docs[r["index"]] = json.load(f)
        except (OSError, ValueError):
            failed.append(r)
    if failed:
        return failed
    if runs and runs[0]["kind"] == "bench":
        merged = None
        for r in runs:
            d = docs[r["index"]]
            if merged is None:
                merged = {"context": d["context"], "benchmarks": []}
            merged["benchmarks"].extend(d["benchmarks"])
        merged = merged or {"context": {}, "benchmarks": []}
        merged["context"].update(header)
    else:
        merged = {"sweep": header.pop("sweep", {}), "context": header,
                  "runs": [{"index": r["index"], "name": r["name"],
                            "overrides": r["overrides"], "result": docs[r["index"]]}
                           for r in runs]}
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)
    return []


# --- the local backend ---------------------------------------------------------------------

def run_local(runs, jobs, header, out):
    t0, done = time.monotonic(), 0
    alone = [r for r in runs if r["alone"]]
    rest = sorted((r for r in runs if not r["alone"]), key=lambda r: r["cost"], reverse=True)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        def finish(run, ok, dt):
            nonlocal done
            done += 1
            el = time.monotonic() - t0
            eta = el / done * (len(runs) - done)
            if not ok:
                failed.append(run)
                with open(os.path.join(tmp, f"{run['index']}.log")) as f:
                    sys.stderr.write(f.read()[-4000:])
            print(f"[{done}/{len(runs)}] {el:6.1f} s  {run['name']} ({dt:.1f} s)"
                  f"{'  FAILED' if not ok else ''}{f'  ETA {eta:.0f} s' if done < len(runs) else ''}",
                  flush=True)

        for r in alone:
            finish(*run_one(r, tmp))
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            for f in as_completed([ex.submit(run_one, r, tmp) for r in rest]):
                finish(*f.result())
        if failed:
            print(f"sweep: {len(failed)} of {len(runs)} runs failed", file=sys.stderr)
            return 1
        header.update({"sweep_backend": "local", "sweep_jobs": jobs,
                       "sweep_wall_s": round(time.monotonic() - t0, 3)})
        if merge(runs, tmp, header, out):
            print("sweep: a run's results could not be read", file=sys.stderr)
            return 1
    print(f"sweep: {len(runs)} runs in {time.monotonic() - t0:.1f} s on {jobs} jobs -> {out}")
    return 0


# --- the SLURM backend ---------------------------------------------------------------------

def slurm_tasks(runs, ntasks):
    """Task lists: real forks alone in task 0, the rest dealt round-robin to the others."""
    alone = [r["index"] for r in runs if r["alone"]]
    rest = [r["index"] for r in runs if not r["alone"]]
    n = max(1, min(ntasks - (1 if alone else 0), len(rest))) if rest else 0
    tasks = [alone] if alone else []
    tasks += [rest[t::n] for t in range(n)]
    return tasks


def sbatch(args, script):
    p = subprocess.run(["sbatch", "--parsable", *args, script], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise SystemExit(f"sweep: sbatch failed: {p.stdout.strip()}")
    return p.stdout.strip().split(";")[0]


def run_slurm(runs, a, header, out):
    if not shutil.which("sbatch"):
        raise SystemExit("sweep: no sbatch on PATH (SLURM's client commands)")
    d = os.path.abspath(a.slurm_dir or os.path.join("results", time.strftime("slurm-%Y%m%d-%H%M%S")))
    os.makedirs(os.path.join(d, "results"), exist_ok=True)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    tasks = slurm_tasks(runs, a.slurm_tasks)
    with open(os.path.join(d, "sweep.json"), "w") as f:
        json.dump({"runs": runs, "tasks": tasks, "header": header,
                   "out": os.path.abspath(out)}, f, indent=1)
    py, me = shlex.quote(sys.executable), shlex.quote(os.path.abspath(__file__))
    job = os.path.join(d, "task.sh")
    with open(job, "w") as f:
        f.write(f"#!/bin/sh\n# One task of the sweep's job array: its share of the runs.\n"
                f"exec {py} {me} --worker {shlex.quote(d)} --task \"$SLURM_ARRAY_TASK_ID\"\n")
    merger = os.path.join(d, "merge.sh")
    with open(merger, "w") as f:
        f.write(f"#!/bin/sh\n# The merge, after every task of the array (afterany: it reports "
                f"failed runs).\nexec {py} {me} --merge {shlex.quote(d)}\n")
    extra = list(a.slurm_arg)
    array = sbatch([f"--array=0-{len(tasks) - 1}", "--job-name=cowpte-sweep",
                    f"--output={d}/logs/task-%a.out", *extra], job)
    merge_id = sbatch([f"--dependency=afterany:{array}", "--job-name=cowpte-sweep-merge",
                       f"--output={d}/logs/merge.out", *extra], merger)
    print(f"sweep: {len(runs)} runs in {len(tasks)} array tasks (job {array}), merge job "
          f"{merge_id}; results in {d}", flush=True)
    if not a.wait:
        print(f"sweep: the merged JSON will be {out} (squeue -j {merge_id}; "
              f"{d}/merge.status says how it ended)")
        return 0
    t0, last = time.monotonic(), None
    while True:
        q = subprocess.run(["squeue", "-h", "-j", f"{array},{merge_id}", "-o", "%i %T"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        done = len(os.listdir(os.path.join(d, "results"))) // 2
        line = f"sweep: {done}/{len(runs)} runs done, {time.monotonic() - t0:.0f} s"
        if line != last:
            print(line, flush=True)
            last = line
        if not q.strip() and os.path.exists(os.path.join(d, "merge.status")):
            break
        if not q.strip() and time.monotonic() - t0 > 30 and not os.path.exists(os.path.join(d, "merge.status")):
            raise SystemExit(f"sweep: the jobs left the queue without a merge ({d}/logs)")
        time.sleep(1)
    with open(os.path.join(d, "merge.status")) as f:
        status = f.read().strip()
    print(f"sweep: {status}")
    return 0 if status.startswith("ok") else 1


def worker(d, task):
    with open(os.path.join(d, "sweep.json")) as f:
        s = json.load(f)
    runs = {r["index"]: r for r in s["runs"]}
    failed = 0
    for i in s["tasks"][task]:
        run, ok, dt = run_one(runs[i], os.path.join(d, "results"))
        print(f"run {i} {run['name']}: {'ok' if ok else 'FAILED'} in {dt:.1f} s", flush=True)
        failed += not ok
    return 1 if failed else 0


def merge_job(d):
    with open(os.path.join(d, "sweep.json")) as f:
        s = json.load(f)
    header = dict(s["header"], sweep_backend="slurm", sweep_tasks=len(s["tasks"]))
    failed = merge(s["runs"], os.path.join(d, "results"), header, s["out"])
    with open(os.path.join(d, "merge.status"), "w") as f:
        if failed:
            f.write(f"FAILED: {len(failed)} of {len(s['runs'])} runs: " +
                    "; ".join(f"{r['name']} (log {d}/results/{r['index']}.log)" for r in failed) + "\n")
        else:
            f.write(f"ok: {len(s['runs'])} runs merged into {s['out']}\n")
    return 1 if failed else 0


# --- main ----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], usage=__doc__.split("\n\n")[1])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out")
    ap.add_argument("--backend", choices=["local", "slurm"], default="local")
    ap.add_argument("--slurm-dir")
    ap.add_argument("--slurm-tasks", type=int, default=64)
    ap.add_argument("--slurm-arg", action="append", default=[],
                    help="passed to sbatch, e.g. --slurm-arg=--partition=short")
    ap.add_argument("--wait", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--task", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--merge", help=argparse.SUPPRESS)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.task)
    if a.merge:
        return merge_job(a.merge)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no program to run (put it after --) and no sweep file")
    if not a.out:
        ap.error("--out FILE.json is required")
    if a.jobs < 1:
        ap.error(f"--jobs '{a.jobs}' must be at least 1")
    if a.slurm_tasks < 1:
        ap.error(f"--slurm-tasks '{a.slurm_tasks}' must be at least 1")
    if a.cmd[:1] != ["--"] and len(cmd) == 1 and cmd[0].endswith(".json"):
        runs, doc = sim_runs(cmd[0])
        header = {"sweep": doc}
    else:
        runs, header = bench_runs(cmd), {}
    if not runs:
        ap.error("the sweep has no runs")
    if os.path.exists(a.out):
        os.remove(a.out)  # never leave a previous sweep's results as this one's
    if a.backend == "slurm":
        return run_slurm(runs, a, header, a.out)
    return run_local(runs, a.jobs, header, a.out)


if __name__ == "__main__":
    sys.exit(main())
