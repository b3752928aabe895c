#!/usr/bin/env bash
# Check that transformers loads biaslens-exported models and computes what biaslens computes.
#
#   harness/check-hf-export.sh smollm2 WORKDIR   export unedited SmolLM2 with `biaslens apply`
#                                                (empty delta), compare p(he/she/they) with
#                                                `biaslens measure` on one template.
#   harness/check-hf-export.sh tiny WORKDIR      synthetic delta on the tiny llama, applied with
#                                                `biaslens apply`; compare last-token log-probs.
#   harness/check-hf-export.sh dir DIR WORKDIR   compare `biaslens measure` on an exported DIR.
#
# Needs a Python venv with torch + transformers: $HF_VENV (default /tmp/biaslens-hf-venv) is
# created with `pip install torch transformers safetensors` (from PyPI; large) when missing.
# Exits non-zero when the largest |Δp| exceeds $TOL (default 1e-4).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: $0 smollm2|tiny|dir ...}
VENV=${HF_VENV:-/tmp/biaslens-hf-venv}
TOL=${TOL:-1e-4}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers safetensors
fi
PY="$VENV/bin/python"
BIN=${BIASLENS:-target/debug/biaslens}
[ -x "$BIN" ] || cargo build --quiet

measure_and_compare() {  # DIR WORK
  local dir=$1 work=$2
  printf 'The {} said that\n' > "$work/templates.txt"
  "$BIN" measure --model "$dir" --split edit --templates "$work/templates.txt" --json "$work/measure.json" --force > "$work/measure.txt"
  "$PY" harness/check-hf-export.py "$dir" --prompts "$work/measure.json" > "$work/transformers.json"
  "$PY" - "$work/transformers.json" "$TOL" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); tol = float(sys.argv[2])
print(f"{r['n']} prompts: max |p_transformers - p_biaslens| = {r['max_abs_dp']:.3e} (tol {tol:g})")
sys.exit(0 if r["max_abs_dp"] <= tol else 1)
PYEOF
}

case "$MODE" in
  smollm2)
    WORK=${2:?WORKDIR}; mkdir -p "$WORK"
    GGUF=models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    "$PY" - "$GGUF" "$WORK/empty-delta.safetensors" <<'PYEOF'
import hashlib, json, sys
from safetensors.numpy import save_file
h = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
meta = {"method": "none", "model_hash": h, "params": {}}
save_file({}, sys.argv[2], metadata={"biaslens": json.dumps(meta)})
PYEOF
    "$BIN" apply --model smollm2-135m --delta "$WORK/empty-delta.safetensors" --out "$WORK/smollm2-hf" --force
    measure_and_compare "$WORK/smollm2-hf" "$WORK" ;;
  tiny)
    WORK=${2:?WORKDIR}; mkdir -p "$WORK"
    BIASLENS_EXPORT_OUT="$WORK" cargo test --quiet --test export -- --ignored write_tiny_delta_for_transformers_check > "$WORK/gen.log"
    "$BIN" apply --model fixtures/reference/tiny/llama --delta "$WORK/delta.safetensors" --out "$WORK/tiny-edited" --force
    "$PY" harness/check-hf-export.py "$WORK/tiny-edited" --ids "$WORK/expected.json" | tee "$WORK/transformers.json"
    "$PY" -c "import json,sys; r=json.load(open('$WORK/transformers.json')); sys.exit(0 if r['max_abs_dp'] <= $TOL else 1)" ;;
  dir)
    DIR=${2:?DIR}; WORK=${3:?WORKDIR}; mkdir -p "$WORK"
    measure_and_compare "$DIR" "$WORK" ;;
  *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
