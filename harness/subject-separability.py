#!/usr/bin/env python3
"""Can a linear read-out of the occupation token's state tell a profession's stereotyped gender
from the gender of gendered nouns? (docs/findings.md section 6f; needs torch + transformers,
e.g. the venv harness/vs-pytorch.sh makes.)

    for s in edit held-out controls; do biaslens measure --split $s --json $s.json; done
    harness/subject-separability.py edit.json held-out.json controls.json [--gguf FILE]

For every word w (edit, held-out and control professions, and the protected gendered nouns of
`--protect-set roles`), it reads the residual stream at the last token of "The w" after each
layer, and the target y_w = the mean log-odds log p(he) - log p(she) of w over the 12 fit
templates (from the JSON files; protected words are run here). Per layer it fits a ridge
read-out y ~ h on the edit professions:
- "free": no constraint (with an intercept, the edit professions' mean); R^2 on the held-out
  professions;
- "protected": the read-out's slope is exactly zero on every protected word's state (what an
  edit that holds gendered nouns unchanged must satisfy; the intercept stays).
It then subtracts the read-out from every prompt's log-odds (a perfect edit at that site that
removes exactly what the read-out predicts) and reports held-out professions x unseen templates'
mean |p(he) - p(she)| cut and the controls' gap toward their gender kept.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from measure_json import log_odds, prompts
from protected_words import protected_words

UNSEEN = (2, 5, 8, 11, 14)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("edit")
    ap.add_argument("held_out")
    ap.add_argument("controls")
    ap.add_argument("--gguf", default="models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--lam", type=float, default=1.0, help="ridge weight, relative to tr(XᵀX)/d")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    edit, ho, ctl = prompts(a.edit), prompts(a.held_out), prompts(a.controls)
    for name, ps in (("edit", edit), ("held-out", ho)):
        if {p["template_index"] for p in ps} != set(range(17)):
            sys.exit(f"{name}: measure it on all 17 templates")
    templates = {p["template_index"]: p["text"].replace(p["name"], "{}", 1) for p in edit}
    fit_t = [i for i in range(17) if i not in UNSEEN]

    d, f = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    he, she = (tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("he", "she"))

    target = {}
    for ps in (edit, ho, ctl):
        for p in ps:
            if p["template_index"] in fit_t:
                target.setdefault(p["name"], []).append(log_odds(p))
    prot = [w for w in protected_words() if w not in target]
    with torch.no_grad():
        for w in prot:
            ids = [tok(templates[i].format(w), add_special_tokens=False)["input_ids"] for i in fit_t]
            for x in ids:
                lp = torch.log_softmax(model(input_ids=torch.tensor([x])).logits[0, -1], -1)
                target.setdefault(w, []).append(float(lp[he] - lp[she]))
    target = {w: float(np.mean(v)) for w, v in target.items()}

    def names(ps):
        out = []
        for p in ps:
            if p["name"] not in out:
                out.append(p["name"])
        return out

    fit_w, ho_w, ctl_w = names(edit), names(ho), names(ctl)
    words = fit_w + ho_w + ctl_w + prot
    states = []
    with torch.no_grad():
        for w in words:
            ids = torch.tensor([tok("The " + w, add_special_tokens=False)["input_ids"]])
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            states.append(np.stack([h[0, -1].double().numpy() for h in hs]))
    states = np.stack(states)  # [words, layers + 1, d]
    row = {w: i for i, w in enumerate(words)}
    ho_u = [p for p in ho if p["template_index"] in UNSEEN]
    ctl_u = [p for p in ctl if p["template_index"] in UNSEEN]

    def scores(shift):
        def g(p):
            return (p["p_he"] + p["p_she"]) * math.tanh((log_odds(p) - shift.get(p["name"], 0.0)) / 2)

        h = np.mean([abs(g(p)) for p in ho_u])
        c = np.mean([math.copysign(1, p["definitional"]) * g(p) for p in ctl_u])
        return h, c

    base_h, base_c = scores({})
    print(f"{a.gguf}: {len(fit_w)} edit, {len(ho_w)} held-out, {len(ctl_w)} control professions, "
          f"{len(prot)} protected words; base held-out x unseen {base_h:.4f}, controls {base_c:.4f}")
    y = np.array([target[w] for w in words])
    fi = [row[w] for w in fit_w]
    hi = [row[w] for w in ho_w]
    pi = [row[w] for w in prot]
    for layer in range(0, states.shape[1]):
        X = states[:, layer] - states[fi, layer].mean(0)
        Xf, y0 = X[fi], y[fi].mean()
        yf = y[fi] - y0  # the read-out's intercept: the edit professions' mean
        reg = a.lam * np.trace(Xf.T @ Xf) / X.shape[1]
        out = [f"layer {layer:2d}"]
        for kind in ("free", "protected"):
            if kind == "free":
                basis = np.eye(X.shape[1])
            else:
                _, s, vt = np.linalg.svd(X[pi], full_matrices=True)
                basis = vt[(s > 1e-8 * s[0]).sum():].T
            A = Xf @ basis
            w = basis @ np.linalg.solve(A.T @ A + reg * np.eye(A.shape[1]), A.T @ yf)
            pred = X @ w + y0
            r2 = 1 - ((y[hi] - pred[hi]) ** 2).sum() / ((y[hi] - y[hi].mean()) ** 2).sum()
            h, c = scores({wd: pred[row[wd]] for wd in words})
            out.append(f"{kind}: R2 held-out {r2:5.2f}, cut {1 - h / base_h:+4.0%}, controls keep {c / base_c:4.0%}")
        print(" | ".join(out), flush=True)


if __name__ == "__main__":
    main()
