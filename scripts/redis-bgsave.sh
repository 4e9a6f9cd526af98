#!/usr/bin/env bash
# Records a real Redis BGSAVE into a cowpte trace (docs/traces.md): starts a private
# redis-server from Debian (installed if missing), fills it with about --mib MiB of values, runs
# a write load (redis-benchmark SETs to random existing keys), records the server and its
# snapshot child with cowpte-record while BGSAVE runs, and writes OUT.cptr and OUT.json (what
# Redis reported: latest_fork_usec, the save's time, memory; the load's rate; the recorder's
# overhead). Needs root (apt-get, and pagemap's frame numbers for cowpte-record).
#
#   bash scripts/redis-bgsave.sh [--mib N] [--out PATH.cptr] [--interval MS] [--load-seconds S]
#                                [--record BIN]
set -euo pipefail

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mib=2048
out=results/redis-bgsave.cptr
interval=100
load_seconds=2
record=
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --mib) mib=${2:?--mib needs a value}; shift ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --interval) interval=${2:?--interval needs a value}; shift ;;
    --load-seconds) load_seconds=${2:?--load-seconds needs a value}; shift ;;
    --record) record=${2:?--record needs a value}; shift ;;
    *) echo "redis-bgsave: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for v in mib interval load_seconds; do
  if [[ ! ${!v} =~ ^[1-9][0-9]{0,6}$ ]]; then
    echo "redis-bgsave: --${v//_/-} '${!v}' must be a positive integer" >&2
    exit 2
  fi
done
if [[ -z $record ]]; then
  for b in build-release/tools/cowpte-record build/tools/cowpte-record; do
    [[ -x $root/$b ]] && record=$root/$b && break
  done
fi
if [[ -z $record || ! -x $record ]]; then
  echo "redis-bgsave: no cowpte-record (build the tools first, or give --record BIN)" >&2
  exit 2
fi
if ((EUID != 0)); then
  echo "redis-bgsave: run as root (apt-get, and cowpte-record reads pagemap's frame numbers)" >&2
  exit 2
fi

missing=()
for pkg in redis-server redis-tools; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "redis-bgsave: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

tmp=$(mktemp -d)
server_pid='' load_pid='' rec_pid=''
cleanup() {
  for p in $load_pid $rec_pid $server_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free loopback port: ask the kernel for one.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cli() { redis-cli -p "$port" "$@"; }
info() { cli INFO "$1" | tr -d '\r' | sed -n "s/^$2:\(.*\)/\1/p"; }

# No persistence but the BGSAVE we ask for; THP left to Redis (it disables THP for itself).
redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
  --daemonize no --logfile "$tmp/redis.log" &
server_pid=$!
for _ in $(seq 100); do cli PING >/dev/null 2>&1 && break; sleep 0.05; done
cli PING >/dev/null || { echo "redis-bgsave: redis-server did not start:" >&2; tail "$tmp/redis.log" >&2; exit 1; }

# Values of 1000 bytes: about 1.1 KiB a key with Redis's overhead.
value=1000
keys=$((mib * 1024 * 1024 / 1100))
echo "redis-bgsave: filling $keys keys of $value bytes (about $mib MiB) on port $port"
t0=$(date +%s.%N)
redis-benchmark -p "$port" -t set -n "$keys" -r "$keys" -d "$value" -P 64 -c 4 -q >/dev/null
# Random keys repeat: top up to the count with a sequential pass over the rest of the space.
redis-benchmark -p "$port" -t set -n "$keys" -r "$keys" -d "$value" -P 64 -c 4 -q >/dev/null
echo "redis-bgsave: $(info keyspace db0) in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s, RSS $(( $(info memory used_memory_rss) >> 20 )) MiB"

"$record" --pid "$server_pid" -o "$out" --interval "$interval" 2>"$tmp/record.log" &
rec_pid=$!
sleep 0.5
# The write load: SETs to random existing keys, from 4 clients, until stopped.
redis-benchmark -p "$port" -t set -n 2000000000 -r "$keys" -d "$value" -c 4 -q >"$tmp/load.log" 2>&1 &
load_pid=$!
sleep "$load_seconds"
cmds_before=$(info stats total_commands_processed)
t_save=$(date +%s.%N)
cli BGSAVE >/dev/null
while [[ $(info persistence rdb_bgsave_in_progress) == 1 ]]; do sleep 0.05; done
t_end=$(date +%s.%N)
cmds_after=$(info stats total_commands_processed)
sleep "$(python3 -c "print($interval / 1000 * 2)")"  # the child's exit reaches the trace
kill "$load_pid"
wait "$load_pid" 2>/dev/null || true
load_pid=
kill -INT "$rec_pid"
wait "$rec_pid" || { echo "redis-bgsave: cowpte-record failed:" >&2; cat "$tmp/record.log" >&2; exit 1; }
rec_pid=

status=$(info persistence rdb_last_bgsave_status)
[[ $status == ok ]] || { echo "redis-bgsave: BGSAVE failed ($status)" >&2; tail "$tmp/redis.log" >&2; exit 1; }
python3 - "$out" "$tmp/record.log" <<PY
import json, sys
out, log = sys.argv[1], sys.argv[2]
doc = {
    "size_mib": $mib, "keys": int("$(cli DBSIZE)"), "value_bytes": $value,
    "latest_fork_usec": int("$(info stats latest_fork_usec)"),
    "rdb_last_bgsave_time_sec": int("$(info persistence rdb_last_bgsave_time_sec)"),
    "bgsave_wall_s": round($t_end - $t_save, 3),
    "used_memory_rss_bytes": int("$(info memory used_memory_rss)"),
    "load_ops_per_s_during_save": round(($cmds_after - $cmds_before) / max($t_end - $t_save, 1e-9)),
    "interval_ms": $interval,
    "recorder": open(log).read().strip().splitlines(),
    "redis_version": "$(info server redis_version)",
}
with open(out[:-5] + ".json" if out.endswith(".cptr") else out + ".json", "w") as f:
    json.dump(doc, f, indent=1)
print(json.dumps({k: v for k, v in doc.items() if k != "recorder"}))
PY
cat "$tmp/record.log"
echo "redis-bgsave: wrote $out"
