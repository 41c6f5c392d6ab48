"""Compiles fusedopt's Triton kernels ahead of time for named GPU targets,
without a GPU, and prints what the machine code says as JSON.

Run as a script, in a process without TRITON_INTERPRET (which replaces
@triton.jit functions by the interpreter's): tests/test_triton_static.py does
that. Registers and spills come from the cubin, read by the cuobjdump that
ships in triton's wheel. Every rule of fusedopt.registry is compiled, for each
param dtype and each of its state sets (STATE_SETS), with a GradScaler
(grad_scale and found_inf in memory, the heaviest variant); the per-tensor
table variant (Note [per-tensor scalars] in kernels/mta.py) only changes
scalar loads, so it is compiled for fp32 params alone. 8-bit blockwise
states ("element8") are compiled for each param dtype with the rule's largest
state set. The master-weight stores (STORE_POLICY: 1 master weights, 2
Kahan, 3 stochastic rounding) are compiled apart, with the argument --stores
(their own run, so that each stays within its test's time limit): for sm_90,
each rule's largest state set (the most registers) in bf16 and fp16
(stochastic rounding bf16 only), named
<target>/<rule>_store<policy>_<dtype>_used<mask>.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from _cuda_tools import (
    contracted_fmas,
    cuobjdump,
    is_fp64,
    ptx_facts,
    sass_functions,
    sass_main_body,
)
from fusedopt.kernels import mta, rules
from fusedopt.registry import RULES
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Every arch of the build's list (CMakeLists.txt): Ampere, Hopper, datacenter
# and consumer Blackwell. triton 3.8 compiles all four.
TARGETS = {
    "sm80": GPUTarget("cuda", 80, 32),
    "sm90": GPUTarget("cuda", 90, 32),
    "sm100": GPUTarget("cuda", 100, 32),
    "sm120": GPUTarget("cuda", 120, 32),
}
# The 8-bit state kernels' targets: Hopper alone, as each of the 33 variants
# takes ~12 s to compile on the CI machines' 2 shared cores.
TARGETS_8BIT = ("sm90",)
PARAM_DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}
# The master-weight policies (StorePolicy codes) and the param dtypes each takes.
STORE_VARIANTS = {1: ("bf16", "fp16"), 2: ("bf16", "fp16"), 3: ("bf16",)}
# torch's caching allocator hands out 512-byte aligned blocks: the tables are
# at least 16-byte aligned, as Triton assumes of every tensor argument.
ALIGNED = [["tt.divisibility", 16]]


def _fp32_tuple(cls) -> tuple:
    return cls(*["fp32"] * len(cls._fields))


def _source(fn, signature: dict, constexprs: dict, aligned_args: tuple[str, ...]) -> ASTSource:
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    return ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
        attrs={(fn.arg_names.index(k),): ALIGNED for k in aligned_args},
    )


def signed_states(name: str) -> int:
    """The SIGNED mask of a rule's 8-bit states: every state but its
    never-negative ones (fusedopt.registry.Rule.nonnegative)."""
    rule = rules.get(name)
    return sum(
        1 << k for k, state in enumerate(rule.STATE_NAMES) if state not in RULES[name].nonnegative
    )


def element_source(
    rule, dtype: str, used: int, in_table: bool, signed: int | None = None, store: int = 0
) -> ASTSource:
    """The element kernel as the launcher runs it with a GradScaler; with
    `signed` (the SIGNED mask), with 8-bit blockwise states; its params
    stored by policy `store` (a StorePolicy code)."""
    blockwise = signed is not None
    signature = {
        "tensor_table": "*i64",
        "block_table": "*i64",
        "per_tensor_table": "*fp32",
        "launch": _fp32_tuple(rule.Launch),
        "grad_scale_ptr": "*fp32",
        "found_inf_ptr": "*fp32",
        "store_table": "*i64",
    }
    constexprs = {
        "UPDATE": rule.update,
        "PER_TENSOR": rule.PerTensor,
        "USED": used,
        "PARAM_DTYPE": PARAM_DTYPES[dtype],
        "STATE_DTYPE": tl.uint8 if blockwise else tl.float32,
        "SIGNED": signed if blockwise else 0,
        "PER_TENSOR_IN_TABLE": in_table,
        "HAS_GRAD_SCALE": True,
        "HAS_FOUND_INF": True,
        "STORE_POLICY": store,
        "BLOCK": mta.BLOCK_SIZE,
    }
    if in_table:
        constexprs["per_tensor"] = None
    else:
        signature["per_tensor"] = _fp32_tuple(rule.PerTensor)
    if blockwise:
        signature["codec"] = "*fp32"
    else:
        constexprs["codec"] = None
    aligned = ("tensor_table", "block_table", "per_tensor_table", "store_table") + (
        ("codec",) if blockwise else ()
    )
    return _source(mta._element_kernel, signature, constexprs, aligned)


def prologue_source(rule) -> ASTSource:
    """The capturable prologue: lr and counts in memory."""
    signature = {
        "tensor_table": "*i64",
        "per_tensor_table": "*fp32",
        "n_tensors": "i32",
        "lr_ptr": "*fp32",
        "lr_hi": "fp32",
        "lr_lo": "fp32",
        "step": "fp32",
        "config_hi": _fp32_tuple(rule.Config),
        "config_lo": _fp32_tuple(rule.Config),
    }
    constexprs = {
        "PER_TENSOR_DEVICE": rule.per_tensor_device,
        "CONFIG": rule.Config,
        "LR_IN_MEMORY": True,
        "COUNTS_IN_MEMORY": rule.HAS_STEP,
        "N_SCALARS": len(getattr(rule, "SCALAR_NAMES", ())),
        "BLOCK": mta.TABLE_BLOCK,
    }
    aligned = ("tensor_table", "per_tensor_table")
    return _source(mta._per_tensor_kernel, signature, constexprs, aligned)


def count_source(rule=None) -> ASTSource:
    """The count kernel: the plain increment that every rule without scalar
    states shares (rule None), or a rule's advance of its scalar states, with
    lr in memory (capturable)."""
    signature = {"tensor_table": "*i64", "n_tensors": "i32", "found_inf_ptr": "*fp32"}
    constexprs = {"HAS_FOUND_INF": True, "BLOCK": mta.TABLE_BLOCK}
    if rule is None:
        constexprs.update(
            lr_ptr=None,
            lr_hi=0.0,
            lr_lo=0.0,
            config_hi=None,
            config_lo=None,
            PER_TENSOR_DEVICE=None,
            CONFIG=None,
            LR_IN_MEMORY=False,
            N_SCALARS=0,
        )
    else:
        signature.update(
            lr_ptr="*fp32",
            lr_hi="fp32",
            lr_lo="fp32",
            config_hi=_fp32_tuple(rule.Config),
            config_lo=_fp32_tuple(rule.Config),
        )
        constexprs.update(
            PER_TENSOR_DEVICE=rule.per_tensor_device,
            CONFIG=rule.Config,
            LR_IN_MEMORY=True,
            N_SCALARS=len(rule.SCALAR_NAMES),
        )
    return _source(mta._advance_counts_kernel, signature, constexprs, ("tensor_table",))


def cubin_facts(cubin: bytes) -> dict[str, int]:
    """From the cubin of one kernel: REG and spill bytes (cuobjdump -res-usage),
    and from its SASS the instruction count, FP64 instructions and FFMAs that
    are not IEEE division's, reciprocal's or square root's
    (_cuda_tools.contracted_fmas) in the kernel less its subroutines (the
    element kernel has no loop: one block per program)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run(
            [cuobjdump(), "-res-usage", file.name], check=True, capture_output=True, text=True
        ).stdout
        sass = subprocess.run(
            [cuobjdump(), "-sass", file.name], check=True, capture_output=True, text=True
        ).stdout
    usage = {"registers": int(re.search(r"REG:(\d+)", text).group(1))}
    spills = re.search(r"STACK:(\d+).*?LOCAL:(\d+)", text)
    usage["stack_bytes"], usage["local_bytes"] = int(spills.group(1)), int(spills.group(2))
    (code,) = sass_functions(sass).values()
    usage["sass_instructions"] = len(code)
    usage["sass_fp64"] = sum(is_fp64(i.opcode) for i in code)
    usage["sass_contracted_fmas"] = contracted_fmas(sass_main_body(code))
    return usage


