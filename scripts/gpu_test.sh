#!/usr/bin/env bash
# `make gpu-test`: everything a GPU machine can check, in one command that
# ends inside the 10 minutes one command gets on the GPU machines this project
# is lent (they reach no package registry; their python3 holds torch, triton,
# pytest and pytest-xdist):
#   1. a GPU, or a loud failure (exit 2): nothing here skips for want of one;
#   2. fusedopt built with its CUDA kernels (the default architectures) into
#      FUSEDOPT_PYTHON (default python3; no venv, nothing downloaded:
#      scripts/setup.sh);
#   3. the whole test suite with FUSEDOPT_REQUIRE_GPU=1 (a GPU test that skips
#      fails, tests/conftest.py) and TRITON_INTERPRET=0 (the Triton kernels
#      compile for the GPU), on PYTEST_WORKERS processes where pytest-xdist
#      imports;
#   4. bench/bench_cuda.py and bench/bench_triton.py (bench/README.md);
#   5. the report bench/results/gpu-<gpu>.md beside the benchmarks' CSVs, and
#      when $OUT is set, the report, the CSVs and the logs copied into it.
# Every phase runs even when one before it failed (a failed build still gets
# its report); the exit status is 1 when any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${FUSEDOPT_PYTHON:-python3}
# Each phase's limit in seconds, so that the report is written inside the 10
# minutes: 570 s in all, ~2x what each phase is expected to take on a GPU
# machine's 16 cores (on 2 busy cores here, kernels.cu took 14 s per
# architecture, 4 of them, and the longest torch translation unit 39 s; the
# suite without the interpreter's rows is CPU-light).
BUILD_LIMIT=180
TEST_LIMIT=220
BENCH_CUDA_LIMIT=90
BENCH_TRITON_LIMIT=80
# pytest-xdist processes, each with OMP_NUM_THREADS=2 (the CPU backend's
# threads): 16 threads on the GPU machines' 16 cores, no oversubscription.
PYTEST_WORKERS=8

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-test: FAILED: $PY's torch sees no CUDA GPU (torch.cuda.is_available() is False," \
    "or torch does not import). make gpu-test is for a machine with a GPU; make test is for" \
    "one without." >&2
  exit 2
fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

export PYTHONUNBUFFERED=1
results=bench/results
logs=$(mktemp -d)
mkdir -p "$results"
: >"$logs/phases.tsv"
status=0

# phase NAME LIMIT LOG COMMAND...: runs COMMAND under LIMIT seconds, its output
# into LOG, and records its exit status and time in phases.tsv.
phase() {
  local name=$1 limit=$2 log=$3
  shift 3
  local start rc
  start=$(date +%s)
  echo "gpu-test: $name (at most $limit s) ..."
  timeout -s INT -k 20 "$limit" "$@" >"$log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >>"$logs/phases.tsv"
  echo "gpu-test: $name: exit status $rc after $(($(date +%s) - start)) s"
  if [ "$rc" -ne 0 ]; then
    status=1
  fi
}

# The default architectures (CMakeLists.txt), as a wheel ships them, so that
# tests/test_cuda_build.py and tests/test_cuda_sass.py check what ships; a
# FUSEDOPT_CUDA_ARCHS set by the caller holds for the build and the tests alike.
phase build "$BUILD_LIMIT" "$logs/build.log" \
  env FUSEDOPT_PYTHON="$PY" FUSEDOPT_CUDA=1 bash scripts/setup.sh

# The GPU's name for the file names, once fusedopt (its fusedopt.bench.gpu)
# is installed; "gpu" when the build failed.
slug=$("$PY" bench/gpu_report.py --slug) || slug=gpu
report="$results/gpu-$slug.md"
csv_cuda="$results/gpu-$slug.csv"
csv_family="$results/gpu-$slug-family.csv"

parallel=()
if "$PY" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$PYTEST_WORKERS")
fi
phase tests "$TEST_LIMIT" "$logs/pytest.log" \
  env FUSEDOPT_REQUIRE_GPU=1 TRITON_INTERPRET=0 OMP_NUM_THREADS=2 \
  "$PY" -m pytest tests -q -rfE "${parallel[@]}" --junitxml="$logs/junit.xml"
tail -n 3 "$logs/pytest.log"

phase bench_cuda "$BENCH_CUDA_LIMIT" "$logs/bench_cuda.log" \
  "$PY" bench/bench_cuda.py --csv "$csv_cuda"
phase bench_triton "$BENCH_TRITON_LIMIT" "$logs/bench_triton.log" \
  "$PY" bench/bench_triton.py --csv "$csv_family"

"$PY" bench/gpu_report.py --logs "$logs" --out "$report" || status=1
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  for f in "$report" "$csv_cuda" "$csv_family" "$logs/pytest.log" "$logs/build.log"; do
    if [ -f "$f" ]; then
      cp "$f" "$OUT/"
    fi
  done
fi
cat "$report"
echo "gpu-test: report in $report$([ -n "${OUT:-}" ] && echo " and \$OUT"); exit status $status"
exit "$status"
