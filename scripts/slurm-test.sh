#!/usr/bin/env bash
# Tests scripts/sweep.py's SLURM backend on a real one-node SLURM cluster started here: installs
# Debian's slurm-wlm and munge if missing, starts munged, then slurmctld and slurmd from a
# generated slurm.conf with this host as the only node (no systemd, no accounting), submits two
# small sweeps as job arrays with a dependent merge job (--wait), runs the same sweeps with the
# local backend, and checks that every simulated figure of the two merged results is the same.
# The sweeps: benchmarks of cowpte_bench_policies (a real fork alone in its own task, forks and
# the committed Redis trace's replays), and cowpte-sim runs of scenarios/fork.json over a grid.
# Stops what it started. Needs root.
#
#   bash scripts/slurm-test.sh [BUILD_DIR]   (default build/, with the benchmarks and tools)
set -euo pipefail

case ${1:-} in
  -h | --help)
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${1:-build}
bench=$build/bench/cowpte_bench_policies
sim=$build/tools/cowpte-sim
for b in "$bench" "$sim"; do
  [[ -x $b ]] || { echo "slurm-test: no $b: build $build with the benchmarks and tools" >&2; exit 2; }
done
((EUID == 0)) || { echo "slurm-test: run as root (it starts SLURM's daemons)" >&2; exit 2; }
py=/usr/bin/python3
[[ -x $py ]] || py=python3

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
started_munged=0
cleanup() {
  local rc=$?
  SLURM_CONF=$tmp/slurm.conf scontrol shutdown >/dev/null 2>&1 || true
  for f in slurmctld slurmd; do
    [[ -f $tmp/$f.pid ]] && kill "$(cat "$tmp/$f.pid")" 2>/dev/null || true
  done
  for _ in $(seq 50); do  # let them exit before their state directory goes
    pgrep -f "slurm(ctld|d) -f $tmp/" >/dev/null || break
    sleep 0.1
  done
  ((started_munged)) && pkill -x munged 2>/dev/null || true
  if ((rc != 0)); then
    echo "slurm-test: failed; the daemons' logs:" >&2
    tail -n 20 "$tmp"/log/*.log >&2 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# munge: the key (Debian's package makes one; a fresh machine may not have it) and the daemon.
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
  started_munged=1
fi
munge -n | unmunge >/dev/null || { echo "slurm-test: munge does not work" >&2; exit 1; }

# slurm.conf: this host, every core, free ports, state and logs in $tmp.
host=$(hostname -s)
read -r ctld_port slurmd_port < <("$py" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("", 0))
print(*[x.getsockname()[1] for x in s])')
mem_mb=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024 - 1024))
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
for _ in $(seq 60); do
  [[ $(sinfo -h -o %T 2>/dev/null) == idle ]] && break
  sleep 0.5
done
[[ $(sinfo -h -o %T) == idle ]] || { echo "slurm-test: the node did not come up: $(sinfo 2>&1)" >&2; exit 1; }
echo "slurm-test: one-node cluster up ($host, $(nproc) CPUs)"

# same A B: every simulated figure of two merged sweeps is equal (host times excluded).
same() {
  "$py" - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
HOST = {"real_time", "cpu_time", "wall_s"}
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items()
                if k not in HOST and "host" not in k and not k.startswith("sweep_")}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
if "benchmarks" in a:
    sims = lambda d: {x["name"]: strip(x) for x in d["benchmarks"] if not x["name"].startswith("real_")}
    ra, rb = sims(a), sims(b)
    n = sum(len(v) for v in ra.values())
    reals = [x["name"] for x in b["benchmarks"] if x["name"].startswith("real_")]
    if not reals:
        sys.exit("no real fork in the SLURM sweep")
else:
    ra = {r["name"]: strip(r["result"]) for r in a["runs"]}
    rb = {r["name"]: strip(r["result"]) for r in b["runs"]}
    n = len(json.dumps(ra))
if ra != rb or not ra:
    diff = [k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k)]
    sys.exit(f"the SLURM and local sweeps differ in {len(diff)} runs: {sorted(diff)[:5]}")
print(f"slurm-test: {len(ra)} runs identical between SLURM and local")
PY
}

filter='^(real_fork/mib:4/|fork/layout:plain/policy:[a-z_0-9]*/mib:4/timed:1/|trace/)'
t0=$SECONDS
"$py" scripts/sweep.py --backend slurm --slurm-dir "$tmp/bench" --slurm-tasks 4 --wait \
  --out "$tmp/bench-slurm.json" -- "$bench" --cowpte_sweep=smoke --benchmark_filter="$filter"
"$py" scripts/sweep.py --out "$tmp/bench-local.json" -- "$bench" --cowpte_sweep=smoke \
  --benchmark_filter="$filter" >/dev/null
same "$tmp/bench-local.json" "$tmp/bench-slurm.json"

cat >"$tmp/sweep.json" <<EOF
{"scenario": "$root/scenarios/fork.json", "sim": "$root/$sim",
 "grid": {"policy": ["classic", "seed", "on_demand_fork", "rfc_v2"], "workload.mib": [4, 16]},
 "runs": [{"iterations": 2}]}
EOF
"$py" scripts/sweep.py --backend slurm --slurm-dir "$tmp/sim" --slurm-tasks 3 --wait \
  --out "$tmp/sim-slurm.json" "$tmp/sweep.json"
"$py" scripts/sweep.py --out "$tmp/sim-local.json" "$tmp/sweep.json" >/dev/null
same "$tmp/sim-local.json" "$tmp/sim-slurm.json"

# A failing run must fail the sweep and be named: a scenario override the simulator refuses.
cat >"$tmp/bad.json" <<EOF
{"scenario": "$root/scenarios/fork.json", "sim": "$root/$sim",
 "grid": {"workload.mib": [4, 0]}}
EOF
if "$py" scripts/sweep.py --backend slurm --slurm-dir "$tmp/bad" --wait --out "$tmp/bad-out.json" \
  "$tmp/bad.json" >"$tmp/bad.log" 2>&1; then
  echo "slurm-test: a sweep with a failing run succeeded" >&2
  exit 1
fi
grep -q 'FAILED: 1 of 2 runs: workload.mib=0' "$tmp/bad.log" || {
  echo "slurm-test: the failed run is not named:" >&2
  cat "$tmp/bad.log" >&2
  exit 1
}
echo "slurm-test: a failing run fails the SLURM sweep and is named"
echo "slurm-test: passed in $((SECONDS - t0)) s"
