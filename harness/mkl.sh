#!/usr/bin/env bash
# Install Intel MKL's static libraries from PyPI wheels (mkl-static) into a project-local prefix
# and print the environment that points the `mkl` cargo feature at it. No system MKL needed; the
# headers are not needed either (biaslens declares the one CBLAS function it calls).
#
#   eval "$(harness/mkl.sh)"          # install if missing, then export BIASLENS_MKL_LIB
#   cargo build --release --features mkl
#
# Idempotent: a prefix whose stamp matches the pinned wheel is left alone. Override the prefix
# with BIASLENS_MKL_PREFIX. Download 250 MB (the wheel); 620 MB on disk.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${BIASLENS_MKL_PREFIX:-$root/.mkl}"
py="${PYTHON:-python3}"
wheel="mkl-static==2026.2.0"
stamp="$prefix/.stamp"
libs=(libmkl_intel_lp64.a libmkl_gnu_thread.a libmkl_core.a)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wheel" ]; then
  echo "mkl: installing $wheel into $prefix" >&2
  rm -rf "$prefix.part"
  mkdir -p "$prefix.part"
  "$py" -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
    --dest "$prefix.part/wheel" "$wheel" >&2
  whl=$(ls "$prefix.part"/wheel/*.whl)
  mkdir -p "$prefix.part/lib"
  # A wheel is a zip: take the three archives the link needs, nothing else.
  "$py" - "$whl" "$prefix.part/lib" "${libs[@]}" <<'PY'
import sys, zipfile, os, shutil
whl, dest, want = sys.argv[1], sys.argv[2], set(sys.argv[3:])
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        name = os.path.basename(info.filename)
        if name in want:
            with z.open(info) as src, open(os.path.join(dest, name), "wb") as out:
                shutil.copyfileobj(src, out)
            want.discard(name)
if want:
    sys.exit(f"mkl: {sorted(want)} not in {whl}")
PY
  rm -rf "$prefix.part/wheel"
  echo "$wheel" >"$prefix.part/.stamp"
  rm -rf "$prefix"
  mv "$prefix.part" "$prefix"
  echo "mkl: ready" >&2
fi
echo "export BIASLENS_MKL_LIB=\"$prefix/lib\""
