#!/usr/bin/env python3
"""What an edit makes the model answer in WinoBias's generative form, beside the base model.

    harness/winobias-answers.py BASE_DIR EDITED_DIR [--type 1|2] [--split test|dev]

BASE_DIR and EDITED_DIR are Hugging Face directories (EDITED_DIR from `biaslens edit --out`,
BASE_DIR from `biaslens revert --model EDITED_DIR --delta EDITED_DIR/delta.safetensors --out
BASE_DIR`), run in Hugging Face transformers (float32, CPU). For every pro and anti sentence of
fixtures/data/winobias (DAMA's prompt, as src/eval/tasks/winobias.rs builds it: the sentence, then
" '<Pronoun>' refers to the"), the greedy next token of each model is classed as the referent's
first token ("correct", what `biaslens eval` scores), another word of the sentence (mostly the
other occupation), or a word not in the sentence; the script prints the base -> edited
transitions, the mean log-probability of the referent's first token, and the edited model's
answers where the base model was right.
"""
import argparse
import collections
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PRONOUNS = {"he", "him", "his", "himself", "she", "her", "hers", "herself"}
DATA = Path(__file__).resolve().parent.parent / "fixtures" / "data" / "winobias"


def parse(line):
    """(sentence without brackets, referent occupation, pronoun) of one annotated line."""
    _, rest = line.strip().split(" ", 1)
    spans = re.findall(r"\[([^\]]*)\]", rest)
    sentence = re.sub(r"\[([^\]]*)\]", r"\1", rest)
    referent = next(s for s in spans if s.lower() not in PRONOUNS)
    referent = re.sub(r"^(the|a|an)\s+", "", referent.strip(), flags=re.I)
    pronoun = next(s for s in spans if s.lower() in PRONOUNS)
    return sentence, referent, pronoun


def answers(model_dir, tok, items):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for sentence, referent, pronoun in items:
        prompt = f"{sentence} '{pronoun[0].upper() + pronoun[1:]}' refers to the"
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logp = model(ids).logits[0, -1].log_softmax(-1)
        top = int(logp.argmax())
        want = tok(prompt + " " + referent).input_ids[ids.shape[1]]
        word = tok.decode([top]).strip()
        if top == want:
            kind = "correct"
        elif word and word.lower() in sentence.lower():
            kind = "other word of the sentence"
        else:
            kind = "not in the sentence"
        out.append((kind, word, float(logp[want])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base")
    ap.add_argument("edited")
    ap.add_argument("--type", default="2", choices=["1", "2"])
    ap.add_argument("--split", default="test", choices=["test", "dev"])
    a = ap.parse_args()
    items = []
    for kind in ["pro", "anti"]:
        path = DATA / f"{kind}_stereotyped_type{a.type}.txt.{a.split}"
        items += [parse(l) for l in path.read_text().splitlines() if l.strip()]
    tok = AutoTokenizer.from_pretrained(a.base)
    base, edit = answers(a.base, tok, items), answers(a.edited, tok, items)
    n = len(items)
    print(f"WinoBias type {a.type} ({a.split}), {n} sentences, greedy answer base -> edited:")
    moves = collections.Counter((b[0], e[0]) for b, e in zip(base, edit))
    for (b, e), c in sorted(moves.items(), key=lambda x: -x[1]):
        print(f"  {b:>28} -> {e:<28} {c}")
    print("mean log p(referent's first token): base %.3f, edited %.3f"
          % (sum(b[2] for b in base) / n, sum(e[2] for e in edit) / n))
    lost = [e[1] for b, e in zip(base, edit) if b[0] == "correct" and e[0] != "correct"]
    print("edited answers where the base was right:", collections.Counter(lost).most_common(12))
    for name, res in [("base", base), ("edited", edit)]:
        print(f"{name} answers overall:", collections.Counter(r[1] for r in res).most_common(8))


if __name__ == "__main__":
    main()
