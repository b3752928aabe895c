#!/usr/bin/env python3
"""Would a split of the 32 definitional controls into validation and final words check a
refit? Halves fixed by a hash, not by results: within each gender (definitional score > 0 or
< 0), words ranked by sha256(u64 LE 0x636f6e74726f6c73 ‖ word), the first half (13 of 26 male,
3 of 6 female) for validation. For each edit, the share of the controls' gap toward their
gender (sign · (p(he) − p(she)), summed over prompts) kept on the validation half at the
validation templates and on the final half at the unseen templates, then Pearson over edits.

    harness/controls-halves.py BASE EDIT...

reads PREFIX.controls.validation.json and PREFIX.controls.unseen.json for BASE and each EDIT
(`biaslens measure --model M --split controls --template-split validation|unseen --json …`).
Used for docs/findings.md §6l. Standard library only.
"""
import hashlib
import json
import math
import struct
import sys


def halves(prompts):
    words = {p["name"]: p["definitional"] for p in prompts}
    key = lambda w: hashlib.sha256(struct.pack("<Q", 0x636F6E74726F6C73) + w.encode()).digest()
    val = set()
    for male in (True, False):
        ws = sorted((w for w, d in words.items() if (d > 0) == male), key=key)
        val |= set(ws[: len(ws) // 2])
    return val, set(words) - val


def toward(path, words):
    ps = [p for p in json.load(open(path))["prompts"] if p["name"] in words]
    return sum((1 if p["definitional"] > 0 else -1) * (p["p_he"] - p["p_she"]) for p in ps)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    base, edits = sys.argv[1], sys.argv[2:]
    val, fin = halves(json.load(open(f"{base}.controls.unseen.json"))["prompts"])
    print("validation words:", " ".join(sorted(val)))
    print("final words:     ", " ".join(sorted(fin)))
    bv = toward(f"{base}.controls.validation.json", val)
    bf = toward(f"{base}.controls.unseen.json", fin)
    xs, ys = [], []
    for e in edits:
        x = toward(f"{e}.controls.validation.json", val) / bv
        y = toward(f"{e}.controls.unseen.json", fin) / bf
        xs.append(x), ys.append(y)
        print(f"{e}: validation words kept {x:.1%}, final words kept {y:.1%}")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    r = sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    print(f"pearson over {len(xs)} edits: {r:.3f}; mean offset (final - validation): "
          f"{100 * (my - mx):+.1f} points")


if __name__ == "__main__":
    main()
