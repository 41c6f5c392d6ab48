"""The one multi-tensor kernel frame of every rule, then its launcher.

One launch steps every tensor of a bucket (one device, one param dtype),
however many tensors it holds: the element kernel reads each tensor's
addresses from an int64 tensor table and each program's (tensor, first
element) from a block table, as torch's and apex's multi_tensor_apply do with
kernel arguments. Peers that launch one kernel per param (optimi, flashoptim)
pay a launch per tensor; flashoptim#1 measured that as 26.7 ms (torch
foreach) vs 40-44 ms per step. The frame loads, unscales, stores and skips;
the rule (kernels/rules/<name>.py) enters as its @triton.jit `update`, a
constexpr argument that Triton specialises on like any constexpr (checked in
triton 3.8, compiled ahead of time and under the interpreter).

Note [full blocks take the vector path]: a program whose block lies wholly
inside its tensor, and whose tensor's addresses (param, grad, states) are all
16-byte aligned, loads and stores without a mask under `tl.multiple_of` hints:
that is what gives 128-bit `ld.global.v4`. Every other block (a tensor's tail,
or any block of a tensor that is a view at an odd offset) takes the masked
path with no hint. The flag is computed on the host per block, so a hint is
never false: hints are no-ops in the interpreter, and a false one would pass
every CPU test and break on a GPU.

Note [8-bit blocks in a program]: with 8-bit blockwise states (csrc/include/
fusedopt/core/blockwise8.h) a program's block is a whole number of BLOCK8 =
256-element state blocks (BLOCK and INTERPRETER_BLOCK_SIZE are multiples of
it, and so is every program's start), so a state block never straddles two
programs. The program decodes each state (map[code] * its block's absmax,
the tables in a small fp32 tensor: storage.codec_table), steps in fp32, then
takes each block's new absmax with one tl.max over the block viewed as
[BLOCK / 256, 256] (the max of magnitude bits, NaN-propagating as the CPU's),
encodes with the binary search of storage.encode8 and stores codes and
absmax. Elements past a tensor's end count as 0 in the max. Codes move as
their bits (uint8 whatever the map); the map of state k is the signed one
where bit k of SIGNED is set (int8 codes). Bytes per element: p and g as
with fp32 states, 1 read + 1 written per state, + 8 per state and block.

Note [per-tensor scalars]: a rule's PerTensor (bias corrections, -lr, ...) is
computed once per tensor and step, never per element: the element kernel has
no FP64 instruction (tests/test_triton_static.py).
  - lr a float, counts on the CPU or none: on the host, in double. Equal
    counts (the usual case) give one PerTensor, passed as fp32 arguments;
    counts that differ (after a partial load_state_dict) give a float64
    tensor per field, rounded to an fp32 table of one row per tensor.
  - lr a device tensor, or counts on the device (the GPU backends' layout,
    Note [counts on the device] in fusedopt/optim/base.py): the prologue
    kernel fills that table on the device in float64, one program per
    TABLE_BLOCK tensors, reading lr and counts in memory: no host sync. A rule
    with scalar states (Note [scalar states] in csrc/include/fusedopt/core/
    rule.h) takes this path whenever its counts are on the device: the
    prologue reads the values before this step through the COL_SCALAR_STATE
    columns and drops the values after it, which the count kernel stores.
  - A rule with scalar states and its counts on the CPU: the host computes its
    table and the values after this step (_scalar_state_table), and stores
    them after the launch. The new values need lr, so a CUDA-tensor lr is
    refused there (reading it would sync).
Triton passes Python floats as fp32, so the prologue gets the rule's Config as
two fp32 tuples, hi and lo, whose sum carries 48 significant bits: beta2
rounded to fp32 instead would put ~2e-5 relative error into 1 - beta2^t at
t = 1000.

Note [bit-identical backends]: for the same inputs the CPU backend, the CUDA
kernels and these kernels compute the same fp32 bits, and so the same
bf16/fp16 params. By construction:
  - no multiply-add contraction anywhere: the CPU loops build with
    -ffp-contract=off (the baseline x86-64 build has no FMA to contract to),
    the CUDA kernels with --fmad=false (CMakeLists.txt), these with fp fusion
    off at every launch (FP_FUSION: LLVM contracts nothing and ptxas gets
    --fmad=false); the host's per-tensor scalars are Python floats or C++
    built for baseline x86-64. A product and a sum cost two instructions
    instead of one FMA, in loops bound by memory: the CUDA kernels' SASS
    moved by -14% to +9% (the three-state fp32 kernel on sm_90: 1440 -> 1464), their registers by
    -2 to +2; these kernels' SASS by -1% to +9%, registers by -6 to +8 (61 at
    most); no spills, once one rule's two square roots were ordered to avoid
    an sm_120 stack frame (in one rule's mirror; compiled, not timed);
  - IEEE division and square root everywhere (tl.div_rn, tl.sqrt_rn; nvcc's
    -prec-div, -prec-sqrt, no ftz), the same operations in the same order as
    the C++ header (each rule mirrors it);
  - stores round to nearest even, bf16 by integer operations here
    (kernels/storage.py: the interpreter's cast truncates), so what the
    interpreter runs in CI is what a GPU runs.
Checked: tests/test_bit_identity.py steps every optimizer and rule on the CPU
backend, here under the interpreter, and through the CUDA kernel body
emulated on the CPU, and compares bits; tests/test_cuda_sass.py and
tests/test_triton_static.py read the PTX and SASS for every arch (no FMA but
IEEE division's and square root's, no FP64 in the element loops, 16-bit
stores by round to nearest even). A NaN is stored as some NaN: the CUDA
kernels' bf16 store writes 0x7FFF, the CPU's and this one 0x7FC0.
Not identical: per-tensor scalars computed on the device (device counts, which
the GPU backends keep for every rule with counts, or a device lr). They are
float64 there too, but with another pow than the host's (libm's, correctly
rounded in practice): exp2(t * log2(beta)) with the Config carried in fp32
halves (48 bits) here, CUDA's double pow (within 2 ulp) in the CUDA kernels'
scalars_in_kernel. Rounded to fp32 they can land on the other neighbour of the
host's value, one ulp away. Measured (the prologue under the interpreter
against the host, every count from 1 to 10^5 of every rule with device
scalars, each eps mode, four betas pairs, at lr 1e-3, 2^-10 and 3e-4: 6.3 *
10^6 rows): one field of one row differs, by one ulp (a rectification term at
beta2 = 0.9999, t = 18, at each lr); a pow off by 1 or 2 ulps (as CUDA's may
be) changed none of the bias corrections in fp32 over those counts and six
betas pairs (2.4 * 10^6 rows). A scalar one ulp off moves each element's
update by one ulp of the update, not of p. tests/test_bit_identity.py holds
the prologue to one ulp, in at most 10 rows of its sweep. Close to identical,
not by construction: the host scalars of counts that differ per tensor, and
always those of rules with scalar states (Note [scalar states]), are float64
tensors here, and torch.pow differs from libm's pow in ~1% of doubles; rounded
to fp32, none differed over counts 1 to 10^5 (2 * 10^6 rows of every rule, 7 *
10^5 of the rules with scalar states).

Note [step counts]: fusedopt/registry.py's Note [step-count protocol]. The
scalars come from count + 1; counts advance after the element launch: CPU
counts by torch._foreach_add_ once the launches returned, device counts by
_advance_counts_kernel, the last launch, which a nonzero found_inf makes a
no-op. Zero-size tensors' counts advance too. For a rule with scalar states
the same kernel first stores the values after this step, computed by the
rule's per_tensor_device from the count, lr and the values before it exactly
as the prologue computed them; for every other rule it is the plain count
increment, one compiled kernel shared by all of them (its rule arguments are
None).

Note [plan validity]: a plan's tables are a function of the dereferenced
tensors' addresses and sizes, nothing else (the full-block flags come from
alignment and numel). Every step reads all of them again: the grads' addresses
(grads may be new tensors each step), and the addresses of params, states and
device counts plus the params' numels, compared with the plan's. A plan is
reused only when all are equal, and then its tables are exactly what a rebuild
would give, whatever happened in between (a param's `.data` swapped, a state
replaced in place in the same list, a freed list's id reused). Plans are found
by the params list's identity (the optimizer keeps one list per bucket) and
hold no tensor of the caller's, so a stale plan costs memory, never a wrong
address. Reading an address costs ~55 ns per tensor from Python: 2000 params
of a three-state rule with device counts read ~5 x 2000 of them, ~0.55 ms (bench_triton.py).
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType

import torch
import triton
import triton.language as tl
from fusedopt.kernels.storage import (
    BLOCK8,
    STORE_KAHAN_SUM,
    STORE_MASTER_WEIGHTS,
    STORE_NONE,
    STORE_STOCHASTIC_ROUNDING,
    block_absmax8,
    broadcast_blocks8,
    codec_table,
    decode8,
    encode8,
    from_float,
    rounding_bits,
    stochastic_round_bf16,
    to_float,
)
from torch import Tensor

# Columns of the tensor table, one int64 row per tensor.
COL_PARAM = tl.constexpr(0)
COL_GRAD = tl.constexpr(1)
COL_STATE = tl.constexpr(2)  # state k's address at COL_STATE + k; 0 where the step skips it
MAX_STATES = tl.constexpr(4)  # kMaxStates in csrc/include/fusedopt/core/rule.h
COL_NUMEL = tl.constexpr(6)
COL_COUNT = tl.constexpr(7)  # address of the float32 count the prologue reads; 0 without
# Scalar state j's address at COL_SCALAR_STATE + j, with the counts on the
# device (Note [scalar states]); 0 otherwise.
COL_SCALAR_STATE = tl.constexpr(8)
MAX_SCALAR_STATES = tl.constexpr(2)  # the most any rule keeps (kScalarNames in its header)
# 8-bit blockwise states: state k's absmax address at COL_ABSMAX + k; 0 otherwise.
COL_ABSMAX = tl.constexpr(COL_SCALAR_STATE.value + MAX_SCALAR_STATES.value)
# 8 columns held everything but the scalar states and absmax; 14 hold those
# too. Rows of 112 B keep every row, and so every int64 entry, 8-byte aligned
# (the table's base is 512-byte aligned by torch's allocator), which is all a
# scalar 64-bit load needs; nothing reads a row with a wider access.
TENSOR_COLS = tl.constexpr(COL_ABSMAX.value + MAX_STATES.value)
# Columns of the block table, one int64 row per program.
COL_CODE = tl.constexpr(0)  # tensor index << 1 | 1 for a full, aligned block
COL_START = tl.constexpr(1)  # the block's first element in its tensor (int64: 2^31+ is real)
BLOCK_COLS = tl.constexpr(2)
# Columns of the store table of a master-weight policy (Note [master weights]
# in csrc/include/fusedopt/core/master.h), one int64 row per tensor, apart from
# the tensor table so that a call without a policy reads nothing more:
COL_STORE = tl.constexpr(0)  # master (fp32) / compensation address, or rounding_step's (float32)
COL_TAG = tl.constexpr(1)  # the param's tag (stochastic rounding)
COL_SEED = tl.constexpr(2)  # the group's rounding_seed, its 64 bits
STORE_COLS = tl.constexpr(4)  # rows of 32 B: 8-byte aligned entries, as the tensor table's
# The per-tensor table: one fp32 row per tensor, the rule's PerTensor first
# (ASGD has 5 fields; rows of 8 keep them 32-byte aligned).
PER_TENSOR_COLS = tl.constexpr(8)
# The widest global load and store, in bytes (ld.global.v4.b32).
VECTOR_BYTES = tl.constexpr(16)


@triton.jit
def _f64(hi, lo):
    """A double that the launcher split into two fp32 arguments (_split)."""
    return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)


@triton.jit
def _address(row, col, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Column `col` of a tensor-table row as a pointer; ALIGNED only where the
    host proved it (Note [full blocks take the vector path])."""
    ptr = tl.load(row + col).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, VECTOR_BYTES)
    return ptr


