#!/usr/bin/env bash
# One row of docs/findings.md §6b: fit the gap probe without the validation professions and
# templates, then judge it on them (bias) and on the controls at the validation templates.
#   harness/probe-sweep.sh NAME [biaslens edit flags...]     e.g. harness/probe-sweep.sh mlp5 --probe-components mlp
# Writes runs/sweep/NAME (the edited model) and NAME.val.json / NAME.ctl.json; prints one line.
# MODEL (default smollm2-135m) and BIASLENS (default target/release/biaslens) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: harness/probe-sweep.sh NAME [edit flags...]}; shift
bin=${BIASLENS:-target/release/biaslens}
# An mkl build spins libgomp's threads beside other jobs (docs/performance.md, "Two mkl jobs").
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
[ -x "$bin" ] || { echo "no $bin: run cargo build --release or set BIASLENS" >&2; exit 1; }
out=runs/sweep/$name
mkdir -p runs/sweep
if [ ! -f "$out/edit.json" ]; then
  "$bin" edit --model "${MODEL:-smollm2-135m}" --out "$out" --validation --force "$@" > "$out.log" 2>&1 \
    || { echo "$name: edit failed, see $out.log" >&2; exit 1; }
fi
"$bin" measure --model "$out" --split validation --template-split validation --json "$out.val.json" --force >/dev/null
"$bin" measure --model "$out" --split controls --template-split validation --json "$out.ctl.json" --force >/dev/null
python3 - "$name" "$out" <<'PY'
import json, sys
name, out = sys.argv[1:]
v = json.load(open(out + ".val.json"))["metrics"]
c = json.load(open(out + ".ctl.json"))["metrics"]
g, t = v["mean_abs_gap"], c["gap_toward_definitional"]
print(f"{name}: validation mean |gap| {g['value']:.4f} [{g['ci_low']:.4f}, {g['ci_high']:.4f}] (n = {g['n']}), "
      f"a_s {v['regression']['a_s']['value']:.4f}, controls toward their gender {t['value']:.4f} (n = {t['n']})")
PY
