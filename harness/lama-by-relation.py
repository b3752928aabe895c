#!/usr/bin/env python3
"""Where an edit's LAMA T-REx cost lies, fact by fact:

    biaslens eval --model BASE   --tasks lama_trex --out BASE_DIR
    biaslens eval --model EDITED --tasks lama_trex --out EDITED_DIR
    harness/lama-by-relation.py BASE_DIR/results.json EDITED_DIR/results.json [DATA_DIR]

Pairs the two runs' per-fact records (every fact of fixtures/data/lama_trex_pararel, in the
loader's order: relation files sorted by name, relations without a causal ParaRel pattern
skipped, as src/eval/tasks/lama.rs does) and splits the change in recall:

- by whether the object is spelled inside the subject ("Fiat Multipla" -> "Fiat"; the model can
  copy it from the prompt), or not;
- by relation, largest net loss first.

Per group: n, facts recalled before and after, lost / gained, the net change in recall in
points with a 95% interval (paired, normal approximation of the mean of after - before), and the
mean change of the object's log-likelihood. Standard library only.
"""
import glob
import json
import math
import os
import signal
import sys


def records(path):
    with open(path) as f:
        run = json.load(f)
    for task in run["tasks"]:
        if task["task"] == "lama_trex":
            return task["output"]["result"]["scores"]["records"]
    sys.exit(f"{path}: no lama_trex task")


def facts(data_dir):
    patterns = os.path.join(data_dir, "pararel_patterns")
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "trex_lms_vocab", "*.jsonl"))):
        relation = os.path.basename(path)[: -len(".jsonl")]
        if not os.path.exists(os.path.join(patterns, relation + ".jsonl")):
            continue
        with open(path) as f:
            for line in f:
                if line.strip():
                    fact = json.loads(line)
                    if fact["sub_label"].strip() and fact["obj_label"].strip():
                        out.append((relation, fact))
    return out


def summary(rows):
    n = len(rows)
    before = sum(b["correct"] for _, b, _ in rows)
    after = sum(e["correct"] for _, _, e in rows)
    lost = sum(b["correct"] and not e["correct"] for _, b, e in rows)
    gained = sum(e["correct"] and not b["correct"] for _, b, e in rows)
    diffs = [int(e["correct"]) - int(b["correct"]) for _, b, e in rows]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    dll = sum(e["loglik"] - b["loglik"] for _, b, e in rows) / n
    return (
        f"| {n} | {before} ({100 * before / n:.1f}%) | {after} ({100 * after / n:.1f}%) "
        f"| {lost} / {gained} | {100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] "
        f"| {dll:+.3f} |"
    ), after - before


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    base, edited = records(sys.argv[1]), records(sys.argv[2])
    data_dir = sys.argv[3] if len(sys.argv) == 4 else "fixtures/data/lama_trex_pararel"
    fs = facts(data_dir)
    if not (len(fs) == len(base) == len(edited)):
        sys.exit(
            f"fact counts differ: data {len(fs)}, base {len(base)}, edited {len(edited)} "
            "(both runs must score every fact, no --limit)"
        )
    for (relation, _), b, e in zip(fs, base, edited):
        if not (relation == b["relation"] == e["relation"]):
            sys.exit(f"records out of order at relation {relation}")
    rows = list(zip((f for _, f in fs), base, edited))
    head = (
        "| {} | n | recalled before | after | lost / gained | net change, points [95%] "
        "| mean Δ log-lik (nats) |\n|---|---:|---:|---:|---:|---|---:|"
    )
    print(head.format("facts"))
    copy = [r for r in rows if r[0]["obj_label"].lower() in r[0]["sub_label"].lower()]
    other = [r for r in rows if r[0]["obj_label"].lower() not in r[0]["sub_label"].lower()]
    for name, group in (("all", rows), ("object spelled in the subject", copy), ("object not in the subject", other)):
        line, _ = summary(group)
        print(f"| {name} {line}")
    print()
    print(head.format("relation (share of facts with the object in the subject)"))
    by_rel = {}
    for (relation, _), row in zip(fs, rows):
        by_rel.setdefault(relation, []).append(row)
    lines = []
    for relation, group in by_rel.items():
        line, net = summary(group)
        share = sum(r[0]["obj_label"].lower() in r[0]["sub_label"].lower() for r in group) / len(group)
        lines.append((net, f"| {relation} ({100 * share:.0f}%) {line}"))
    for _, line in sorted(lines)[:10]:
        print(line)


if __name__ == "__main__":
    main()
