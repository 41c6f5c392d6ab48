"""Static checks on the compiled CUDA kernels (nothing CUDA runs here): every
architecture of the build is in the library, and for every rule of
fusedopt.registry.RULES its nine kernels (fusedopt_<rule>_{fp32,bf16,fp16}
with fp32 states, and the same with the suffix _sbf16 for bf16 states, _s8
for 8-bit blockwise states) use 128-bit global loads and stores for fp32 data
(64-bit for 16-bit params, grads and states, and for 8-bit codes), nothing
spills to local memory, and the register count keeps two 512-thread blocks
resident per SM (one for the 8-bit kernels); the advance kernels too
(fusedopt_step_increment, and fusedopt_<rule>_advance of the rules with
scalar states), and each 16-bit dtype's master-weight kernels (suffixes
_master, _kahan, _sround: STORE_KERNELS).

And what Note [bit-identical backends] (kernels/mta.py) asks of the code
nvcc made, in the SASS of every arch and in the PTX the library embeds: no
multiply-add contraction in the element loops (every FFMA there is one of an
IEEE division, reciprocal or square root), IEEE division and square root,
no FP64 in the element loops (the per-tensor scalars computed from device
counts are computed in double once per thread and chunk, before them), and
16-bit stores that round to nearest even."""

import re
from functools import cache

import pytest
from _cuda_tools import (
    contracted_fmas,
    is_fp64,
    ptx_entries,
    ptx_facts,
    ptx_loops,
    run_cuobjdump,
    sass_called,
    sass_functions,
    sass_loops,
)
from fusedopt._C import cuda_archs, cuda_built
from fusedopt.registry import REDUCTION_RULES, RULES

# test_cuda_build.py fails when a build that should have CUDA kernels lacks them.
pytestmark = pytest.mark.skipif(
    not cuda_built, reason="fusedopt._C was built without CUDA kernels: no SASS to read"
)

# "80-real" -> 80; "120" (no -real) also embeds PTX.
ARCHS = [int(a.split("-")[0]) for a in cuda_archs.split(",") if a]
PTX_ARCHS = [int(a) for a in cuda_archs.split(",") if a and not a.endswith("-real")]
# Param dtype, then "_sbf16" where the states are bf16, "_s8" where they are
# 8-bit blockwise (Note [state dtypes] in csrc/include/fusedopt/core/storage.h).
PARAM_DTYPES = ("fp32", "bf16", "fp16")
DTYPES = (
    PARAM_DTYPES
    + tuple(f"{dtype}_sbf16" for dtype in PARAM_DTYPES)
    + tuple(f"{dtype}_s8" for dtype in PARAM_DTYPES)
)
KERNELS = [f"fusedopt_{rule}_{dtype}" for rule in RULES for dtype in DTYPES]
# A 16-bit param's master-weight kernels (Note [master weights] in
# core/master.h): master weights and Kahan, and stochastic rounding for bf16.
STORE_SUFFIXES = {
    dtype: ("_master", "_kahan", "_sround") if dtype.startswith("bf16") else ("_master", "_kahan")
    for dtype in DTYPES
    if not dtype.startswith("fp32") and not dtype.endswith("_s8")
}
STORE_KERNELS = [
    f"fusedopt_{rule}_{dtype}{suffix}"
    for rule in RULES
    for dtype, suffixes in STORE_SUFFIXES.items()
    for suffix in suffixes
]
# Stack bytes measured and allowed, nowhere else: RMSprop's (three states)
# 16-bit master and Kahan kernels on sm_100 (nvcc 13.0) spill 8-16 B in the
# vector loop at the 64-register cap of kMinBlocksPerSm (sm_80, sm_90, sm_120:
# none). Vector groups of 2 in the policy kernels removed them, at half the
# access width of every policy kernel: not taken untimed (no GPU here).
KNOWN_SPILLS = {
    (100, f"fusedopt_rmsprop_{dtype}{suffix}"): 16
    for dtype in ("bf16", "fp16", "bf16_sbf16", "fp16_sbf16")
    for suffix in ("_master", "_kahan")
}
# The kernels that store no 16-bit value: fp32 params with fp32 or 8-bit states.
FP32_ONLY = ("fp32", "fp32_s8")
# Note [the advance launch] in mta/args.h: one kernel shared by the rules
# without scalar states, one per rule with them.
ADVANCE_KERNELS = ["fusedopt_step_increment"] + [
    f"fusedopt_{rule}_advance" for rule in RULES if RULES[rule].scalars
]
# 64K registers per SM / (2 blocks x 512 threads) = 64: at most this many keeps
# two blocks per SM resident (50% occupancy, enough to saturate HBM with 5-8
# outstanding 16-byte loads per thread).
MAX_REGISTERS = 64
# The 8-bit state kernels: one block per SM (mta::kMinBlocksPerSm8), 128.
MAX_REGISTERS_8 = 128


