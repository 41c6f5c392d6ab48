"""Adam/AdamW for Triton: the multi-tensor kernels, then their launcher.

One launch steps every tensor of a param group's bucket (one device, one param
dtype), however many tensors it holds: the kernel reads each tensor's addresses
from an int64 table and each program's (tensor, first element) from a block
table, as torch's and apex's multi_tensor_apply do with kernel arguments. Peers
that launch one kernel per param (optimi, flashoptim) pay a launch per tensor;
flashoptim#1 measured that as 26.7 ms (torch foreach) vs 40-44 ms per step.

Note [full blocks take the vector path]: a program whose block lies wholly
inside its tensor, and whose tensor's addresses (param, grad, states) are all
16-byte aligned, loads and stores without a mask under `tl.multiple_of` hints:
that is what gives 128-bit `ld.global.v4`. Every other block (a tensor's tail,
or any block of a tensor that is a view at an odd offset) takes the masked
path with no hint. The flag is computed on the host per block, so a hint is
never false: hints are no-ops in the interpreter, and a false one would pass
every CPU test and break on a GPU.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from fusedopt.backends import triton_interpreter_on
from fusedopt.kernels import rules
from torch import Tensor

# Columns of the tensor table, one int64 row per tensor.
COL_PARAM = tl.constexpr(0)
COL_GRAD = tl.constexpr(1)
COL_EXP_AVG = tl.constexpr(2)
COL_EXP_AVG_SQ = tl.constexpr(3)
COL_MAX_EXP_AVG_SQ = tl.constexpr(4)  # the exp_avg_sq address again without amsgrad (never read)
COL_NUMEL = tl.constexpr(5)
COL_STEP = tl.constexpr(6)  # address of the float32 step count read in-kernel
TENSOR_COLS = tl.constexpr(7)
# Columns of the block table, one int64 row per program.
COL_CODE = tl.constexpr(0)  # tensor index << 1 | 1 for a full, aligned block
COL_START = tl.constexpr(1)  # the block's first element in its tensor (int64: 2^31+ is real)
BLOCK_COLS = tl.constexpr(2)
# The widest global load and store, in bytes (ld.global.v4.b32).
VECTOR_BYTES = tl.constexpr(16)


@triton.jit
def _f64(hi, lo):
    """A double that the launcher split into two fp32 arguments (Triton passes
    Python floats as fp32): hi + lo carries 48 significant bits."""
    return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)


@triton.jit
def _adam_kernel(
    tensor_table,
    block_table,
    lr_ptr,
    lr_hi,
    lr_lo,
    step,
    beta1_hi,
    beta1_lo,
    beta2_hi,
    beta2_lo,
    wd_hi,
    wd_lo,
    lr_max_hi,
    lr_max_lo,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    l2,
    grad_scale_ptr,
    found_inf_ptr,
    PARAM_DTYPE: tl.constexpr,
    WD_MODE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    LR_IN_MEMORY: tl.constexpr,
    STEP_IN_MEMORY: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One block of one tensor per program. Bytes per element, with s the
    param's size (4 fp32, 2 bf16/fp16): reads p, g (2s) and m, v (8), writes p
    (s) and m, v (8): 3s + 16, 28 fp32 and 22 bf16; amsgrad reads and writes
    v_max (+8); grad_scale writes the unscaled grad back (+s)."""
    pid = tl.program_id(0)
    code = tl.load(block_table + pid * BLOCK_COLS + COL_CODE)
    start = tl.load(block_table + pid * BLOCK_COLS + COL_START)
    tensor = code >> 1
    row = tensor_table + tensor * TENSOR_COLS
    numel = tl.load(row + COL_NUMEL)
    p_ptr = tl.load(row + COL_PARAM).to(tl.pointer_type(PARAM_DTYPE))
    g_ptr = tl.load(row + COL_GRAD).to(tl.pointer_type(PARAM_DTYPE))
    m_ptr = tl.load(row + COL_EXP_AVG).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(row + COL_EXP_AVG_SQ).to(tl.pointer_type(tl.float32))
    vmax_ptr = tl.load(row + COL_MAX_EXP_AVG_SQ).to(tl.pointer_type(tl.float32))

    if LR_IN_MEMORY:
        lr = tl.load(lr_ptr).to(tl.float64)
    else:
        lr = _f64(lr_hi, lr_lo)
    if STEP_IN_MEMORY:
        step = tl.load(tl.load(row + COL_STEP).to(tl.pointer_type(tl.float32)))
    neg_step_size, bias_correction2_sqrt, param_decay = rules.adam_tensor_scalars(
        lr,
        tl.cast(step, tl.float64),
        _f64(beta1_hi, beta1_lo),
        _f64(beta2_hi, beta2_lo),
        _f64(wd_hi, wd_lo),
        _f64(lr_max_hi, lr_max_lo),
        WD_MODE,
    )
    scale = 1.0
    if HAS_GRAD_SCALE:
        scale = tl.load(grad_scale_ptr)
    skip = 0.0
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr)

    offs = start + tl.arange(0, BLOCK)
    if skip == 0.0:
        if (code & 1) != 0:
            # Note [full blocks take the vector path]
            offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
            p_ptr = tl.multiple_of(p_ptr, VECTOR_BYTES)
            g_ptr = tl.multiple_of(g_ptr, VECTOR_BYTES)
            m_ptr = tl.multiple_of(m_ptr, VECTOR_BYTES)
            v_ptr = tl.multiple_of(v_ptr, VECTOR_BYTES)
            vmax_ptr = tl.multiple_of(vmax_ptr, VECTOR_BYTES)
            _adam_block(
                p_ptr + offs,
                g_ptr + offs,
                m_ptr + offs,
                v_ptr + offs,
                vmax_ptr + offs,
                None,
                scale,
                one_minus_beta1,
                beta2,
                one_minus_beta2,
                eps,
                l2,
                neg_step_size,
                bias_correction2_sqrt,
                param_decay,
                PARAM_DTYPE,
                AMSGRAD,
                MAXIMIZE,
                HAS_GRAD_SCALE,
            )
        else:
            _adam_block(
                p_ptr + offs,
                g_ptr + offs,
                m_ptr + offs,
                v_ptr + offs,
                vmax_ptr + offs,
                offs < numel,
                scale,
                one_minus_beta1,
                beta2,
                one_minus_beta2,
                eps,
                l2,
                neg_step_size,
                bias_correction2_sqrt,
                param_decay,
                PARAM_DTYPE,
                AMSGRAD,
                MAXIMIZE,
                HAS_GRAD_SCALE,
            )


