#!/usr/bin/env python3
"""Markdown table of biaslens eval results against an lm-evaluation-harness reference file.

    harness/lm-eval-agreement.py RESULTS.json REFERENCE.json

RESULTS.json is `biaslens eval --out DIR`'s DIR/results.json; REFERENCE.json one of
fixtures/reference/*/lm_eval_capability*.json (its tasks are named bl_<task>). Prints one row per
metric both files have, with the difference in points, and the per-task seconds biaslens took
(summed over the tasks both files have, excluding model loading);
exits 1 if any accuracy differs by more than 0.5 points.
"""
import json
import sys

# biaslens task -> lm-eval task names in the reference files
TASKS = {
    "arc_easy": ["bl_arc_easy"],
    "arc_challenge": ["bl_arc_challenge"],
    "piqa": ["bl_piqa"],
    "boolq": ["bl_boolq"],
    "copa": ["bl_copa"],
    "openbookqa": ["bl_openbookqa"],
    "winogrande": ["bl_winogrande"],
    "lambada_openai": ["bl_lambada"],
    "winogender": ["bl_winogender_female", "bl_winogender_male"],
}


def main(results_path, reference_path):
    ours = json.load(open(results_path))
    ref = json.load(open(reference_path))["results"]
    worst = 0.0
    compared_seconds = 0.0
    print("| task | n | metric | lm-eval | biaslens | Δ (points) | biaslens s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for task in ours["tasks"]:
        name = task["task"]
        metrics = {m["name"]: m for m in task["metrics"]}
        if any(r in ref for r in TASKS.get(name, [])):
            compared_seconds += task["seconds"]
        for ref_name in TASKS.get(name, []):
            if ref_name not in ref:
                continue
            r = ref[ref_name]
            part = ref_name.rsplit("_", 1)[-1] if name == "winogender" else None
            for metric in ("acc", "acc_norm", "perplexity"):
                want = r.get(f"{metric},none")
                key = f"{metric}_{part}" if part else metric
                if want is None or key not in metrics:
                    continue
                got = metrics[key]["value"]
                diff = got - want
                if metric != "perplexity":
                    worst = max(worst, abs(diff) * 100)
                    shown = f"{diff * 100:+.2f}"
                else:
                    shown = f"{diff:+.3f} (ppl)"
                print(
                    f"| {ref_name[3:]} | {r['sample_len']} | {metric} | {want:.4f} | {got:.4f} "
                    f"| {shown} | {task['seconds']:.0f} |"
                )
    print(f"\nlargest accuracy difference: {worst:.2f} points; "
          f"biaslens {compared_seconds:.0f} s on these tasks ({ours['seconds']:.0f} s for all of "
          f"its tasks), lm-eval {float(json.load(open(reference_path))['seconds']):.0f} s")
    return 1 if worst > 0.5 else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
