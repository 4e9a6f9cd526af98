#!/usr/bin/env bash
# Tests scripts/sweep.py's SLURM backend on a real one-node SLURM cluster started here: installs
# Debian's slurm-wlm and munge if missing, starts munged, then slurmctld and slurmd from a
# generated slurm.conf with this host as the only node (no systemd, no accounting), submits small
# sweeps as job arrays with a dependent merge job (--wait), runs the same sweeps with the local
# backend, and checks that every simulated figure of the two merged results is the same:
#   1. cowpte_bench_policies benchmarks (a real fork alone in its own task, 4 MiB forks and the
#      committed Redis trace's replays under every policy);
#   2. cowpte-sim runs of scenarios/fork.json over a grid (skipped if BUILD_DIR has no tools);
#   3. a fake simulator's runs, one of which fails: the sweep must fail and name it, and
#      --resubmit must rerun it alone and complete the merge.
# Stops what it started. Needs root; about 20 s.
#
#   bash scripts/slurm-test.sh [BUILD_DIR]   (default build/, with the benchmarks and tools)
set -euo pipefail

case ${1:-} in
  -h | --help)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  -*)
    echo "slurm-test: unknown option '$1' (see --help)" >&2
    exit 2
    ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${1:-build}
bench=$build/bench/cowpte_bench_policies
sim=$build/tools/cowpte-sim
[[ -x $bench ]] || { echo "slurm-test: no $bench: build $build with the benchmarks" >&2; exit 2; }
((EUID == 0)) || { echo "slurm-test: run as root (it starts SLURM's daemons)" >&2; exit 2; }
py=/usr/bin/python3
[[ -x $py ]] || py=python3
export PYTHONDONTWRITEBYTECODE=1
t0=$SECONDS

# Debian's packages, only when missing (a second run does not call apt).
missing=()
for pkg in slurm-wlm munge; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "slurm-test: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

tmp=$(mktemp -d /tmp/cowpte-slurm.XXXXXX)
chmod 755 "$tmp"
munged_pid=
# running PID...: whether any of them still runs.
running() {
  local p
  for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}
