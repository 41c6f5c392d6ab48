# The few commands a contributor needs. Each sets up what it needs first
# (scripts/setup.sh: venv, torch, build), so each works on a fresh clone.
PY := .venv/bin/python

.PHONY: setup test bench bench-quick bench-family lint format

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

lint:
	$(PY) -m ruff check python kernels tests bench setup.py
	$(PY) -m ruff format --check python kernels tests bench setup.py

format:
	$(PY) -m ruff format python kernels tests bench setup.py
