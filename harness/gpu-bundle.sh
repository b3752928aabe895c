#!/usr/bin/env bash
# Build, HERE (no GPU needed), what harness/gpu-check.sh runs on a CUDA machine that has no
# compiler, cargo or network: the test (and bench) executables built with `--features cuda`,
# stripped, into gpu-bundle/ (git-ignored; carry it: `carry: ["gpu-bundle"]`, < 64 MiB).
#   harness/gpu-bundle.sh [test names...]   (default: gpu_crosscheck lsdm_solver tiny_reference)
set -euo pipefail
cd "$(dirname "$0")/.."
tests=("$@"); [ ${#tests[@]} -gt 0 ] || tests=(gpu_crosscheck lsdm_solver tiny_reference)
cargo fetch --quiet
eval "$(harness/cuda-toolkit.sh)"
export CARGO_TARGET_DIR="$PWD/target-cuda" CARGO_PROFILE_DEV_DEBUG=0
args=(); for t in "${tests[@]}"; do args+=(--test "$t"); done
[ -d benches ] && args+=(--benches)
rm -rf gpu-bundle && mkdir -p gpu-bundle/bin
nice -n 19 cargo test --features cuda --no-run --message-format=json "${args[@]}" \
  | python3 -c '
import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"][0] in ("test", "bench"):
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
' | while read -r kind name exe; do
  cp "$exe" "gpu-bundle/bin/$kind-$name"; strip "gpu-bundle/bin/$kind-$name"
done
pwd >gpu-bundle/manifest_dir   # tests find fixtures through the build-time CARGO_MANIFEST_DIR
ls -la gpu-bundle/bin; du -sh gpu-bundle
