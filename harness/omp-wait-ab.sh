#!/usr/bin/env bash
# libgomp's wait policy for an mkl build (docs/performance.md, "Two mkl jobs on one machine"):
# one `biaslens eval` alone, then two side by side (wall time until both end), for
# OMP_WAIT_POLICY unset, active and passive, alternating ROUNDS (3) times.
#   BIASLENS=target/release/biaslens harness/omp-wait-ab.sh [eval flags...]
# Default eval flags: --model smollm2-135m --tasks boolq --limit 120. STOP_PIDS: processes to
# stop (SIGSTOP) while it runs and continue after.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIASLENS:-target/release/biaslens}
[ -x "$bin" ] || { echo "no $bin: build with --features mkl or set BIASLENS" >&2; exit 1; }
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--model smollm2-135m --tasks boolq --limit 120)
stop=${STOP_PIDS:-}
[ -n "$stop" ] && kill -STOP $stop
trap '[ -n "$stop" ] && kill -CONT $stop' EXIT
tmp=$(mktemp -d)
run() {  # policy out
  if [ "$1" = unset ]; then env -u OMP_WAIT_POLICY "$bin" eval "${args[@]}" --no-cache --out "$2" >"$2.log" 2>&1
  else OMP_WAIT_POLICY=$1 "$bin" eval "${args[@]}" --no-cache --out "$2" >"$2.log" 2>&1; fi
}
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "${ROUNDS:-3}"); do
  for p in unset active passive; do
    rm -rf "$tmp"/*
    s=$(date +%s.%N); run $p "$tmp/a"; m=$(date +%s.%N)
    run $p "$tmp/b" & run $p "$tmp/c" & wait
    e=$(date +%s.%N)
    printf 'round %s %-7s: alone %.1f s, two side by side %.1f s\n' "$i" "$p" "$(echo "$m - $s" | bc)" "$(echo "$e - $m" | bc)"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$tmp"
