#!/usr/bin/env bash
# Installs everything cowpte needs to build, test and benchmark, from Debian 12's packages.
# Idempotent: when every package is already installed it does not touch apt at all.
# Runs as root, or as a user with sudo (apt-get is then run through sudo).
set -euo pipefail

for a in "$@"; do
  case $a in
    -h | --help)
      echo "usage: bash scripts/install-deps.sh   (no arguments)"
      sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "install-deps: unknown argument '$a' (see --help)" >&2
      exit 2
      ;;
  esac
done

PACKAGES=(
  cmake ninja-build g++ clang-format clang-tidy python3
  libboost-dev libfmt-dev libspdlog-dev libgtest-dev libbenchmark-dev nlohmann-json3-dev
  python3-matplotlib python3-jsonschema
  libcli11-dev  # the command-line tools of tools/ (cowpte-sim, cowpte-trace, cowpte-record)
  clang-14 libclang-rt-14-dev  # the libFuzzer targets of tests/fuzz (docs/robustness.md)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run this script as root, or install sudo" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
