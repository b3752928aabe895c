#!/usr/bin/env bash
# biaslens against PyTorch + transformers (float32) on this machine: same threads, same inputs,
# the two sides one after the other per row, in one invocation. Prints a markdown table of times,
# ratios (biaslens speed / PyTorch speed, > 1: biaslens faster) and the largest deviation between
# the two sides, with the CPU model, thread count and load average beside it. Rows
# (harness/vs_pytorch.py has the details):
#   a  the forward bench: 64 prompts x 8 tokens, pronoun log-probs at the last position
#   b  f32 x.W^T at SmolLM2 layer shapes, 512 tokens (q/o, k/v, up, down), GFLOP/s
#   c  `biaslens measure` over the 5,440 occupation prompts vs a batched transformers loop
#   d  the causal trace of the prompt `biaslens trace --prompts 1` picks, with biaslens's noise
#      (`--noise-out`), vs ROME's per-restoration loop and a batched PyTorch tracer
#   e  `biaslens eval` vs lm-evaluation-harness 0.4.13 (HFLM, batch 16), same tasks and items
#      (not in the default rows; installs lm_eval into the venv when asked for)
#
#   harness/vs-pytorch.sh                  every row, full size (measure ~minutes, trace ~minutes)
#   QUICK=1 harness/vs-pytorch.sh          a quick correctness run: measure on the 544 control
#                                          prompts, trace with 3 noise samples, fewer repetitions
#   ROWS=a,b harness/vs-pytorch.sh         only some rows
#   NAIVE=1 ...                            also time biaslens's own naive trace (`--bench-naive`)
#   THREADS=1 ...                          thread count of both sides (default 2)
#   BIASLENS=path ...                      use this biaslens binary as it is (no build check)
#   FORWARD_BENCH=path ...                 use this `cargo bench --bench forward` executable as it is
#   FEATURES=mkl ...                       build both with these cargo features (mkl: MKL is
#                                          installed from PyPI by harness/mkl.sh first)
#   ROWS=e LM_EVAL_TASKS=boolq,lambada_openai LM_EVAL_LIMIT=300 ...
#                                          row e's tasks and items per task (the defaults;
#                                          LM_EVAL_LIMIT=0: every item)
#   EVAL_PRODUCTS=bf16x3 ...               row e: biaslens eval --products bf16x3 (compensated
#                                          bf16 products; an mkl build, fast with AMX)
#
# The venv ($VS_VENV, default /tmp/biaslens-torch-venv) is created with
# `pip install torch transformers accelerate gguf numpy safetensors` (from PyPI; large) when missing.
# target/release/biaslens is (re)built when missing or older than the sources. Exits non-zero
# when a deviation exceeds $TOL (default 1e-4 in probability). Timings are only as good as the
# machine is quiet: compare the load average printed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VS_VENV:-/tmp/biaslens-torch-venv}
THREADS=${THREADS:-2}
ROWS=${ROWS:-a,b,c,d}
TOL=${TOL:-1e-4}
BIN=${BIASLENS:-target/release/biaslens}
FEATURES=${FEATURES:-}
feat=()
if [ -n "$FEATURES" ]; then
  feat=(--features "$FEATURES")
  case ",$FEATURES," in *,mkl,*) eval "$(harness/mkl.sh)" ;; esac
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, accelerate, gguf, numpy, safetensors" 2>/dev/null; then
  echo "== creating $VENV (torch, transformers, accelerate, gguf, numpy, safetensors from PyPI)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers accelerate gguf numpy safetensors
fi
case ",$ROWS," in *,e,*)
  if ! "$VENV/bin/python" -c "import lm_eval" 2>/dev/null; then
    echo "== installing lm_eval==0.4.13 into $VENV (row e)" >&2
    "$VENV/bin/pip" install -q lm_eval==0.4.13
  fi ;;
esac

if [ -n "${BIASLENS:-}" ]; then
  [ -x "$BIN" ] || { echo "BIASLENS=$BIN is not an executable" >&2; exit 1; }
elif [ -n "$FEATURES" ] || [ ! -x "$BIN" ] || [ -n "$(find src crates Cargo.toml Cargo.lock -newer "$BIN" -print -quit)" ]; then
  # With FEATURES always: the binary there may have been built with other features.
  echo "== building $BIN${FEATURES:+ with features $FEATURES}" >&2
  nice -n 15 cargo build --release "${feat[@]}"
fi
BENCH=${FORWARD_BENCH:-}
case ",$ROWS," in *,a,*|*,b,*)
  if [ -z "$BENCH" ]; then
    # The forward bench's executable (release profile), built before anything is timed.
    BENCH=$(nice -n 15 cargo bench "${feat[@]}" --bench forward --no-run 2>&1 | tee /dev/stderr |
      sed -n 's/^ *Executable .*(\(.*\))$/\1/p' | tail -1)
    [ -x "$BENCH" ] || { echo "could not build the forward bench" >&2; exit 1; }
  fi ;;
esac
[ -f models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf ] || harness/fetch-models.sh smollm2-135m

cores=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TQDM_DISABLE=1
args=(--bin "$BIN" --bench-exe "$BENCH" --threads "$THREADS" --rows "$ROWS" --tol-p "$TOL")
[ -n "${QUICK:-}" ] && [ "${QUICK}" != 0 ] && args+=(--quick)
[ -n "${NAIVE:-}" ] && [ "${NAIVE}" != 0 ] && args+=(--naive)
[ -n "${LM_EVAL_TASKS:-}" ] && args+=(--lm-eval-tasks "$LM_EVAL_TASKS")
[ -n "${LM_EVAL_LIMIT:-}" ] && args+=(--lm-eval-limit "$LM_EVAL_LIMIT")
[ -n "${EVAL_PRODUCTS:-}" ] && args+=(--eval-products "$EVAL_PRODUCTS")

cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "machine: ${cpu:-unknown CPU}, $cores cores visible; threads per side: $THREADS;" \
  "load average before: $load_before; $(date -u +%Y-%m-%dT%H:%MZ); biaslens $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty')${FEATURES:+ (features: $FEATURES)}"
"$VENV/bin/python" harness/vs_pytorch.py "${args[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
