#!/usr/bin/env bash
# Install the pieces of the CUDA 13.0 toolkit that candle's CUDA backend needs to BUILD (nvcc,
# headers, the libraries cudarc links against) from PyPI wheels into a project-local prefix, and
# print the environment that points cargo at it. No GPU and no system CUDA needed.
#
#   eval "$(harness/cuda-toolkit.sh)"      # install if missing, then export PATH, CUDA_ROOT, ...
#
# Idempotent: a prefix whose stamp matches the pinned wheel list is left alone.
# Why 13.0: the device machines run driver 580 with a CUDA 13.0 toolkit, and cudarc 0.19 knows
# CUDA versions up to 13.4 (the newest wheels, 13.5, would be refused by its build script).
# Override the prefix with BIASLENS_CUDA_PREFIX, the compute capability with CUDA_COMPUTE_CAP.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${BIASLENS_CUDA_PREFIX:-$root/.cuda-toolkit}"
py="${PYTHON:-python3}"
wheels=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cublas==13.1.0.3"
  "nvidia-curand==10.4.0.35"
)
stamp="$prefix/.stamp"
want="$(printf '%s\n' "${wheels[@]}")"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cuda-toolkit: installing ${#wheels[@]} wheels into $prefix" >&2
  rm -rf "$prefix.part"
  "$py" -m pip install --quiet --no-deps --disable-pip-version-check --target "$prefix.part" "${wheels[@]}" >&2
  cu="$prefix.part/nvidia/cu13"
  [ -x "$cu/bin/nvcc" ] || { echo "cuda-toolkit: no nvcc in $cu/bin" >&2; exit 1; }
  # The wheels ship only versioned sonames (libcublas.so.13); the linker wants libX.so.
  for lib in "$cu"/lib/lib*.so.*; do
    base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
  done
  # libcuda comes with the driver, never in a wheel: link against a stub that defines the driver
  # symbols cudarc declares; at run time the driver's real libcuda.so.1 is loaded instead.
  mkdir -p "$cu/lib/stubs"
  # Union over every cudarc version in the lock file (candle uses 0.19, ug-cuda 0.17).
  for reg in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs; do
    grep -hoE '\bfn cu[A-Za-z0-9_]+\(' "$reg" | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/\1/'
  done | sort -u | awk '{print "void " $1 "(void) {}"}' >"$cu/lib/stubs/libcuda_stub.c"
  [ -s "$cu/lib/stubs/libcuda_stub.c" ] || { echo "cuda-toolkit: no cudarc sources (run cargo fetch first)" >&2; exit 1; }
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/libcuda_stub.c"
  echo "$want" >"$prefix.part/.stamp"
  rm -rf "$prefix"
  mv "$prefix.part" "$prefix"
  echo "cuda-toolkit: ready" >&2
fi

cu="$prefix/nvidia/cu13"
cat <<ENV
export CUDA_ROOT="$cu"
export CUDA_HOME="$cu"
export CUDA_PATH="$cu"
export PATH="$cu/bin:\$PATH"
export LIBRARY_PATH="$cu/lib:$cu/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13000
ENV
