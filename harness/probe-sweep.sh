#!/usr/bin/env bash
# One row of docs/findings.md §6b: fit the gap probe without the validation professions and
# templates, then judge it on them (bias) and on the controls at the validation templates.
#   harness/probe-sweep.sh NAME [biaslens edit flags...]     e.g. harness/probe-sweep.sh mlp5 --probe-components mlp
# Writes runs/sweep/NAME (the edited model) and NAME.{validation,controls}.{validation,varied-validation}.json;
# prints one line per template set.
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
# Judged on Vig's validation templates and on the project-written templates a validation fit
# never sees (`--template-split varied-validation`, other sentence shapes; docs/method.md §2b),
# each beside the base model's numbers (runs/sweep/base-MODEL.*, measured again each time by the
# same binary, so a changed data file or build cannot leave a stale base; seconds).
model=${MODEL:-smollm2-135m}
base=runs/sweep/base-$model
for ts in validation varied-validation; do
  for sub in validation controls; do
    "$bin" measure --model "$model" --split $sub --template-split $ts --json "$base.$sub.$ts.json" --force >/dev/null
    "$bin" measure --model "$out" --split $sub --template-split $ts --json "$out.$sub.$ts.json" --force >/dev/null
  done
done
python3 - "$name" "$out" "$base" <<'PY'
import json, sys
name, out, base = sys.argv[1:]
m = lambda f: json.load(open(f))["metrics"]
for ts in ["validation", "varied-validation"]:
    v, c = m(f"{out}.validation.{ts}.json"), m(f"{out}.controls.{ts}.json")
    bv, bc = m(f"{base}.validation.{ts}.json"), m(f"{base}.controls.{ts}.json")
    g, t = v["mean_abs_gap"], c["gap_toward_definitional"]
    g0, t0 = bv["mean_abs_gap"]["value"], bc["gap_toward_definitional"]["value"]
    print(f"{name} [{ts} templates]: validation mean |gap| {g['value']:.4f} [{g['ci_low']:.4f}, {g['ci_high']:.4f}] "
          f"(n = {g['n']}, {g['value'] / g0 - 1:+.1%} vs base {g0:.4f}), a_s {v['regression']['a_s']['value']:.4f}, "
          f"controls toward their gender {t['value']:.4f} (n = {t['n']}, {t['value'] / t0:.1%} of base {t0:.4f} kept)")
PY
