#!/usr/bin/env python3
"""Which pronoun an edit moves: mean p(he) and p(she) before and after, on paired prompts.

    biaslens measure --model BASE   --split S [--template-split T] --json BASE.json
    biaslens measure --model EDITED --split S [--template-split T] --json EDITED.json
    harness/pronoun-shift.py BASE.json EDITED.json

Prompts are paired by profession and template (a prompt missing on either side is an error).
Prints, over all prompts and, where the split has definitional words (|definitional| > 0),
separately over male (> 0) and female (< 0) ones: n, mean p(he) and p(she) before -> after,
and the mean of p(he) + p(she). An edit can close a gap by lowering the likely pronoun or by
raising the other (docs/method.md §4.7, tune.hold_preferred); `measure --against` gives the
mass and the cut at base mass with intervals, this the two pronouns apart. Used for
docs/findings.md §6l. Standard library only.
"""
import json
import sys


def load(path):
    return {(p["profession"], p["template_index"]): p for p in json.load(open(path))["prompts"]}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    base, edited = load(sys.argv[1]), load(sys.argv[2])
    if base.keys() != edited.keys():
        missing = sorted(base.keys() ^ edited.keys())[:3]
        sys.exit(f"the two files hold different prompts (e.g. {missing}): measure both with the same flags")
    groups = [("all", lambda p: True)]
    if any(p["definitional"] != 0 for p in base.values()):
        groups += [("male", lambda p: p["definitional"] > 0), ("female", lambda p: p["definitional"] < 0)]
    for name, keep in groups:
        keys = [k for k, p in base.items() if keep(p)]
        if not keys:
            continue
        mean = lambda d, f: sum(f(d[k]) for k in keys) / len(keys)
        he = lambda p: p["p_he"]
        she = lambda p: p["p_she"]
        mass = lambda p: p["p_he"] + p["p_she"]
        print(
            f"{name:6s} n={len(keys):4d}  p(he) {mean(base, he):.3f} -> {mean(edited, he):.3f}"
            f"  p(she) {mean(base, she):.3f} -> {mean(edited, she):.3f}"
            f"  p(he)+p(she) {mean(base, mass):.3f} -> {mean(edited, mass):.3f}"
        )


if __name__ == "__main__":
    main()
