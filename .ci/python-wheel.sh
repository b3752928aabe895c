#!/usr/bin/env bash
# CI check: the Python bindings (crates/biaslens-py) build with maturin into a fresh venv and
# their pytest suite passes: the wheel's measure, trace, edit and eval give the bits the
# `biaslens` binary gives (tests/test_biaslens.py; it compares with target/debug/biaslens, which
# `cargo test` built). maturin, numpy and pytest come from PyPI. The build shares target/ with
# the Rust build but compiles its own variants of candle's dependencies (numpy's ndarray turns
# on more features), about 6 minutes on 2 cores; the tests take about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(command -v python3.11 || command -v python3)
venv="$PWD/target/ci-python-venv"
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "maturin>=1.5,<2" numpy pytest
start=$(date +%s)
(
  cd crates/biaslens-py
  VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" nice -n 10 maturin develop --quiet
)
echo "python-wheel: built in $(( $(date +%s) - start )) s"
cargo build --quiet --bin biaslens   # the binary the tests compare with (fresh after cargo test)
BIASLENS_BIN="$PWD/target/debug/biaslens" "$venv/bin/python" -m pytest -q crates/biaslens-py/tests
