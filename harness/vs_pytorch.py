#!/usr/bin/env python3
"""biaslens against PyTorch + transformers (float32) on this machine, same threads, same inputs.

Run by harness/vs-pytorch.sh (which sets up the venv, the thread variables and the release
binary); see that script for the usage. Each row runs biaslens, then PyTorch, in this process's
order, and compares what the two computed:

  a  forward: 64 prompts x 8 tokens (ids 100 + 37 i + j), log-probabilities of " he", " she",
     " they" at the last position. biaslens: the `cargo bench --bench forward` executable with
     the filter smollm2_64x8 (criterion median); PyTorch: the same ids through the model, head
     on the last position only. biaslens's outputs stay inside the bench: no deviation here
     (row c runs the same forward on real prompts).
  b  f32 x.W^T at SmolLM2 layer shapes, 512 tokens (q/o, k/v, up, down). biaslens: the
     `matmul_f32/*` benches of the same executable (criterion median; `model::matmul::x_wt`:
     candle's matmul with gemm's AVX-512 kernels where the CPU has them, MKL in a build with
     `--features mkl`); PyTorch: F.linear on random inputs.
  c  `biaslens measure` over the occupation prompts vs a batched transformers loop (rows sorted
     by length, batches of 64 and of 256 rows, the faster counted; left padding with position ids
     from the mask, head on the last position only); deviation = max |dp| over prompts and
     pronouns.
  d  the causal trace of the prompt `biaslens trace --prompts 1` picks, with the noise biaslens
     drew (`--noise-out`): PyTorch as ROME's loop (one forward of 1 + samples rows per
     restoration, every token) and as a batched tracer (many restorations per forward, head on
     the last position only, restorations before the occupation skipped since they change
     nothing); deviation = max |dp| over clean, corrupted and every grid cell.
  e  `biaslens eval` vs lm-evaluation-harness 0.4.13 (HFLM, batch 16) on the same tasks and
     items (harness/vs_lm_eval.py); deviation = largest metric difference in points (and
     perplexity's, relative). Not in the default rows: it needs `pip install lm_eval`.

Ratios are biaslens speed / PyTorch speed (> 1: biaslens faster). The script exits non-zero when
a deviation exceeds its tolerance.
"""
import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import vs_lm_eval
import torch
import torch.nn.functional as F
import transformers
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PRONOUNS = ("he", "she", "they")
MATMUL_SHAPES = [  # (bench name, k, n), as benches/forward.rs
    ("qo_576x576", 576, 576),
    ("kv_576x192", 576, 192),
    ("up_576x1536", 576, 1536),
    ("down_1536x576", 1536, 576),
]
TOKENS = 512


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fail(msg):
    log(f"FAIL: {msg}")
    sys.exit(1)


def run(cmd, env, **kw):
    """Run a command, its stderr/stdout captured; fail loudly with its tail when it fails."""
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        fail(f"{cmd[0]} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p, wall


def median_time(f, reps, inner=1, warmup=1):
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            f()
        ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ts)


def criterion_median(root, group_prefix, name, since, required=True):
    """Median (s) of one criterion benchmark written after `since` (None if absent and not
    required)."""
    hits = glob.glob(os.path.join(root, f"{group_prefix}*", name, "new", "estimates.json"))
    hits = [h for h in hits if os.path.getmtime(h) >= since]
    if not hits:
        if not required:
            return None
        fail(f"criterion wrote no estimates for {group_prefix}*/{name} under {root}")
    h = max(hits, key=os.path.getmtime)
    return json.load(open(h))["median"]["point_estimate"] * 1e-9


# ---------------------------------------------------------------- the model on the PyTorch side