@triton.jit
def _adam_block(
    p_ptrs,
    g_ptrs,
    m_ptrs,
    v_ptrs,
    vmax_ptrs,
    mask,
    scale,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    l2,
    neg_step_size,
    bias_correction2_sqrt,
    param_decay,
    PARAM_DTYPE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
):
    """Loads a block into fp32, applies rules.adam_update, stores it back in the
    storage dtypes; `mask` None means a full block (no mask at all)."""
    p = tl.load(p_ptrs, mask=mask).to(tl.float32)
    g = tl.load(g_ptrs, mask=mask).to(tl.float32)
    m = tl.load(m_ptrs, mask=mask)
    v = tl.load(v_ptrs, mask=mask)
    v_max = v
    if AMSGRAD:
        v_max = tl.load(vmax_ptrs, mask=mask)
    if HAS_GRAD_SCALE:
        g = tl.div_rn(g, scale)
        tl.store(g_ptrs, g.to(PARAM_DTYPE), mask=mask)
    p, m, v, v_max = rules.adam_update(
        p,
        g,
        m,
        v,
        v_max,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        eps,
        l2,
        neg_step_size,
        bias_correction2_sqrt,
        param_decay,
        AMSGRAD,
        MAXIMIZE,
    )
    tl.store(p_ptrs, p.to(PARAM_DTYPE), mask=mask)
    tl.store(m_ptrs, m, mask=mask)
    tl.store(v_ptrs, v, mask=mask)
    if AMSGRAD:
        tl.store(vmax_ptrs, v_max, mask=mask)


