#!/usr/bin/env python3
"""Split a finished `biaslens mediate` run by whether the profession has the replacing noun's
token count: mean ln(1 + TE) and mean ln(1 + NIE) of one MLP layer per group (findings-locate.md).
  harness/mediate-by-token-count.py RUN_DIR LAYER
"""
import json
import math
import sys

run, layer = sys.argv[1], int(sys.argv[2])
settings = json.load(open(f"{run}/settings.json"))
other = set(settings["professions_with_other_token_counts"])
records = [json.loads(line)["record"] for line in open(f"{run}/results.jsonl")]
for name, keep in [("same token count", lambda r: r["profession"] not in other),
                   ("other token count", lambda r: r["profession"] in other)]:
    group = [r["result"] for r in records if keep(r)]
    if not group:
        print(f"{name}: no prompts")
        continue
    te = sum(math.log1p(g["te"]) for g in group) / len(group)
    nie = sum(math.log1p(g["nie_mlp"][layer]) for g in group) / len(group)
    print(f"{name}: n = {len(group)}, mean ln(1 + TE) {te:.2f}, MLP {layer} mean ln(1 + NIE) {nie:.2f}")
