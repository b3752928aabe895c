#!/usr/bin/env python3
"""Which definitional controls lose their gender under an edit, word by word:

    biaslens measure --model BASE   --split controls [--template-split T] --json BASE.json
    biaslens measure --model EDITED --split controls [--template-split T] --json EDITED.json
    harness/kept-by-word.py BASE.json EDITED.json

Per control word (prompts matched by word and template): the gap toward its gender,
sign * (p(he) - p(she)) with sign +1 for male words (definitional score > 0) and -1 for female
ones, summed over its templates, before and after, the share kept, and the base log-odds toward
its gender; then the share kept by gender. Sorted by share kept. Used for docs/findings.md §6e.
Standard library only.
"""
import sys

from measure_json import log_odds, prompts


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    key = lambda p: (p["name"], p["template_index"])
    edited = {key(p): p for p in prompts(sys.argv[2])}
    words, groups = {}, {"male": [0.0, 0.0, set()], "female": [0.0, 0.0, set()]}
    for p in prompts(sys.argv[1]):
        e = edited.get(key(p))
        if e is None:
            sys.exit(f"{sys.argv[2]}: no prompt for {p['name']!r}, template {p['template_index']}")
        sign = 1.0 if p["definitional"] > 0 else -1.0
        w = words.setdefault(p["name"], [0.0, 0.0, 0.0, 0, sign])
        before, after = sign * (p["p_he"] - p["p_she"]), sign * (e["p_he"] - e["p_she"])
        w[0] += before
        w[1] += after
        w[2] += sign * log_odds(p)
        w[3] += 1
        g = groups["male" if sign > 0 else "female"]
        g[0] += before
        g[1] += after
        g[2].add(p["name"])
    print("| word | gender | n | base gap | edited gap | kept | base log-odds (nats) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (b, a, l, n, sign) in sorted(words.items(), key=lambda kv: kv[1][1] / kv[1][0]):
        print(f"| {name} | {'male' if sign > 0 else 'female'} | {n} | {b / n:.3f} | {a / n:.3f} "
              f"| {a / b:.0%} | {l / n:.2f} |")
    for g, (b, a, names) in groups.items():
        if names:
            print(f"{g}: {len(names)} words, kept {a / b:.0%}")


if __name__ == "__main__":
    main()