cleanup() {
  local rc=$? f pids=()
  for f in slurmctld slurmd; do  # the pid files go when the daemons stop: read them first
    [[ -s $tmp/$f.pid ]] && pids+=("$(cat "$tmp/$f.pid")")
  done
  if ((${#pids[@]})); then
    SLURM_CONF=$tmp/slurm.conf timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 50); do  # slurmctld saves its state as it stops
      running "${pids[@]}" || break
      sleep 0.1
    done
    kill "${pids[@]}" 2>/dev/null || true
  fi
  if [[ -n $munged_pid ]]; then
    kill "$munged_pid" 2>/dev/null || true
    pids+=("$munged_pid")
  fi
  for _ in $(seq 50); do  # let them exit before their state directory goes
    running "${pids[@]}" || break
    sleep 0.1
  done
  if ((rc != 0)); then
    echo "slurm-test: FAILED (exit $rc); the daemons' logs end with:" >&2
    tail -n 25 "$tmp"/log/*.log >&2 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# munge: the key (Debian's package makes one; a fresh machine may not have it) and the daemon,
# unless one already answers.
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  munged_pid=$(cat /run/munge/munged.pid)
  echo "slurm-test: started munged ($munged_pid)"
fi
munge -n | unmunge >/dev/null || { echo "slurm-test: munge does not work" >&2; exit 1; }

# slurm.conf: this host, every core, free ports, state and logs in $tmp, no accounting.
host=$(hostname -s)
read -r ctld_port slurmd_port < <("$py" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("", 0))
print(*[x.getsockname()[1] for x in s])')
mem_mb=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024 - 1024))
((mem_mb >= 256)) || mem_mb=256
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/log"
cat >"$tmp/slurm.conf" <<EOF
ClusterName=cowpte-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$tmp/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 50); do  # each daemon writes its pid file once it has forked
  [[ -s $tmp/slurmctld.pid && -s $tmp/slurmd.pid ]] && break
  sleep 0.1
done
for _ in $(seq 60); do
  [[ $(sinfo -h -o %T 2>/dev/null) == idle ]] && break
  sleep 0.5
done
[[ $(sinfo -h -o %T 2>/dev/null) == idle ]] || {
  echo "slurm-test: the node did not come up idle: $(sinfo 2>&1)" >&2
  exit 1
}
echo "slurm-test: one-node cluster up ($host, $(nproc) CPUs, SLURM $(sinfo -V | cut -d' ' -f2)) in $((SECONDS - t0)) s"

# slurm_sweep ARGS...: sweep.py on the SLURM backend with --wait, never longer than 2 minutes.
slurm_sweep() { timeout 120 "$py" scripts/sweep.py --backend slurm --wait "$@"; }

# same LOCAL SLURM: every simulated figure of the two merged sweeps is equal. Google Benchmark:
# every field of every benchmark but the host's (real_time, cpu_time, iterations, names with
# host, ns_per or wall), the real forks (host measurements only) by name; cowpte-sim: each run's
# whole result but its top-level "host".
same() {
  "$py" - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
HOST = {"real_time", "cpu_time", "iterations"}
def figures(x):
    return {k: v for k, v in x.items()
            if k not in HOST and not any(s in k for s in ("host", "ns_per", "wall"))}
if "benchmarks" in a:
    names = [[x["name"] for x in d["benchmarks"]] for d in (a, b)]
    if names[0] != names[1]:
        sys.exit(f"the SLURM and local sweeps ran different benchmarks: {names}")
    if not any(n.startswith("real_") for n in names[1]):
        sys.exit("no real fork in the SLURM sweep")
    ra, rb = ({x["name"]: figures(x) for x in d["benchmarks"] if not x["name"].startswith("real_")}
              for d in (a, b))
    n = sum(len(v) for v in ra.values())
else:
    ra, rb = ({r["index"]: [r["name"], r["overrides"],
                            {k: v for k, v in r["result"].items() if k != "host"}]
               for r in d["runs"]} for d in (a, b))
    n = len(json.dumps(ra))
if ra != rb or not ra:
    diff = sorted(str(k) for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
    sys.exit(f"the SLURM and local sweeps differ in {len(diff)} runs: {diff[:5]}")
what = "figures" if "benchmarks" in a else "bytes of results"
print(f"slurm-test: {len(ra)} runs identical between SLURM and local ({n} {what})")
PY
}

echo "slurm-test: 1. cowpte_bench_policies benchmarks, a real fork in its own task"
filter='^(real_fork/mib:4/|fork/layout:plain/policy:[a-z_0-9]*/mib:4/timed:1/|trace/)'
slurm_sweep --slurm-dir "$tmp/bench" --slurm-tasks 4 --out "$tmp/bench-slurm.json" -- \
  "$bench" --cowpte_sweep=smoke --benchmark_filter="$filter"
"$py" scripts/sweep.py --out "$tmp/bench-local.json" -- "$bench" --cowpte_sweep=smoke \
  --benchmark_filter="$filter" >"$tmp/bench-local.log" || { cat "$tmp/bench-local.log"; exit 1; }
"$py" - "$tmp/bench/sweep.json" <<'PY' || exit 1
import json, sys
s = json.load(open(sys.argv[1]))
task0 = [s["runs"][i]["name"] for i in s["tasks"][0]]
if len(task0) != 1 or not task0[0].startswith("real_fork"):
    sys.exit(f"slurm-test: task 0 should run the real fork alone, it ran {task0}")
PY
same "$tmp/bench-local.json" "$tmp/bench-slurm.json"

if [[ -x $sim ]]; then
  echo "slurm-test: 2. cowpte-sim runs of scenarios/fork.json over a grid"
  cat >"$tmp/sweep.json" <<EOF
{"scenario": "$root/scenarios/fork.json", "sim": "$root/$sim",
 "grid": {"policy": ["classic", "seed", "on_demand_fork", "rfc_v2"], "workload.mib": [4, 16]},
 "runs": [{"iterations": 2}]}
EOF
  # Without --wait: sweep.py returns once submitted; the merge job writes merge.status.
  "$py" scripts/sweep.py --backend slurm --slurm-dir "$tmp/sim" --slurm-tasks 3 \
    --out "$tmp/sim-slurm.json" "$tmp/sweep.json"
  for _ in $(seq 240); do
    [[ -s $tmp/sim/merge.status ]] && ! squeue -h | grep -q . && break
    sleep 0.5
  done
  echo "slurm-test: merge.status: $(cat "$tmp/sim/merge.status" 2>/dev/null || echo none after 2 minutes)"
  grep -q '^ok: 8 runs merged' "$tmp/sim/merge.status" || { tail -n 20 "$tmp"/sim/logs/*.out >&2; exit 1; }
  "$py" scripts/sweep.py --out "$tmp/sim-local.json" "$tmp/sweep.json" >/dev/null
  same "$tmp/sim-local.json" "$tmp/sim-slurm.json"
else
  echo "slurm-test: 2. skipped: no $sim (build $build with the tools)"
fi

echo "slurm-test: 3. a fake simulator; a failing run fails the sweep, --resubmit reruns it"
# cowpte-sim's contract: SCENARIO [--set K=V]... --json OUT; it fails on seed=3 while $tmp/flaky
# exists.
cat >"$tmp/fake-sim" <<EOF
#!$py
import json, os, sys
args, sets, out = sys.argv[1:], {}, None
it = iter(args[1:])
for a in it:
    if a == "--set":
        k, v = next(it).split("=", 1)
        sets[k] = json.loads(v)
    elif a == "--json":
        out = next(it)
    elif a == "--progress":
        next(it)
if sets.get("seed") == 3 and os.path.exists("$tmp/flaky"):
    sys.exit("fake-sim: seed 3 fails while $tmp/flaky exists")
res = {"scenario": os.path.basename(args[0]), "overrides": sets,
       "figure": sum(len(json.dumps(v)) for v in sets.values()), "host": {"pid": os.getpid()}}
with open(out, "w") as f:
    json.dump(res, f)
EOF
chmod +x "$tmp/fake-sim"
echo '{}' >"$tmp/scenario.json"
cat >"$tmp/fake.json" <<EOF
{"scenario": "scenario.json", "sim": "fake-sim",
 "grid": {"seed": [1, 2, 3], "policy": ["classic", "seed"]}, "runs": [{"x.y": [1, {"z": null}]}]}
EOF
touch "$tmp/flaky"
if slurm_sweep --slurm-dir "$tmp/fake" --slurm-tasks 2 --out "$tmp/fake-slurm.json" \
  "$tmp/fake.json" >"$tmp/fake.log" 2>&1; then
  cat "$tmp/fake.log"
  echo "slurm-test: a sweep with a failing run succeeded" >&2
  exit 1
fi
if ! grep -q 'FAILED: 2 of 6 runs: seed=3 policy="classic" x.y=\[1, {"z": null}\]; seed=3 policy="seed"' "$tmp/fake.log" ||
  ! grep -q "log $tmp/fake/results/4.log" "$tmp/fake.log" || [[ -e $tmp/fake-slurm.json ]]; then
  cat "$tmp/fake.log" >&2
  echo "slurm-test: the failed runs and their logs are not named, or a merged file was written" >&2
  exit 1
fi
sed 's/^/  | /' "$tmp/fake.log"
left=$(squeue -h -o '%i %j %T %r')
[[ -z $left ]] || { echo "slurm-test: jobs left in the queue after the failure: $left" >&2; exit 1; }
rm "$tmp/flaky"
timeout 120 "$py" scripts/sweep.py --resubmit "$tmp/fake" --wait >"$tmp/resubmit.log" 2>&1 || {
  cat "$tmp/resubmit.log" >&2
  exit 1
}
sed 's/^/  | /' "$tmp/resubmit.log"
grep -q 'rerunning 2 runs without a result' "$tmp/resubmit.log" || exit 1
"$py" scripts/sweep.py --out "$tmp/fake-local.json" "$tmp/fake.json" >/dev/null
same "$tmp/fake-local.json" "$tmp/fake-slurm.json"
echo "slurm-test: passed in $((SECONDS - t0)) s"
