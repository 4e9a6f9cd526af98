#!/usr/bin/env bash
# clang-tidy with the project's .clang-tidy over the library's sources (src/) and the tools'
# (tools/), using the compile commands of a build tree (default build/). Fails on any finding.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build}
mapfile -t files < <(git ls-files --cached --others --exclude-standard 'src/*.cpp' 'tools/*.cpp')
printf '%s\n' "${files[@]}" | xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet 2>/dev/null