def vector_accesses(rule: str, dtype: str) -> dict[int, int]:
    """Vector accesses per group of 4 elements, {bits: count}, loads and stores
    alike, for the rule's largest state set (the kernels take every state set
    through one runtime mask, so each state's access is in the code): each fp32
    stream one 16-byte pack (p and g of fp32 params, every state), p and g of
    16-bit params one 8-byte pack, and so every bf16 state ("_sbf16"). Adam
    fp32: p, g, m, v, v_max = 5."""
    states = len(RULES[rule].states)
    param, _, state = dtype.partition("_")
    widths = {128: 0, 64: 0}
    if state == "s8":
        # A lane's 8 elements (Note [8-bit blocks on the GPU] in
        # mta/traversal.h): p and g two 16-byte packs of fp32, one of 16-bit;
        # each state's codes one 8-byte pack.
        widths[128] += 2 * (2 if param == "fp32" else 1)
        widths[64] += states
    else:
        widths[128 if param == "fp32" else 64] += 2
        widths[64 if state == "sbf16" else 128] += states
    return {width: count for width, count in widths.items() if count}


@cache
def _sass_by_function(arch: int) -> dict[str, str]:
    sass = run_cuobjdump("-sass", "-arch", f"sm_{arch}")
    functions = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, _, body = block.partition("\n")
        functions[name.strip()] = body
    return functions


@cache
def _sass_code(arch: int):
    return sass_functions(run_cuobjdump("-sass", "-arch", f"sm_{arch}"))


@cache
def _ptx_entries() -> dict[str, str]:
    return ptx_entries(run_cuobjdump("-ptx"))


def test_every_arch_in_the_library():
    assert ARCHS, "the build names its archs"
    elf = run_cuobjdump("--list-elf")
    for arch in ARCHS:
        assert re.search(rf"\.sm_{arch}\.cubin", elf), f"no SASS for sm_{arch}:\n{elf}"
    ptx = run_cuobjdump("--list-ptx")
    for arch in PTX_ARCHS:
        assert re.search(rf"\.sm_{arch}\.ptx", ptx), f"no PTX for sm_{arch}:\n{ptx}"
    assert 80 in ARCHS and 90 in ARCHS, "Ampere and Hopper SASS are part of the default"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rule", RULES)
def test_kernels_use_vector_global_loads_and_stores(rule, arch):
    functions = _sass_by_function(arch)
    for dtype in DTYPES:
        kernel = f"fusedopt_{rule}_{dtype}"
        assert kernel in functions, f"{kernel} missing from sm_{arch}: {sorted(functions)}"
        body = functions[kernel]
        for width, want in vector_accesses(rule, dtype).items():
            loads = len(re.findall(rf"\bLDG\.E\.{width}\b", body))
            stores = len(re.findall(rf"\bSTG\.E\.{width}\b", body))
            # A generic LD/ST (no G) means the compiler lost the global address
            # space of that stream: named in the message, as the likely cause.
            generic = len(re.findall(rf"\b(?:LD|ST)\.E\.{width}\b", body))
            assert loads >= want and stores >= want, (
                f"{kernel} sm_{arch}: {loads} LDG.E.{width} and {stores} STG.E.{width}, "
                f"want >= {want} of each ({generic} generic LD/ST.E.{width})"
            )


