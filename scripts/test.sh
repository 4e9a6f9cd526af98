#!/usr/bin/env bash
# cowpte's test command (README, .ci/run):
#   0. clang-format check of every C++ source (scripts/check-format.sh)
#   1. build/       RelWithDebInfo with the benchmarks and tools, -Werror, ctest; clang-tidy over
#                   src/ and tools/
#   2. build-asan/  Debug with AddressSanitizer + UndefinedBehaviorSanitizer, ctest (the library
#                   as a unity build, COWPTE_UNITY, as in 7 and 8)
#                   (COWPTE_SKIP_ASAN=1 skips this pass)
#   3. the CMake package: install build/ into a temporary prefix, check that only the facade and
#      the model layer are installed (each header self-contained, no spdlog), build and run
#      tests/consumer/find_package and tests/consumer/policy (a fork policy defined outside the
#      library) against it, then tests/consumer/add_subdirectory.
#   4. the fork comparison's smoke sweep (bench/bench_policies.cpp) and its report and plots
#      (scripts/report.py), which fails on a benchmark that failed or a workload that is missing.
#   5. the simulator's speed (bench/bench_speed.cpp, quick sizes, five times) against
#      bench/speed-baseline.json: a figure fails at more than 2x its baseline ratio to this
#      machine's real fork measured in the same run, in all five runs (scripts/speed_check.py).
#   6. scripts/check-cli.sh: every program and script on --help and bad arguments; cowpte-sim on
#      every built-in workload and on traces (its JSON against its schema); cowpte-record on a
#      real program (tests/data/record_fork.py)
#   6b. scripts/slurm-test.sh: a one-node SLURM cluster started here runs three small sweeps as
#      job arrays (scripts/sweep.py --backend slurm); their results must equal the local
#      backend's, and a failed run must be named and rerun (COWPTE_SKIP_SLURM=1 skips it)
#   7. build-fuzz/  clang-14, libFuzzer + ASan + UBSan: each fuzz target of tests/fuzz (the
#                   facade, the JSON configuration, traces) for COWPTE_FUZZ_SECONDS (60) from
#                   its seed corpus, all at once
#   8. build-tsan/  ThreadSanitizer: two Machines on two threads (tests/tsan)
# Exits non-zero on the first failure.
set -euo pipefail

for a in "$@"; do
  case $a in
    -h | --help)
      echo "usage: bash scripts/test.sh   (no arguments; COWPTE_SKIP_ASAN=1 skips the sanitizer pass)"
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "test.sh: unknown argument '$a' (see --help)" >&2
      exit 2
      ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh

jobs=$(nproc)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0

