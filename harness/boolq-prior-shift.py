#!/usr/bin/env python3
"""How two `biaslens eval` runs differ on BoolQ: the share of questions answered " no", the mean
shift of log p(" no") - log p(" yes"), and the accuracy of the best single threshold on that
difference (what a model could reach if only its yes/no prior moved).

    harness/boolq-prior-shift.py BASE/results.json EDITED/results.json

Reads the per-item log-likelihoods in results.json (choice 0 is " no", 1 is " yes", as in
lm-eval's boolq). Produces the figures of docs/findings.md §4b.
"""
import json
import statistics
import sys


def records(path):
    d = json.load(open(path))
    for t in d["tasks"]:
        if t["task"] == "boolq":
            return t["output"]["result"]["scores"]["records"]
    sys.exit(f"{path}: no boolq task")


def best_threshold_accuracy(recs):
    pts = sorted((r["loglik"][0] - r["loglik"][1], r["gold"]) for r in recs)
    cuts = [p[0] - 1e-9 for p in pts] + [float("inf")]
    best = max(sum((v > c) == (g == 0) for v, g in pts) for c in cuts)
    return best / len(pts)


def main(base_path, edited_path):
    runs = {"base": records(base_path), "edited": records(edited_path)}
    if len(runs["base"]) != len(runs["edited"]):
        sys.exit("the two runs scored different numbers of BoolQ items")
    gold_no = sum(r["gold"] == 0 for r in runs["base"]) / len(runs["base"])
    print(f"n = {len(runs['base'])}, gold answer \"no\": {gold_no:.3f}")
    for name, recs in runs.items():
        said_no = sum(r["pred"] == 0 for r in recs) / len(recs)
        print(f"{name}: answers \"no\" {said_no:.3f}, best-threshold accuracy "
              f"{best_threshold_accuracy(recs):.4f}")
    shift = [(e["loglik"][0] - e["loglik"][1]) - (b["loglik"][0] - b["loglik"][1])
             for b, e in zip(runs["base"], runs["edited"])]
    print(f"shift of log p(no) - log p(yes): mean {statistics.mean(shift):+.3f} nats, "
          f"sd {statistics.stdev(shift):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
