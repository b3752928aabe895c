#!/usr/bin/env python3
"""Join `biaslens eval` results of one model, run as separate task lists, into one results.json.

    harness/concat-eval-results.py OUT_DIR RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds the results.json of one `biaslens eval --model M --tasks ... --out RUN_DIR`.
They must share the model (sha256) and every scoring setting (seed, limit, fraction,
max_length) and may not repeat a task; OUT_DIR/results.json gets the first run's header, the
runs' task lists in the order given and their seconds summed, so that `biaslens compare BASE
OUT_DIR` pairs every task at once. (`biaslens merge` joins shards of one run, not runs of
different tasks.) Refuses to overwrite an existing OUT_DIR/results.json.
"""
import json
import sys
from pathlib import Path

SAME = ["biaslens_version", "seed", "limit", "fraction", "max_length"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, runs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    results = []
    for run in runs:
        path = run / "results.json" if run.is_dir() else run
        if not path.is_file():
            sys.exit(f"{path}: no results.json (run `biaslens eval ... --out {run}` first)")
        results.append((path, json.loads(path.read_text())))
    first_path, first = results[0]
    seen = {}
    for path, r in results:
        if r["model"]["sha256"] != first["model"]["sha256"]:
            sys.exit(f"{path}: model {r['model']['sha256'][:12]} is not {first_path}'s "
                     f"{first['model']['sha256'][:12]}")
        for key in SAME:
            if r.get(key) != first.get(key):
                sys.exit(f"{path}: {key} = {r.get(key)!r}, but {first_path} has {first.get(key)!r}")
        for t in r["tasks"]:
            if t["task"] in seen:
                sys.exit(f"{path}: task {t['task']} is also in {seen[t['task']]}")
            seen[t["task"]] = path
    joined = dict(first)
    joined["seconds"] = sum(r["seconds"] for _, r in results)
    joined["tasks"] = [t for _, r in results for t in r["tasks"]]
    target = out / "results.json"
    if target.exists():
        sys.exit(f"{target} exists: remove it first (this script never overwrites)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(joined, indent=2))
    tmp.replace(target)
    print(f"wrote {target}: {len(joined['tasks'])} tasks from {len(runs)} runs")


if __name__ == "__main__":
    main()
