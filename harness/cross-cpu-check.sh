#!/usr/bin/env bash
# Run cargo tests as if on a CPU with another L1 data cache, to check that results do not depend
# on the machine. candle's CPU matmul (the gemm crate) sizes its contraction blocks from the L1
# geometry it reads from /sys at start-up (docs/method.md, "Reproducible numbers"); this script
# bind-mounts other values over those files in a private mount namespace (root only, Linux),
# so one machine can play an Intel Xeon (48 KiB, 12-way L1d) or an AMD EPYC (32 KiB, 8-way).
#
#   harness/cross-cpu-check.sh [--l1 48K --ways 12] [--threads N] -- <cargo test arguments>
#
# Example (the snapshot test as an Intel Xeon would run it, on one thread):
#   harness/cross-cpu-check.sh --l1 48K --ways 12 --threads 1 -- --test report_quick snapshot_spec
# The vector width is the other machine dependence: on an AVX-512 CPU the default build runs
# gemm's AVX-512 kernels, and adding `--no-default-features` to the cargo arguments runs its
# AVX2 ones, as a CPU without AVX-512 would; the snapshot must pass under both.
set -euo pipefail
l1=48K ways=12 threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --l1) l1="$2"; shift 2 ;;
    --ways) ways="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "cross-cpu-check: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "cross-cpu-check: needs root (mount namespaces)" >&2; exit 2; }
command -v unshare >/dev/null || { echo "cross-cpu-check: needs unshare (util-linux)" >&2; exit 2; }
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "$l1" >"$work/size"
echo "$ways" >"$work/ways"
export CROSS_CPU_ARGS="$*" CROSS_CPU_WORK="$work"
[ -n "$threads" ] && export RAYON_NUM_THREADS="$threads"
unshare -m bash -c '
  set -euo pipefail
  for c in /sys/devices/system/cpu/cpu[0-9]*/cache/index0; do
    mount --bind "$CROSS_CPU_WORK/size" "$c/size"
    mount --bind "$CROSS_CPU_WORK/ways" "$c/ways_of_associativity"
  done
  echo "== emulated L1d: $(cat /sys/devices/system/cpu/cpu0/cache/index0/size), $(cat /sys/devices/system/cpu/cpu0/cache/index0/ways_of_associativity)-way; RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset}"
  cargo test $CROSS_CPU_ARGS
'