# Each step's header says how long the run has taken so far (CI has to stay well under 30 min).
step() { printf '\n=== %s [%dm%02ds] ===\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

# A build tree made earlier by another generator can't be reused with Ninja: start it afresh.
configure() {
  local dir=$1
  shift
  if [[ -f $dir/CMakeCache.txt ]] && ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$dir/CMakeCache.txt"; then
    rm -rf "$dir"
  fi
  cmake -S "$root" -B "$dir" -G Ninja "$@"
}

# ctest, failing on an empty suite too; adds the number of tests run to $passed.
run_ctest() {
  local dir=$1 log
  log="$tmp/ctest-$(basename "$dir").log"
  ctest --test-dir "$dir" --output-on-failure --no-tests=error -j2 | tee "$log"
  local n
  n=$(sed -n 's/.*tests passed, 0 tests failed out of \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  passed=$((passed + ${n:-0}))
}

step "clang-format (.clang-format): every C++ source formatted"
bash scripts/check-format.sh
passed=$((passed + 1))

step "build/ (RelWithDebInfo, tests and benchmarks, warnings are errors)"
configure build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOWPTE_BUILD_TESTS=ON -DCOWPTE_BUILD_BENCH=ON \
  -DCOWPTE_SANITIZE=OFF -DCOWPTE_WERROR=ON
cmake --build build -j "$jobs"
step "ctest build/"
run_ctest build

step "clang-tidy (.clang-tidy) over src/ and tools/"
bash scripts/tidy.sh build
passed=$((passed + 1))

if [[ ${COWPTE_SKIP_ASAN:-0} == 1 ]]; then
  step "build-asan/ skipped (COWPTE_SKIP_ASAN=1)"
else
  step "build-asan/ (Debug, AddressSanitizer + UndefinedBehaviorSanitizer)"
  configure build-asan -DCMAKE_BUILD_TYPE=Debug -DCOWPTE_BUILD_TESTS=ON -DCOWPTE_BUILD_BENCH=OFF \
    -DCOWPTE_SANITIZE=ON -DCOWPTE_WERROR=ON -DCOWPTE_UNITY=ON -DCOWPTE_BUILD_TOOLS=OFF
  cmake --build build-asan -j "$jobs"
  step "ctest build-asan/"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  # The full 150,000-operation differential run happens in build/; under the sanitizers each
  # seed runs a shorter prefix of the same sequence, which keeps CI well under 30 minutes.
  # Likewise the real-kernel differential test runs 1 of its 20 sequences per policy there (the
  # agents are forks of an ASan process, whose /proc/PID/smaps is slow to read).
  # The explorer's tests run 60 schedules per scenario there instead of 150-300.
  COWPTE_DIFF_OPS=${COWPTE_DIFF_OPS:-3000} COWPTE_REAL_SEQUENCES=${COWPTE_REAL_SEQUENCES_ASAN:-1} \
    COWPTE_EXPLORE_SCHEDULES=${COWPTE_EXPLORE_SCHEDULES:-60} run_ctest build-asan
fi

step "CMake package: install build/ and find_package(cowpte CONFIG REQUIRED)"
cmake --install build --prefix "$tmp/prefix"
cmake -S tests/consumer/find_package -B "$tmp/find_package" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$tmp/prefix"
cmake --build "$tmp/find_package" -j "$jobs"
"$tmp/find_package/consumer"
passed=$((passed + 1))

step "CMake package: only the facade and the model layer are installed, each header self-contained"
# The installed headers are include/cowpte/*.hpp (facade) and include/cowpte/model/*.hpp (model
# layer), nothing from src/, and none needs spdlog; each compiles on its own.
if grep -rlE '#include [<"](spdlog|mm/|mmu/|fork/|fault/|facade/)' "$tmp/prefix/include"; then
  echo "an installed header includes a private one (above)" >&2
  exit 1
fi
if grep -l spdlog "$tmp/prefix"/lib/cmake/cowpte/*.cmake; then
  echo "the installed package depends on spdlog (above)" >&2
  exit 1
fi
for h in $(cd "$tmp/prefix/include" && find cowpte -name '*.hpp' | sort); do
  echo "#include <$h>" | g++ -std=c++20 -fsyntax-only -x c++ -I"$tmp/prefix/include" - ||
    { echo "installed header $h does not compile on its own" >&2; exit 1; }
done
passed=$((passed + 1))

step "CMake package: a research project registers its own fork policy (tests/consumer/policy)"
cmake -S tests/consumer/policy -B "$tmp/policy" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$tmp/prefix"
cmake --build "$tmp/policy" -j "$jobs"
"$tmp/policy/policy_consumer"
passed=$((passed + 1))

step "CMake package: add_subdirectory() of the checkout"
# Debug and one unity source: what is checked is that the checkout builds as a subproject, and
# an optimised build of every source again cost CI 7 minutes.
cmake -S tests/consumer/add_subdirectory -B "$tmp/add_subdirectory" -G Ninja \
  -DCMAKE_BUILD_TYPE=Debug -DCOWPTE_UNITY=ON -DCOWPTE_SOURCE_DIR="$root"
cmake --build "$tmp/add_subdirectory" -j "$jobs"
"$tmp/add_subdirectory/consumer"
passed=$((passed + 1))

step "the fork comparison, smoke sweep: cowpte_bench_policies and scripts/report.py"
py=/usr/bin/python3
[[ -x $py ]] || py=python3
build/bench/cowpte_bench_policies --cowpte_sweep=smoke --benchmark_out="$tmp/smoke.json" \
  --benchmark_out_format=json >"$tmp/smoke.log" 2>&1 || {
  cat "$tmp/smoke.log"
  exit 1
}
"$py" scripts/report.py "$tmp/smoke.json" --plots "$tmp/plots" --require-all >/dev/null
passed=$((passed + 1))

step "simulator speed: cowpte_bench_speed against bench/speed-baseline.json (ratios to the real fork and the host anchor)"
# Five runs of a few seconds each: a figure fails only when it is slow in all five (a busy
# neighbour on a shared machine comes and goes; a regression stays).
for i in 1 2 3 4 5; do
  build/bench/cowpte_bench_speed --cowpte_speed=quick --benchmark_out="$tmp/speed$i.json" \
    --benchmark_out_format=json >"$tmp/speed$i.log" 2>&1 || {
    cat "$tmp/speed$i.log"
    exit 1
  }
done
"$py" scripts/speed_check.py "$tmp"/speed[1-5].json --baseline bench/speed-baseline.json
passed=$((passed + 1))

step "scripts/check-cli.sh: programs and scripts on hostile arguments, the tools"
bash scripts/check-cli.sh build
passed=$((passed + 1))

if [[ ${COWPTE_SKIP_SLURM:-0} == 1 ]]; then
  step "scripts/slurm-test.sh skipped (COWPTE_SKIP_SLURM=1)"
elif ((EUID != 0)); then
  step "scripts/slurm-test.sh skipped: it starts SLURM's daemons and needs root"
else
  step "scripts/slurm-test.sh: sweeps as SLURM job arrays on a one-node cluster = the local sweeps"
  bash scripts/slurm-test.sh build
  passed=$((passed + 1))
fi

step "build-fuzz/ (clang-14, libFuzzer + AddressSanitizer + UndefinedBehaviorSanitizer)"
if [[ -f build-fuzz/CMakeCache.txt ]] && ! grep -q 'CMAKE_CXX_COMPILER:.*clang' build-fuzz/CMakeCache.txt; then
  rm -rf build-fuzz
fi
CC=clang-14 CXX=clang++-14 configure build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOWPTE_FUZZ=ON \
  -DCOWPTE_SANITIZE=ON -DCOWPTE_BUILD_TESTS=OFF -DCOWPTE_BUILD_BENCH=OFF -DCOWPTE_UNITY=ON \
  -DCOWPTE_BUILD_TOOLS=OFF
cmake --build build-fuzz -j "$jobs"
step "fuzzing: cowpte_fuzz_facade, cowpte_fuzz_config and cowpte_fuzz_trace, ${COWPTE_FUZZ_SECONDS:-60} s each"
# New inputs go to a scratch corpus; a crash is kept in build-fuzz/artifacts/ (docs/robustness.md
# says how it becomes a corpus file and a regression test).
mkdir -p build-fuzz/artifacts
# fuzz T: one target for its time, in the background; its pid in fuzz_pid.
fuzz() {
  local t=$1
  mkdir -p "$tmp/corpus-$t"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "build-fuzz/tests/fuzz/cowpte_fuzz_$t" "$tmp/corpus-$t" "tests/fuzz/corpus/$t" \
    -dict="tests/fuzz/$t.dict" -max_total_time="${COWPTE_FUZZ_SECONDS:-60}" -timeout=30 \
    -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$t-" >"$tmp/fuzz-$t.log" 2>&1 &
  fuzz_pid=$!
}
# fuzz_wait T PID: the target's result.
fuzz_failed=0
fuzz_wait() {
  local t=$1
  if wait "$2"; then
    grep -E '^stat::number_of_executed_units|^Done' "$tmp/fuzz-$t.log" | sed "s/^/cowpte_fuzz_$t: /"
    passed=$((passed + 1))
  else
    tail -n 60 "$tmp/fuzz-$t.log"
    echo "cowpte_fuzz_$t failed; the input is in build-fuzz/artifacts/" >&2
    # The artifact stays on the machine that ran this: print it, so a CI log is a reproducer.
    grep -m1 '^INFO: Seed:' "$tmp/fuzz-$t.log" || true
    local f
    for f in build-fuzz/artifacts/"$t"-*; do
      [[ -f $f ]] || continue
      echo "== $f in base64 (save as crash.b64; replay: base64 -d crash.b64 > crash && build-fuzz/tests/fuzz/cowpte_fuzz_$t crash)"
      base64 -w 100 "$f"
    done
    fuzz_failed=1
  fi
}
# All three at once (on two cores each gets two thirds of one: fewer runs, the same time).
fuzz facade
p_facade=$fuzz_pid
fuzz config
p_config=$fuzz_pid
fuzz trace
p_trace=$fuzz_pid
fuzz_wait facade "$p_facade"
fuzz_wait config "$p_config"
fuzz_wait trace "$p_trace"
((fuzz_failed == 0)) || exit 1

step "build-tsan/ (ThreadSanitizer): two Machines on two threads"
configure build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOWPTE_TSAN=ON -DCOWPTE_BUILD_TESTS=OFF \
  -DCOWPTE_BUILD_BENCH=OFF -DCOWPTE_SANITIZE=OFF -DCOWPTE_UNITY=ON -DCOWPTE_BUILD_TOOLS=OFF
cmake --build build-tsan -j "$jobs"
TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/tsan/cowpte_tsan_machines
passed=$((passed + 1))

step "summary"
echo "test.sh: $passed passed, 0 failed"
