"""Static checks on the compiled CUDA kernels (nothing CUDA runs here): every
architecture of the build is in the library, and for every rule of
fusedopt.registry.RULES its three kernels (fusedopt_<rule>_{fp32,bf16,fp16})
use 128-bit global loads and stores for fp32 data (64-bit for 16-bit params
and grads), nothing spills to local memory, and the register count keeps two
512-thread blocks resident per SM; the advance kernels too
(fusedopt_step_increment, and fusedopt_<rule>_advance of the rules with
scalar states)."""

import re
from functools import cache

import pytest
from _cuda_tools import run_cuobjdump
from fusedopt._C import cuda_archs, cuda_built
from fusedopt.registry import RULES

# test_cuda_build.py fails when a build that should have CUDA kernels lacks them.
pytestmark = pytest.mark.skipif(
    not cuda_built, reason="fusedopt._C was built without CUDA kernels: no SASS to read"
)

# "80-real" -> 80; "120" (no -real) also embeds PTX.
ARCHS = [int(a.split("-")[0]) for a in cuda_archs.split(",") if a]
PTX_ARCHS = [int(a) for a in cuda_archs.split(",") if a and not a.endswith("-real")]
DTYPES = ("fp32", "bf16", "fp16")
KERNELS = [f"fusedopt_{rule}_{dtype}" for rule in RULES for dtype in DTYPES]
# Note [the advance launch] in mta/args.h: one kernel shared by the rules
# without scalar states, one per rule with them.
ADVANCE_KERNELS = ["fusedopt_step_increment"] + [
    f"fusedopt_{rule}_advance" for rule in RULES if RULES[rule].scalars
]
# 64K registers per SM / (2 blocks x 512 threads) = 64: at most this many keeps
# two blocks per SM resident (50% occupancy, enough to saturate HBM with 5-8
# outstanding 16-byte loads per thread).
MAX_REGISTERS = 64


def vector_accesses(rule: str, dtype: str) -> dict[int, int]:
    """Vector accesses per group of 4 elements, {bits: count}, loads and stores
    alike, for the rule's largest state set (the kernels take every state set
    through one runtime mask, so each state's access is in the code): each fp32
    stream one 16-byte pack (p and g of fp32 params, every state), p and g of
    16-bit params one 8-byte pack. Adam fp32: p, g, m, v, v_max = 5."""
    states = len(RULES[rule].states)
    if dtype == "fp32":
        return {128: 2 + states}
    return {128: states, 64: 2}


@cache
def _sass_by_function(arch: int) -> dict[str, str]:
    sass = run_cuobjdump("-sass", "-arch", f"sm_{arch}")
    functions = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, _, body = block.partition("\n")
        functions[name.strip()] = body
    return functions


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
        for kernel in KERNELS + ADVANCE_KERNELS:
            res = usage.get((f"sm_{arch}", kernel))
            assert res is not None, f"no resource usage for {kernel} on sm_{arch}"
            if res["STACK"] != 0 or res["LOCAL"] != 0:
                failures.append(f"{kernel} sm_{arch} spills: {res}")
            if res["REG"] > MAX_REGISTERS:
                failures.append(f"{kernel} sm_{arch}: {res['REG']} registers")
    assert not failures, "\n".join(failures)
