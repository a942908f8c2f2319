#!/usr/bin/env bash
# Install saddle_torch as a user would, in a fresh virtual environment with torch 2.13.0 from the local
# wheel: `python -m build` (isolated: an sdist, then a wheel compiled from it against the venv's torch),
# the wheel installed into a second fresh environment, and README.md's training block under torchrun
# there, run from outside the source tree. About 5 minutes on 2 cores (one compile).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== clean venv: build (sdist + wheel, isolated)"
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/pip" install -q torch==2.13.0 build
"$WORK/build-env/bin/python" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 ||
  { tail -n 60 "$WORK/build.log"; echo "python -m build failed"; exit 1; }
grep "saddle_torch: compiling against torch" "$WORK/build.log" | sort -u
ls -l "$WORK/dist"

echo "== clean venv: install the wheel elsewhere, run README's training block under torchrun"
"$PYTHON" -m venv "$WORK/user-env"
"$WORK/user-env/bin/pip" install -q torch==2.13.0
"$WORK/user-env/bin/pip" install -q "$WORK"/dist/saddle_torch-*.whl
cd "$WORK"
"$WORK/user-env/bin/python" -c 'import saddle_torch as st; print("saddle_torch", st.__version__, "imported from", st.__file__)'
OMP_NUM_THREADS=1 "$WORK/user-env/bin/torchrun" --standalone --nproc_per_node=2 \
  "$ROOT/.ci/readme_train.py" "$ROOT/README.md"
echo "== clean venv: ok"
