"""What the compiled kernels look like on real targets, checked without a GPU:
tests/triton_aot.py compiles every rule's kernel variants for sm_80, sm_90,
sm_100 and sm_120 through triton.compile, in a subprocess without
TRITON_INTERPRET (which would replace the @triton.jit functions), once per
module, with the launcher's options, and reports PTX, cubin and SASS facts:
among them what Note [bit-identical backends] (kernels/mta.py) asks of the
element kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton is what these tests test: without it (a CPU-only torch) there is nothing to run.
pytest.importorskip("triton")

from fusedopt.kernels import mta, rules  # noqa: E402
from fusedopt.registry import RULES  # noqa: E402

TARGETS = {"sm80", "sm90", "sm100", "sm120"}
# At most 64 registers per thread keeps 4 blocks of NUM_WARPS = 8 warps
# resident per SM (65536 registers / (64 * 256 threads)), plenty for a
# streaming kernel; measured 32-62 for the element kernels with triton 3.8,
# 32-64 with 3.6 (the GPU machines' version).
MAX_REGISTERS = 64
# The master-weight stores (triton_aot.py's _store variants): Kahan's
# compensation load and its sums after the update took Adam 70 registers
# (bf16 and fp16, sm_90, with the old p read again rather than kept live),
# 3 blocks of 8 warps resident per SM instead of 4; compiled, not timed.
MAX_STORE_REGISTERS = 72
PARAM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# SASS instructions that a bf16 element kernel may have beyond its fp16 twin
# (whose converts are native): the integer round to nearest even of
# kernels/storage.py, ~6 per stored value, 16 stored values per thread in
# the two block variants (p and the unscaled g, 4 elements each), plus
# the loads' shifts. Measured 64-112 over every rule and target (triton 3.8).
BF16_EXTRA_INSTRUCTIONS = 8 * 16


def _aot(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_aot.py")
    result = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def facts() -> dict:
    return _aot()


@pytest.fixture(scope="module")
def store_facts() -> dict:
    return _aot("--stores")


def element_variants(facts) -> dict[str, tuple[str, str, int, dict]]:
    """name -> (rule, dtype, state mask, facts) of every element kernel, which
    triton_aot.py names <target>/<rule>_element_<dtype>_used<mask>_table<0|1>."""
    out = {}
    for name, f in facts.items():
        rule, kind, *rest = name.split("/")[1].split("_")
        if kind == "element":
            dtype, used, _ = rest
            out[name] = (rule, dtype, int(used.removeprefix("used"), 2), f)
    return out


def test_every_rule_and_state_set_was_compiled_for_every_target(facts):
    assert {name.split("/")[0] for name in facts} == TARGETS
    for target in TARGETS:
        for name in RULES:
            for used in rules.get(name).STATE_SETS:
                for dtype in PARAM_BYTES:
                    assert f"{target}/{name}_element_{dtype}_used{used:b}_table0" in facts
                assert f"{target}/{name}_element_fp32_used{used:b}_table1" in facts
            assert f"{target}/{name}_prologue" in facts
            assert (f"{target}/{name}_advance" in facts) == bool(RULES[name].scalars)


def test_fp32_full_blocks_use_128_bit_accesses(facts):
    """Every fp32 stream loads with ld.global.v4 (p, g and each used state) and
    stores with st.global.v4 (p, the unscaled g, each used state)."""
    for name, (_, dtype, used, f) in element_variants(facts).items():
        if dtype == "fp32":
            streams = 2 + bin(used).count("1")
            assert f["ld_v4"] >= streams and f["st_v4"] >= streams, (name, f)


def test_16_bit_params_use_128_bit_state_accesses(facts):
    """With 4 elements per thread a 16-bit param is 8 bytes (ld.v2); the fp32
    states are 128-bit."""
    for name, (_, dtype, used, f) in element_variants(facts).items():
        if PARAM_BYTES[dtype] == 2:
            streams = bin(used).count("1")
            assert f["ld_v4"] >= streams and f["st_v4"] >= streams, (name, f)


def test_no_fp64_in_element_kernels(facts):
    """Note [per-tensor scalars] in kernels/mta.py: doubles only in the
    prologue, which the check sees (so that it can fail), in the PTX and in
    the SASS."""
    for name, (*_, f) in element_variants(facts).items():
        assert f["f64"] == 0 and f["sass_fp64"] == 0, (name, f)
    for target in TARGETS:
        assert facts[f"{target}/adam_prologue"]["f64"] > 0
        assert facts[f"{target}/adam_prologue"]["sass_fp64"] > 0


def test_no_contraction_in_element_kernels(facts):
    """Note [bit-identical backends]: compiled with fp fusion off, no
    fma.rn.f32 and every fp32 mul/add/sub with an explicit .rn in the PTX,
    and in the SASS no FFMA but those of IEEE division, reciprocal and
    square root (_cuda_tools.contracted_fmas; with fusion on: 20-40 per
    kernel)."""
    for name, (*_, f) in element_variants(facts).items():
        assert f["fma_f32"] == 0 and f["free_f32"] == 0, (name, f)
        assert f["sass_contracted_fmas"] == 0, (name, f)


def test_ieee_division_and_square_root(facts):
    """No approximate division, square root or reciprocal, and no .ftz, in
    the element kernels' PTX (tl.div_rn, tl.sqrt_rn; the prologue's float64
    libdevice exp2/log2 has rcp.approx.ftz.f64 inside, refined)."""
    for name, (*_, f) in element_variants(facts).items():
        assert f["inexact"] == 0, (name, f)


def test_16_bit_stores_round_to_nearest_even(facts):
    """bf16 is loaded and stored through integer operations (kernels/storage.py):
    no native bf16 convert, at a bounded cost in instructions; fp16 by
    cvt.rn (round to nearest even) and no other rounding mode."""
    for name, (_, dtype, _, f) in element_variants(facts).items():
        assert f["cvt_bf16"] == 0 and f["cvt_other_16"] == 0, (name, f)
        assert (f["cvt_rn_16"] > 0) == (dtype == "fp16"), (name, f)
        if dtype == "bf16":
            twin = facts[name.replace("_bf16_", "_fp16_")]
            extra = f["sass_instructions"] - twin["sass_instructions"]
            assert 0 < extra <= BF16_EXTRA_INSTRUCTIONS, (name, extra)


def test_8bit_state_kernels(facts):
    """8-bit blockwise states (Note [8-bit blocks in a program] in
    kernels/mta.py), compiled for sm_90 (triton_aot.TARGETS_8BIT) for every
    rule and param dtype: fp32 only (no FP64), uncontracted IEEE arithmetic,
    no native bf16 convert, and fp32 params' full blocks with 128-bit loads
    and stores of p and g (the codes are 4 bytes a thread); spills and
    registers: test_no_spills_and_bounded_registers."""
    variants = {n: f for n, f in facts.items() if "_element8_" in n}
    for name in RULES:
        used = max(rules.get(name).STATE_SETS, key=lambda mask: bin(mask).count("1"))
        for dtype in PARAM_BYTES:
            assert f"sm90/{name}_element8_{dtype}_used{used:b}_table0" in variants
    for name, f in variants.items():
        assert f["f64"] == 0 and f["sass_fp64"] == 0, (name, f)
        assert f["fma_f32"] == 0 and f["free_f32"] == 0, (name, f)
        assert f["sass_contracted_fmas"] == 0 and f["inexact"] == 0, (name, f)
        assert f["cvt_bf16"] == 0 and f["cvt_other_16"] == 0, (name, f)
        if "_fp32_" in name:
            assert f["ld_v4"] >= 2 and f["st_v4"] >= 2, (name, f)


def test_v4_count_tells_vectorized_from_not(facts):
    """The counter can fail: the step-count kernel gathers through addresses
    and has no 128-bit access."""
    for target in TARGETS:
        assert facts[f"{target}/count_steps"]["ld_v4"] == 0


def test_no_spills_and_bounded_registers(facts):
    """Every kernel without spills; the element and count kernels within
    MAX_REGISTERS. Not the float64 kernels: the prologue (up to 130 registers
    at 4 warps, RAdam's; 98-128 for NAdam) and the advance of NAdam's and
    ASGD's scalar states (78-128), one program per 1024 tensors, whose
    occupancy does not matter."""
    for name, f in facts.items():
        assert f["local_bytes"] == 0 and f["stack_bytes"] == 0, (name, f)
        if not name.endswith(("_prologue", "_advance")):
            assert f["registers"] <= MAX_REGISTERS, (name, f)


def test_script_compiles_the_launchers_configuration():
    source = Path(__file__).with_name("triton_aot.py").read_text()
    assert "mta.BLOCK_SIZE" in source and "mta.NUM_WARPS" in source
    assert '"enable_fp_fusion": mta.FP_FUSION' in source and mta.FP_FUSION is False
    launcher = Path(mta.__file__).read_text()
    assert launcher.count("enable_fp_fusion=FP_FUSION") == launcher.count("_kernel[(") == 4
    assert "mta.TABLE_BLOCK" in source
    assert mta.BLOCK_SIZE % (mta.NUM_WARPS * 32) == 0


def test_store_policies_compile_clean(store_facts):
    """Every rule's master-weight stores (sm_90, its largest state set): no
    FP64, no contraction, no spills, registers within MAX_STORE_REGISTERS;
    stochastic rounding's Philox unrolled (static_range): high products
    (mul.hi.u32) only there, at least the 19 of one element's 10 rounds (Adam
    bf16: 138 for 4 elements in each of the masked and full paths, the
    rounding step's first product shared)."""
    assert {name.split("/")[1].split("_store")[0] for name in store_facts} == set(RULES)
    for name, f in store_facts.items():
        assert f["f64"] == 0 and f["sass_fp64"] == 0, (name, f)
        assert f["fma_f32"] == 0 and f["sass_contracted_fmas"] == 0, (name, f)
        assert f["local_bytes"] == 0 and f["stack_bytes"] == 0, (name, f)
        assert f["registers"] <= MAX_STORE_REGISTERS, (name, f)
        if "_store3_" in name:
            assert f["mul_hi_u32"] >= 2 * 10 - 1, (name, f)
        else:
            assert f["mul_hi_u32"] == 0, (name, f)
