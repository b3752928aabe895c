#!/usr/bin/env bash
# Run the cross-checks on a CUDA device and print a pass/fail table with the largest deviations.
# Runs on the GPU machine from the repo root, using the executables that harness/gpu-bundle.sh
# built here (that machine has the NVIDIA driver and a CUDA 13 runtime but no cargo).
#   BIASLENS_DEVICE=cuda:0 harness/gpu-check.sh        (default cuda)
#   GPU_CHECK_BENCHES_ONLY=1 harness/gpu-check.sh      (skip the tests, run only the benches)
# Real-model checks (SmolLM2) run only when the model is present under $BIASLENS_MODELS or
# ./models; otherwise they are skipped BY NAME and the table says so.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export BIASLENS_DEVICE="${BIASLENS_DEVICE:-cuda}"
[ -d gpu-bundle/bin ] || { echo "gpu-check: no gpu-bundle/ (run harness/gpu-bundle.sh here, carry gpu-bundle)" >&2; exit 2; }

# Fixtures are found through the manifest dir baked in at build time: point it at this tree.
built="$(cat gpu-bundle/manifest_dir)"
if [ "$built" != "$root" ] && [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -s "$root" "$built"; fi

# CUDA libraries (cudart, cublas, cublasLt, curand, nvrtc 13): system toolkit, a carried
# .cuda-toolkit, or the nvidia wheels of the machine's PyTorch. libcuda comes from the driver.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
         /usr/local/nvidia/lib "$root/.cuda-toolkit/nvidia/cu13/lib" \
         $(python3 -c 'import site,glob;print(" ".join(d for s in site.getsitepackages() for d in glob.glob(s+"/nvidia/*/lib")))' 2>/dev/null); do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "gpu-check: nvidia-smi unavailable"
missing=$(ldd gpu-bundle/bin/* 2>/dev/null | grep 'not found' | sort -u)
[ -z "$missing" ] || echo "gpu-check: unresolved libraries:"$'\n'"$missing"

models="${BIASLENS_MODELS:-$root/models}"
skip=()
if [ ! -f "$models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  skip=(--skip smollm2); echo "gpu-check: SmolLM2 not present in $models: real-model checks SKIPPED"
fi

log=$(mktemp -d)
declare -A status
tests=(gpu-bundle/bin/test-*)
[ "${GPU_CHECK_BENCHES_ONLY:-0}" = 1 ] && tests=()
for exe in "${tests[@]}"; do
  name=$(basename "$exe")
  "$exe" --nocapture --test-threads=1 "${skip[@]}" >"$log/$name.out" 2>&1
  rc=$?; status[$name]=$([ $rc -eq 0 ] && echo PASS || echo "FAIL(rc=$rc)")
  grep -E '^test result:' "$log/$name.out" | tail -n1 | sed "s/^/  $name: /"
done

echo
echo "== cross-checks on $BIASLENS_DEVICE: largest deviations =="
printf '%-36s %-34s %-11s %-7s %s\n' check metric max-dev tol result
cat "$log"/*.out | grep -ho 'GPUCHECK|.*' | awk -F'|' '{printf "%-36s %-34s %-11s %-7s %s\n", $2, $3, $4, $5, $6}'
[ ${#skip[@]} -eq 0 ] || printf '%-36s %-34s %-11s %-7s %s\n' "smollm2-*" "(model not carried)" - - SKIPPED
echo
echo "== test executables =="
fail=0
for k in "${!status[@]}"; do printf '%-36s %s\n' "$k" "${status[$k]}"; [ "${status[$k]}" = PASS ] || fail=1; done
for k in "${!status[@]}"; do [ "${status[$k]}" = PASS ] || { echo "--- $k (tail) ---"; tail -n 30 "$log/$k.out"; }; done

if ls gpu-bundle/bin/bench-* >/dev/null 2>&1; then
  echo; echo "== benches on $BIASLENS_DEVICE =="
  for b in gpu-bundle/bin/bench-*; do echo "--- $(basename "$b")"; "$b" --bench 2>&1 | grep -E 'time:|thrpt:|^[a-z_/]' | head -n 40; done
fi
exit $fail