def _resource_usage() -> dict[tuple[str, str], dict[str, int]]:
    """{(arch, function): {"REG": .., "STACK": .., "LOCAL": ..}} from cuobjdump -res-usage."""
    usage, arch = {}, None
    for line in run_cuobjdump("-res-usage").splitlines():
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\w+):", line):
            function = m.group(1)
        elif line.strip().startswith("REG:"):
            usage[(arch, function)] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
    return usage


def test_no_spills_and_bounded_registers():
    usage = _resource_usage()
    failures = []
    for arch in ARCHS:
        for kernel in KERNELS + STORE_KERNELS + ADVANCE_KERNELS:
            res = usage.get((f"sm_{arch}", kernel))
            assert res is not None, f"no resource usage for {kernel} on sm_{arch}"
            if res["STACK"] > KNOWN_SPILLS.get((arch, kernel), 0) or res["LOCAL"] != 0:
                failures.append(f"{kernel} sm_{arch} spills: {res}")
            limit = MAX_REGISTERS_8 if kernel.endswith("_s8") else MAX_REGISTERS
            if res["REG"] > limit:
                failures.append(f"{kernel} sm_{arch}: {res['REG']} registers")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rule", RULES)
def test_no_contraction_and_no_fp64_in_the_element_loops(rule, arch):
    """Every loop of each kernel (the vector groups, the tail): no FFMA but
    those of IEEE division, reciprocal and square root (_cuda_tools.
    contracted_fmas), and no FP64 instruction, in the loop or in a subroutine
    it calls (the slow paths of division and square root). The kernels do
    hold FP64 (scalars_in_kernel in mta/traversal.h, once per thread and
    chunk, and CUDA's pow): outside the loops, which the check tells apart
    (Adam's, the control, has some).

    The FFMA count is not read in the 8-bit kernels ("_s8"): their encoder
    divides a lane's 8 values by their block's divisor, and ptxas computes
    its reciprocal once for the 8 divisions (sm_90: 46 MUFU.RCP for 78 FCHK
    in SGD's block loop), and divides by the constant 0.9f with no MUFU at
    all (blockwise8.h, encode_code8_fast), so contracted_fmas' 3 per FCHK + 2
    per RCP miscounts there (64 "contracted" in SGD's, all of them divisions'
    by their operands). Their PTX is held to no fma.rn.f32 and every fp32
    mul/add/sub .rn (test_ptx_is_uncontracted_ieee), which ptxas may not
    contract."""
    code_of = _sass_code(arch)
    for dtype in DTYPES:
        kernel = f"fusedopt_{rule}_{dtype}"
        code = code_of[kernel]
        loops = [body for body in sass_loops(code) if len(body) > 1]  # not the trap after EXIT
        if dtype.endswith("_s8"):
            # One loop over a chunk's blocks, both paths inside (Note [8-bit
            # blocks on the GPU]); the code-table copy's loop may be unrolled.
            assert loops, f"{kernel} sm_{arch}: want the block loop"
        else:
            assert len(loops) >= 2, f"{kernel} sm_{arch}: want a vector and a tail loop"
        for body in loops:
            where = f"{kernel} sm_{arch} loop at {body[0].address:#x}"
            if not dtype.endswith("_s8"):
                fmas = contracted_fmas(body)
                assert fmas == 0, f"{where}: {fmas} contracted FMAs"
            fp64 = [i.opcode for i in body + sass_called(code, body) if is_fp64(i.opcode)]
            assert not fp64, f"{where}: FP64 {sorted(set(fp64))}"
        if rule == "adam":
            assert any(is_fp64(i.opcode) for i in code), f"{kernel} sm_{arch}: no FP64 at all"


