"""Static checks on the compiled CUDA kernels (nothing CUDA runs here): every
architecture of the build is in the library, the Adam kernels use 128-bit
loads and stores for fp32 data (64-bit for 16-bit params and grads), nothing
spills to local memory, and the register count keeps two 512-thread blocks
resident per SM."""

import re

import pytest
from _cuda_tools import run_cuobjdump
from fusedopt._C import cuda_archs, cuda_built

# test_cuda_build.py fails when a build that should have CUDA kernels lacks them.
pytestmark = pytest.mark.skipif(
    not cuda_built, reason="fusedopt._C was built without CUDA kernels: no SASS to read"
)

# "80-real" -> 80; "120" (no -real) also embeds PTX.
ARCHS = [int(a.split("-")[0]) for a in cuda_archs.split(",") if a]
PTX_ARCHS = [int(a) for a in cuda_archs.split(",") if a and not a.endswith("-real")]
ADAM_KERNELS = ["fusedopt_adam_fp32", "fusedopt_adam_bf16", "fusedopt_adam_fp16"]
# Vector accesses per group of 4 elements, (width, count): each fp32 stream (p
# and g of fp32 params, m, v, v_max always) one 16-byte pack; p and g of
# 16-bit params one 8-byte pack. Loads and stores alike (g is written back
# when unscaling).
VECTOR_ACCESSES = {
    "fusedopt_adam_fp32": {128: 5},
    "fusedopt_adam_bf16": {128: 3, 64: 2},
    "fusedopt_adam_fp16": {128: 3, 64: 2},
}
# 64K registers per SM / (2 blocks x 512 threads) = 64: at most this many keeps
# two blocks per SM resident (50% occupancy, enough to saturate HBM with 5-8
# outstanding 16-byte loads per thread).
MAX_REGISTERS = 64


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
def test_adam_kernels_use_vector_loads_and_stores(arch):
    functions = _sass_by_function(arch)
    for kernel in ADAM_KERNELS:
        assert kernel in functions, f"{kernel} missing from sm_{arch}: {sorted(functions)}"
        body = functions[kernel]
        for width, want in VECTOR_ACCESSES[kernel].items():
            loads = len(re.findall(rf"\bLDG\.E\.{width}\b", body))
            stores = len(re.findall(rf"\bSTG\.E\.{width}\b", body))
            assert loads >= want and stores >= want, (
                f"{kernel} sm_{arch}: {loads} LDG.E.{width} and {stores} STG.E.{width}, "
                f"want >= {want} of each"
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
    for arch in ARCHS:
        for kernel in ADAM_KERNELS + ["fusedopt_step_increment"]:
            res = usage.get((f"sm_{arch}", kernel))
            assert res is not None, f"no resource usage for {kernel} on sm_{arch}"
            assert res["STACK"] == 0 and res["LOCAL"] == 0, f"{kernel} sm_{arch} spills: {res}"
            assert res["REG"] <= MAX_REGISTERS, f"{kernel} sm_{arch}: {res['REG']} registers"