class TorchSide:
    def __init__(self, gguf_path):
        d, f = os.path.split(os.path.abspath(gguf_path))
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        self.model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        self.model.eval()
        self.load_s = time.perf_counter() - t0
        self.body = self.model.model
        self.layers = self.body.layers
        self.num_layers = len(self.layers)
        self.pronoun_ids = []
        for w in PRONOUNS:
            ids = self.tok(" " + w, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                fail(f"' {w}' is {len(ids)} tokens; this harness handles one-token pronouns")
            self.pronoun_ids.append(ids[0])

    def last_logits(self, ids, mask=None, pos=None):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        return out.logits[:, -1]

    def pronoun_probs(self, ids, mask=None, pos=None):
        """p(he, she, they) at the last position: [rows, 3]."""
        p = torch.softmax(self.last_logits(ids, mask, pos), dim=-1)
        return p[:, self.pronoun_ids]


def check_reference(ts, ref_path, n):
    """transformers' loading matches the stored reference (fixtures/reference): same ids, same p."""
    rows = [json.loads(line) for line in open(ref_path)][:n]
    worst = 0.0
    for r in rows:
        ids = ts.tok(r["text"])["input_ids"]
        if ids != r["ids"]:
            fail(f"tokenisation of {r['text']!r} differs from the reference: {ids} vs {r['ids']}")
        p = ts.pronoun_probs(torch.tensor([ids]))[0].double()
        want = torch.tensor([r["p_he"], r["p_she"], r["p_they"]], dtype=torch.float64)
        worst = max(worst, float((p - want).abs().max()))
    return worst


# ------------------------------------------------------------------------------- rows a and b


def bench_biaslens(exe, env, filt):
    """Run the forward bench's executable (`cargo bench --bench forward`) on `filt`."""
    if not exe:
        fail("no --bench-exe: build it with `cargo bench --bench forward --no-run`")
    since = time.time() - 1
    run([exe, "--bench", filt], env)
    return since


def row_forward(ts, exe, env, reps):
    since = bench_biaslens(exe, env, "smollm2_64x8")
    t_b = criterion_median("target/criterion", "forward", "smollm2_64x8_pronoun_logits", since)
    ids = torch.tensor([[100 + 37 * i + j for j in range(8)] for i in range(64)])
    want = [384, 1041, 502]
    if ts.pronoun_ids != want:
        fail(f"the bench reads ids {want}, this tokenizer's pronouns are {ts.pronoun_ids}")

    def fwd():
        return torch.log_softmax(ts.last_logits(ids), dim=-1)[:, want]

    t_p = median_time(fwd, reps)
    return t_b, t_p


def row_matmul(exe, env, reps):
    since = bench_biaslens(exe, env, "matmul_f32")
    out = []
    for name, k, n in MATMUL_SHAPES:
        t_b = criterion_median("target/criterion", "matmul_f32", name, since)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(TOKENS, k, generator=g)
        w = torch.randn(n, k, generator=g)
        t_p = median_time(lambda: F.linear(x, w), reps, inner=20, warmup=5)
        out.append((name, 2 * TOKENS * k * n, t_b, t_p))
    return out


# ------------------------------------------------------------------------------------- row c


def torch_measure(ts, texts, batch):
    """p(he, she, they) after every text: rows sorted by length, left-padded batches."""
    enc = [ts.tok(t)["input_ids"] for t in texts]
    order = sorted(range(len(enc)), key=lambda i: (len(enc[i]), i))
    pad = ts.tok.pad_token_id if ts.tok.pad_token_id is not None else 0
    out = np.zeros((len(enc), 3))
    for s in range(0, len(order), batch):
        chunk = order[s : s + batch]
        width = max(len(enc[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, width - len(enc[i]) :] = torch.tensor(enc[i])
            mask[r, width - len(enc[i]) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        p = ts.pronoun_probs(ids, mask, pos).double().numpy()
        out[chunk] = p
    return out


def row_measure(ts, env, bin_, model, work, quick):
    js = os.path.join(work, "measure.json")
    extra = ["--split", "controls"] if quick else []
    _, t_b = run([bin_, "measure", "--model", model, "--json", js, "--force", *extra], env)
    m = json.load(open(js))
    if [i[0] for i in m["targets"]["ids"]] != ts.pronoun_ids or len(m["targets"]["ids"][0]) != 1:
        fail(f"pronoun ids differ: biaslens {m['targets']['ids']}, transformers {ts.pronoun_ids}")
    texts = [p["text"] for p in m["prompts"]]
    want = np.array([[p["p_he"], p["p_she"], p["p_they"]] for p in m["prompts"]])
    # PyTorch's time is the faster of 64 and 256 rows per batch (biaslens: 256 prompts per
    # pass, its default); the deviation is the larger of the two runs'.
    t_p, dev = None, 0.0
    for batch in (64, 256):
        t0 = time.perf_counter()
        got = torch_measure(ts, texts, batch)
        t = time.perf_counter() - t0
        t_p = t if t_p is None else min(t_p, t)
        dev = max(dev, float(np.abs(got - want).max()))
    # What a one-batch measure costs biaslens (start, load, metrics): read beside t_b.
    one = os.path.join(work, "one-template.txt")
    with open(one, "w") as f:
        f.write("The {} said that\n")
    _, t_0 = run([bin_, "measure", "--model", model, "--split", "controls", "--templates", one], env)
    return len(texts), t_b, t_0, t_p, dev


# ------------------------------------------------------------------------------------- row d


def decoder_out(out):
    return out[0] if isinstance(out, tuple) else out


class Hooks:
    """Forward hooks on the embedding, every decoder layer, attention block and MLP block; what
    they do is set per pass: capture clean values, add noise, or copy clean values in."""

    def __init__(self, ts):
        self.ts = ts
        self.capture = None  # dict site -> [T, d] when capturing
        self.noise = None  # (tensor [rows, e - b, d], b, e)
        self.patch = {}  # site -> (rows index, token index, values [n, d])
        self.handles = [ts.body.embed_tokens.register_forward_hook(self._embed)]
        for l, layer in enumerate(ts.layers):
            for kind, mod in (("hidden", layer), ("attn", layer.self_attn), ("mlp", layer.mlp)):
                self.handles.append(mod.register_forward_hook(self._site((kind, l))))

    def remove(self):
        for h in self.handles:
            h.remove()

    def _embed(self, mod, inp, out):
        if self.noise is not None:
            z, b, e = self.noise
            out[:, b:e] += z
        return out

    def _site(self, site):
        def hook(mod, inp, out):
            h = decoder_out(out)
            if self.capture is not None:
                self.capture[site] = h[0].clone()
            p = self.patch.get(site)
            if p is not None:
                _apply_patch(h, p)
            return out

        return hook


def window(kind, l, w, nl):
    if kind == "hidden":
        return range(l, l + 1)
    return range(max(0, l - w // 2), min(nl, l + w - w // 2))


def trace_rome(ts, hooks, ids, subject, noise, kinds, w):
    """ROME's loop: per (kind, token, layer) one forward of 1 + samples rows, row 0 clean, rows
    1.. noised, the clean row's values copied into the noised rows at the restored sites."""
    s = noise.shape[0]
    nl, T = ts.num_layers, len(ids)
    batch = torch.tensor([ids] * (s + 1))
    b, e = subject
    z = torch.cat([torch.zeros_like(noise[:1]), noise])
    rows = torch.arange(1, s + 1)

    def one(sites, t):
        hooks.noise = (z, b, e)
        # ROME copies h[0, t] into h[1:, t] inside the hook, from the same batch.
        hooks.patch = {site: _RowZero(rows, t) for site in sites}
        p = ts.pronoun_probs(batch)
        return p[0].double(), p[1:].double().mean(0)

    clean, corrupted = one([], 0)
    grids = {}
    t0 = time.perf_counter()
    for kind in kinds:
        g = torch.zeros(T, nl, 3, dtype=torch.float64)
        for t in range(T):
            for l in range(nl):
                g[t, l] = one([(kind, x) for x in window(kind, l, w, nl)], t)[1]
        grids[kind] = g
        log(f"  ROME loop: {kind} done, {time.perf_counter() - t0:.1f} s")
    hooks.noise, hooks.patch = None, {}
    return clean, corrupted, grids


class _RowZero:
    """A patch that copies row 0 at token t into `rows` (ROME's in-batch clean row)."""

    def __init__(self, rows, t):
        self.rows, self.t = rows, t


def _apply_patch(h, p):
    if isinstance(p, _RowZero):
        h[p.rows, p.t] = h[0, p.t]
    else:
        rows, toks, vals = p
        h[rows, toks] = vals


def trace_batched(ts, hooks, ids, subject, noise, kinds, w, max_rows):
    """Clean run once (capturing every site), corrupted run once, then passes of
    max_rows // samples restorations x samples rows; each row's restored sites get the clean
    value at its token. Restorations before the occupation change nothing and keep the
    corrupted probabilities."""
    s = noise.shape[0]
    nl, T = ts.num_layers, len(ids)
    b, e = subject
    hooks.capture, hooks.noise, hooks.patch = {}, None, {}
    clean = ts.pronoun_probs(torch.tensor([ids]))[0].double()
    cap, hooks.capture = hooks.capture, None
    hooks.noise = (noise, b, e)
    corrupted = ts.pronoun_probs(torch.tensor([ids] * s)).double().mean(0)
    jobs = [(kind, t, l) for kind in kinds for t in range(b, T) for l in range(nl)]
    grids = {k: corrupted.repeat(T, nl, 1).clone() for k in kinds}
    per_pass = max(1, max_rows // s)
    for c in range(0, len(jobs), per_pass):
        chunk = jobs[c : c + per_pass]
        n = len(chunk)
        hooks.noise = (noise.repeat(n, 1, 1), b, e)
        where = {}
        for i, (kind, t, l) in enumerate(chunk):
            for x in window(kind, l, w, nl):
                r, tk = where.setdefault((kind, x), ([], []))
                r.extend(range(i * s, (i + 1) * s))
                tk.extend([t] * s)
        hooks.patch = {}
        for site, (r, tk) in where.items():
            tk = torch.tensor(tk)
            hooks.patch[site] = (torch.tensor(r), tk, cap[site][tk])
        p = ts.pronoun_probs(torch.tensor([ids] * (n * s))).double()
        p = p.view(n, s, 3).mean(1)
        for (kind, t, l), pi in zip(chunk, p):
            grids[kind][t, l] = pi
        log(f"  batched: {c + n} of {len(jobs)} restorations")
    hooks.noise, hooks.patch = None, {}
    return clean, corrupted, grids


def trace_deviation(rec, clean, corrupted, grids):
    r = rec["result"]
    worst = max(
        float((clean - torch.tensor(r["clean"], dtype=torch.float64)).abs().max()),
        float((corrupted - torch.tensor(r["corrupted"], dtype=torch.float64)).abs().max()),
    )
    for g in r["grids"]:
        want = torch.tensor(g["probs"], dtype=torch.float64)
        worst = max(worst, float((grids[g["kind"]] - want).abs().max()))
    return worst


def row_trace(ts, env, bin_, model, work, samples, kinds, w, naive):
    out = os.path.join(work, "trace")
    nz = os.path.join(work, "noise.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    if os.path.exists(nz):
        os.remove(nz)
    common = ["--model", model, "--prompts", "1", "--samples", str(samples),
              "--window", str(w), "--kinds", ",".join(kinds)]
    p, _ = run([bin_, "trace", *common, "--out", out, "--noise-out", nz], env)
    m = re.search(r"trace: 1 items in ([0-9.]+) s", p.stderr)
    if not m:
        fail(f"no timing line in biaslens trace's output:\n{p.stderr[-2000:]}")
    t_fast = float(m.group(1))
    log(f"  biaslens fast trace: {t_fast:.1f} s")
    lines = [json.loads(x) for x in open(os.path.join(out, "results.jsonl"))]
    rec = lines[0]["record"]
    noise = torch.from_numpy(load_file(nz)[f"noise.{lines[0]['index']}"])
    ids, subject = rec["ids"], tuple(rec["subject"])
    if noise.shape != (samples, subject[1] - subject[0], ts.model.config.hidden_size):
        fail(f"noise has shape {tuple(noise.shape)}")
    if ts.tok(rec["text"])["input_ids"] != ids:
        fail(f"tokenisation of {rec['text']!r} differs from biaslens's {ids}")
    t_naive = dev_naive = None
    if naive:  # biaslens's own fast vs naive on the same prompt and noise, in one process
        p, _ = run([bin_, "trace", *common, "--out", out + "-naive", "--bench-naive", "1"], env)
        bench = json.loads(p.stdout.strip().splitlines()[-1])
        t_naive, dev_naive = bench["naive_s"], bench["max_abs_diff"]
    hooks = Hooks(ts)
    try:
        t0 = time.perf_counter()
        rome = trace_rome(ts, hooks, ids, subject, noise, kinds, w)
        t_rome = time.perf_counter() - t0
        t0 = time.perf_counter()
        bat = trace_batched(ts, hooks, ids, subject, noise, kinds, w, 480)
        t_bat = time.perf_counter() - t0
    finally:
        hooks.remove()
    return {
        "text": rec["text"], "tokens": len(ids), "subject": subject, "samples": samples,
        "fast_s": t_fast, "naive_s": t_naive, "rome_s": t_rome, "batched_s": t_bat,
        "dev_rome": trace_deviation(rec, *rome), "dev_batched": trace_deviation(rec, *bat),
        "dev_naive": dev_naive,
    }


# ---------------------------------------------------------------------------------- the table


def ratio(t_b, t_p):
    return f"{t_p / t_b:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", default="target/release/biaslens")
    ap.add_argument("--bench-exe", default="", help="the `cargo bench --bench forward` executable")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gguf", default="models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--reference", default="fixtures/reference/smollm2-135m/occupation_probs.jsonl")
    ap.add_argument("--rows", default="a,b,c,d",
                    help="which rows (a forward, b matmul, c measure, d trace, e lm-eval)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer prompts, samples and repetitions")
    ap.add_argument("--naive", action="store_true", help="also time biaslens's own naive trace")
    ap.add_argument("--work", default="target/vs-pytorch")
    ap.add_argument("--tol-p", type=float, default=1e-4, help="largest |dp| allowed")
    ap.add_argument("--lm-eval-tasks", default=vs_lm_eval.DEFAULT_TASKS,
                    help="row e's tasks (biaslens names)")
    ap.add_argument("--eval-products", default="f32", choices=["f32", "bf16x3"],
                    help="row e: biaslens eval's --products (bf16x3 needs an mkl build)")
    ap.add_argument("--lm-eval-limit", type=int, default=300,
                    help="row e's items per task (0: every item)")
    ap.add_argument("--data-dir", default="fixtures/data", help="row e's data files")
    ap.add_argument("--tol-points", type=float, default=0.5,
                    help="row e: largest metric difference allowed, in points")
    a = ap.parse_args()
    rows = set(a.rows.split(","))
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    os.makedirs(a.work, exist_ok=True)

    transformers.utils.logging.disable_progress_bar()
    ts = TorchSide(a.gguf)
    log(f"transformers loaded {a.gguf} in {ts.load_s:.1f} s")
    ref_dev = check_reference(ts, a.reference, 8 if a.quick else 40)
    log(f"transformers vs fixtures reference: max |dp| = {ref_dev:.2e}")
    if ref_dev > a.tol_p:
        fail(f"transformers' logits do not match the stored reference ({ref_dev:.2e})")

    table = []  # (row, work, biaslens, pytorch, ratio, deviation)
    checks = [("transformers vs fixtures/reference (loading)", ref_dev)]
    reps = 3 if a.quick else 10
    if "a" in rows:
        t_b, t_p = row_forward(ts, a.bench_exe, env, reps)
        table.append(("a", "forward 64 x 8, pronoun log-probs at the last position",
                      f"{t_b:.3f} s", f"{t_p:.3f} s", ratio(t_b, t_p),
                      "n/a (bench keeps its outputs; see c)"))
    if "b" in rows:
        for name, flop, t_b, t_p in row_matmul(a.bench_exe, env, reps):
            gb, gp = flop / t_b / 1e9, flop / t_p / 1e9
            table.append(("b", f"matmul f32 x.W^T {name}, {TOKENS} tokens",
                          f"{gb:.0f} GFLOP/s", f"{gp:.0f} GFLOP/s", ratio(t_b, t_p),
                          "n/a (random inputs inside the bench)"))
    if "c" in rows:
        n, t_b, t_0, t_p, dev = row_measure(ts, env, a.bin, a.model, a.work, a.quick)
        checks.append(("c measure", dev))
        table.append(("c", f"measure, {n} prompts (biaslens: whole command, load included; "
                      f"a 32-prompt run takes {t_0:.1f} s)",
                      f"{t_b:.1f} s", f"{t_p:.1f} s", ratio(t_b, t_p), f"{dev:.1e}"))
    if "d" in rows:
        samples = 3 if a.quick else 10
        r = row_trace(ts, env, a.bin, a.model, a.work, samples, ["hidden", "mlp", "attn"], 10, a.naive)
        checks += [("d trace, ROME loop", r["dev_rome"]), ("d trace, batched", r["dev_batched"])]
        what = (f"trace {r['text']!r} ({r['tokens']} tokens), 3 kinds x {ts.num_layers} layers "
                f"x {r['samples']} samples")
        table.append(("d", what + ", vs PyTorch ROME loop", f"fast {r['fast_s']:.1f} s",
                      f"{r['rome_s']:.1f} s", ratio(r["fast_s"], r["rome_s"]), f"{r['dev_rome']:.1e}"))
        table.append(("d", what + ", vs PyTorch batched (480 rows per pass)",
                      f"fast {r['fast_s']:.1f} s", f"{r['batched_s']:.1f} s",
                      ratio(r["fast_s"], r["batched_s"]), f"{r['dev_batched']:.1e}"))
        if r["naive_s"] is not None:
            checks.append(("d trace, biaslens fast vs naive", r["dev_naive"]))
            table.append(("d", what + ", biaslens fast vs its own naive path (not PyTorch)",
                          f"fast {r['fast_s']:.1f} s", f"naive {r['naive_s']:.1f} s",
                          ratio(r["fast_s"], r["naive_s"]), f"{r['dev_naive']:.1e}"))

    lm_eval_bad = []
    if "e" in rows:
        r = vs_lm_eval.row_lm_eval(ts, env, run, a.bin, a.model, a.work, a.lm_eval_tasks,
                                   a.lm_eval_limit, a.data_dir, products=a.eval_products)
        per = f"first {a.lm_eval_limit} items each" if a.lm_eval_limit else "every item"
        per += f", biaslens --products {a.eval_products}" if a.eval_products != "f32" else ""
        table.append(("e", f"eval {','.join(r['tasks'])}, {per} ({r['items']} items; both "
                      "sides: whole job, model load included) vs lm-evaluation-harness",
                      f"{r['biaslens_s']:.1f} s", f"{r['lm_eval_s']:.1f} s",
                      ratio(r["biaslens_s"], r["lm_eval_s"]),
                      f"{r['dev_points']:.2f} points (perplexity {r['dev_ppl_pct']:.3f}%; "
                      f"{r['compared']} metrics)"))
        table.append(("e", "the same, scoring only (biaslens: its tasks' seconds; lm-eval: "
                      "simple_evaluate without the model load)",
                      f"{r['biaslens_scoring_s']:.1f} s", f"{r['lm_eval_scoring_s']:.1f} s",
                      ratio(r["biaslens_scoring_s"], r["lm_eval_scoring_s"]), "(as above)"))
        if not (r["dev_points"] <= a.tol_points and r["dev_ppl_pct"] <= 0.1):
            lm_eval_bad.append(f"e lm-eval metrics differ by {r['dev_points']:.2f} points, "
                               f"perplexity {r['dev_ppl_pct']:.3f}%")

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"torch threads {torch.get_num_threads()}, RAYON_NUM_THREADS {env['RAYON_NUM_THREADS']}"
          f"{', QUICK' if a.quick else ''}")
    print()
    print("| row | work | biaslens | PyTorch | ratio (biaslens speed / PyTorch) | max abs deviation |")
    print("|---|---|---:|---:|---:|---:|")
    for r in table:
        print("| " + " | ".join(r) + " |")
    print()
    bad = [(what, d) for what, d in checks if not d <= a.tol_p]
    for what, d in checks:
        print(f"deviation {what}: {d:.2e} (tolerance {a.tol_p:g})")
    if bad:
        fail("deviation past tolerance: " + ", ".join(f"{w} {d:.2e}" for w, d in bad))
    if lm_eval_bad:
        fail("; ".join(lm_eval_bad))


if __name__ == "__main__":
    main()