@pytest.mark.parametrize("arch", ARCHS)
def test_16_bit_stores_round_to_nearest_even(arch):
    """The fp32 -> bf16/fp16 stores are F2FP...PACK_AB, round to nearest even
    (a rounding modifier, .RZ/.RM/.RP, would show in the opcode)."""
    code_of = _sass_code(arch)
    for rule in RULES:
        for dtype in (d for d in DTYPES if d not in FP32_ONLY):
            kernel = f"fusedopt_{rule}_{dtype}"
            converts = [i.opcode for i in code_of[kernel] if i.opcode.startswith("F2FP")]
            assert converts, f"{kernel} sm_{arch}: no F2FP"
            assert all(not re.search(r"\.R[ZMP]\b", op) for op in converts), (kernel, converts)


@pytest.mark.skipif(not PTX_ARCHS, reason="the build embeds no PTX")
@pytest.mark.parametrize("rule", RULES)
def test_ptx_is_uncontracted_ieee(rule):
    """The embedded PTX (sm_120's), what nvcc's front end made of the
    kernels: no fma.rn.f32 and every fp32 mul/add/sub with an explicit .rn
    (which ptxas may not contract, whatever its --fmad); no approximate
    division, square root or reciprocal and no .ftz; 16-bit stores by
    cvt.rn only; no .f64 and no call (CUDA's pow) inside a loop."""
    entries = _ptx_entries()
    for dtype in DTYPES:
        kernel = f"fusedopt_{rule}_{dtype}"
        body = entries[kernel]
        facts = ptx_facts(body)
        assert facts["fma_f32"] == facts["free_f32"] == facts["inexact"] == 0, (kernel, facts)
        stores_16 = dtype not in FP32_ONLY
        assert facts["cvt_other_16"] == 0 and (facts["cvt_rn_16"] > 0) == stores_16, (
            kernel,
            facts,
        )
        loops = ptx_loops(body)
        assert loops, f"{kernel}: no loop found"
        assert not any(".f64" in loop or "call" in loop for loop in loops), kernel
        if rule == "adam":
            assert ".f64" in body and "call" in body, f"{kernel}: the control has no pow"


# Philox4x32-10's multipliers as SASS writes them (signed 32-bit immediates).
PHILOX_IMMEDIATES = tuple(f"-{2**32 - m:#x}" for m in (0xD2511F53, 0xCD9E8D57))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rule", RULES)
def test_store_kernels_loops(rule, arch):
    """Each master-weight kernel of the rule: a vector and a tail loop with no
    contracted FFMA and no FP64 (as the plain kernels); its 16-bit store
    by round to nearest even; stochastic rounding's Philox unrolled in each
    loop: at least one element's 19 multiplies by M0 or M1 (2 a round, the
    last round's word 0 needs one), and none in the other kernels."""
    code_of = _sass_code(arch)
    for kernel in (k for k in STORE_KERNELS if k.startswith(f"fusedopt_{rule}_")):
        assert kernel in code_of, f"{kernel} missing from sm_{arch}"
        code = code_of[kernel]
        loops = [body for body in sass_loops(code) if len(body) > 1]
        assert len(loops) >= 2, f"{kernel} sm_{arch}: want a vector and a tail loop"
        for body in loops:
            where = f"{kernel} sm_{arch} loop at {body[0].address:#x}"
            assert contracted_fmas(body) == 0, f"{where}: {contracted_fmas(body)} contracted FMAs"
            fp64 = [i.opcode for i in body + sass_called(code, body) if is_fp64(i.opcode)]
            assert not fp64, f"{where}: FP64 {sorted(set(fp64))}"
            products = [
                i
                for i in body
                if "IMAD" in i.opcode and any(m in i.operands for m in PHILOX_IMMEDIATES)
            ]
            if kernel.endswith("_sround"):
                assert len(products) >= 2 * 10 - 1, f"{where}: {len(products)} Philox products"
            else:
                assert not products, f"{where}: Philox products"
        converts = [i.opcode for i in code if i.opcode.startswith("F2FP")]
        assert all(not re.search(r"\.R[ZMP]\b", op) for op in converts), (kernel, converts)


