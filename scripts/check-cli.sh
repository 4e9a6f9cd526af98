#!/usr/bin/env bash
# Every program and script of cowpte on hostile arguments (issue 17): --help prints usage and
# exits 0; a bad argument is named on stderr and exits 2; nothing aborts or segfaults.
#   bash scripts/check-cli.sh [BUILD_DIR]   (default build/, with the benchmarks built)
# Prints "check-cli: N checks passed" and exits 0, or lists the failed checks and exits 1.
set -uo pipefail

case ${1:-} in
  -h | --help)
    sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=${1:-build}/bench
if (($# > 1)); then
  echo "check-cli: unexpected argument '$2'" >&2
  exit 2
fi
if [[ ! -x $bin/cowpte_demo ]]; then
  echo "check-cli: no $bin/cowpte_demo: build with -DCOWPTE_BUILD_BENCH=ON first" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

# expect STATUS PATTERN CMD...: CMD exits STATUS and its stdout+stderr match PATTERN (grep -E).
expect() {
  local want=$1 pattern=$2
  shift 2
  timeout 120 "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [[ $rc == "$want" ]] && grep -Eq -- "$pattern" "$tmp/out"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "check-cli: FAILED: $* -> exit $rc (want $want, output matching '$pattern'):" >&2
    head -n 5 "$tmp/out" | sed 's/^/    /' >&2
  fi
}

demo=$bin/cowpte_demo
expect 0 'usage' "$demo" --help
expect 0 'usage' "$demo" -h
expect 2 "'abc'" "$demo" abc
expect 2 "'0'.*1\.\.65536" "$demo" 0
expect 2 "'-5'" "$demo" -5
expect 2 "'1x'" "$demo" 1x
expect 2 "'99999999999999999999999'" "$demo" 99999999999999999999999
expect 2 "'extra'" "$demo" 1 extra
expect 0 'all exited' "$demo" 1

ex=$bin/cowpte_explore
expect 0 'usage.*--policies' "$ex" --help
expect 2 "--schedules '0'" "$ex" --schedules 0
expect 2 "--schedules 'x'" "$ex" --schedules x
expect 2 "--policies item 'nope'" "$ex" --policies nope
expect 2 "--scenarios item 'nope'" "$ex" --scenarios nope
expect 2 "--strategies item 'dfs'" "$ex" --strategies dfs
expect 2 "--replay trace '3>'" "$ex" --replay '3>' --policies seed --scenarios break_vs_fault
expect 2 'needs one --policies' "$ex" --replay '3>1'
expect 2 "unknown argument '--bogus'" "$ex" --bogus
expect 2 'a value is missing' "$ex" --seed
expect 0 '\| break_vs_exit \| seed \| random \| 5 \| 0 \|' "$ex" --policies seed --scenarios break_vs_exit --strategies random --schedules 5
expect 1 'break_vs_fault under seed_exact, trace 0>1 4>0: invariant' "$ex" --policies seed_exact --scenarios break_vs_fault --replay '0>1 4>0'

cal=$bin/cowpte_calibrate
expect 0 'usage.*--sizes' "$cal" --help
expect 2 "--runs '0'" "$cal" --runs 0
expect 2 "--runs 'x'" "$cal" --runs x
expect 2 "--rounds '-1'" "$cal" --rounds -1
expect 2 "'abc'" "$cal" --sizes abc
expect 2 "'0'" "$cal" --sizes 0
expect 2 "--sizes item ''" "$cal" --sizes 4,
expect 2 "--sizes item ''" "$cal" --sizes ''
expect 2 '--runs needs a value' "$cal" --runs
expect 2 "unknown argument '--bogus'" "$cal" --bogus
expect 2 "--config '/nonexistent/m.json'" "$cal" --config /nonexistent/m.json
echo '{"cpus": 0}' >"$tmp/bad.json"
expect 2 'cpus' "$cal" --config "$tmp/bad.json"
expect 0 'sim ns/PTE' "$cal" --sizes 1 --runs 1 --rounds 1

pol=$bin/cowpte_bench_policies
expect 0 '--cowpte_sweep=smoke\|short\|full' "$pol" --help
expect 2 "unknown sweep 'nope'" "$pol" --cowpte_sweep=nope
expect 2 'unrecognized command-line flag: --bogus' "$pol" --bogus

speed=$bin/cowpte_bench_speed
expect 0 '--cowpte_speed=quick\|full' "$speed" --help
expect 2 "unknown size set 'nope'" "$speed" --cowpte_speed=nope
expect 2 'unrecognized command-line flag: --bogus' "$speed" --bogus

# The scripts: --help exits 0 before anything is built or run.
expect 0 'usage.*compare\.sh' bash scripts/compare.sh --help
expect 2 "unknown argument '--bogus'" bash scripts/compare.sh --bogus
expect 2 "unknown argument 'extra'" bash scripts/compare.sh --smoke extra
expect 0 'usage' bash scripts/test.sh --help
expect 2 "unknown argument '--bogus'" bash scripts/test.sh --bogus
expect 0 'usage' bash scripts/install-deps.sh --help
expect 2 "unknown argument '--bogus'" bash scripts/install-deps.sh --bogus
expect 0 'usage' python3 scripts/report.py --help
expect 2 'cannot read /nonexistent.json' python3 scripts/report.py /nonexistent.json
expect 0 'usage' bash scripts/check-cli.sh --help
expect 0 'usage' python3 scripts/sweep.py --help
expect 2 'no program to run' python3 scripts/sweep.py --out "$tmp/s.json"
expect 2 "--jobs '0'" python3 scripts/sweep.py --jobs 0 --out "$tmp/s.json" -- "$pol"
echo '{"grid": {}}' >"$tmp/nosc.json"
expect 1 'needs a "scenario"' python3 scripts/sweep.py --out "$tmp/s.json" "$tmp/nosc.json"
echo '{"scenario": "fork.json", "grid": {"policy": []}}' >"$tmp/emptygrid.json"
expect 1 'non-empty lists' python3 scripts/sweep.py --out "$tmp/s.json" "$tmp/emptygrid.json"
expect 2 "--slurm-tasks '0'" python3 scripts/sweep.py --backend slurm --slurm-tasks 0 --out "$tmp/s.json" scenarios/sweep-fork.json
expect 0 'sweep: 12 runs in' python3 scripts/sweep.py --jobs 2 --out "$tmp/sw.json" scenarios/sweep-fork.json
expect 0 'one-node SLURM cluster' bash scripts/slurm-test.sh --help
expect 0 'Redis BGSAVE' bash scripts/redis-bgsave.sh --help
expect 2 "unknown argument '--bogus'" bash scripts/redis-bgsave.sh --bogus
expect 2 "--mib 'x' must be a positive integer" bash scripts/redis-bgsave.sh --mib x
expect 0 'usage' python3 scripts/sim_plot.py --help
expect 2 'not a cowpte-sim trace replay' python3 scripts/sim_plot.py scenarios/fork.json --out "$tmp/p.png"
expect 0 'usage' python3 scripts/speed_check.py --help
expect 2 'cannot read the run' python3 scripts/speed_check.py /nonexistent.json

# The tools (tools/): cowpte-sim on every built-in workload and on a replayed trace, its JSON
# checked against docs/schema/cowpte-sim.schema.json; cowpte-trace's subcommands.
tools=${1:-build}/tools
sim=$tools/cowpte-sim
trc=$tools/cowpte-trace
py=/usr/bin/python3
[[ -x $py ]] || py=python3
validate() {  # validate FILE...: each is valid cowpte-sim output (and the schema rejects junk)
  "$py" - "$@" <<'PY'
import json, sys, jsonschema
schema = json.load(open("docs/schema/cowpte-sim.schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for f in sys.argv[1:]:
    doc = json.load(open(f))
    errs = list(v.iter_errors(doc))
    if errs:
        sys.exit(f"{f}: {errs[0].json_path}: {errs[0].message}")
    bad = dict(doc, schema="cowpte-sim/0")
    if v.is_valid(bad):
        sys.exit("the schema accepts a wrong schema tag")
print("valid:", len(sys.argv) - 1, "outputs")
PY
}
expect 0 'Usage: cowpte-sim' "$sim" --help
expect 2 'scenario is required' "$sim"
expect 2 'File does not exist' "$sim" /nonexistent.json
expect 2 'workload.mibb: unknown key' "$sim" scenarios/fork.json --set workload.mibb=3
expect 2 "policy: 'nope' is not a fork policy" "$sim" scenarios/fork.json --set policy=nope
expect 2 'machine: .*cpus is 0' "$sim" scenarios/fork.json --set machine.cpus=0
expect 2 "workload.mib: 0 is out of range" "$sim" scenarios/fork.json --set workload.mib=0
expect 2 'expected key.path=value' "$sim" scenarios/fork.json --set nothing
expect 2 "'nope' is not one of" "$sim" scenarios/fork.json --set workload.kind=nope
expect 2 'progress: nope not in' "$sim" scenarios/fork.json --progress nope
echo 'not json' >"$tmp/bad-scenario.json"
expect 2 'not JSON' "$sim" "$tmp/bad-scenario.json"
expect 0 '"mib": 8' "$sim" scenarios/fork.json --set workload.mib=8 --print-scenario
for w in fork write_after_fork fork_server snapshot; do
  expect 0 "cowpte-sim: $w under" "$sim" "scenarios/$w.json" --set workload.mib=16 \
    --set iterations=2 --json "$tmp/sim-$w.json"
done
# The progress bar: lines every 10% without a terminal (--progress always), a redrawn bar with an
# ETA on one (script(1) gives the run a terminal); nothing by default without one. The bar waits
# a second before it shows: the run takes about 3 s here (400 executions took 1 s once the timed
# model got faster, and the bar never showed).
expect 0 'cowpte-sim: +[0-9]+% after [0-9.]+ s measured round' "$sim" scenarios/fork_server.json \
  --set workload.execs=2000 --set iterations=4 --progress always -q
expect 0 '\[#+\.*\] +[0-9]+%.*ETA' script -qec "$sim scenarios/fork_server.json --set workload.execs=2000 --set iterations=4 -q" /dev/null
"$sim" scenarios/fork_server.json --set workload.execs=2000 --set iterations=4 -q >"$tmp/quiet.out" 2>&1
if [[ -s $tmp/quiet.out ]]; then
  failed=$((failed + 1))
  echo "check-cli: FAILED: cowpte-sim -q without a terminal printed something" >&2
else
  passed=$((passed + 1))
fi
expect 0 'Usage: cowpte-trace' "$trc" --help
expect 2 'A subcommand is required' "$trc"
expect 1 'unknown event' "$trc" assemble scripts/check-cli.sh -o "$tmp/x.cptr"
expect 0 'wrote 13 events' "$trc" assemble tests/data/cow.trace.txt -o "$tmp/cow.cptr"
expect 0 'touch 100 w 0x7f0000000000\+256' "$trc" print "$tmp/cow.cptr"
expect 0 '256 read, 384 written' "$trc" summary "$tmp/cow.cptr"
expect 0 'wrote 11 events' "$trc" cut "$tmp/cow.cptr" -o "$tmp/cut.cptr" --from-step 2
expect 2 'is after --to-step' "$trc" cut "$tmp/cow.cptr" -o "$tmp/cut.cptr" --from-step 3 --to-step 1
head -c 40 "$tmp/cow.cptr" >"$tmp/trunc.cptr"
expect 1 'truncated trace' "$trc" print "$tmp/trunc.cptr"
printf '{"workload": {"kind": "trace", "path": "cow.cptr"}}' >"$tmp/trace.json"
expect 0 'replayed 3 steps, 13 events; 2 processes' "$sim" "$tmp/trace.json" --json "$tmp/sim-trace.json"
expect 2 'workload.path: .*truncated' "$sim" "$tmp/trace.json" --set workload.path=trunc.cptr
expect 0 'replayed .* steps' "$sim" scenarios/redis-bgsave.json --json "$tmp/sim-redis.json"

# cowpte-record on a real program (root: pagemap's frame numbers): the fork, the child's COW
# writes and the parent's writes after the fork, each within a few pages of what it did.
rec=$tools/cowpte-record
expect 0 'Usage: cowpte-record' "$rec" --help
expect 2 'give --pid PID or -- COMMAND' "$rec" -o "$tmp/r.cptr"
expect 2 'excludes' "$rec" -o "$tmp/r.cptr" --pid 1 -- true
expect 1 'no process 4000000' "$rec" -o "$tmp/r.cptr" --pid 4000000
if ((EUID == 0)); then
  expect 0 'pages written' "$rec" -o "$tmp/rec.cptr" --interval 20 -- /usr/bin/python3 tests/data/record_fork.py
  "$trc" print "$tmp/rec.cptr" >"$tmp/rec.txt" 2>&1
  if "$py" - "$tmp/rec.txt" >"$tmp/out" 2>&1 <<'PY'; then
import sys
pids, forked, written = [], False, {}
for line in open(sys.argv[1]):
    t = line.split()
    if not t or t[0].startswith("#"):
        continue
    if t[0] == "spawn":
        root = t[1]
    elif t[0] == "fork" and t[1] == root:
        forked, child = True, t[2]
    elif t[0] == "touch" and t[2] == "w" and forked:
        n = sum(int(x.split("+")[1]) if "+" in x else 1 for x in t[3:])
        written[t[1]] = written.get(t[1], 0) + n
c, p = written.get(child, 0) if forked else 0, written.get(root, 0)
print(f"child wrote {c}, parent wrote {p} after the fork")
ok = forked and 2048 <= c <= 2048 + 64 and 1024 <= p <= 1024 + 64
sys.exit(0 if ok else 1)
PY
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "check-cli: FAILED: cowpte-record's trace of tests/data/record_fork.py:" >&2
    sed 's/^/    /' "$tmp/out" >&2
  fi
  # Reads through the idle-page bitmap, with a stand-in file whose bits the program clears as
  # the kernel would (these hosts have no page_idle): exactly the 512 pages it read.
  truncate -s 256M "$tmp/bitmap"
  expect 0 'pages written' "$rec" -o "$tmp/rr.cptr" --interval 20 --reads page-idle \
    --idle-bitmap "$tmp/bitmap" -- /usr/bin/python3 tests/data/record_reads.py "$tmp/bitmap" "$tmp/rr.addr"
  expect 1 'cannot open /nonexistent' "$rec" -o "$tmp/rr2.cptr" --reads page-idle \
    --idle-bitmap /nonexistent -- true
  "$trc" print "$tmp/rr.cptr" >"$tmp/rr.txt" 2>&1
  if "$py" - "$tmp/rr.txt" "$tmp/rr.addr" >"$tmp/out" 2>&1 <<'PY'; then
import sys
lo = int(open(sys.argv[2]).read(), 16)
hi = lo + 1024 * 4096
read = set()
for line in open(sys.argv[1]):
    t = line.split()
    if len(t) > 3 and t[0] == "touch" and t[2] == "r":
        for x in t[3:]:
            b, _, n = x.partition("+")
            read.update(int(b, 16) + k * 4096 for k in range(int(n or 1)))
got = sorted((p - lo) // 4096 for p in read if lo <= p < hi)
print(f"pages read in the region: {len(got)}")
sys.exit(0 if got == list(range(512)) else 1)
PY
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "check-cli: FAILED: cowpte-record's idle-page reads of tests/data/record_reads.py:" >&2
    sed 's/^/    /' "$tmp/out" >&2
  fi
fi

if validate "$tmp"/sim-{fork,write_after_fork,fork_server,snapshot,trace,redis}.json >"$tmp/out" 2>&1; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  echo "check-cli: FAILED: cowpte-sim's JSON against its schema:" >&2
  sed 's/^/    /' "$tmp/out" >&2
fi

if ((failed)); then
  echo "check-cli: $failed of $((passed + failed)) checks failed" >&2
  exit 1
fi
echo "check-cli: $passed checks passed"
