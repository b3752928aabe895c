#!/usr/bin/env python3
"""Could any edit that acts on the last token's state tell a stereotyped profession from a
definitionally gendered noun? A bound for nonlinear edits (docs/findings.md section 6h; needs
torch + transformers, e.g. the venv harness/vs-pytorch.sh makes).

    M=gemma-3-270m
    for s in edit held-out controls validation; do
      biaslens measure --model $M --split $s --json $s.json
    done
    harness/last-token-separability.py edit.json held-out.json controls.json validation.json \
        --gguf models/$M/FILE.gguf

The ideal edit removes a profession's log-odds L = log p(he) - log p(she) and keeps a gendered
noun's. At a site h (the residual stream at the prompt's last token after a layer, where the
gap probe and gap tuning act), it adds r(h) along the read-out's direction so that
L' = L - r(h). This script fits r on
- the edit professions x fit templates, target r = L (remove it all), and
- the protected gendered words (`--protect-set`, as `biaslens edit`) x fit templates, target 0,
and then scores L' = L - r(h) on unseen prompts, with p(he) + p(she) held: mean
|p(he) - p(she)| cut on professions, the controls' gap toward their gender kept. Two read-outs:
- linear: ridge with an intercept (what one stage of the probe can express);
- mlp: one hidden layer of `--hidden` GELU units, Adam with weight decay (a nonlinear edit of
  the kind an MLP's gate could express), trained on the same rows.
With --with-subject the read-outs see the subject token's residual (its last sub-token, after
the same layer) beside the last token's: a bound for edits that could also use the occupation
token's state (its identity as a word, its sub-words such as -man), as attention can carry it.
Protocol (docs/method.md section 2b): each layer and read-out is first fitted without the
validation professions and templates and scored on validation professions x validation
templates and controls x validation templates; then refitted on every edit profession x fit
template and scored on held-out professions x unseen templates (n = 720) and controls x unseen
templates (n = 160). Nothing is chosen on the held-out split. The mlp's defaults (16 units,
weight decay 1, 30 epochs) were chosen on Gemma-3's validation split over one alternative (64
units, weight decay 0.1, 200 epochs: training R^2 1.00, and worse than linear on validation).
"""
import argparse
import json
import math
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from measure_json import log_odds, prompts
from protected_words import protected_words

UNSEEN = (2, 5, 8, 11, 14)
VALIDATION_TEMPLATES = (1, 7, 13)


def subject_positions(tok, texts, words):
    """The index of each subject's last sub-token in its prompt (the occupation token)."""
    pos = []
    for text, w in zip(texts, words):
        end = text.index(w) + len(w)
        full = tok(text)["input_ids"]
        head = tok(text[:end])["input_ids"]
        if full[: len(head)] != head:
            raise SystemExit(f"{text!r}: its tokens do not start with those of {text[:end]!r}")
        pos.append(len(head) - 1)
    return torch.tensor(pos)


def states_and_gaps(model, tok, texts, he, she, layers, subject=None, batch=64):
    """Last-token residual after each of `layers` [n, len(layers), d] (with `subject` positions,
    the subject token's residual concatenated: [n, len(layers), 2d]), L and p(he) + p(she)."""
    tok.padding_side = "right"
    hs_all, gaps, mass = [], [], []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], return_tensors="pt", padding=True)
            out = model(**enc, output_hidden_states=True)
            last = enc["attention_mask"].sum(1) - 1
            rows = torch.arange(len(last))
            sites = [last] if subject is None else [last, subject[i : i + batch]]
            hs_all.append(
                torch.stack(
                    [torch.cat([out.hidden_states[l][rows, s] for s in sites], -1) for l in layers], 1
                ).double()
            )
            lp = torch.log_softmax(out.logits[rows, last].double(), -1)
            gaps.append(lp[:, he] - lp[:, she])
            mass.append(lp[:, he].exp() + lp[:, she].exp())
    return torch.cat(hs_all).numpy(), torch.cat(gaps).numpy(), torch.cat(mass).numpy()


