# The few commands a contributor needs. Each sets up what it needs first
# (scripts/setup.sh: venv, torch, build), so each works on a fresh clone.
PY := .venv/bin/python

.PHONY: setup test bench bench-quick bench-family gpu-test test-old-torch lint format

setup:
	bash scripts/setup.sh

# The test command (README; .ci/run calls it).
test: setup
	$(PY) -m pytest -q tests

# The main job: the CPU benchmark, printing its table (bench/results/ gets the CSV).
bench: setup
	$(PY) bench/bench_cpu.py

bench-quick: setup
	$(PY) bench/bench_cpu.py --quick

# Every optimizer's CPU step beside torch's fastest path for it (~5 min).
bench-family: setup
	$(PY) bench/bench_family.py

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
