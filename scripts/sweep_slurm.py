"""scripts/sweep.py's SLURM backend: a job directory, a job array and a dependent merge job.

DIR/sweep.json    the runs, the tasks (task t: the indices of its runs), the header, --out, the
                  --slurm-arg options, and every submission's job ids ("jobs")
DIR/task.sh       one array task: `sweep.py --worker DIR --task $SLURM_ARRAY_TASK_ID`
DIR/merge.sh      the merge: `sweep.py --merge DIR`, after every task succeeded (afterok)
DIR/results/      INDEX.json (a run's result) and INDEX.log (its output)
DIR/tasks/        T.status, written by task T as it ends: "ok" or "FAILED i j ..."
DIR/logs/         task-T.out (SLURM's output of task T), merge.out
DIR/merge.status  "ok: ..." or "FAILED: ...", written by the merge job

The workers and the merge run scripts/sweep.py itself, so both backends share the code that runs
a run and merges the results. Stdlib only.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time


def plan_tasks(runs, ntasks):
    """Task lists: the real forks together in a task of their own (task 0), the other runs dealt
    round-robin to at most ntasks - 1 more (task t of T runs runs t, t + T, ...)."""
    alone = [r["index"] for r in runs if r["alone"]]
    rest = [r["index"] for r in runs if not r["alone"]]
    n = max(1, min(ntasks - (1 if alone else 0), len(rest))) if rest else 0
    return ([alone] if alone else []) + [rest[t::n] for t in range(n)]


def _load(d):
    with open(os.path.join(d, "sweep.json")) as f:
        return json.load(f)


def _save(d, s):
    tmp = os.path.join(d, "sweep.json.tmp")
    with open(tmp, "w") as f:
        json.dump(s, f, indent=1)
    os.replace(tmp, os.path.join(d, "sweep.json"))


def _sbatch(args, script):
    p = subprocess.run(["sbatch", "--parsable", *args, script], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise SystemExit(f"sweep: sbatch {' '.join(args)} failed: {p.stdout.strip()}")
    return p.stdout.strip().split(";")[0]  # "JOBID" or "JOBID;CLUSTER"


def _submit(d, s, tasks):
    """The array of the given tasks and the merge job after it; returns their ids."""
    array_spec = ",".join(map(str, tasks))
    if len(tasks) > 1 and tasks == list(range(tasks[0], tasks[-1] + 1)):
        array_spec = f"{tasks[0]}-{tasks[-1]}"
    array = _sbatch([f"--array={array_spec}", "--job-name=cowpte-sweep",
                     f"--output={d}/logs/task-%a.out", *s["slurm_args"]], os.path.join(d, "task.sh"))
    merge = _sbatch([f"--dependency=afterok:{array}", "--job-name=cowpte-sweep-merge",
                     f"--output={d}/logs/merge.out", *s["slurm_args"]], os.path.join(d, "merge.sh"))
    s["jobs"].append({"array": array, "merge": merge, "tasks": tasks,
                      "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
    _save(d, s)
    n = sum(not os.path.exists(os.path.join(d, "results", f"{i}.json"))
            for t in tasks for i in s["tasks"][t])
    print(f"sweep: {n} runs in {len(tasks)} array tasks "
          f"(job {array}), merge job {merge} (afterok); job directory {d}", flush=True)
    return array, merge


def submit(runs, header, out, d, ntasks, slurm_args, sweep_py, wait):
    """Writes the job directory d, submits the array and the merge; with wait, waits for them."""
    if not shutil.which("sbatch"):
        raise SystemExit("sweep: no sbatch on PATH (SLURM's client commands)")
    d = os.path.abspath(d)
    if os.path.exists(os.path.join(d, "sweep.json")):
        raise SystemExit(f"sweep: {d} holds a sweep already (--resubmit {d} reruns its failed runs)")
    for sub in ("results", "logs", "tasks"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    tasks = plan_tasks(runs, ntasks)
    s = {"runs": runs, "tasks": tasks, "header": header, "out": os.path.abspath(out),
         "slurm_args": list(slurm_args), "jobs": []}
    py, me = shlex.quote(sys.executable), shlex.quote(os.path.abspath(sweep_py))
    with open(os.path.join(d, "task.sh"), "w") as f:
        f.write(f"#!/bin/sh\n# One task of the sweep's job array: its share of the runs.\n"
                f"exec {py} {me} --worker {shlex.quote(d)} --task \"$SLURM_ARRAY_TASK_ID\"\n")
    with open(os.path.join(d, "merge.sh"), "w") as f:
        f.write(f"#!/bin/sh\n# The merge, after every task of the array succeeded.\n"
                f"exec {py} {me} --merge {shlex.quote(d)}\n")
    array, merge = _submit(d, s, list(range(len(tasks))))
    if not wait:
        print(f"sweep: the merged JSON will be {out}; squeue -j {array},{merge} shows the jobs, "
              f"{d}/merge.status how the merge ended")
        return 0
    return wait_for(d, array, merge)


def resubmit(d, slurm_args, wait):
    """Reruns the runs of d that have no result: their tasks (only those runs), then the merge."""
    d = os.path.abspath(d)
    try:
        s = _load(d)
    except (OSError, ValueError) as e:
        raise SystemExit(f"sweep: {d} is not a SLURM sweep's job directory: {e}")
    if not shutil.which("sbatch"):
        raise SystemExit("sweep: no sbatch on PATH (SLURM's client commands)")
    if slurm_args:
        s["slurm_args"] = list(slurm_args)
    for j in s["jobs"]:  # a merge still waiting on a failed array would never run
        subprocess.run(["scancel", j["merge"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    missing = {r["index"] for r in s["runs"]
               if not os.path.exists(os.path.join(d, "results", f"{r['index']}.json"))}
    tasks = [t for t, idx in enumerate(s["tasks"]) if missing & set(idx)]
    for t in tasks:
        _remove(os.path.join(d, "tasks", f"{t}.status"))
    _remove(os.path.join(d, "merge.status"))
    if not tasks:
        print(f"sweep: every run of {d} has its result; submitting the merge only")
        merge = _sbatch(["--job-name=cowpte-sweep-merge", f"--output={d}/logs/merge.out",
                         *s["slurm_args"]], os.path.join(d, "merge.sh"))
        s["jobs"].append({"array": None, "merge": merge, "tasks": []})
        _save(d, s)
        return wait_for(d, None, merge) if wait else 0
    print(f"sweep: rerunning {len(missing)} runs without a result (tasks {','.join(map(str, tasks))})")
    array, merge = _submit(d, s, tasks)
    return wait_for(d, array, merge) if wait else 0


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _active(ids):
    """The jobs (and array tasks) of ids that SLURM still holds as pending or running."""
    for attempt in range(30):
        p = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode == 0:
            return [line.split() for line in p.stdout.splitlines() if line.strip()]
        if "Invalid job id" in p.stderr:  # every id has left the controller's memory
            return []
        time.sleep(2)  # the controller is busy or restarting
    raise SystemExit(f"sweep: squeue keeps failing: {p.stderr.strip()}")


def _task_status(d, t):
    try:
        with open(os.path.join(d, "tasks", f"{t}.status")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def wait_for(d, array, merge, grace=20):
    """Polls squeue until the array and the merge are done; 0 if every run succeeded and the
    merge wrote --out, 1 (naming the failed runs and their logs) otherwise."""
    s = _load(d)
    tasks = s["jobs"][-1]["tasks"]
    ids = [j for j in (array, merge) if j]
    t0, last, idle_since = time.monotonic(), None, None
    while True:
        q = _active(ids)
        array_active = array is not None and any(i.split("_")[0] == array for i, _ in q)
        merge_active = any(i == merge for i, _ in q)
        done = sum(n.endswith(".json") for n in os.listdir(os.path.join(d, "results")))
        line = (f"sweep: {done}/{len(s['runs'])} runs done, {time.monotonic() - t0:.0f} s"
                f"{'' if array_active else ', merging'}")
        if line != last:
            print(line, flush=True)
            last = line
        if not array_active:
            status = {t: _task_status(d, t) for t in tasks}
            bad = [t for t, st in status.items() if st is not None and not st.startswith("ok")]
            unknown = [t for t, st in status.items() if st is None]
            idle_since = idle_since or time.monotonic()
            late = time.monotonic() - idle_since > grace  # a shared file system may lag
            if bad or (unknown and late):
                if merge_active:  # afterok: it would wait forever (DependencyNeverSatisfied)
                    subprocess.run(["scancel", merge], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                return report_failure(d, s, tasks)
            if not unknown and not merge_active:
                try:
                    with open(os.path.join(d, "merge.status")) as f:
                        st = f.read().strip()
                except FileNotFoundError:
                    if late:
                        print(f"sweep: FAILED: the merge job {merge} ended without a "
                              f"merge.status; its log is {d}/logs/merge.out", file=sys.stderr)
                        return 1
                else:
                    print(f"sweep: {st}", flush=True)
                    return 0 if st.startswith("ok") else 1
        time.sleep(min(10.0, 1.0 + (time.monotonic() - t0) / 30))


def report_failure(d, s, tasks):
    """Names the runs of tasks without a result, their logs, and how to rerun them."""
    failed = [(t, i) for t in tasks for i in s["tasks"][t]
              if not os.path.exists(os.path.join(d, "results", f"{i}.json"))]
    runs = {r["index"]: r for r in s["runs"]}
    print(f"sweep: FAILED: {len(failed)} of {len(s['runs'])} runs: " +
          "; ".join(runs[i]["name"] for _, i in failed), file=sys.stderr)
    for t, i in failed:
        log = os.path.join(d, "results", f"{i}.log")
        print(f"  run {i} {runs[i]['name']}: log {log}, task {t}'s log {d}/logs/task-{t}.out",
              file=sys.stderr)
        try:
            with open(log, errors="replace") as f:
                tail = f.read().splitlines()[-3:]
        except OSError:
            tail = ["(no log: the task did not start this run; see the task's log)"]
        for line in tail:
            print(f"    {line}", file=sys.stderr)
    if not failed:
        print(f"sweep: a task failed before its runs ended (logs in {d}/logs)", file=sys.stderr)
    print(f"sweep: rerun the failed runs with: {sys.executable} {os.path.abspath(sys.argv[0])} "
          f"--resubmit {d} --wait", file=sys.stderr)
    return 1
