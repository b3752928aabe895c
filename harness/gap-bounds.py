#!/usr/bin/env python3
"""Upper bounds for any edit judged by the issue-16 protocol, from the base model's own
pronoun probabilities: how far can held-out professions x unseen templates fall while the
definitional controls keep their gap, if an edit could only act on what the gap itself shows?

    biaslens measure --split held-out --json HO.json       # all 17 templates
    biaslens measure --split controls --json CTL.json
    harness/gap-bounds.py HO.json CTL.json

To choose a threshold without touching the held-out split (e.g. `biaslens edit --method tune
--tune-keep-above TAU`), give it the validation split on the validation templates instead:

    biaslens measure --split validation --template-split validation --json VAL.json
    biaslens measure --split controls --template-split validation --json CTLV.json
    harness/gap-bounds.py --validation VAL.json CTLV.json

which prints the shrinkage oracles only, on templates 1, 7 and 13.

Every "oracle" below is told each prompt's true log-odds L = log p(he) - log p(she) (or the
true profession and template means of L) and rewrites L; p(he) + p(she) stays as it is, so
p(he) - p(she) = (p(he) + p(she)) * tanh(L' / 2). It prints, for held-out professions on the
unseen templates (2, 5, 8, 11, 14) and for the controls on the same templates:

1. the decomposition of the gap into a template offset, a profession offset and the rest;
2. shrinkage oracles L' = f(L), which see only the size of each prompt's gap: hard threshold
   (L' = 0 where |L| < tau, else L) and soft threshold (L' = sign(L) max(|L| - tau, 0));
3. removal oracles: subtract the profession's mean L over the fit templates, then also each
   unseen template's mean offset over the held-out professions.

Figures: docs/findings.md section 6f. Standard library only.
"""
import math
import statistics
import sys
from collections import defaultdict

from measure_json import log_odds, prompts

UNSEEN = (2, 5, 8, 11, 14)
VALIDATION = (1, 7, 13)



def gap(p, log_odds):
    return (p["p_he"] + p["p_she"]) * math.tanh(log_odds / 2)



def scores(ho, ctl, rewrite):
    """Held-out mean |gap| and controls' mean gap toward their gender after `rewrite(p, L)`."""
    h = statistics.fmean(abs(gap(p, rewrite(p, log_odds(p)))) for p in ho)
    c = statistics.fmean(
        math.copysign(1, p["definitional"]) * gap(p, rewrite(p, log_odds(p))) for p in ctl
    )
    return h, c


def main():
    args = sys.argv[1:]
    validation = args[:1] == ["--validation"]
    args = args[1:] if validation else args
    if len(args) != 2:
        sys.exit(__doc__)
    ho_all, ctl_all = prompts(args[0]), prompts(args[1])
    judged = VALIDATION if validation else UNSEEN
    if validation:
        if {p["template_index"] for p in ho_all} != set(VALIDATION):
            sys.exit(f"{args[0]}: measure with --split validation --template-split validation")
    elif {p["template_index"] for p in ho_all} != set(range(17)):
        sys.exit(f"{args[0]}: measure the held-out split on all 17 templates")
    ho = [p for p in ho_all if p["template_index"] in judged]
    ctl = [p for p in ctl_all if p["template_index"] in judged]
    if not ctl:
        sys.exit(f"{args[1]}: no control prompts on the templates {judged}")
    base_h, base_c = scores(ho, ctl, lambda p, L: L)
    what = "validation x validation templates" if validation else "held-out x unseen"
    print(f"base: {what} mean |gap| {base_h:.4f} (n = {len(ho)}), "
          f"controls toward their gender {base_c:.4f} (n = {len(ctl)})")

    g = [p["p_he"] - p["p_she"] for p in ho]
    by_t, by_p = defaultdict(list), defaultdict(list)
    for p, x in zip(ho, g):
        by_t[p["template_index"]].append(x)
        by_p[p["name"]].append(x)
    t_mean = {k: statistics.fmean(v) for k, v in by_t.items()}
    p_mean = {k: statistics.fmean(v) for k, v in by_p.items()}
    mu = statistics.fmean(g)
    rest = [x - t_mean[p["template_index"]] - p_mean[p["name"]] + mu for p, x in zip(ho, g)]
    print(f"decomposition of p(he) - p(she), {what}:")
    print("  template means: " + ", ".join(f"{k}: {v:+.3f}" for k, v in sorted(t_mean.items())))
    print(f"  sd of the template means {statistics.pstdev(t_mean.values()):.4f}, "
          f"of the profession means {statistics.pstdev(p_mean.values()):.4f}, "
          f"mean |rest| {statistics.fmean(map(abs, rest)):.4f}")

    def line(name, h, c):
        print(f"  {name:<34} professions {1 - h / base_h:+5.0%} cut, controls keep {c / base_c:4.0%}")

    print("shrinkage oracles (see only each prompt's own |L|):")
    def hard(tau):
        return scores(ho, ctl, lambda p, L: 0.0 if abs(L) < tau else L)

    for tau in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        line(f"hard threshold tau = {tau} nats", *hard(tau))
    # (A grid of 0.05 nats; the choice is the edit's --tune-keep-above.)
    # The largest cut a hard threshold reaches while the controls keep >= 80% (tau in 0.05 steps).
    best = max((t / 20 for t in range(121)), key=lambda t: (hard(t)[1] >= 0.8 * base_c, -hard(t)[0]))
    line(f"best keeping >= 80%: tau = {best:.2f}", *hard(best))
    for tau in (0.25, 0.5, 0.75, 1.0):
        line(f"soft threshold tau = {tau} nats",
             *scores(ho, ctl, lambda p, L: math.copysign(max(abs(L) - tau, 0.0), L)))

    if validation:
        return  # the removal oracles need the fit templates' means
    fit_mean = defaultdict(list)
    for p in ho_all + ctl_all:
        if p["template_index"] not in UNSEEN:
            fit_mean[p["name"]].append(log_odds(p))
    fit_mean = {k: statistics.fmean(v) for k, v in fit_mean.items()}
    offset = defaultdict(list)
    for p in ho:
        offset[p["template_index"]].append(log_odds(p) - fit_mean[p["name"]])
    offset = {k: statistics.fmean(v) for k, v in offset.items()}
    print("removal oracles:")
    line("profession mean (fit templates)", *scores(ho, ctl, lambda p, L: L - fit_mean[p["name"]]))
    line("template offset only", *scores(ho, ctl, lambda p, L: L - offset[p["template_index"]]))
    line("profession mean + template offset",
         *scores(ho, ctl, lambda p, L: L - fit_mean[p["name"]] - offset[p["template_index"]]))


if __name__ == "__main__":
    main()
