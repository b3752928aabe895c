#!/usr/bin/env python3
"""biaslens from Python, end to end on SmolLM2-135M.

    python crates/biaslens-py/examples/quickstart.py [--quick] [--model smollm2-135m]

Loads the model, measures the definitional controls, traces 2 prompts with 3 noise samples
(a heatmap with matplotlib when it is installed), edits the model with `biaslens edit`'s
defaults (the model's default edit: gap tuning with WordNet's words; about 20 minutes on
2 cores) into a temporary folder and measures the
edited model. `--quick` edits with a cheap setting instead (4 edit professions, the MLP
projections only): a smaller effect, for trying the API out.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import biaslens

# The cheap edit of --quick: `biaslens edit --max-edit 4 --probe-components mlp`.
QUICK_EDIT = {"method": "probe", "max_edit": 4, "probe_components": "mlp"}


def show(label, r):
    m = r.metrics
    gap, toward = m["mean_abs_gap"], m["gap_toward_definitional"]
    print(
        f"{label}: n = {r.n_prompts}, mean |p(he)-p(she)| = {gap['value']:.4f} "
        f"[{gap['ci_low']:.4f}, {gap['ci_high']:.4f}], "
        f"a_f = {m['a_f']['value']:.4f}, gap toward their gender = {toward['value']:.4f}"
    )


def heatmap(t, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no heatmap (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(t.kinds), figsize=(5 * len(t.kinds), 3), squeeze=False)
    for ax, kind, grid in zip(axes[0], t.kinds, t.effects):
        im = ax.imshow(grid, aspect="auto", cmap="Purples")
        ax.set_title(f"IE of restoring {kind} (n = {t.n_prompts})")
        ax.set_yticks(range(len(t.roles)), t.roles)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    print(f"heatmap: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quick", action="store_true", help="a cheap edit (%s)" % QUICK_EDIT)
    args = ap.parse_args()
    t0 = time.time()

    m = biaslens.load(args.model)
    print(m)
    before = m.measure(split="controls")
    show("controls, base model", before)

    t = m.trace(prompts=2, samples=3, kinds=("hidden", "mlp", "attn"), seed=0)
    print(t)
    for kind, grid in zip(t.kinds, t.effects):
        # NaN: no traced prompt has that token role (a one-token occupation has no middle).
        role, layer = divmod(int(np.nanargmax(grid)), grid.shape[1])
        print(f"  {kind}: largest mean IE {grid[role, layer]:.4f} at {t.roles[role]}, layer {layer}")
    out_dir = Path(tempfile.mkdtemp(prefix="biaslens-quickstart-"))
    heatmap(t, out_dir / "trace-heatmap.png")

    overrides = QUICK_EDIT if args.quick else {}
    if args.quick:
        print(f"--quick: editing with {overrides}, not the defaults (a smaller effect)")
    else:
        print("editing with `biaslens edit`'s defaults (about 20 minutes on 2 cores)")
    out, record = m.edit(str(out_dir / "edited"), **overrides)
    print(
        f"edit: {record['method']} on layers {record['layers']}, "
        f"edit prompts mean |p(he)-p(she)| {record['metrics_before']['mean_abs_gap']['value']:.4f}"
        f" -> {record['metrics_after']['mean_abs_gap']['value']:.4f}, wrote {out}"
    )

    after = biaslens.load(str(out)).measure(split="controls")
    show("controls, edited model", after)
    print(f"done in {time.time() - t0:.0f} s; outputs in {out_dir}")


if __name__ == "__main__":
    main()
