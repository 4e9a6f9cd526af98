#!/usr/bin/env bash
# cowpte's first command (README): install the dependencies, build build-release/ in Release and
# run the demo program (bench/cowpte_demo). Arguments are passed on to the demo.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh

dir=build-release
if [[ -f $dir/CMakeCache.txt ]] && ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$dir/CMakeCache.txt"; then
  rm -rf "$dir"
fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOWPTE_BUILD_TESTS=OFF \
  -DCOWPTE_BUILD_BENCH=ON -DCOWPTE_SANITIZE=OFF
cmake --build "$dir" -j "$(nproc)" --target cowpte_demo

demo=$(find "$dir" -type f -name cowpte_demo -perm -u+x -print -quit)
if [[ -z $demo ]]; then
  echo "demo.sh: cowpte_demo was built but not found under $dir" >&2
  exit 1
fi
echo "demo.sh: running $demo${*:+ $*}"
"$demo" "$@"
