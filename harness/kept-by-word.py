#!/usr/bin/env python3
"""Which definitional controls lose their gender under an edit, word by word:

    biaslens measure --model BASE   --split controls [--template-split T] --json BASE.json
    biaslens measure --model EDITED --split controls [--template-split T] --json EDITED.json
    harness/kept-by-word.py BASE.json EDITED.json

Per control word (prompts matched by word and template): the gap toward its gender,
sign * (p(he) - p(she)) with sign +1 for male words (definitional score > 0) and -1 for female
ones, summed over its templates, before and after, the share kept, and the base log-odds toward
its gender; then the share kept by gender, and the Spearman correlation over words between the
share kept and the word's stereotypical score toward its own gender (Bolukbasi et al.'s second
score: does the edit take more from the words whose gender is partly stereotype?), with a 95%
CI from Fisher's z (standard error 1.06 / sqrt(n - 3)). Sorted by share kept. Used for
docs/findings.md §6e and §6l.
Standard library only.
"""
import math
import sys

from measure_json import log_odds, prompts


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    key = lambda p: (p["name"], p["template_index"])
    edited = {key(p): p for p in prompts(sys.argv[2])}
    words, stereo, groups = {}, {}, {"male": [0.0, 0.0, set()], "female": [0.0, 0.0, set()]}
    for p in prompts(sys.argv[1]):
        e = edited.get(key(p))
        if e is None:
            sys.exit(f"{sys.argv[2]}: no prompt for {p['name']!r}, template {p['template_index']}")
        sign = 1.0 if p["definitional"] > 0 else -1.0
        w = words.setdefault(p["name"], [0.0, 0.0, 0.0, 0, sign])
        stereo[p["name"]] = sign * p["stereotypical"]
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
    names = sorted(words)
    if len(names) > 3:
        kept = [words[n][1] / words[n][0] for n in names]
        r = pearson(ranks(kept), ranks([stereo[n] for n in names]))
        half = 1.96 * 1.06 / math.sqrt(len(names) - 3)
        z = math.atanh(max(-0.999999, min(0.999999, r)))
        print(f"spearman(kept, stereotypical score toward its gender) over {len(names)} words: "
              f"{r:.2f} [{math.tanh(z - half):.2f}, {math.tanh(z + half):.2f}]")


def ranks(xs):
    """Ranks from 0, ties given their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


if __name__ == "__main__":
    main()
