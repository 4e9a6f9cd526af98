#!/usr/bin/env bash
# cowpte's test command (README, .ci/run):
#   0. clang-format check of every C++ source (scripts/check-format.sh)
#   1. build/       RelWithDebInfo with the benchmarks, -Werror, ctest; clang-tidy over src/
#   2. build-asan/  Debug with AddressSanitizer + UndefinedBehaviorSanitizer, ctest
#                   (COWPTE_SKIP_ASAN=1 skips this pass)
#   3. the CMake package: install build/ into a temporary prefix, check that only the facade and
#      the model layer are installed (each header self-contained, no spdlog), build and run
#      tests/consumer/find_package and tests/consumer/policy (a fork policy defined outside the
#      library) against it, then tests/consumer/add_subdirectory.
#   4. the fork comparison's smoke sweep (bench/bench_policies.cpp) and its report and plots
#      (scripts/report.py), which fails on a benchmark that failed or a workload that is missing.
# Exits non-zero on the first failure.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh

jobs=$(nproc)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0

step() { printf '\n=== %s ===\n' "$*"; }

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

step "clang-tidy (.clang-tidy) over src/"
bash scripts/tidy.sh build
passed=$((passed + 1))

if [[ ${COWPTE_SKIP_ASAN:-0} == 1 ]]; then
  step "build-asan/ skipped (COWPTE_SKIP_ASAN=1)"
else
  step "build-asan/ (Debug, AddressSanitizer + UndefinedBehaviorSanitizer)"
  configure build-asan -DCMAKE_BUILD_TYPE=Debug -DCOWPTE_BUILD_TESTS=ON -DCOWPTE_BUILD_BENCH=OFF \
    -DCOWPTE_SANITIZE=ON -DCOWPTE_WERROR=ON
  cmake --build build-asan -j "$jobs"
  step "ctest build-asan/"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  # The full 150,000-operation differential run happens in build/; under the sanitizers each
  # seed runs a shorter prefix of the same sequence, which keeps CI well under 30 minutes.
  COWPTE_DIFF_OPS=${COWPTE_DIFF_OPS:-3000} run_ctest build-asan
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
cmake -S tests/consumer/add_subdirectory -B "$tmp/add_subdirectory" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOWPTE_SOURCE_DIR="$root"
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

step "summary"
echo "test.sh: $passed passed, 0 failed"