def test_the_readers_see_what_they_must_refuse():
    """The checks above can fail: the SASS reader counts an FFMA that no
    division accounts for, finds a loop and the FP64 of a subroutine it
    calls; the PTX reader counts contractible and non-IEEE instructions."""
    sass = """
        Function : k
        /*0000*/                   MUFU.RCP R0, R3 ;
        /*0010*/                   FCHK P0, R4, R3 ;
        /*0020*/                   FFMA R41, -R3, R0, 1 ;
        /*0030*/                   FFMA R41, R0, R41, R0 ;
        /*0040*/                   FFMA R0, R4, R41, RZ ;
        /*0050*/                   FFMA R36, -R3, R0, R4 ;
        /*0060*/                   FFMA R0, R41, R36, R0 ;
        /*0070*/              @!P0 CALL.REL.NOINC 0x00b0 ;
        /*0080*/                   FFMA R5, R6, R7, R8 ;
        /*0090*/               @P1 BRA 0x0000 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   DFMA R8, R2, -R12, 1 ;
        /*00c0*/                   RET.REL.NODEC R6 0x0 ;
    """
    (code,) = sass_functions(sass).values()
    (loop,) = sass_loops(code)
    assert contracted_fmas(loop) == 1 and contracted_fmas(loop[:-3]) == 0
    assert [i.opcode for i in sass_called(code, loop)] == ["DFMA", "RET.REL.NODEC"]
    ptx = ".visible .entry k(\n$L__BB0_1:\n\tfma.rn.f32 %f1, %f2, %f3, %f4;\n"
    ptx += "\tmul.f32 %f5, %f1, %f2;\n\tdiv.full.f32 %f6, %f5, %f1;\n\tcvt.rz.bf16.f32 %rs1, %f6;\n"
    ptx += "\tadd.f64 %fd1, %fd1, %fd2;\n\t@%p1 bra $L__BB0_1;\n}\n"
    facts = ptx_facts(ptx_entries(ptx)["k"])
    assert facts == dict(fma_f32=1, free_f32=1, inexact=1, cvt_rn_16=0, cvt_other_16=1)
    assert ".f64" in ptx_loops(ptx_entries(ptx)["k"])[0]


# --- the reduction rules' kernels (csrc/cuda/factored.cu, mta/factored.h) -------
# fusedopt_<rule>_<pass>_<dtype> for the passes over items, one statistics and
# one finish kernel per rule.
FACTORED_RULES = [name for name, rule in REDUCTION_RULES.items() if "cuda" in rule.backends]
FACTORED_ITEM_PASSES = ("reduce_inputs", "reduce_updates", "apply")
FACTORED_KERNELS = [
    f"fusedopt_{rule}_{step}_{dtype}"
    for rule in FACTORED_RULES
    for step in FACTORED_ITEM_PASSES
    for dtype in PARAM_DTYPES
] + [f"fusedopt_{rule}_{step}" for rule in FACTORED_RULES for step in ("statistics", "finish")]
# Registers measured (nvcc 13.0, cuobjdump -res-usage), sm_80/90/100/120, no
# stack or local memory anywhere: reduce_inputs 40-54/40-48/64/46 (fp32 the
# most), reduce_updates 38-46/38-48/40/39, apply 40/40/32/40, statistics
# 48 on all four, finish 32/32/32/36. 64 keeps four 256-thread blocks per SM
# resident (50% occupancy), the element kernels' bound (MAX_REGISTERS).
MAX_FACTORED_REGISTERS = 64
# The double sums of Note [deterministic blocked reductions]: an fp32 value
# widened (F2F.F64.F32) and added (DADD), nothing else in double, in the
# loops of the reduction passes.
SUM_FP64 = {"DADD", "F2F.F64.F32"}


