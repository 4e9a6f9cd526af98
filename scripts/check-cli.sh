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
expect 0 'usage' python3 scripts/speed_check.py --help
expect 2 'cannot read the run' python3 scripts/speed_check.py /nonexistent.json

if ((failed)); then
  echo "check-cli: $failed of $((passed + failed)) checks failed" >&2
  exit 1
fi
echo "check-cli: $passed checks passed"