@triton.jit
def _count_steps_kernel(
    tensor_table, n_tensors, found_inf_ptr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr
):
    """Adds 1 to every tensor's step count on the device, unless GradScaler
    found an inf: the in-kernel-step path's first launch, so that the Adam
    kernel reads counts no other program is writing. Reads and writes 4 bytes
    per tensor."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = n_tensors
    if HAS_FOUND_INF:
        live = tl.where(tl.load(found_inf_ptr) == 0.0, n_tensors, 0)
    mask = index < live
    step_ptrs = tl.load(tensor_table + index * TENSOR_COLS + COL_STEP, mask=mask, other=0)
    step_ptrs = step_ptrs.to(tl.pointer_type(tl.float32))
    tl.store(step_ptrs, tl.load(step_ptrs, mask=mask) + 1.0, mask=mask)


# Elements per program on a GPU, and its warps: 4 elements per thread, one
# 128-bit access per fp32 stream. Measured from the sm_90 cubin
# (tests/triton_aot.py): 40-54 registers on sm_80 and sm_90, no spills; 8 per thread took
# 66-80 registers in fp32 and 160-170 in bf16, 16 per thread spilled.
BLOCK_SIZE = 1024
NUM_WARPS = 8
# The interpreter costs ~1-2 ms per program whatever its size (measured), so
# it gets fewer, larger programs.
INTERPRETER_BLOCK_SIZE = 16384
# Step counts per program of _count_steps_kernel: one 4 B count per element, so
# one program covers the counts of most models' param groups in one pass.
COUNT_BLOCK_SIZE = 1024
# Plans kept per launcher: one per (bucket, tensor set) a model steps; a small
# bound so that a changing set of tensors cannot grow memory without end.
MAX_PLANS = 16
_FP32 = struct.Struct("f")
_TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


def _split(x: float) -> tuple[float, float]:
    """x as fp32 hi + lo (see _f64); exact to about 2^-48 relative."""
    hi = _FP32.unpack(_FP32.pack(x))[0]
    return hi, x - hi


class _Plan:
    """The tables of one tensor set: built once, refreshed when grads move."""

    def __init__(
        self,
        params,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        steps_in_kernel: bool,
        block: int,
    ):
        n = len(params)
        device = params[0].device
        vmaxes = max_exp_avg_sqs if max_exp_avg_sqs else exp_avg_sqs
        self.block = block
        self.numels = torch.tensor([p.numel() for p in params], dtype=torch.int64)
        self.host = torch.empty((n, TENSOR_COLS.value), dtype=torch.int64)
        self.host[:, COL_PARAM.value] = torch.tensor([p.data_ptr() for p in params])
        self.host[:, COL_EXP_AVG.value] = torch.tensor([t.data_ptr() for t in exp_avgs])
        self.host[:, COL_EXP_AVG_SQ.value] = torch.tensor([t.data_ptr() for t in exp_avg_sqs])
        self.host[:, COL_MAX_EXP_AVG_SQ.value] = torch.tensor([t.data_ptr() for t in vmaxes])
        self.host[:, COL_NUMEL.value] = self.numels
        # Host step counts go here when they differ between tensors.
        self.step_values = torch.zeros(n, dtype=torch.float32, device=device)
        if steps_in_kernel:
            self.host[:, COL_STEP.value] = torch.tensor([s.data_ptr() for s in state_steps])
        else:
            self.host[:, COL_STEP.value] = self.step_values.data_ptr() + 4 * torch.arange(
                n, dtype=torch.int64
            )
        self.device = device
        self.grad_ptrs: list[int] | None = None
        self.tensor_table: Tensor | None = None
        self.block_table: Tensor | None = None

    def refresh_grads(self, grad_ptrs: list[int]) -> None:
        """Re-points the grad column and recomputes which blocks are full and
        aligned (a grad's alignment is part of it); a no-op when no grad moved."""
        if grad_ptrs == self.grad_ptrs:
            return
        self.host[:, COL_GRAD.value] = torch.tensor(grad_ptrs, dtype=torch.int64)
        addresses = self.host[:, COL_PARAM.value : COL_NUMEL.value]
        aligned = (addresses % VECTOR_BYTES.value == 0).all(dim=1)
        blocks = (self.numels + self.block - 1) // self.block
        tensor = torch.repeat_interleave(torch.arange(len(blocks)), blocks)
        first_block = torch.cumsum(blocks, 0) - blocks
        start = (torch.arange(len(tensor)) - first_block[tensor]) * self.block
        full = aligned[tensor] & (start + self.block <= self.numels[tensor])
        block_table = torch.stack([tensor * 2 + full.to(torch.int64), start], dim=1)
        self.tensor_table = self.host.to(self.device, copy=True)
        self.block_table = block_table.to(self.device)
        self.grad_ptrs = grad_ptrs


class AdamLauncher:
    """Steps a bucket's tensors with one launch of _adam_kernel (two when the
    step counts are read in-kernel). `launches` counts kernel launches, so
    that tests and benchmarks can check the claim."""

    def __init__(self) -> None:
        self.launches = 0
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()

    def _plan(
        self,
        params,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        steps_in_kernel: bool,
        block: int,
    ) -> _Plan:
        key = (
            params[0].device,
            params[0].dtype,
            steps_in_kernel,
            block,
            *(t.data_ptr() for t in params),
            *(t.numel() for t in params),
            *(t.data_ptr() for t in exp_avgs),
            *(t.data_ptr() for t in exp_avg_sqs),
            *(t.data_ptr() for t in max_exp_avg_sqs),
            *((s.data_ptr() for s in state_steps) if steps_in_kernel else ()),
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan(
                params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, steps_in_kernel, block
            )
            self._plans[key] = plan
            if len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def adam_step(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        exp_avgs: Sequence[Tensor],
        exp_avg_sqs: Sequence[Tensor],
        max_exp_avg_sqs: Sequence[Tensor],
        state_steps: Sequence[Tensor],
        *,
        lr: float | Tensor,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        weight_decay_mode: int,
        lr_max: float,
        amsgrad: bool,
        maximize: bool,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
        steps_in_kernel: bool,
        block: int | None = None,
    ) -> None:
        """Steps checked, dense tensors of one device and param dtype.

        `steps_in_kernel`: the step counts live on the params' device and the
        kernels increment and read them there (no host sync: capturable).
        Otherwise they are CPU tensors: they are incremented here, and a
        found_inf is read on the host to decide whether to (a sync: the
        non-capturable path, like torch's)."""
        if not params:
            return
        if block is None:
            block = INTERPRETER_BLOCK_SIZE if triton_interpreter_on() else BLOCK_SIZE
        plan = self._plan(
            params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, steps_in_kernel, block
        )
        step = 0.0
        host_counts = not steps_in_kernel  # CPU step counts, stored after the launch
        if steps_in_kernel:
            n = len(params)
            plan.refresh_grads([g.data_ptr() for g in grads])
            _count_steps_kernel[(triton.cdiv(n, COUNT_BLOCK_SIZE),)](
                plan.tensor_table,
                n,
                found_inf,
                HAS_FOUND_INF=found_inf is not None,
                BLOCK=COUNT_BLOCK_SIZE,
            )
            self.launches += 1
        else:
            if found_inf is not None and found_inf.item() != 0:
                return
            found_inf = None
            plan.refresh_grads([g.data_ptr() for g in grads])
            # This step's counts; the CPU tensors get them only after the launch,
            # so a launch that fails leaves them as they were.
            counts = torch.stack(state_steps) + 1
            step = counts[0].item()
            steps_in_kernel = not bool((counts == step).all())
            if steps_in_kernel:
                plan.step_values.copy_(counts, non_blocking=True)
            if plan.block_table.shape[0] == 0:
                torch._foreach_add_(state_steps, 1.0)
                return
        if plan.block_table.shape[0] == 0:
            return
        lr_in_memory = isinstance(lr, Tensor)
        lr_hi, lr_lo = (0.0, 0.0) if lr_in_memory else _split(lr)
        hyper = rules.adam_hyper(beta1, beta2, eps, weight_decay, weight_decay_mode)
        _adam_kernel[(plan.block_table.shape[0],)](
            plan.tensor_table,
            plan.block_table,
            lr if lr_in_memory else None,
            lr_hi,
            lr_lo,
            step,
            *_split(beta1),
            *_split(beta2),
            *_split(weight_decay),
            *_split(lr_max),
            hyper["one_minus_beta1"],
            hyper["beta2"],
            hyper["one_minus_beta2"],
            hyper["eps"],
            hyper["l2"],
            grad_scale,
            found_inf,
            PARAM_DTYPE=_TORCH_TO_TRITON[params[0].dtype],
            WD_MODE=int(weight_decay_mode),
            AMSGRAD=amsgrad,
            MAXIMIZE=maximize,
            LR_IN_MEMORY=lr_in_memory,
            STEP_IN_MEMORY=steps_in_kernel,
            HAS_GRAD_SCALE=grad_scale is not None,
            HAS_FOUND_INF=found_inf is not None,
            BLOCK=block,
            num_warps=NUM_WARPS,
        )
        self.launches += 1
        if host_counts:
            torch._foreach_add_(state_steps, 1.0)