def _uncontracted(body) -> bool:
    """No FFMA beyond those of IEEE division, reciprocal and square root
    (contracted_fmas), less the exact probe FFMA R, RZ, R, R of the
    statistics kernel's double division (0 * x + y)."""
    probes = sum(1 for i in body if i.opcode == "FFMA" and ", RZ," in f", {i.operands}")
    return contracted_fmas(body) - probes <= 0


@pytest.mark.skipif(not FACTORED_RULES, reason="no reduction rule has CUDA kernels")
def test_factored_kernels_do_not_spill_and_bound_their_registers():
    usage = _resource_usage()
    failures = []
    for arch in ARCHS:
        for kernel in FACTORED_KERNELS:
            res = usage.get((f"sm_{arch}", kernel))
            assert res is not None, f"no resource usage for {kernel} on sm_{arch}"
            if res["STACK"] != 0 or res["LOCAL"] != 0:
                failures.append(f"{kernel} sm_{arch} spills: {res}")
            if res["REG"] > MAX_FACTORED_REGISTERS:
                failures.append(f"{kernel} sm_{arch}: {res['REG']} registers")
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(not FACTORED_RULES, reason="no reduction rule has CUDA kernels")
@pytest.mark.parametrize("arch", ARCHS)
def test_factored_kernels_are_uncontracted_with_fp64_only_in_the_sums(arch):
    """Every loop of every factored kernel: no contracted FMA (the fp32 math
    is the cpu backend's, bit for bit); the element pass without any FP64;
    the reduction passes' loops with FP64 only in the double sums, which they
    must have (the order that makes the bits the CPU's)."""
    code_of = _sass_code(arch)
    for kernel in FACTORED_KERNELS:
        code = code_of[kernel]
        loops = [body for body in sass_loops(code) if len(body) > 1]
        assert loops, f"{kernel} sm_{arch}: no loop found"
        fp64 = set()
        for body in loops:
            where = f"{kernel} sm_{arch} loop at {body[0].address:#x}"
            assert _uncontracted(body), f"{where}: {contracted_fmas(body)} contracted FMAs"
            fp64 |= {i.opcode for i in body + sass_called(code, body) if is_fp64(i.opcode)}
        if "_apply_" in kernel:
            assert not fp64, f"{kernel} sm_{arch}: FP64 {sorted(fp64)} in the element pass"
        elif "_reduce_" in kernel:
            assert "DADD" in fp64 and fp64 <= SUM_FP64, f"{kernel} sm_{arch}: {sorted(fp64)}"


@pytest.mark.skipif(not FACTORED_RULES, reason="no reduction rule has CUDA kernels")
@pytest.mark.skipif(not PTX_ARCHS, reason="the build embeds no PTX")
def test_factored_ptx_is_uncontracted_ieee():
    """The embedded PTX of every factored kernel: as test_ptx_is_uncontracted_ieee
    (no fma.rn.f32, every fp32 mul/add/sub with .rn, nothing approximate or
    flushed, 16-bit stores by cvt.rn), and no .f64 in the element pass."""
    entries = _ptx_entries()
    for kernel in FACTORED_KERNELS:
        facts = ptx_facts(entries[kernel])
        assert facts["fma_f32"] == facts["free_f32"] == facts["inexact"] == 0, (kernel, facts)
        assert facts["cvt_other_16"] == 0, (kernel, facts)
        stores_16 = "_apply_" in kernel and not kernel.endswith("_fp32")
        assert (facts["cvt_rn_16"] > 0) == stores_16, (kernel, facts)
        if "_apply_" in kernel:
            assert ".f64" not in entries[kernel], kernel
