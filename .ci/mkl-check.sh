#!/usr/bin/env bash
# The optional `mkl` feature (src/model/mkl.rs): install MKL's static libraries from PyPI
# (harness/mkl.sh, 250 MB download), build with the feature, and run the tests that hold its
# products to references: every lib test (the MKL glue's strided-layout tests against an f64
# product among them), the forward against Hugging Face's numbers (tiny_reference,
# real_reference), measure's jobs and the eval path against its plain scorer (eval_model).
# The snapshot tests are not run: they store the default build's machine-independent bits.
set -euo pipefail
cd "$(dirname "$0")/.."
# Installing MKL needs pip and PyPI; where they are missing the step says so and skips, so the
# check fails only on what the feature does (its build or its tests), not on the machine.
if ! env_lines=$(harness/mkl.sh); then
  echo "== mkl feature SKIPPED: harness/mkl.sh could not install MKL from PyPI (see above)"
  exit 0
fi
eval "$env_lines"
cargo test --features mkl --lib --test tiny_reference --test real_reference --test eval_model \
  --test measure_job
