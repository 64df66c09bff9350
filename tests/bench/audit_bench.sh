#!/usr/bin/env bash
# What the audit log costs: m2mvault-bench against two throw-away daemons,
# one with [audit] enabled = false, one with the default audit log, in turn.
#   tests/bench/audit_bench.sh [m2mvault-bench options, e.g. --seconds 3 --clients 1,16]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin="$root/build/default"
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
for audit in false true; do
  mkdir -p "$tmp/$audit"
  printf 'log_level = "warn"\n[audit]\nenabled = %s\n' "$audit" >"$tmp/$audit/m2mvaultd.toml"
  "$bin/vault/m2mvaultd" --state-dir "$tmp/$audit/state" --socket "$tmp/$audit/m2mvault.sock" \
    --config "$tmp/$audit/m2mvaultd.toml" >"$tmp/$audit/daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    M2MVAULT_SOCKET="$tmp/$audit/m2mvault.sock" "$bin/tools/m2mvault" status >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "## audit enabled = $audit"
  "$bin/tests/bench/m2mvault-bench" --socket "$tmp/$audit/m2mvault.sock" "$@"
  kill "$pid"
  wait "$pid" || true
  pid=
done
