"""What the compiled kernels look like on real targets, checked without a GPU:
tests/triton_aot.py compiles every kernel variant for sm_80 and sm_90 through
triton.compile, in a subprocess without TRITON_INTERPRET (which would replace
the @triton.jit functions), and reports PTX and cubin facts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton is what these tests test: without it (a CPU-only torch) there is nothing to run.
pytest.importorskip("triton")

from fusedopt.kernels import adam  # noqa: E402

# At most 64 registers per thread keeps 1024 threads resident per SM on sm_80
# and sm_90 (65536 registers / 64), plenty for a streaming kernel; measured
# 48-54 (adam.BLOCK_SIZE's comment).
MAX_REGISTERS = 64


@pytest.fixture(scope="module")
def facts() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_aot.py")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def adam_variants(facts):
    return {name: f for name, f in facts.items() if "/adam_" in name}


def test_every_variant_was_compiled_for_both_targets(facts):
    assert len(adam_variants(facts)) == 2 * 3 * 2 * 2
    assert {name.split("/")[0] for name in facts} == {"sm80", "sm90"}


def test_fp32_full_blocks_use_128_bit_accesses(facts):
    """p, g, m, v (and v_max) each load with one ld.global.v4 per thread, and
    p, m, v (v_max, the unscaled g) store with st.global.v4."""
    for name, f in adam_variants(facts).items():
        if "_fp32_" in name:
            streams = 5 if "amsgrad1" in name else 4
            assert f["ld_v4"] >= streams and f["st_v4"] >= streams, (name, f)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16_bit_params_use_128_bit_state_accesses(facts, dtype):
    """With 4 elements per thread a 16-bit param is 8 bytes (ld.v2); the fp32
    states m, v (v_max) are 128-bit."""
    for name, f in adam_variants(facts).items():
        if f"_{dtype}_" in name:
            streams = 3 if "amsgrad1" in name else 2
            assert f["ld_v4"] >= streams and f["st_v4"] >= streams, (name, f)


def test_v4_count_tells_vectorized_from_not(facts):
    """The counter can fail: the step-count kernel gathers through addresses
    and has no 128-bit access."""
    for target in ("sm80", "sm90"):
        assert facts[f"{target}/count_steps"]["ld_v4"] == 0


def test_no_spills_and_bounded_registers(facts):
    for name, f in facts.items():
        assert f["local_bytes"] == 0 and f["stack_bytes"] == 0, (name, f)
        assert f["registers"] <= MAX_REGISTERS, (name, f)


def test_script_compiles_the_launchers_configuration():
    source = Path(__file__).with_name("triton_aot.py").read_text()
    assert "adam.BLOCK_SIZE" in source and "adam.NUM_WARPS" in source
    assert adam.BLOCK_SIZE % (adam.NUM_WARPS * 32) == 0
