#!/usr/bin/env python3
"""Copy the data folder with one quarter of the edit professions left out, for refitting an edit
on fewer professions while every other profession stays in its part of the split
(docs/findings.md §6l):

    python3 harness/drop-fold.py OUT FOLD [--data fixtures/data]
    BIASLENS_DATA=OUT/data biaslens edit --model gemma-3-270m --out DIR

FOLD 0 is the validation quarter (`data::validation_professions`); 1-3 are the next quarters of
the same ranking. The split (`data::split_professions`) holds out the first half of the
non-definitional professions ranked by sha256(seed LE bytes || name), so dropping edit
professions alone would move the boundary; the same number of held-out professions (the last
of that ranking) is dropped with them, which no edit reads. Split seed 0, held-out fraction
0.5 and validation fraction 0.25, definitional threshold 0.5: the defaults. The script checks
that the copy's edit split is the original's minus the fold by its own copy of the rule; the
split biaslens itself makes of the copy is listed by `BIASLENS_DATA=OUT/data biaslens measure
--model smollm2-135m --split edit --json E.json` (E.json's prompts), and fold 0 is the set
`biaslens measure --split validation` reads. Standard library only.
"""
import hashlib
import json
import os
import shutil
import struct
import sys

SEED = 0
VALIDATION_SALT = 0x7661_6C69_6461_7465  # data::validation_professions's second ranking
THRESHOLD, HELD_OUT, VALIDATION = 0.5, 0.5, 0.25


def key(seed, name):
    return hashlib.sha256(struct.pack("<Q", seed) + name.encode()).digest()


def edit_and_held_out(professions):
    rest = sorted((key(SEED, p[0]), p[0]) for p in professions if abs(p[1]) < THRESHOLD)
    n = round(HELD_OUT * len(rest))
    return [r for _, r in rest[n:]], [r for _, r in rest[:n]]


def main():
    args = sys.argv[1:]
    data = "fixtures/data"
    if "--data" in args:
        i = args.index("--data")
        data = args[i + 1]
        del args[i : i + 2]
    if len(args) != 2 or not args[1].isdigit() or not 0 <= int(args[1]) <= 3:
        sys.exit(__doc__)
    out, fold = args[0], int(args[1])
    if os.path.exists(out):
        sys.exit(f"{out} exists; remove it first")
    src = os.path.join(data, "bolukbasi_debiaswe", "professions.json")
    with open(src) as f:
        professions = json.load(f)
    edit, held = edit_and_held_out(professions)
    ranked = sorted((key(SEED ^ VALIDATION_SALT, r), r) for r in edit)
    size = round(VALIDATION * len(ranked))
    dropped = sorted(r for _, r in ranked[fold * size : (fold + 1) * size])
    drop = set(dropped) | set(held[len(held) - len(dropped) :])
    kept = [p for p in professions if p[0] not in drop]
    edit2, _ = edit_and_held_out(kept)
    if set(edit2) != set(edit) - set(dropped):
        sys.exit("the copy's edit split is not the original's minus the fold (split rule changed?)")
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(data, os.path.join(tmp, "data"))
    with open(os.path.join(tmp, "data", "bolukbasi_debiaswe", "professions.json"), "w") as f:
        json.dump(kept, f)
    with open(os.path.join(tmp, "dropped.json"), "w") as f:
        json.dump({"fold": fold, "edit_professions_dropped": dropped}, f, indent=1)
    os.rename(tmp, out)
    print(f"{out}/data: {len(edit2)} edit professions (fold {fold}'s {len(dropped)} left out): {', '.join(dropped)}")


if __name__ == "__main__":
    main()
