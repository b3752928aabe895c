#!/usr/bin/env python3
"""How much work `biaslens measure` saves by packing prompts that share a prefix into trees:

    biaslens measure --model smollm2-135m --json M.json
    PY=/tmp/biaslens-torch-venv/bin/python   # any Python with transformers and gguf
    $PY harness/measure-packing.py M.json models/smollm2-135m SmolLM2-135M-Instruct.Q4_1.gguf

Tokenises every prompt of M.json with the model's tokenizer (transformers, from the GGUF) and
replays src/measure/probs.rs's rule (prompts sorted by tokens; a tree grows while it stays
within 64 tokens and 256 prompts): prints the prompts' tokens one row each and the trees'
tokens. Used for docs/performance.md, "Measure".
"""
import sys

from measure_json import prompts

MAX_TREE_TOKENS, MAX_PROMPTS = 64, 256


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sys.argv[2], gguf_file=sys.argv[3])
    rows = [tok(p["text"])["input_ids"] for p in prompts(sys.argv[1])]
    order = sorted(range(len(rows)), key=lambda i: (rows[i], i))
    trees, group, size = [], [], 0
    for i in order:
        shared = max((common_prefix(rows[i], rows[j]) for j in group), default=0)
        grown = size + len(rows[i]) - shared
        if group and (grown > MAX_TREE_TOKENS or len(group) >= MAX_PROMPTS):
            trees.append(size)
            group, size = [], len(rows[i])
        else:
            size = grown
        group.append(i)
    trees.append(size)
    print(f"{len(rows)} prompts, {sum(map(len, rows))} tokens one row each; "
          f"{len(trees)} trees, {sum(trees)} tokens packed")


if __name__ == "__main__":
    main()
