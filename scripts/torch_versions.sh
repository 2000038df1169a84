#!/usr/bin/env bash
# Run the default test suite under other releases of torch, each in a venv of its own, on this machine.
#
#   bash scripts/torch_versions.sh 2.11.0 2.10.0 2.9.1        # one venv and one suite run per version
#   VENVS=/data/venvs bash scripts/torch_versions.sh 2.11.0    # where the venvs go (default /tmp/zoo-torch)
#   PYTEST_ARGS="tests/zoo -x" bash scripts/torch_versions.sh 2.11.0   # part of the suite, or other options
#
# CI runs the suite on the CPU build of torch 2.13.0 only; GPU images ship other releases (the H200
# image of gpu.md has 2.11), and pyproject.toml's lower bound on torch is the oldest release this
# script passed with. PyPI's torch wheels are CUDA builds (about 3 GB with their NVIDIA libraries);
# they run the suite on the CPU like the CPU build does.
#
# Triton: each CUDA build pins its own (2.9: 3.5, 2.10 and 2.11: 3.6). Before 3.7, Triton's
# interpreter, which runs the Triton kernels' tests on a machine without a GPU, fails on any loop over
# a runtime integer with numpy 2.4 (`only 0-dimensional arrays can be converted to Python scalars`:
# Triton's bug, fixed in 3.7), so where no GPU is present Triton 3.7 replaces the pinned one. The
# `test` extra's Triton range is left out for the same reason: it would make pip replace the torch
# under test.
#
# Each venv keeps its own caches (torch extensions, inductor, Triton) under its folder. The log of each
# run is VENVS/torch-V/pytest.log; the script ends with one line per version and fails if any run did.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENVS="${VENVS:-/tmp/zoo-torch}"
PYTHON="${PYTHON:-python3}"
[ $# -gt 0 ] || { echo "usage: $0 TORCH_VERSION [TORCH_VERSION ...]" >&2; exit 2; }

declare -A RESULT
failed=0
for version in "$@"; do
  venv="$VENVS/torch-$version"
  echo "== torch $version: $venv"
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv" || { RESULT[$version]="venv failed"; failed=1; continue; }
  fi
  # the project's dependencies and its test extra but torch and Triton, with torch pinned: a release below
  # pyproject's bound is tested as it is, not replaced by pip with one inside it
  if ! { "$venv/bin/python" -c "import re, sys, tomllib; project = tomllib.load(open(sys.argv[1], 'rb'))['project'];
deps = project['dependencies'] + project['optional-dependencies']['test'];
print('\n'.join(d for d in deps if re.match(r'[A-Za-z0-9_.-]+', d)[0] not in ('torch', 'triton')))" \
           "$ROOT/pyproject.toml" >"$venv/requirements.txt" &&
         "$venv/bin/pip" install -q "torch==$version" -r "$venv/requirements.txt" &&
         "$venv/bin/pip" install -q --no-deps -e "$ROOT"; }; then
    RESULT[$version]="install failed"; failed=1; continue
  fi
  installed="$("$venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")"
  if [ "$installed" != "$version" ]; then
    RESULT[$version]="install failed: the venv has torch $installed"; failed=1; continue
  fi
  if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then
    :  # a GPU: the kernels are compiled, not interpreted, and torch's own Triton is the one to test
  elif ! "$venv/bin/python" -c "import triton, sys; sys.exit(tuple(map(int, triton.__version__.split('.')[:2])) < (3, 7))" 2>/dev/null; then
    "$venv/bin/pip" install -q --no-deps "triton==3.7.0" || { RESULT[$version]="install failed"; failed=1; continue; }
  fi
  (
    cd "$ROOT" &&
    PATH="$venv/bin:$PATH" TORCH_EXTENSIONS_DIR="$venv/cache/ext" TORCHINDUCTOR_CACHE_DIR="$venv/cache/inductor" \
      TRITON_CACHE_DIR="$venv/cache/triton" python -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} >"$venv/pytest.log" 2>&1
  )
  code=$?
  RESULT[$version]="$(tail -n 1 "$venv/pytest.log")"
  [ "$code" -eq 0 ] || failed=1
done

echo
for version in "$@"; do
  echo "torch $version: ${RESULT[$version]}"
done
exit "$failed"
