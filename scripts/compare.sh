#!/usr/bin/env bash
# cowpte's first command (README): install the dependencies, build build-release/ in Release and
# run the fork-latency comparison: every registered fork policy (classic, seed, on_demand_fork,
# rfc_v2, ...: cowpte::fork_policy_names()) on the
# timing model, with this machine's real fork beside them. Prints the tables and writes
#   results/compare-<sweep>.json   Google Benchmark's JSON (every counter of every run)
#   results/plots-<sweep>/*.png    fork latency, fault latency, page-table memory
#
# The benchmarks run one process each, on every core (scripts/sweep.py), with a line per
# benchmark as it ends.
#
#   bash scripts/compare.sh           the short sweep, 1 MiB to 1 GiB (about 16 s on 2 cores once built)
#   bash scripts/compare.sh --full    1 MiB to 64 GiB and the larger workloads (three minutes)
#   bash scripts/compare.sh --help    usage; an unknown argument exits 2 before anything is built
# --benchmark_* flags go to cowpte_bench_policies (for example --benchmark_filter=fork_server).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

usage() {
  cat <<'USAGE'
usage: bash scripts/compare.sh [--smoke|--short|--full] [--benchmark_FLAG=VALUE...]
  builds build-release/ and runs the fork-latency comparison, then prints its tables
  --smoke   the CI sweep (seconds)
  --short   1 MiB to 1 GiB (default; about 16 s on 2 cores once built)
  --full    1 MiB to 64 GiB and the larger workloads (three minutes)
  --benchmark_*  passed to cowpte_bench_policies (for example --benchmark_filter=fork_server)
writes results/compare-<sweep>.json, results/compare-<sweep>.log and results/plots-<sweep>/
USAGE
}

sweep=short
args=()
for a in "$@"; do
  case $a in
    -h | --help)
      usage
      exit 0
      ;;
    --full) sweep=full ;;
    --smoke) sweep=smoke ;;
    --short) sweep=short ;;
    --benchmark_list_tests | --benchmark_list_tests=*)
      echo "compare.sh: $a lists nothing to compare; run build-release/bench/cowpte_bench_policies $a" >&2
      exit 2
      ;;
    --benchmark_*=*) args+=("$a") ;;
    *)
      echo "compare.sh: unknown argument '$a'" >&2
      usage >&2
      exit 2
      ;;
  esac
done

bash scripts/install-deps.sh

dir=build-release
if [[ -f $dir/CMakeCache.txt ]] && ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$dir/CMakeCache.txt"; then
  rm -rf "$dir"
fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOWPTE_BUILD_TESTS=OFF \
  -DCOWPTE_BUILD_BENCH=ON -DCOWPTE_SANITIZE=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)" --target cowpte_bench_policies

# Debian's python3, which has python3-matplotlib, even when another python3 comes first in PATH.
py=/usr/bin/python3
[[ -x $py ]] || py=python3

mkdir -p results
json=results/compare-$sweep.json
log=results/compare-$sweep.log
echo "compare.sh: running the '$sweep' sweep on $(nproc) cores, a line per benchmark (also in $log)"
rm -f "$json"  # never report a previous run's results as this one's
# Every benchmark in its own process, one per core, this machine's real forks first and alone
# (scripts/sweep.py); each builds its own Machine, so the simulated figures are the serial run's.
"$py" scripts/sweep.py --jobs "$(nproc)" --out "$json" -- \
  "$dir/bench/cowpte_bench_policies" --cowpte_sweep="$sweep" "${args[@]}" 2>&1 | tee "$log" || {
  echo "compare.sh: the sweep failed (see $log)" >&2
  exit 1
}
if [[ ! -s $json ]]; then
  echo "compare.sh: cowpte_bench_policies wrote no results to $json (see $log)" >&2
  exit 1
fi
"$py" scripts/report.py "$json" --plots "results/plots-$sweep"
