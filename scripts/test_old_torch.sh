#!/usr/bin/env bash
# fusedopt with the older torch and triton that the GPU machines hold (torch
# 2.11.0+cu130, triton 3.6.0), checked on this CPU machine: a venv of their
# own with that pair, fusedopt built into it (scripts/setup.sh's
# FUSEDOPT_PYTHON mode, CUDA kernels included: the PyPI wheel of torch 2.11 is
# a CUDA 13.0 build) and the test suite run there. About 15 minutes on 2
# shared cores the first time: the install (~5 GB), the build, the suite.
#
#   FUSEDOPT_OLD_VENV    the venv (default build/venv-torch2.11, ignored by git)
#   FUSEDOPT_OLD_TORCH   default 2.11.0
#   FUSEDOPT_OLD_TRITON  default 3.6.0
# Arguments go to pytest (default: the whole suite, tests).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FUSEDOPT_OLD_VENV:-build/venv-torch2.11}
TORCH_VERSION=${FUSEDOPT_OLD_TORCH:-2.11.0}
TRITON_VERSION=${FUSEDOPT_OLD_TRITON:-3.6.0}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
nice "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" \
  numpy pytest expecttest hypothesis "setuptools>=77" wheel
FUSEDOPT_PYTHON="$VENV/bin/python" nice bash scripts/setup.sh
nice "$VENV/bin/python" -m pytest -q "${@:-tests}"
