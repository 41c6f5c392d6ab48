#!/usr/bin/env bash
# Everything a fresh machine needs before fusedopt's tests or benchmarks run:
# a virtual environment in .venv with torch, the test tools, and fusedopt
# itself built as a wheel (with CUDA kernels when nvcc is present) and
# installed. Safe to run again: it reuses what is there and rebuilds
# incrementally (CMake's build tree lives in build/).
#
#   FUSEDOPT_TORCH   the torch requirement (default torch==2.14.1: its CUDA 13.0
#                    build matches nvcc 13.0 and can compile the CUDA kernels)
#   FUSEDOPT_TORCH_INDEX  the package index torch alone comes from, e.g.
#                    https://download.pytorch.org/whl/cpu for a CPU-only torch
#                    on a machine without a GPU (~0.9 GB in the venv instead of
#                    the CUDA build's ~5.4 GB); the build then has no CUDA
#                    kernels (a CPU torch cannot compile them: CMakeLists.txt)
#   FUSEDOPT_CUDA    auto | 1 | 0, passed to the build (see CMakeLists.txt)
#   FUSEDOPT_TESTING 1 (default here) | 0: build fusedopt._testing, the
#                    test-only ops the tests load
#   FUSEDOPT_PYTHON  a Python that already holds torch and the test tools (the
#                    GPU machines' python3, which reach no package registry, or
#                    another torch's venv): no .venv, nothing downloaded;
#                    fusedopt is built against that Python's torch and
#                    installed into it (scripts/gpu_test.sh, scripts/test_old_torch.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

export FUSEDOPT_TESTING="${FUSEDOPT_TESTING:-1}"
if [ -n "${FUSEDOPT_PYTHON:-}" ]; then
  PY=$(command -v "$FUSEDOPT_PYTHON") || {
    echo "setup.sh: FUSEDOPT_PYTHON=$FUSEDOPT_PYTHON is not a command" >&2
    exit 1
  }
  if ! "$PY" -c "import torch, numpy, pytest, setuptools"; then
    echo "setup.sh: $PY lacks torch, numpy, pytest or setuptools;" \
      "with FUSEDOPT_PYTHON nothing is installed but fusedopt" >&2
    exit 1
  fi
  OFFLINE=(--no-index)
  # One build tree per Python and torch (setuptools' build_base): a tree
  # configured for another torch would be reconfigured and rebuilt whole at
  # each switch between them.
  tag=$("$PY" -c "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
  DIST="build/$tag/dist"
  DIST_EXTRA_CONFIG=$(mktemp)
  trap 'rm -f "$DIST_EXTRA_CONFIG"' EXIT
  printf '[build]\nbuild_base = build/%s\n' "$tag" >"$DIST_EXTRA_CONFIG"
  export DIST_EXTRA_CONFIG
else
  VENV=.venv
  TORCH_REQUIREMENT="${FUSEDOPT_TORCH:-torch==2.14.1}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
  "$PY" -m pip install -q --upgrade pip setuptools wheel
  # torch first and alone, so that FUSEDOPT_TORCH_INDEX applies to it only
  # (the install below then finds it satisfied: torch==X matches X+cpu).
  TORCH_INDEX=()
  if [ -n "${FUSEDOPT_TORCH_INDEX:-}" ]; then
    TORCH_INDEX=(--index-url "$FUSEDOPT_TORCH_INDEX")
  fi
  "$PY" -m pip install -q "$TORCH_REQUIREMENT" "${TORCH_INDEX[@]}"
  # expecttest: torch's own optimizer test catalog (optim_db) imports it;
  # hypothesis: the property tests. transformers, accelerate and mup: the
  # ecosystem tests (tests/test_ecosystem.py); mup without its dependencies,
  # which only its plotting needs (pandas, matplotlib, seaborn: ~180 MB).
  # tqdm and matplotlib: fusedopt-bench's progress bar and plots.
  "$PY" -m pip install -q "$TORCH_REQUIREMENT" numpy pytest ruff expecttest hypothesis \
    transformers accelerate tqdm matplotlib
  "$PY" -m pip install -q --no-deps mup
  OFFLINE=()
  DIST=dist
fi

rm -rf "$DIST"
start=$(date +%s)
"$PY" -m pip wheel . --no-build-isolation --no-deps "${OFFLINE[@]}" -q -w "$DIST"
"$PY" -m pip install -q --force-reinstall --no-deps "${OFFLINE[@]}" "$DIST"/fusedopt-*.whl
echo "fusedopt wheel built and installed in $(($(date +%s) - start)) s into $PY: $(ls "$DIST")"
"$PY" -c "import fusedopt; print(fusedopt.report())"