def fit_linear(x, y, lam):
    mu, y0 = x.mean(0), y.mean()
    xc = x - mu
    reg = lam * np.trace(xc.T @ xc) / x.shape[1]
    w = np.linalg.solve(xc.T @ xc + reg * np.eye(x.shape[1]), xc.T @ (y - y0))
    return lambda z: (z - mu) @ w + y0


def fit_mlp(x, y, hidden, weight_decay, epochs, seed):
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        perm = torch.randperm(len(yt))
        for j in range(0, len(yt), 256):
            b = perm[j : j + 256]
            opt.zero_grad()
            loss = ((net(xt[b]).squeeze(1) - yt[b]) ** 2).mean()
            loss.backward()
            opt.step()
    net.eval()

    def predict(z):
        with torch.no_grad():
            return net(torch.tensor((z - mu) / sd, dtype=torch.float32)).squeeze(1).double().numpy()

    return predict


def scores(idx_prof, idx_ctl, L, mass, sign, shift):
    """(mean |gap| on professions, mean gap toward their gender on controls) after L - shift."""
    g = mass * np.tanh((L - shift) / 2)
    return np.abs(g[idx_prof]).mean(), (sign[idx_ctl] * g[idx_ctl]).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in ("edit", "held_out", "controls", "validation"):
        ap.add_argument(f)
    ap.add_argument("--gguf", default="models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--layers", default=None, help="comma-separated; default every third and the last")
    ap.add_argument("--protect-set", default="roles", choices=["pairs", "persons", "roles", "extended"])
    ap.add_argument("--lam", type=float, default=1.0, help="ridge weight, relative to tr(XᵀX)/d")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--weight-decay", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--with-subject",
        action="store_true",
        help="read the subject token's residual (same layer) beside the last token's: what an "
        "edit could use if attention carried the occupation token's state to the last token",
    )
    ap.add_argument(
        "--extra",
        default=None,
        help="JSON from harness/wordnet-words.py: its occupations join the fit rows (target: "
        "remove their gap) and its male and female nouns the protected rows (target 0), on the "
        "fit templates only; the scored prompts do not change",
    )
    ap.add_argument("--extra-kinds", default="both", choices=["both", "occupations", "gendered"])
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    edit, ho, ctl, val = (prompts(p) for p in (a.edit, a.held_out, a.controls, a.validation))
    templates = {p["template_index"]: p["text"].replace(p["name"], "{}", 1) for p in edit}
    if sorted(templates) != list(range(17)):
        raise SystemExit(f"{a.edit}: measure it on all 17 templates")
    fit_t = [i for i in range(17) if i not in UNSEEN]
    train_t = [i for i in fit_t if i not in VALIDATION_TEMPLATES]
    val_names = {p["name"] for p in val}
    edit_names = sorted({p["name"] for p in edit})
    known = edit_names + sorted({p["name"] for p in ho}) + sorted({p["name"] for p in ctl})
    prot = [w for w in protected_words(a.protect_set) if w not in set(known)]

    # Every prompt the protocol reads: (word, template, kind), kind in prof / ctl / prot.
    rows = []
    rows += [(w, t, "prof") for w in edit_names for t in fit_t]
    rows += [(p["name"], p["template_index"], "prof") for p in ho if p["template_index"] in UNSEEN]
    ctl_sign = {p["name"]: math.copysign(1, p["definitional"]) for p in ctl}
    ctl_t = sorted(set(UNSEEN) | set(VALIDATION_TEMPLATES))
    rows += [(w, t, "ctl") for w in sorted(ctl_sign) for t in ctl_t]
    rows += [(w, t, "prot") for w in prot for t in fit_t]
    n_extra = {"occupations": 0, "gendered": 0}
    if a.extra:
        with open(a.extra) as f:
            extra = json.load(f)
        taken = set(known) | set(prot)
        if a.extra_kinds in ("both", "occupations"):
            occ = [w for w in extra["occupations"] if w not in taken]
            rows += [(w, t, "prof_x") for w in occ for t in fit_t]
            n_extra["occupations"] = len(occ)
        if a.extra_kinds in ("both", "gendered"):
            gen = [w for w in extra["male"] + extra["female"] if w not in taken]
            rows += [(w, t, "prot") for w in gen for t in fit_t]
            n_extra["gendered"] = len(gen)
    texts = [templates[t].format(w) for w, t, _ in rows]

    d, f = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    he, she = (tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("he", "she"))
    n_layers = model.config.num_hidden_layers
    layers = (
        [int(x) for x in a.layers.split(",")]
        if a.layers
        else sorted(set(range(3, n_layers + 1, 3)) | {n_layers})
    )
    subject = subject_positions(tok, texts, [w for w, _, _ in rows]) if a.with_subject else None
    x, L, mass = states_and_gaps(model, tok, texts, he, she, layers, subject)

    # The JSON files' own log-odds for the same prompts: the two forwards must agree.
    theirs = {(p["name"], p["template_index"]): log_odds(p) for p in edit + ho + ctl}
    dev = max(abs(L[i] - theirs[(w, t)]) for i, (w, t, _) in enumerate(rows) if (w, t) in theirs)
    sign = np.array([ctl_sign.get(w, 0.0) for w, _, _ in rows])

    def idx(pred):
        return np.array([i for i, r in enumerate(rows) if pred(*r)])

    splits = {
        "validation": (
            idx(lambda w, t, k: (k == "prof" and w in edit_names and w not in val_names and t in train_t)
                or (k in ("prot", "prof_x") and t in train_t)),
            idx(lambda w, t, k: k == "prof" and w in val_names and t in VALIDATION_TEMPLATES),
            idx(lambda w, t, k: k == "ctl" and t in VALIDATION_TEMPLATES),
        ),
        "held-out": (
            idx(lambda w, t, k: (k == "prof" and w in edit_names) or k in ("prot", "prof_x")),
            idx(lambda w, t, k: k == "prof" and w not in set(edit_names)),
            idx(lambda w, t, k: k == "ctl" and t in UNSEEN),
        ),
    }
    target = np.array([L[i] if k in ("prof", "prof_x") else 0.0 for i, (_, _, k) in enumerate(rows)])
    print(
        f"{a.gguf}: {len(edit_names)} edit professions ({len(val_names)} validation), "
        f"{len(prot)} protected words ({a.protect_set}), extra: {n_extra['occupations']} occupations "
        f"and {n_extra['gendered']} gendered nouns ({a.extra_kinds}), {len(rows)} prompts; largest |L| deviation "
        f"from the measure files {dev:.1e}; read-out input: last token"
        + (" + subject token" if a.with_subject else "")
    )
    for split, (tr, prof, ctl_i) in splits.items():
        base_p, base_c = scores(prof, ctl_i, L, mass, sign, 0.0)
        print(f"\n{split}: n = {len(prof)} professions, {len(ctl_i)} controls, fitted on {len(tr)}; "
              f"base mean |gap| {base_p:.4f}, controls {base_c:.4f}")
        print("| layer | linear: cut | kept | mlp: cut | kept | mlp train R² |")
        print("|---:|---:|---:|---:|---:|---:|")
        for j, layer in enumerate(layers):
            xs = x[:, j]
            out = [f"| {layer}"]
            for kind in ("linear", "mlp"):
                if kind == "linear":
                    fn = fit_linear(xs[tr], target[tr], a.lam)
                else:
                    fn = fit_mlp(xs[tr], target[tr], a.hidden, a.weight_decay, a.epochs, seed=0)
                shift = fn(xs)
                p, c = scores(prof, ctl_i, L, mass, sign, shift)
                out += [f"{p / base_p - 1:+.0%}", f"{c / base_c:.0%}"]
                if kind == "mlp":
                    resid = ((shift[tr] - target[tr]) ** 2).sum()
                    out.append(f"{1 - resid / ((target[tr] - target[tr].mean()) ** 2).sum():.2f}")
            print(" | ".join(out) + " |", flush=True)


if __name__ == "__main__":
    main()
