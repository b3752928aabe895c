#!/usr/bin/env bash
# CI check: `cargo build --features cuda` compiles and links (no GPU needed, none is used).
# The CUDA 13.0 toolkit comes from PyPI wheels (harness/cuda-toolkit.sh); the build has its own
# target dir so it never invalidates the CPU build. Slow from scratch: nvcc compiles candle's
# kernels (see docs/cuda.md for timings).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --quiet   # the libcuda stub is generated from cudarc's sources
eval "$(harness/cuda-toolkit.sh)"
export CARGO_TARGET_DIR="$PWD/target-cuda" CARGO_PROFILE_DEV_DEBUG=0
start=$(date +%s)
nice -n 19 cargo build --features cuda "$@"
echo "cuda-build: ok in $(( $(date +%s) - start )) s (compute capability $CUDA_COMPUTE_CAP)"
