#!/usr/bin/env python3
"""Average the weights of edited model directories made from one base model (a diagnostic of
seed noise: the mean of k seeds' edits is W0 + mean of their deltas):

    python3 harness/average-edits.py OUT DIR1 DIR2 [DIR...]

The inputs' edit.json must name one base model (sha256). Every *.safetensors file but
delta.safetensors is averaged tensor by tensor (tensors whose bytes are equal in every input
are copied; an averaged tensor must be F32); the other files come from DIR1, edit.json left
out since OUT is no single edit's record. Standard library only (an edit changes a few
projections, so the averaging loop is short). Used for docs/findings.md §6l. For gap tuning,
`biaslens edit --tune-seeds k` fits k seeds and averages their changes in the library (one
record, each seed's losses in edit.json); this script stays for edits made separately.
"""
import json
import os
import shutil
import struct
import sys
from array import array


def read_safetensors(path):
    """(header without __metadata__, raw data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return header, data


def tensor_bytes(header, data, name):
    a, b = header[name]["data_offsets"]
    return data[a:b]


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, bytes), written in name order."""
    header, offset, chunks = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def average_f32(raws):
    """Element-wise mean of little-endian f32 buffers."""
    arrays = []
    for raw in raws:
        a = array("f")
        a.frombytes(raw)
        if sys.byteorder != "little":
            a.byteswap()
        arrays.append(a)
    k = len(arrays)
    out = array("f", (sum(xs) / k for xs in zip(*arrays)))
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


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
        inputs = [read_safetensors(os.path.join(d, f)) for d in dirs]
        for d, (h, _) in zip(dirs, inputs):
            if h.keys() != inputs[0][0].keys():
                sys.exit(f"{d}/{f}: not the same tensors as {dirs[0]}/{f}")
        merged, changed = {}, 0
        h0, d0 = inputs[0]
        for k, meta in h0.items():
            if any(h[k]["shape"] != meta["shape"] or h[k]["dtype"] != meta["dtype"] for h, _ in inputs[1:]):
                sys.exit(f"{f}: {k} has different shapes or dtypes across the inputs")
            raws = [tensor_bytes(h, d, k) for h, d in inputs]
            if all(r == raws[0] for r in raws[1:]):
                merged[k] = (meta["dtype"], meta["shape"], raws[0])
                continue
            if meta["dtype"] != "F32":
                sys.exit(f"{f}: {k} differs across the inputs and is {meta['dtype']}, not F32")
            changed += 1
            merged[k] = (meta["dtype"], meta["shape"], average_f32(raws))
        write_safetensors(os.path.join(tmp, f), merged)
        print(f"{f}: {changed} tensors averaged over {len(inputs)} inputs")
    os.rename(tmp, out)


if __name__ == "__main__":
    main()
