# The few commands a contributor needs. Each sets up what it needs first
# (scripts/setup.sh: venv, torch, build), so each works on a fresh clone.
PY := .venv/bin/python

.PHONY: setup test bench bench-quick bench-family bench-decay gpu-test test-old-torch lint format

setup:
	bash scripts/setup.sh

# The test command (README; .ci/run calls it).
test: setup
	$(PY) -m pytest -q tests

# The main job (README): fusedopt-bench, AdamW and SGD beside torch's paths on
# four workloads, with progress, tables, a CSV and plots in bench-out/<date-time>/
# (untracked); on a machine with a GPU, the same on the GPU. BENCH_ARGS adds
# options (fusedopt-bench --help), e.g. make bench BENCH_ARGS="--optim all".
BENCH := .venv/bin/fusedopt-bench
bench: setup
	$(BENCH) $(BENCH_ARGS)

bench-quick: setup
	$(BENCH) --quick $(BENCH_ARGS)

# Every optimizer beside torch's foreach and fused paths, on GPT-2 small and 2000 x 4096.
bench-family: setup
	$(BENCH) --optim all --workload "GPT-2 small (124M)" --workload "2000 x 4096" \
		--torch foreach,fused $(BENCH_ARGS)

# The weight-decay study: Adam+L2, AdamW, fully decoupled AdamW, SGD, SGDW (lr x wd heatmaps).
bench-decay: setup
	$(BENCH) --study decay $(BENCH_ARGS)

# On a machine with a GPU (the GPU machines this project is lent: no package
# registry there): build into that machine's python3, the whole suite with GPU
# skips as failures, both GPU benchmarks, a report in bench/results/ (and $OUT).
# Under 10 minutes; fails at once without a GPU. See scripts/gpu_test.sh.
gpu-test:
	bash scripts/gpu_test.sh

# The suite against the GPU machines' older torch 2.11 + triton 3.6, on the
# CPU, in a venv of its own (build/venv-torch2.11). See scripts/test_old_torch.sh.
test-old-torch:
	bash scripts/test_old_torch.sh

lint:
	$(PY) -m ruff check python kernels tests bench setup.py
	$(PY) -m ruff format --check python kernels tests bench setup.py

format:
	$(PY) -m ruff format python kernels tests bench setup.py