@triton.jit
def _state_blocks(row, start, BLOCK: tl.constexpr):
    """The indices of a program's 8-bit state blocks (Note [8-bit blocks in a
    program]) and which lie inside the tensor (all of a full block's: a
    4-lane mask costs nothing next to the block's elements)."""
    blocks = start // BLOCK8 + tl.arange(0, BLOCK // BLOCK8)
    return blocks, blocks * BLOCK8 < tl.load(row + COL_NUMEL)


@triton.jit
def _element_kernel(
    tensor_table,
    block_table,
    per_tensor_table,
    launch,
    per_tensor,
    grad_scale_ptr,
    found_inf_ptr,
    store_table,
    codec,
    UPDATE: tl.constexpr,
    PER_TENSOR: tl.constexpr,
    USED: tl.constexpr,
    PARAM_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
    SIGNED: tl.constexpr,
    PER_TENSOR_IN_TABLE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    STORE_POLICY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One block of one tensor per program, stepped by the rule's UPDATE.
    States are stored as STATE_DTYPE (fp32 or bf16: Note [state dtypes] in
    csrc/include/fusedopt/core/storage.h), loaded and stored as params are;
    or, STATE_DTYPE uint8, as 8-bit blockwise codes (Note [8-bit blocks in a
    program]), decoded with `codec` (storage.codec_table), state k by the
    signed map where bit k of SIGNED is set.
    `launch` is the rule's Launch; `per_tensor` its PerTensor, or None when
    PER_TENSOR_IN_TABLE (Note [per-tensor scalars]). States outside the USED
    mask are neither loaded nor stored. With found_inf nonzero nothing is
    written. STORE_POLICY (a StorePolicy code) says where p comes from and how
    the new p is stored (_load_param, _store_param; store_table's row per
    tensor). Bytes per element: the rule module's docstring, + Note [master
    weights]'s for a policy."""
    if STATE_DTYPE == tl.uint8:
        tl.static_assert((BLOCK // BLOCK8) * BLOCK8 == BLOCK, "a program holds whole 8-bit blocks")
    pid = tl.program_id(0)
    code = tl.load(block_table + pid * BLOCK_COLS + COL_CODE)
    start = tl.load(block_table + pid * BLOCK_COLS + COL_START)
    tensor = code >> 1
    row = tensor_table + tensor * TENSOR_COLS
    if PER_TENSOR_IN_TABLE:
        scalars = ()
        for j in tl.static_range(len(PER_TENSOR._fields)):
            scalars = scalars + (tl.load(per_tensor_table + tensor * PER_TENSOR_COLS + j),)
        per_tensor = PER_TENSOR(*scalars)
    scale = 1.0
    if HAS_GRAD_SCALE:
        scale = tl.load(grad_scale_ptr)
    skip = 0.0
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr)
    if skip == 0.0:
        # Both variants of the block are compiled, FULL = 0 (masked) and 1
        # (vector hints); the block's flag picks one at run time.
        for FULL in tl.static_range(2):
            if (code & 1) == FULL:
                offs = start + tl.arange(0, BLOCK)
                mask = None
                if FULL:
                    offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
                else:
                    mask = offs < tl.load(row + COL_NUMEL)
                p_ptrs = _address(row, COL_PARAM, PARAM_DTYPE, FULL) + offs
                g_ptrs = _address(row, COL_GRAD, PARAM_DTYPE, FULL) + offs
                store_row = row  # unread without a policy
                if STORE_POLICY != STORE_NONE:
                    store_row = store_table + tensor * STORE_COLS
                p = _load_param(p_ptrs, store_row, offs, mask, STORE_POLICY, FULL)
                g = to_float(tl.load(g_ptrs, mask=mask))
                if HAS_GRAD_SCALE:
                    # GradScaler's unscale, stored back unscaled as torch's fused optimizers do.
                    g = tl.div_rn(g, scale)
                    tl.store(g_ptrs, from_float(g, PARAM_DTYPE), mask=mask)
                # A state this step does not use keeps a placeholder (p), which
                # the rule ignores and the frame never stores. State addresses are
                # read again for the stores rather than kept live across the
                # update: measured, that keeps the masked path's 64-bit
                # per-element addresses out of registers (66 -> 62 on sm_120).
                s = ()
                for k in tl.static_range(MAX_STATES):
                    value = p
                    if (USED >> k) & 1:
                        stored = tl.load(
                            _address(row, COL_STATE + k, STATE_DTYPE, FULL) + offs, mask=mask
                        )
                        if STATE_DTYPE == tl.uint8:
                            # One absmax per block, broadcast: a gather per
                            # element instead spilled 8 B (RMSprop, sm_90).
                            blocks, block_mask = _state_blocks(row, start, BLOCK)
                            absmax = tl.load(
                                _address(row, COL_ABSMAX + k, tl.float32, False) + blocks,
                                mask=block_mask,
                            )
                            value = decode8(
                                stored, broadcast_blocks8(absmax, BLOCK), codec, (SIGNED >> k) & 1
                            )
                        else:
                            value = to_float(stored)
                    s = s + (value,)
                p, s = UPDATE(p, g, s, USED, launch, per_tensor)
                _store_param(p_ptrs, p, store_row, offs, mask, PARAM_DTYPE, STORE_POLICY, FULL)
                for k in tl.static_range(MAX_STATES):
                    if (USED >> k) & 1:
                        if STATE_DTYPE == tl.uint8:
                            absmax = block_absmax8(s[k], mask, BLOCK)
                            stored = encode8(s[k], absmax, codec, (SIGNED >> k) & 1, BLOCK)
                            # Derived again, not kept live across the update:
                            # that spilled 8 B (Rprop, bf16, sm_90).
                            blocks, block_mask = _state_blocks(row, start, BLOCK)
                            tl.store(
                                _address(row, COL_ABSMAX + k, tl.float32, False) + blocks,
                                absmax,
                                mask=block_mask,
                            )
                        else:
                            stored = from_float(s[k], STATE_DTYPE)
                        tl.store(
                            _address(row, COL_STATE + k, STATE_DTYPE, FULL) + offs,
                            stored,
                            mask=mask,
                        )


@triton.jit
def _load_param(p_ptrs, store_row, offs, mask, STORE_POLICY: tl.constexpr, FULL: tl.constexpr):
    """The fp32 p a rule steps: the master's under master_weights, else the
    param's (Note [master weights] in csrc/include/fusedopt/core/master.h)."""
    if STORE_POLICY == STORE_MASTER_WEIGHTS:
        return tl.load(_address(store_row, COL_STORE, tl.float32, FULL) + offs, mask=mask)
    return to_float(tl.load(p_ptrs, mask=mask))


@triton.jit
def _store_param(
    p_ptrs,
    p,
    store_row,
    offs,
    mask,
    PARAM_DTYPE: tl.constexpr,
    STORE_POLICY: tl.constexpr,
    FULL: tl.constexpr,
):
    """Stores the rule's new p by STORE_POLICY, in
    cpu/loop.cpp's run_stored order, bit for bit: the param rounded to
    nearest even; with master_weights the master too; with kahan_sum through
    the compensation (in the param's dtype); with stochastic rounding by the
    bits of the element's index in the param's memory order (offs). Kahan's
    old p is read again from the param (not yet written), not kept live
    across the update."""
    if STORE_POLICY == STORE_NONE or STORE_POLICY == STORE_MASTER_WEIGHTS:
        tl.store(p_ptrs, from_float(p, PARAM_DTYPE), mask=mask)
        if STORE_POLICY == STORE_MASTER_WEIGHTS:
            tl.store(_address(store_row, COL_STORE, tl.float32, FULL) + offs, p, mask=mask)
    elif STORE_POLICY == STORE_KAHAN_SUM:
        comp_ptrs = _address(store_row, COL_STORE, PARAM_DTYPE, FULL) + offs
        old = to_float(tl.load(p_ptrs, mask=mask))
        update = to_float(tl.load(comp_ptrs, mask=mask)) + (p - old)
        rounded = from_float(old + update, PARAM_DTYPE)
        tl.store(p_ptrs, rounded, mask=mask)
        tl.store(comp_ptrs, from_float(update - (to_float(rounded) - old), PARAM_DTYPE), mask=mask)
    else:
        tl.static_assert(STORE_POLICY == STORE_STOCHASTIC_ROUNDING)
        # Note [store arguments] (csrc/binding/checks.h): the count after this step.
        count = tl.load(_address(store_row, COL_STORE, tl.float32, False)).to(tl.uint32) + 1
        tag = tl.load(store_row + COL_TAG).to(tl.uint32)
        bits = rounding_bits(tl.load(store_row + COL_SEED), count, tag, offs)
        tl.store(p_ptrs, stochastic_round_bf16(p, bits), mask=mask)


@triton.jit
def _advance_rounding_steps_kernel(
    store_table, n_tensors, found_inf_ptr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr
):
    """Adds 1 to every tensor's rounding_step (Note [store arguments] in
    csrc/binding/checks.h), unless GradScaler found an inf: the launch after
    the element kernel of a stochastic-rounding call. Reads and writes 4 B per
    tensor."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = n_tensors
    if HAS_FOUND_INF:
        live = tl.where(tl.load(found_inf_ptr) == 0.0, n_tensors, 0)
    mask = index < live
    counts = tl.load(store_table + index * STORE_COLS + COL_STORE, mask=mask, other=0)
    counts = counts.to(tl.pointer_type(tl.float32))
    tl.store(counts, tl.load(counts, mask=mask) + 1.0, mask=mask)


@triton.jit
def _scalar_state_addresses(tensor_table, index, mask, N_SCALARS: tl.constexpr):
    """The float32 addresses of the first N_SCALARS scalar states of a block of
    tensors (Note [scalar states]); 0 under the mask."""
    addresses = ()
    for j in tl.static_range(N_SCALARS):
        column = tl.load(
            tensor_table + index * TENSOR_COLS + COL_SCALAR_STATE + j, mask=mask, other=0
        )
        addresses = addresses + (column.to(tl.pointer_type(tl.float32)),)
    return addresses


@triton.jit
def _per_tensor_kernel(
    tensor_table,
    per_tensor_table,
    n_tensors,
    lr_ptr,
    lr_hi,
    lr_lo,
    step,
    config_hi,
    config_lo,
    PER_TENSOR_DEVICE: tl.constexpr,
    CONFIG: tl.constexpr,
    LR_IN_MEMORY: tl.constexpr,
    COUNTS_IN_MEMORY: tl.constexpr,
    N_SCALARS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The prologue of Note [per-tensor scalars]: the rule's PerTensor of BLOCK
    tensors per program, in float64, into the per-tensor table. `step` is every
    tensor's count + 1 unless COUNTS_IN_MEMORY (then each tensor's count + 1
    is read through the COL_COUNT column). A rule with N_SCALARS scalar states
    (counts in memory) reads their values before this step too. Reads 4 B per
    tensor (+ 4 B per scalar state) and writes 4 * PER_TENSOR_COLS B."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < n_tensors
    if LR_IN_MEMORY:
        lr = tl.load(lr_ptr).to(tl.float64)
    else:
        lr = _f64(lr_hi, lr_lo)
    if COUNTS_IN_MEMORY:
        counts = tl.load(tensor_table + index * TENSOR_COLS + COL_COUNT, mask=mask, other=0)
        counts = counts.to(tl.pointer_type(tl.float32))
        step = tl.load(counts, mask=mask, other=0.0).to(tl.float64) + 1.0
    else:
        step = tl.cast(step, tl.float64)
    fields = ()
    for j in tl.static_range(len(config_hi)):
        fields = fields + (_f64(config_hi[j], config_lo[j]),)
    if N_SCALARS > 0:
        addresses = _scalar_state_addresses(tensor_table, index, mask, N_SCALARS)
        values = ()
        for j in tl.static_range(N_SCALARS):
            values = values + (tl.load(addresses[j], mask=mask, other=0.0),)
        # The values after this step are dropped: _advance_counts_kernel stores them.
        scalars = PER_TENSOR_DEVICE(CONFIG(*fields), lr, step, values)[0]
    else:
        scalars = PER_TENSOR_DEVICE(CONFIG(*fields), lr, step)
    zeros = tl.zeros([BLOCK], tl.float32)
    for j in tl.static_range(len(scalars)):
        tl.store(per_tensor_table + index * PER_TENSOR_COLS + j, scalars[j] + zeros, mask=mask)


@triton.jit
def _advance_counts_kernel(
    tensor_table,
    n_tensors,
    found_inf_ptr,
    lr_ptr,
    lr_hi,
    lr_lo,
    config_hi,
    config_lo,
    PER_TENSOR_DEVICE: tl.constexpr,
    CONFIG: tl.constexpr,
    LR_IN_MEMORY: tl.constexpr,
    N_SCALARS: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Note [step counts]: adds 1 to every tensor's device-held count, unless
    GradScaler found an inf; a rule with N_SCALARS scalar states first stores
    their values after this step (PER_TENSOR_DEVICE at count + 1 from the
    values before it, in float64 as the prologue does). Without scalar states
    the rule arguments are None. Reads and writes 4 B per tensor, + 4 B per
    scalar state."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = n_tensors
    if HAS_FOUND_INF:
        live = tl.where(tl.load(found_inf_ptr) == 0.0, n_tensors, 0)
    mask = index < live
    counts = tl.load(tensor_table + index * TENSOR_COLS + COL_COUNT, mask=mask, other=0)
    counts = counts.to(tl.pointer_type(tl.float32))
    count = tl.load(counts, mask=mask)
    if N_SCALARS > 0:
        if LR_IN_MEMORY:
            lr = tl.load(lr_ptr).to(tl.float64)
        else:
            lr = _f64(lr_hi, lr_lo)
        fields = ()
        for j in tl.static_range(len(config_hi)):
            fields = fields + (_f64(config_hi[j], config_lo[j]),)
        addresses = _scalar_state_addresses(tensor_table, index, mask, N_SCALARS)
        values = ()
        for j in tl.static_range(N_SCALARS):
            values = values + (tl.load(addresses[j], mask=mask, other=0.0),)
        step = count.to(tl.float64) + 1.0
        after = PER_TENSOR_DEVICE(CONFIG(*fields), lr, step, values)[1]
        for j in tl.static_range(N_SCALARS):
            tl.store(addresses[j], after[j], mask=mask)
    tl.store(counts, count + 1.0, mask=mask)


# Elements per program on a GPU, and its warps: 4 elements per thread, one
# 128-bit access per fp32 stream. Measured from the cubins (tests/triton_aot.py):
# 32-62 registers on sm_80 to sm_120 with triton 3.8 (up to 64 with 3.6), no
# spills; 4 warps (8 elements per thread) took 144-150 for bf16 Adam.
BLOCK_SIZE = 1024
NUM_WARPS = 8
# Note [bit-identical backends]: no multiply-add contraction in any kernel
# (LLVM's fp contraction and ptxas' --fmad, both on by default).
FP_FUSION = False
# The interpreter costs 3.5-7 ms of CPU per program of these kernels whatever
# its size (measured with the integer bf16 stores), so the backend gives it
# fewer, larger programs.
INTERPRETER_BLOCK_SIZE = 16384
# Tensors per program of the prologue and the count kernel: one 4 B count per
# lane, so one program covers most param groups.
TABLE_BLOCK = 1024
# Plans kept per launcher, least recently used dropped first: one per bucket a
# model steps (layer-wise lr decay makes a group per layer); a plan holds no
# caller's tensor (Note [plan validity]), only its own tables.
MAX_PLANS = 256
_FP32 = struct.Struct("f")
_TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
    # 8-bit blockwise codes: the kernel moves their bits (Note [8-bit blocks in a program]).
    torch.int8: tl.uint8,
    torch.uint8: tl.uint8,
}
_data_ptr = Tensor.data_ptr
_numel = Tensor.numel


def _blockwise(states: Sequence[Tensor]) -> bool:
    """True for 8-bit blockwise states (codes, then absmax: fusedopt._checks)."""
    return bool(states) and states[0].dtype in (torch.int8, torch.uint8)


def _signed_mask(codes: Sequence[Tensor], used: int, n: int) -> int:
    """Bit k set when used state k's codes are int8 (the signed map); `codes`
    is state-major, n tensors per used state."""
    used_states = [k for k in range(MAX_STATES.value) if (used >> k) & 1]
    return sum(1 << k for i, k in enumerate(used_states) if codes[i * n].dtype == torch.int8)


def _split(x: float) -> tuple[float, float]:
    """x as fp32 hi + lo (see _f64); exact to about 2^-48 relative."""
    hi = _FP32.unpack(_FP32.pack(x))[0]
    return hi, x - hi


def _to_device(host: Tensor, out: Tensor) -> None:
    """Copies a host table into its device twin without a host sync: from
    pinned memory, which torch's caching host allocator keeps until the copy
    has run. Only for tables rewritten at every step of a non-capturable plan
    (Note [table uploads])."""
    if out.is_cuda:
        out.copy_(host.pin_memory(), non_blocking=True)
    else:
        out.copy_(host)


def _current_stream(device: torch.device) -> int | None:
    """The stream a launch on `device` goes to now (None for CPU tensors)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


def _device_guard(device: torch.device):
    """Triton launches on the current device: make it the params'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def state_mask(rule: ModuleType, config) -> int:
    """The USED mask of a step: bit k set when the rule uses state k."""
    return sum(1 << k for k in range(len(rule.STATE_NAMES)) if rule.state_used(k, config))


def upload(host: Tensor, device, captured_uploads: list[Tensor]) -> Tensor:
    """A copy of the CPU tensor `host` on `device`: from pinned memory without
    blocking on a GPU, the pinned copy kept in `captured_uploads` while a CUDA
    graph captures (the graph replays from it); a plain copy elsewhere."""
    out = torch.empty_like(host, device=device)
    if not out.is_cuda:
        return out.copy_(host)
    pinned = host.pin_memory()
    out.copy_(pinned, non_blocking=True)
    if torch.cuda.is_current_stream_capturing():
        captured_uploads.append(pinned)
    return out


class _Plan:
    """The tables of one tensor set (Note [plan validity]), uploaded as Note
    [table uploads] says.

    Note [table uploads]: a table goes to the device from pinned memory with
    a non-blocking copy on the current stream (no host sync), always into a
    new device tensor, never over one that a queued kernel may still read.
    Tables are read on the stream they were uploaded on: a step on another
    stream allocates and uploads them all again (an in-place rewrite from
    another stream could race the first stream's kernels; the caching
    allocator frees the old ones on their own stream, in order). Under CUDA
    graph capture the copy becomes a node that every replay runs again, from
    the same pinned buffer, and the kernels read the tables at the addresses
    they had when captured: a plan used in a capture is kept by its launcher
    for the process's life, pinned buffers included (torch's caching host
    allocator would otherwise reuse them once the copy had run). Any other
    plan lives as long as the optimizer's plan of that call
    (fusedopt/optim/base.py, Note [cached step plans])."""

    def __init__(
        self,
        addresses,
        numels,
        n_states: int,
        used: int,
        host_counts: bool,
        device,
        blockwise: bool = False,
        store_key=None,
    ):
        """`addresses`: the params', the states' (with `blockwise` 8-bit
        states, each used state's codes then each one's absmax), then the
        device counts', each list tensor by tensor. `store_key`: (policy code,
        store addresses, tags, seed), None without a policy."""
        store_key = store_key or (STORE_NONE.value, [], [], 0)
        n = len(numels)
        self.addresses, self.numels, self.device = addresses, numels, device
        used_states = [k for k in range(MAX_STATES.value) if (used >> k) & 1]
        used_columns = [COL_STATE.value + k for k in used_states]
        columns = torch.tensor(addresses, dtype=torch.int64).view(-1, n)
        host = torch.zeros((n, TENSOR_COLS.value), dtype=torch.int64)
        host[:, COL_PARAM.value] = columns[0]
        host[:, used_columns] = columns[1 : 1 + n_states].T
        state_rows = n_states
        if blockwise:
            absmax_columns = [COL_ABSMAX.value + k for k in used_states]
            host[:, absmax_columns] = columns[1 + n_states : 1 + 2 * n_states].T
            state_rows = 2 * n_states
        host[:, COL_NUMEL.value] = torch.tensor(numels, dtype=torch.int64)
        if not host_counts and len(columns) > 1 + state_rows:
            # Device counts: state_steps are the counts, then each scalar state.
            host[:, COL_COUNT.value] = columns[1 + state_rows]
            for j, column in enumerate(columns[2 + state_rows :]):
                host[:, COL_SCALAR_STATE.value + j] = column
        self.host = host
        # Host counts that differ reach the prologue through count_values.
        self.host_counts = host_counts
        self.fixed_aligned = (
            host[:, [COL_PARAM.value, *used_columns]] % VECTOR_BYTES.value == 0
        ).all(1)
        # The store table of a master-weight policy (None without one).
        self.store_key, self.store_host = store_key, None
        policy, store_addresses, tags, seed = store_key
        if policy != STORE_NONE.value:
            self.store_host = torch.zeros((n, STORE_COLS.value), dtype=torch.int64)
            self.store_host[:, COL_STORE.value] = torch.tensor(store_addresses, dtype=torch.int64)
            if tags:
                self.store_host[:, COL_TAG.value] = torch.tensor(tags, dtype=torch.int64)
            self.store_host[:, COL_SEED.value] = seed
            if policy != STORE_STOCHASTIC_ROUNDING.value:
                # A master or compensation is loaded and stored as the param is.
                store_aligned = self.store_host[:, COL_STORE.value] % VECTOR_BYTES.value == 0
                self.fixed_aligned &= store_aligned
        self.store_table: Tensor | None = None
        self.captured_uploads: list[Tensor] = []
        self.stream: int | None = None
        self.grad_addresses: list[int] | None = None
        self.aligned: Tensor | None = None
        self.block_host: Tensor | None = None
        self.n_blocks = 0

    def _upload(self, host: Tensor) -> Tensor:
        return upload(host, self.device, self.captured_uploads)

    def refresh(self, grads: Sequence[Tensor], block: int) -> None:
        """Points the grad column at this step's grads, re-derives the
        full-block flags if an alignment changed, and uploads what changed; a
        no-op when no grad moved and the stream is the one of the last upload."""
        addresses = list(map(_data_ptr, grads))
        stream = _current_stream(self.device)
        new_stream = self.grad_addresses is None or stream != self.stream
        if addresses == self.grad_addresses and not new_stream:
            return
        if new_stream:
            n = self.host.shape[0]
            self.per_tensor_table = torch.empty(
                (n, PER_TENSOR_COLS.value), dtype=torch.float32, device=self.device
            )
            self.count_values = None
            if self.host_counts:
                self.count_values = torch.zeros(n, dtype=torch.float32, device=self.device)
                self.host[:, COL_COUNT.value] = self.count_values.data_ptr() + 4 * torch.arange(n)
        self.host[:, COL_GRAD.value] = torch.tensor(addresses, dtype=torch.int64)
        aligned = self.fixed_aligned & (self.host[:, COL_GRAD.value] % VECTOR_BYTES.value == 0)
        if self.aligned is None or not torch.equal(aligned, self.aligned):
            self.block_host = _block_table(self.host[:, COL_NUMEL.value], aligned, block)
            self.n_blocks = self.block_host.shape[0]
            self.aligned = aligned
            new_stream = True
        if new_stream:
            self.block_table = self._upload(self.block_host)
            if self.store_host is not None:
                self.store_table = self._upload(self.store_host)
        self.tensor_table = self._upload(self.host)
        self.grad_addresses, self.stream = addresses, stream


def _block_table(numels: Tensor, aligned: Tensor, block: int) -> Tensor:
    """(code, start) per block of `block` elements, tensor by tensor."""
    blocks = (numels + block - 1) // block
    tensor = torch.repeat_interleave(torch.arange(len(blocks)), blocks)
    first_block = torch.cumsum(blocks, 0) - blocks
    start = (torch.arange(len(tensor)) - first_block[tensor]) * block
    full = aligned[tensor] & (start + block <= numels[tensor])
    return torch.stack([tensor * 2 + full.to(torch.int64), start], dim=1)


class Launcher:
    """Steps a bucket's tensors with any rule: one element launch, plus the
    prologue and the count launch where Note [per-tensor scalars] and Note
    [step counts] need them. `launches` counts kernel launches, for tests and
    benchmarks."""

    def __init__(self) -> None:
        self.launches = 0
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        # Plans some CUDA graph launched with (Note [table uploads]), by identity.
        self._graph_plans: dict[int, _Plan] = {}
        self._codec_tables: dict[torch.device, Tensor] = {}

    def _plan(
        self,
        params,
        states,
        device_counts,
        used: int,
        host_counts: bool,
        block: int,
        plans,
        store_key,
    ):
        """The plan of these lists, from `plans` (the caller's, kept with its
        own lists) or else from the launcher's LRU."""
        blockwise = _blockwise(states)
        key = (id(params), params[0].device, used, host_counts, block, blockwise)
        addresses = list(map(_data_ptr, itertools.chain(params, states, device_counts)))
        numels = list(map(_numel, params))
        store = self._plans if plans is None else plans
        plan = store.get(key)
        if (
            plan is None
            or plan.addresses != addresses
            or plan.numels != numels
            or plan.store_key != store_key
        ):
            plan = _Plan(
                addresses,
                numels,
                len(states) // len(params) // (2 if blockwise else 1),
                used,
                host_counts,
                params[0].device,
                blockwise,
                store_key,
            )
            store[key] = plan
        if plans is None:
            self._plans.move_to_end(key)
            if len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        return plan

    def step(
        self,
        rule: ModuleType,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        states: Sequence[Tensor],
        state_steps: Sequence[Tensor],
        *,
        lr: float | Tensor,
        hyper,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
        counts_on_device: bool = False,
        block: int = BLOCK_SIZE,
        plans: dict | None = None,
        store_policy: int = 0,
        store: Sequence[Tensor] = (),
        store_tags: Sequence[int] = (),
        rounding_seed: int = 0,
    ) -> None:
        """Steps checked, dense tensors of one device and param dtype
        (fusedopt._checks.check_lists) with `rule`, a kernels/rules module.
        `states` is state-major, holding the states this step uses.

        `counts_on_device`: the counts live on the params' device and the
        kernels read and advance them there (no host sync: capturable).
        Otherwise they are CPU tensors, read and advanced here, and a found_inf
        is read on the host to decide whether to step at all (a sync: the
        non-capturable path, like torch's).

        `plans`: where to keep this call's tables between steps (the
        optimizer's per-call cache; Note [table uploads]); else the launcher's
        LRU of MAX_PLANS plans serves.

        `store_policy`, `store`, `store_tags`, `rounding_seed`: a master-weight
        policy, as the ops take it (Note [store arguments] in
        csrc/binding/checks.h), checked by the caller; stochastic rounding's
        rounding_step counts live on the params' device, read by the element
        kernel and advanced by _advance_rounding_steps_kernel."""
        if not params:
            return
        config = rule.config(hyper)
        used = state_mask(rule, config)
        blockwise = _blockwise(states)
        codes = states[: len(states) // 2] if blockwise else states
        if len(codes) != len(params) * bin(used).count("1"):
            raise RuntimeError(
                f"fusedopt: {len(states)} states for {len(params)} params and state mask {used:b}"
            )
        host_counts = rule.HAS_STEP and not counts_on_device
        n = len(params)
        # Note [scalar states]: advanced by the host with the counts on the CPU.
        host_scalar_states = getattr(rule, "SCALAR_NAMES", ()) if host_counts else ()
        if host_scalar_states and isinstance(lr, Tensor):
            if lr.device.type != "cpu":
                raise RuntimeError(
                    f"fusedopt: with step counts and {host_scalar_states[0]} on the CPU, the "
                    "host advances them and needs lr's value: pass lr as a float or a CPU "
                    "tensor, or keep state_steps on the params' device (Note [scalar states] "
                    "in csrc/include/fusedopt/core/rule.h)"
                )
            lr = lr.item()  # the interpreter's lr: a host value, read without a sync
        if host_counts and found_inf is not None:
            if found_inf.item() != 0:
                return
            found_inf = None
        counts_on_device = counts_on_device and rule.HAS_STEP
        device_counts = state_steps if counts_on_device else ()
        store_key = (store_policy, list(map(_data_ptr, store)), list(store_tags), rounding_seed)
        plan = self._plan(params, states, device_counts, used, host_counts, block, plans, store_key)
        counts = list(map(Tensor.item, state_steps[:n])) if host_counts else None
        scalars_after = ()
        device = params[0].device
        with _device_guard(device):
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                self._graph_plans[id(plan)] = plan
            plan.refresh(grads, block)
            if host_scalar_states:
                scalars_after = self._scalar_state_table(
                    rule, plan, config, lr, counts, state_steps
                )
            if plan.n_blocks:
                per_tensor = (
                    None
                    if host_scalar_states
                    else self._per_tensor(rule, plan, config, lr, counts, counts_on_device)
                )
                _element_kernel[(plan.n_blocks,)](
                    plan.tensor_table,
                    plan.block_table,
                    plan.per_tensor_table,
                    rule.launch(config),
                    per_tensor,
                    grad_scale,
                    found_inf,
                    plan.store_table,
                    self._codec(device) if blockwise else None,
                    UPDATE=rule.update,
                    PER_TENSOR=rule.PerTensor,
                    USED=used,
                    PARAM_DTYPE=_TORCH_TO_TRITON[params[0].dtype],
                    STATE_DTYPE=_TORCH_TO_TRITON[states[0].dtype] if states else tl.float32,
                    SIGNED=_signed_mask(codes, used, n) if blockwise else 0,
                    PER_TENSOR_IN_TABLE=per_tensor is None,
                    HAS_GRAD_SCALE=grad_scale is not None,
                    HAS_FOUND_INF=found_inf is not None,
                    STORE_POLICY=store_policy,
                    BLOCK=block,
                    num_warps=NUM_WARPS,
                    enable_fp_fusion=FP_FUSION,
                )
                self.launches += 1
            if counts_on_device:
                self._advance_counts(rule, plan, config, lr, found_inf)
            if store_policy == STORE_STOCHASTIC_ROUNDING.value:
                _advance_rounding_steps_kernel[(triton.cdiv(n, TABLE_BLOCK),)](
                    plan.store_table,
                    n,
                    found_inf,
                    HAS_FOUND_INF=found_inf is not None,
                    BLOCK=TABLE_BLOCK,
                    enable_fp_fusion=FP_FUSION,
                )
                self.launches += 1
        if host_counts:
            torch._foreach_add_(list(state_steps[:n]), 1.0)
            for j, values in enumerate(scalars_after, start=1):
                torch._foreach_copy_(list(state_steps[j * n : (j + 1) * n]), list(values.unbind()))

    def _codec(self, device: torch.device) -> Tensor:
        """The code tables on `device` (storage.codec_table), made once per
        device: a step under CUDA graph capture reads the copy made before."""
        table = self._codec_tables.get(device)
        if table is None:
            table = self._codec_tables[device] = codec_table(device)
        return table

    def _advance_counts(self, rule, plan, config, lr, found_inf) -> None:
        """Note [step counts]: the last launch, for device-held counts (and
        the scalar states of a rule that keeps some)."""
        n = plan.host.shape[0]
        n_scalars = len(getattr(rule, "SCALAR_NAMES", ()))
        lr_in_memory = isinstance(lr, Tensor)
        if n_scalars:
            lr_hi, lr_lo = (0.0, 0.0) if lr_in_memory else _split(float(lr))
            config_hi, config_lo = _split_config(config)
        else:
            # The plain count increment: one compiled kernel for every such rule.
            lr, lr_in_memory, lr_hi, lr_lo, config_hi, config_lo = None, False, 0.0, 0.0, None, None
        _advance_counts_kernel[(triton.cdiv(n, TABLE_BLOCK),)](
            plan.tensor_table,
            n,
            found_inf,
            lr if lr_in_memory else None,
            lr_hi,
            lr_lo,
            config_hi,
            config_lo,
            PER_TENSOR_DEVICE=rule.per_tensor_device if n_scalars else None,
            CONFIG=type(config) if n_scalars else None,
            LR_IN_MEMORY=lr_in_memory,
            N_SCALARS=n_scalars,
            HAS_FOUND_INF=found_inf is not None,
            BLOCK=TABLE_BLOCK,
            enable_fp_fusion=FP_FUSION,
        )
        self.launches += 1

    def _scalar_state_table(self, rule, plan, config, lr, counts, state_steps) -> tuple:
        """Note [scalar states] (csrc/include/fusedopt/core/rule.h): the
        per-tensor table of a rule with host-held scalar states, filled on the
        host, and those states' values after this step (stored by step() once
        the launch returned)."""
        n = len(counts)
        steps = torch.tensor(counts, dtype=torch.float64) + 1.0
        before = tuple(
            torch.stack(list(state_steps[j * n : (j + 1) * n])).cpu()
            for j in range(1, len(rule.SCALAR_NAMES) + 1)
        )
        scalars, after = rule.per_tensor(config, float(lr), steps, before)
        _to_device(_per_tensor_rows(scalars, n), plan.per_tensor_table)
        return after

    def _per_tensor(self, rule, plan, config, lr, counts, counts_on_device: bool):
        """Note [per-tensor scalars]: the PerTensor to pass as kernel arguments,
        or None once the per-tensor table is filled, by the host or by the
        prologue. `counts` are the host-held counts (None without)."""
        n = plan.per_tensor_table.shape[0]
        uniform = counts is None or counts.count(counts[0]) == n
        step = counts[0] + 1.0 if counts else 0.0
        lr_in_memory = isinstance(lr, Tensor)
        if not (lr_in_memory or counts_on_device):
            if uniform:
                return rule.per_tensor(config, float(lr), step)
            steps = torch.tensor(counts, dtype=torch.float64) + 1.0
            rows = _per_tensor_rows(rule.per_tensor(config, float(lr), steps), n)
            _to_device(rows, plan.per_tensor_table)
            return None
        if not uniform:
            _to_device(torch.tensor(counts, dtype=torch.float32), plan.count_values)
        lr_hi, lr_lo = (0.0, 0.0) if lr_in_memory else _split(float(lr))
        config_hi, config_lo = _split_config(config)
        _per_tensor_kernel[(triton.cdiv(n, TABLE_BLOCK),)](
            plan.tensor_table,
            plan.per_tensor_table,
            n,
            lr if lr_in_memory else None,
            lr_hi,
            lr_lo,
            step,
            config_hi,
            config_lo,
            PER_TENSOR_DEVICE=rule.per_tensor_device,
            CONFIG=type(config),
            LR_IN_MEMORY=lr_in_memory,
            COUNTS_IN_MEMORY=counts_on_device or not uniform,
            N_SCALARS=len(getattr(rule, "SCALAR_NAMES", ())),
            BLOCK=TABLE_BLOCK,
            enable_fp_fusion=FP_FUSION,
        )
        self.launches += 1
        return None


def _split_config(config) -> tuple:
    """The Config as two tuples of fp32 parts (Note [per-tensor scalars])."""
    parts = [_split(float(x)) for x in config]
    return type(config)(*(hi for hi, _ in parts)), type(config)(*(lo for _, lo in parts))


def _per_tensor_rows(scalars, n: int) -> Tensor:
    """A host PerTensor whose fields are floats or float64 tensors of n counts,
    as the fp32 per-tensor table (rounded once, like the C++ float casts)."""
    rows = torch.zeros((n, PER_TENSOR_COLS.value), dtype=torch.float32)
    for j, field in enumerate(scalars):
        rows[:, j] = torch.as_tensor(field, dtype=torch.float64)
    return rows
