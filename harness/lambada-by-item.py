#!/usr/bin/env python3
"""Where an edit's LAMBADA cost lies, item by item:

    biaslens eval --model BASE   --tasks lambada_openai --limit N --out BASE_DIR
    biaslens eval --model EDITED --tasks lambada_openai --limit N --out EDITED_DIR
    harness/lambada-by-item.py BASE_DIR/results.json EDITED_DIR/results.json [DATA.jsonl]

Pairs the two runs' per-item records (the first N items of fixtures/data/lambada_openai, in
order) and splits the change in the target word's log-likelihood by what the item is about:

- by the context: whether its last 300 characters hold gendered pronouns (he, him, his,
  himself; she, her, hers, herself), and which gender has more of them (the target word is
  itself a gendered pronoun in about one item in a thousand);
- by the target word: capitalised (mostly a character's name) or not.

LAMBADA's perplexity is exp(-mean log-likelihood) over items, so each group's share of the
perplexity change is its share of the summed log-likelihood change; the paired mean change over
all items gives the perplexity ratio's 95% interval. Per group: n, the mean
change with a 95% t interval, the share, and accuracy before and after. Standard library only.
"""
import json
import math
import re
import sys

MALE = {"he", "him", "his", "himself"}
FEMALE = {"she", "her", "hers", "herself"}
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 10: 2.23, 20: 2.09, 30: 2.04}


def t975(df):
    if df <= 0:
        return float("nan")
    best = min((k for k in T975 if k >= df), default=None)
    return T975[best] if best is not None else 1.96


def records(path):
    with open(path) as f:
        run = json.load(f)
    for task in run["tasks"]:
        if task["task"] == "lambada_openai":
            return task["output"]["result"]["scores"]["records"]
    sys.exit(f"{path}: no lambada_openai task")


def context_group(item):
    words = re.findall(r"[a-z]+", item["context"][-300:].lower())
    male = sum(w in MALE for w in words)
    female = sum(w in FEMALE for w in words)
    if male == female == 0:
        return "no gendered pronoun in the last 300 characters"
    if male > female:
        return "context's pronouns mostly male"
    if female > male:
        return "context's pronouns mostly female"
    return "context's pronouns balanced"


def target_group(item):
    target = item["continuation"].strip()
    if target.lower() in MALE | FEMALE:
        return "target: a gendered pronoun"
    return "target: capitalised" if target[:1].isupper() else "target: lower case"


def table(title, pairs, total):
    groups = {}
    for name, row in pairs:
        groups.setdefault(name, []).append(row)
    print(f"\n| {title} | n | mean change (nats) | 95% CI | share of the perplexity change | acc base | acc edited |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, g in sorted(groups.items(), key=lambda kv: sum(d for d, _, _ in kv[1])):
        k = len(g)
        mean = sum(d for d, _, _ in g) / k
        sd = math.sqrt(sum((d - mean) ** 2 for d, _, _ in g) / (k - 1)) if k > 1 else float("nan")
        half = t975(k - 1) * sd / math.sqrt(k)
        share = sum(d for d, _, _ in g) / total if total else float("nan")
        acc_b = sum(b for _, b, _ in g) / k
        acc_e = sum(e for _, _, e in g) / k
        print(f"| {name} | {k} | {mean:+.4f} | [{mean - half:+.4f}, {mean + half:+.4f}] | "
              f"{100 * share:.0f}% | {acc_b:.3f} | {acc_e:.3f} |")


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    data = sys.argv[3] if len(sys.argv) == 4 else "fixtures/data/lambada_openai/lambada_openai.jsonl"
    base, edited = records(sys.argv[1]), records(sys.argv[2])
    if len(base) != len(edited):
        sys.exit(f"{sys.argv[1]} has {len(base)} items, {sys.argv[2]} {len(edited)}")
    with open(data) as f:
        items = [json.loads(line) for _, line in zip(range(len(base)), f)]
    rows = [(e["loglik"] - b["loglik"], b["is_greedy"], e["is_greedy"]) for b, e in zip(base, edited)]
    n = len(base)
    total = sum(d for d, _, _ in rows)
    ppl = lambda rs: math.exp(-sum(r["loglik"] for r in rs) / len(rs))
    mean = total / n
    half = t975(n - 1) * math.sqrt(sum((d - mean) ** 2 for d, _, _ in rows) / (n - 1) / n)
    print(f"{n} items; perplexity {ppl(base):.3f} -> {ppl(edited):.3f} "
          f"({100 * (ppl(edited) / ppl(base) - 1):+.1f}%, 95% CI {100 * (math.exp(-(mean + half)) - 1):+.1f}% "
          f"to {100 * (math.exp(-(mean - half)) - 1):+.1f}%); mean log-likelihood change {mean:+.4f} "
          f"[{mean - half:+.4f}, {mean + half:+.4f}] nats")
    table("context", [(context_group(i), r) for i, r in zip(items, rows)], total)
    table("target word", [(target_group(i), r) for i, r in zip(items, rows)], total)


if __name__ == "__main__":
    main()
