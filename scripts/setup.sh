#!/usr/bin/env bash
# Everything a fresh machine needs before fusedopt's tests or benchmarks run:
# a virtual environment in .venv with torch, the test tools, and fusedopt
# itself built as a wheel (with CUDA kernels when nvcc is present) and
# installed. Safe to run again: it reuses what is there and rebuilds
# incrementally (CMake's build tree lives in build/).
#
#   FUSEDOPT_TORCH   the torch requirement (default torch==2.14.1: its CUDA 13.0
#                    build matches nvcc 13.0 and can compile the CUDA kernels)
#   FUSEDOPT_CUDA    auto | 1 | 0, passed to the build (see CMakeLists.txt)
#   FUSEDOPT_TESTING 1 (default here) | 0: build fusedopt._testing, the
#                    test-only ops the tests load
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
TORCH_REQUIREMENT="${FUSEDOPT_TORCH:-torch==2.14.1}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# expecttest: torch's own optimizer test catalog (optim_db) imports it.
"$PY" -m pip install -q "$TORCH_REQUIREMENT" numpy pytest ruff expecttest hypothesis
export FUSEDOPT_TESTING="${FUSEDOPT_TESTING:-1}"

rm -rf dist
start=$(date +%s)
"$PY" -m pip wheel . --no-build-isolation --no-deps -q -w dist
"$PY" -m pip install -q --force-reinstall --no-deps dist/fusedopt-*.whl
echo "fusedopt wheel built and installed in $(( $(date +%s) - start )) s: $(ls dist)"
"$PY" -c "import fusedopt; print(fusedopt.report())"
