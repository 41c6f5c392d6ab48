"""Compiles fusedopt's Triton kernels ahead of time for named GPU targets,
without a GPU, and prints what the machine code says as JSON.

Run as a script, in a process without TRITON_INTERPRET (which replaces
@triton.jit functions by the interpreter's): tests/test_triton_static.py does
that. Registers and spills come from the cubin, read by the cuobjdump that
ships in triton's wheel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from fusedopt.kernels import adam
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGETS = {"sm80": GPUTarget("cuda", 80, 32), "sm90": GPUTarget("cuda", 90, 32)}
# torch's caching allocator hands out 512-byte aligned blocks: the tables are
# at least 16-byte aligned, as Triton assumes of every tensor argument.
TABLE_ATTRS = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
PARAM_DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}


def adam_source(dtype: str, amsgrad: bool, steps_in_memory: bool) -> ASTSource:
    """The variant of _adam_kernel that the launcher uses for a float lr and a
    GradScaler (grad_scale and found_inf in memory)."""
    fn = adam._adam_kernel
    signature = {name: "fp32" for name in fn.arg_names}
    signature.update(
        tensor_table="*i64",
        block_table="*i64",
        lr_ptr="constexpr",
        grad_scale_ptr="*fp32",
        found_inf_ptr="*fp32",
    )
    constexprs = {
        "lr_ptr": None,
        "PARAM_DTYPE": PARAM_DTYPES[dtype],
        "WD_MODE": 1,
        "AMSGRAD": amsgrad,
        "MAXIMIZE": False,
        "LR_IN_MEMORY": False,
        "STEP_IN_MEMORY": steps_in_memory,
        "HAS_GRAD_SCALE": True,
        "HAS_FOUND_INF": True,
        "BLOCK": adam.BLOCK_SIZE,
    }
    for name in constexprs:
        signature[name] = "constexpr"
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=TABLE_ATTRS)


def count_steps_source() -> ASTSource:
    fn = adam._count_steps_kernel
    signature = {
        "tensor_table": "*i64",
        "n_tensors": "i32",
        "found_inf_ptr": "*fp32",
        "HAS_FOUND_INF": "constexpr",
        "BLOCK": "constexpr",
    }
    constexprs = {"HAS_FOUND_INF": True, "BLOCK": adam.COUNT_BLOCK_SIZE}
    return ASTSource(
        fn=fn, signature=signature, constexprs=constexprs, attrs={(0,): [["tt.divisibility", 16]]}
    )


def cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG and spill bytes of the one kernel in `cubin`, from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run(
            [cuobjdump(), "-res-usage", file.name], check=True, capture_output=True, text=True
        ).stdout
    usage = {"registers": int(re.search(r"REG:(\d+)", text).group(1))}
    spills = re.search(r"STACK:(\d+).*?LOCAL:(\d+)", text)
    usage["stack_bytes"], usage["local_bytes"] = int(spills.group(1)), int(spills.group(2))
    return usage


def facts(source: ASTSource, target: GPUTarget, num_warps: int) -> dict:
    kernel = triton.compile(source, target=target, options={"num_warps": num_warps})
    ptx = kernel.asm["ptx"]
    return {
        "ld_v4": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
        "st_v4": len(re.findall(r"st\.global(?:\.\w+)*\.v4", ptx)),
        "ld": len(re.findall(r"ld\.global", ptx)),
        "st": len(re.findall(r"st\.global", ptx)),
        **resource_usage(kernel.asm["cubin"]),
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
    out = {}
    for target_name, target in TARGETS.items():
        for dtype in PARAM_DTYPES:
            for amsgrad in (False, True):
                for steps_in_memory in (False, True):
                    name = f"adam_{dtype}_amsgrad{int(amsgrad)}_stepmem{int(steps_in_memory)}"
                    source = adam_source(dtype, amsgrad, steps_in_memory)
                    out[f"{target_name}/{name}"] = facts(source, target, adam.NUM_WARPS)
        out[f"{target_name}/count_steps"] = facts(count_steps_source(), target, 4)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
