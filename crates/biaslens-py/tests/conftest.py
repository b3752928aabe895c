"""Fixtures: the repository, the `biaslens` binary to compare with, and the tiny test model."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# The word-level tokenizer tests/common/mod.rs gives the tiny llama (everything else is [UNK]).
TINY_WORDS = [
    "[UNK]", "he", "she", "they", "him", "her", "his", "The", "the", "said", "that", "man",
    "woman", "because", "was", "a", "and", "therefore", ".",
]


def _binary():
    env = os.environ.get("BIASLENS_BIN")
    if env:
        return Path(env)
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "biaslens"
        if p.is_file():
            return p
    pytest.fail(
        "no biaslens binary to compare with: build it (`cargo build` at the repository root) "
        "or set BIASLENS_BIN"
    )


@pytest.fixture(scope="session")
def cli():
    """Run the `biaslens` binary in `cwd`; returns the CompletedProcess (text)."""
    exe = _binary()

    def run(args, cwd, check=True):
        env = dict(os.environ)
        for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "JOB_COMPLETION_INDEX"):
            env.pop(k, None)
        p = subprocess.run(
            [str(exe), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
        )
        if check and p.returncode != 0:
            raise AssertionError(f"biaslens {' '.join(map(str, args))} failed:\n{p.stderr}")
        return p

    return run


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny llama fixture as an HF directory with the word-level tokenizer."""
    src = REPO / "fixtures/reference/tiny/llama"
    d = tmp_path_factory.mktemp("models") / "tinytok"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "expected.safetensors"):
        shutil.copy(src / f, d / f)
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": {w: i for i, w in enumerate(TINY_WORDS)},
            "unk_token": "[UNK]",
        },
    }
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return d


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (harness/fetch-models.sh smollm2-135m), skipped when absent."""
    models = Path(os.environ.get("BIASLENS_MODELS", REPO / "models"))
    if not (models / "smollm2-135m").exists():
        pytest.skip(f"smollm2-135m is not in {models} (harness/fetch-models.sh smollm2-135m)")
    return "smollm2-135m"