def facts(source: ASTSource, target: GPUTarget, num_warps: int) -> dict:
    options = {"num_warps": num_warps, "enable_fp_fusion": mta.FP_FUSION}
    kernel = triton.compile(source, target=target, options=options)
    ptx = kernel.asm["ptx"]
    return {
        "ld_v4": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
        "st_v4": len(re.findall(r"st\.global(?:\.\w+)*\.v4", ptx)),
        "ld": len(re.findall(r"ld\.global", ptx)),
        "st": len(re.findall(r"st\.global", ptx)),
        # Anything on doubles: add.f64, cvt.rn.f32.f64, a .reg .f64 declaration.
        "f64": ptx.count(".f64"),
        # Philox's high products (stochastic rounding: kernels/storage.py).
        "mul_hi_u32": len(re.findall(r"mul\.hi\.u32", ptx)),
        # Native bf16 conversions (cvt.rn.bf16x2.f32, cvt.f32.bf16, ...).
        "cvt_bf16": len(re.findall(r"\bcvt\.[\w.]*bf16", ptx)),
        **ptx_facts(ptx),
        **cubin_facts(kernel.asm["cubin"]),
    }


def stores() -> dict:
    """The master-weight store variants (--stores)."""
    out = {}
    for name in RULES:
        rule = rules.get(name)
        used = max(rule.STATE_SETS, key=lambda mask: bin(mask).count("1"))
        for store, dtypes in STORE_VARIANTS.items():
            for dtype in dtypes:
                source = element_source(rule, dtype, used, False, store=store)
                out[f"sm90/{name}_store{store}_{dtype}_used{used:b}"] = facts(
                    source, TARGETS["sm90"], mta.NUM_WARPS
                )
    return out


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
    if sys.argv[1:] == ["--stores"]:
        json.dump(stores(), sys.stdout, indent=1)
        return
    out = {}
    for target_name, target in TARGETS.items():
        for name in RULES:
            rule = rules.get(name)
            for used in rule.STATE_SETS:
                for dtype in PARAM_DTYPES:
                    for in_table in (False, True) if dtype == "fp32" else (False,):
                        variant = f"{name}_element_{dtype}_used{used:b}_table{int(in_table)}"
                        source = element_source(rule, dtype, used, in_table)
                        out[f"{target_name}/{variant}"] = facts(source, target, mta.NUM_WARPS)
            # 8-bit blockwise states (Note [8-bit blocks in a program]): every
            # param dtype with the rule's largest state set, for TARGETS_8BIT.
            used = max(rule.STATE_SETS, key=lambda mask: bin(mask).count("1"))
            for dtype in PARAM_DTYPES if target_name in TARGETS_8BIT else ():
                source = element_source(rule, dtype, used, False, signed_states(name))
                variant = f"{name}_element8_{dtype}_used{used:b}_table0"
                out[f"{target_name}/{variant}"] = facts(source, target, mta.NUM_WARPS)
            out[f"{target_name}/{name}_prologue"] = facts(prologue_source(rule), target, 4)
            # Rules with scalar states advance them in a count kernel of their
            # own (Note [scalar states] in csrc/include/fusedopt/core/rule.h).
            if RULES[name].scalars:
                out[f"{target_name}/{name}_advance"] = facts(count_source(rule), target, 4)
        out[f"{target_name}/count_steps"] = facts(count_source(), target, 4)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
