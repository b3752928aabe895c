#!/usr/bin/env bash
# libgomp's wait policy for an mkl build (docs/performance.md, "Two mkl jobs on one machine"):
# one `biaslens eval` alone, then two side by side (wall time until both end), for
# OMP_WAIT_POLICY unset, active and passive, alternating ROUNDS (3) times.
#   BIASLENS=target/release/biaslens harness/omp-wait-ab.sh [eval flags...]
# Default eval flags: --model smollm2-135m --tasks boolq --limit 120. STOP_PIDS: processes to
# stop (SIGSTOP) while it runs; they continue however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIASLENS:-target/release/biaslens}
[ -x "$bin" ] || { echo "no $bin: build with --features mkl or set BIASLENS" >&2; exit 1; }
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--model smollm2-135m --tasks boolq --limit 120)
stop=${STOP_PIDS:-}
tmp=$(mktemp -d)
evals=()  # PIDs of the evals started, so an interrupted run leaves none behind
finish() {
  [ ${#evals[@]} -eq 0 ] || kill "${evals[@]}" 2>/dev/null || true
  [ -z "$stop" ] || kill -CONT $stop 2>/dev/null || true
  rm -rf "$tmp"
}
trap finish EXIT
trap 'exit 130' INT TERM
[ -z "$stop" ] || kill -STOP $stop
# Each eval runs in the background and is waited for: bash handles INT/TERM at once during
# `wait`, but only after a foreground command ends.
start() {  # policy out
  if [ "$1" = unset ]; then env -u OMP_WAIT_POLICY "$bin" eval "${args[@]}" --no-cache --out "$2" >"$2.log" 2>&1 &
  else OMP_WAIT_POLICY=$1 "$bin" eval "${args[@]}" --no-cache --out "$2" >"$2.log" 2>&1 & fi
  evals+=($!)
}
finished() {  # pid out: its status; on failure its log is shown before the script stops
  local rc=0
  wait "$1" || rc=$?
  [ $rc -eq 0 ] || { echo "eval failed with status $rc ($2.log):" >&2; tail -n 20 "$2.log" >&2; }
  return $rc
}
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "${ROUNDS:-3}"); do
  for p in unset active passive; do
    rm -rf "${tmp:?}"/*
    evals=()
    s=$(date +%s.%N)
    start $p "$tmp/a"; finished "${evals[0]}" "$tmp/a"
    m=$(date +%s.%N)
    start $p "$tmp/b"; start $p "$tmp/c"
    finished "${evals[1]}" "$tmp/b"; finished "${evals[2]}" "$tmp/c"
    e=$(date +%s.%N)
    printf 'round %s %-7s: alone %.1f s, two side by side %.1f s\n' "$i" "$p" "$(echo "$m - $s" | bc)" "$(echo "$e - $m" | bc)"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
