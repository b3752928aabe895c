#!/usr/bin/env python3
"""Load a biaslens-exported directory with transformers and report what it computes.

Two modes, both printing JSON on stdout:
  --prompts MEASURE_JSON  p(he), p(she), p(they) after each prompt of a `biaslens measure --json`
                          file (words scored as continuations " he", multi-token words as the
                          product of their token probabilities, as biaslens does); with
                          `max_abs_dp`, the largest |p_transformers - p_biaslens|.
  --ids EXPECTED_JSON     last-token log-softmax for token-id rows ({"rows", "logprobs"}), for
                          tokenizer-less tiny models; with the largest |Δlogprob| and |Δp|.
"""
import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def last_logprobs(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return torch.log_softmax(out.logits[0, -1].double(), dim=-1)


def seq_prob(model, ids, cont):
    """p(cont | ids) as the product of next-token probabilities."""
    p = 1.0
    for i, t in enumerate(cont):
        p *= float(last_logprobs(model, ids + cont[:i])[t].exp())
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompts")
    g.add_argument("--ids")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32)
    model.eval()
    if a.ids:
        exp = json.load(open(a.ids))
        worst_lp = worst_p = 0.0
        for row, want in zip(exp["rows"], exp["logprobs"]):
            got = last_logprobs(model, row)
            want = torch.tensor(want, dtype=torch.float64)
            worst_lp = max(worst_lp, float((got - want).abs().max()))
            worst_p = max(worst_p, float((got.exp() - want.exp()).abs().max()))
        print(json.dumps({"rows": len(exp["rows"]), "max_abs_dlogprob": worst_lp, "max_abs_dp": worst_p}))
        return
    tok = AutoTokenizer.from_pretrained(a.dir)
    m = json.load(open(a.prompts))
    words = m["targets"]["words"]
    conts = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    if conts != m["targets"]["ids"]:
        sys.exit(f"pronoun ids differ: transformers {conts}, biaslens {m['targets']['ids']}")
    prompts = m["prompts"][: a.limit] if a.limit else m["prompts"]
    rows, worst = [], 0.0
    for p in prompts:
        ids = tok(p["text"])["input_ids"]
        got = {f"p_{w}": seq_prob(model, ids, c) for w, c in zip(words, conts)}
        for k, v in got.items():
            if k in p:
                worst = max(worst, abs(v - p[k]))
        rows.append({"text": p["text"], **got})
    print(json.dumps({"n": len(rows), "max_abs_dp": worst, "prompts": rows}, indent=1))


if __name__ == "__main__":
    main()
