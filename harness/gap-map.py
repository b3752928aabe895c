#!/usr/bin/env python3
"""What an edit did to each prompt's log-odds, as a function of the base model's own gap:

    biaslens measure --model BASE   --split S [--template-split T] --json BASE.json
    biaslens measure --model EDITED --split S [--template-split T] --json EDITED.json
    harness/gap-map.py BASE.json EDITED.json [TAU]

L = log p(he) - log p(she) per prompt (matched by profession and template). Prints, per bin of
the base |L0|, the number of prompts, the mean |L0| and the mean of sign(L0) * L after the edit
(L0 itself where nothing changed, 0 where the gap is gone, negative where it flipped); with TAU
also the share of sum |L| kept below and above TAU. Used for docs/findings.md section 6g.
Standard library only.
"""
import math
import statistics
import sys

from measure_json import log_odds, prompts

BINS = [(0, 0.5), (0.5, 1), (1, 1.5), (1.5, 2), (2, 2.5), (2.5, 3), (3, 4), (4, math.inf)]




def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    key = lambda p: (p["name"], p["template_index"])
    base = {key(p): p for p in prompts(sys.argv[1])}
    edited = prompts(sys.argv[2])
    missing = [key(p) for p in edited if key(p) not in base]
    if missing:
        sys.exit(f"{sys.argv[1]}: no base prompt for {missing[0]} (measure both on the same split)")
    rows = [(log_odds(base[key(p)]), log_odds(p)) for p in edited]
    print(f"{len(rows)} prompts")
    if len(sys.argv) == 4:
        tau = float(sys.argv[3])
        for name, part in (("below", [r for r in rows if abs(r[0]) < tau]),
                           ("above", [r for r in rows if abs(r[0]) >= tau])):
            if part:
                kept = sum(abs(y) for _, y in part) / sum(abs(x) for x, _ in part)
                print(f"  |L0| {name} {tau}: n = {len(part)}, sum |L| kept {kept:.2f}")
    print("  |L0| bin      n   mean |L0|   mean sign(L0)*L")
    for lo, hi in BINS:
        part = [(x, y) for x, y in rows if lo <= abs(x) < hi]
        if part:
            print(f"  {lo:>3}-{hi:<5} {len(part):5d}   {statistics.fmean(abs(x) for x, _ in part):8.2f}"
                  f"   {statistics.fmean(math.copysign(1, x) * y for x, y in part):8.2f}")


if __name__ == "__main__":
    main()
