#!/usr/bin/env python3
"""Run a sweep, many independent simulations, on every core or as a SLURM job array.

    sweep.py [--jobs N] --out FILE.json -- PROGRAM [ARGS...]       benchmarks of a program
    sweep.py [--jobs N] --out FILE.json SWEEP.json                  cowpte-sim runs
    sweep.py --backend slurm [--slurm-dir DIR] [--slurm-tasks T] [--slurm-arg=ARG]... [--wait]
             --out FILE.json (SWEEP.json | -- PROGRAM [ARGS...])
    sweep.py --resubmit DIR [--slurm-arg=ARG]... [--wait]        rerun a SLURM sweep's failures

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
their own) and a merge job after it (afterok), and returns; with --wait it waits for the merge
and fails, naming the runs and their logs, if any run failed (--resubmit DIR reruns those;
sweep_slurm.py). Results merge into one JSON in run order: Google Benchmark's
format for a program (report.py reads it), {"sweep", "runs": [{index, name, overrides,
result}]} for cowpte-sim. Every run builds its own Machine, so the simulated figures are those
of a serial run on any backend. docs/sweeps.md. Exits 1 if a run fails, 2 on bad arguments.
"""
import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no scripts/__pycache__ in the checkout
import sweep_slurm  # noqa: E402  (the SLURM backend: job directory, sbatch, squeue)


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
    if os.path.exists(out):
        os.remove(out)
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    ok = rc == 0 and os.path.exists(out)
    try:  # a filter that matched nothing still writes a file; so may a run that failed
        with open(out) as f:
            res = json.load(f)
        ok = ok and (run["kind"] != "bench" or bool(res["benchmarks"]))
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok and os.path.exists(out):
        os.replace(out, out + ".failed")  # only a good run leaves INDEX.json
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


# --- the SLURM backend's tasks (sweep_slurm.py submits them) -------------------------------

def worker(d, task):
    """Array task `task`: its runs that have no result yet, one after the other; then
    tasks/TASK.status ("ok", or "FAILED" and the failed runs' indices). Exits 1 on a failure,
    which holds back the merge (afterok)."""
    with open(os.path.join(d, "sweep.json")) as f:
        s = json.load(f)
    runs, failed = {r["index"]: r for r in s["runs"]}, []
    for i in s["tasks"][task]:
        if os.path.exists(os.path.join(d, "results", f"{i}.json")):
            continue  # done by an earlier submission (--resubmit)
        run, ok, dt = run_one(runs[i], os.path.join(d, "results"))
        print(f"run {i} {run['name']}: {'ok' if ok else 'FAILED'} in {dt:.1f} s", flush=True)
        if not ok:
            failed.append(i)
            with open(os.path.join(d, "results", f"{i}.log")) as f:
                sys.stdout.write(f.read()[-2000:])
    with open(os.path.join(d, "tasks", f"{task}.status"), "w") as f:
        f.write("FAILED " + " ".join(map(str, failed)) + "\n" if failed else "ok\n")
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
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="local backend: runs at a time (default: every core)")
    ap.add_argument("--out", help="the merged JSON")
    ap.add_argument("--backend", choices=["local", "slurm"], default="local")
    ap.add_argument("--slurm-dir", metavar="DIR",
                    help="the job directory, on a file system every node sees "
                         "(default: results/slurm-DATE-TIME)")
    ap.add_argument("--slurm-tasks", type=int, default=64, metavar="T",
                    help="array tasks (default 64, at most one per run)")
    ap.add_argument("--slurm-arg", action="append", default=[], metavar="ARG",
                    help="passed to sbatch, e.g. --slurm-arg=--partition=short")
    ap.add_argument("--wait", action="store_true",
                    help="slurm: wait for the merge; exit 1 naming the failed runs")
    ap.add_argument("--resubmit", metavar="DIR",
                    help="slurm: rerun the runs of DIR that have no result, then merge")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--task", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--merge", help=argparse.SUPPRESS)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.task)
    if a.merge:
        return merge_job(a.merge)
    if a.resubmit:
        return sweep_slurm.resubmit(a.resubmit, a.slurm_arg, a.wait)
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
        d = a.slurm_dir or os.path.join("results", time.strftime("slurm-%Y%m%d-%H%M%S"))
        return sweep_slurm.submit(runs, header, a.out, d, a.slurm_tasks, a.slurm_arg, __file__,
                                  a.wait)
    return run_local(runs, a.jobs, header, a.out)


if __name__ == "__main__":
    sys.exit(main())
