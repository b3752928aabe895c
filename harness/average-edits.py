#!/usr/bin/env python3
"""Average the weights of edited model directories made from one base model (a diagnostic of
seed noise: the mean of k seeds' edits is W0 + mean of their deltas):

    /tmp/biaslens-torch-venv/bin/python harness/average-edits.py OUT DIR1 DIR2 [DIR...]

The inputs' edit.json must name one base model (sha256). Every *.safetensors file but
delta.safetensors is averaged tensor by tensor (tensors equal in
every input are copied); the other files come from DIR1, edit.json left out since OUT is no
single edit's record. Needs torch and safetensors. Used for docs/findings.md §6l.
"""
import json
import os
import shutil
import sys

from safetensors.torch import load_file, save_file


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, dirs = sys.argv[1], sys.argv[2:]
    if os.path.exists(out):
        sys.exit(f"{out} exists; remove it first")
    # Averaging is meaningful only for edits of one base model: compare their records.
    bases = {}
    for d in dirs:
        try:
            with open(os.path.join(d, "edit.json")) as f:
                bases[d] = json.load(f)["base_model"]["sha256"]
        except (OSError, KeyError, ValueError) as e:
            sys.exit(f"{d}/edit.json: cannot read the base model's sha256 ({e})")
    if len(set(bases.values())) != 1:
        sys.exit("the edits come from different base models: " + ", ".join(f"{d}: {h[:12]}" for d, h in bases.items()))
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in sorted(os.listdir(dirs[0])):
        src = os.path.join(dirs[0], f)
        if f == "edit.json" or f == "delta.safetensors":
            continue
        if not f.endswith(".safetensors"):
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(tmp, f))
            continue
        inputs = [load_file(os.path.join(d, f)) for d in dirs]
        merged, changed = {}, 0
        for d, x in zip(dirs, inputs):
            if x.keys() != inputs[0].keys():
                sys.exit(f"{d}/{f}: not the same tensors as {dirs[0]}/{f}")
        for k, t in inputs[0].items():
            others = [x[k] for x in inputs[1:]]
            if any(o.shape != t.shape for o in others):
                sys.exit(f"{f}: {k} has different shapes across the inputs")
            if all(bool((o == t).all()) for o in others):
                merged[k] = t
            else:
                changed += 1
                merged[k] = (sum(x.float() for x in [t, *others]) / len(inputs)).to(t.dtype)
        save_file(merged, os.path.join(tmp, f), metadata={"format": "pt"})
        print(f"{f}: {changed} tensors averaged over {len(inputs)} inputs")
    os.rename(tmp, out)


if __name__ == "__main__":
    main()
