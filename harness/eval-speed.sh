#!/usr/bin/env bash
# The fast eval path against its slow reference in one run: the same tasks scored with every
# request in its own row, candle's composed ops and one batch at a time (`--pack-tokens 0
# --row-tokens 0 --candle-ops --parallel-batches 1`), then with the defaults (token tries,
# filled rows, the fused AVX-512 kernels where the CPU has them, two batches at once), no cache.
# Prints both wall times, the ratio, and fails if the two metric tables differ.
#
#   harness/eval-speed.sh [MODEL] [TASKS] [LIMIT]      (defaults: smollm2-135m arc_easy 120)
#   BIASLENS=target/release/biaslens harness/eval-speed.sh smollm2-135m copa,piqa 200
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-smollm2-135m}
tasks=${2:-arc_easy}
limit=${3:-120}
bin=${BIASLENS:-target/debug/biaslens}
[ -x "$bin" ] || cargo build --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # name, extra args...
    local name=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    "$bin" eval --model "$model" --tasks "$tasks" --limit "$limit" --no-cache \
        --out "$out/$name" "$@" > "$out/$name.log" 2>&1 ||
        { cat "$out/$name.log"; exit 1; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

unpacked=$(run unpacked --pack-tokens 0 --row-tokens 0 --candle-ops --parallel-batches 1)
packed=$(run packed)
grep '^|' "$out/unpacked/results.md" > "$out/a"
grep '^|' "$out/packed/results.md" > "$out/b"
echo "model $model, tasks $tasks, first $limit items each; $(nproc) cores"
printf 'reference (row per request, candle ops):     %8.1f s\n' "$unpacked"
printf 'fast (tries, filled rows, fused kernels, 2 batches): %8.1f s\n' "$packed"
printf 'speed-up:                       %8.2fx\n' "$(echo "$unpacked / $packed" | bc -l)"
if diff -q "$out/a" "$out/b" > /dev/null; then
    echo "metric tables identical"
else
    echo "metric tables differ:"
    diff "$out/a" "$out/b" || true
    exit 1
fi
