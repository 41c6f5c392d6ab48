"""The Triton passes of the factored rules (Note [reduction rules] in
fusedopt/registry.py), mirroring csrc/cpu/factored.h: a param of 2+ dims is
seen as `batch` row-major matrices of rows x cols, a vector as a flat run.

Each pass is one launch for all the params of a call (one device and param
dtype), as the elementwise frame kernels/mta.py: a program reads its param's
index from an item table or a tile table (one int32 per program) and the
param's addresses and geometry from a tensor table (one int64 row per
param), all cached between steps (Note [factored plans]).

  (a) _reduce_kernel       per reduction item (csrc/cpu/reduce.h's items):
                           the sum of p^2; for a matrix the row sums of g^2
                           (g unscaled) and the item's column partials
  (b) _statistics_kernel   per param (and column chunk): the sum of p^2, the
                           row and column means of g^2, their EMAs (the rule's
                           `ema`), max(mean(R), eps1) per matrix
      torch, a fixed number of float64 ops per call whatever the params: the
      per-tensor scalars, from the device-held counts (no host sync)
  (c) _reduce_kernel       per item: the sum of U^2 (the RMS clip), then
      _items_total_kernel  per param: its items' sums added
  (d) _apply_kernel        per tile: the element pass

Five launches per step, however many params: GPT-2 small's 148 took 494
launches (four per matrix, three per vector) and 6382 torch ops per step
before, 49 now (bench/bench_triton_factored.py).

Note [factored sums]: every sum is the CPU backend's, in its order
(csrc/cpu/reduce.h, Note [deterministic blocked reductions]): a program per
item of whole rows (a matrix) or of a run (a vector), each row summed in
LANES double accumulators (element j into lane j % LANES, in order), the
lanes added in order, the rows' sums in order; the column partials of an
item row after row; a param's items' sums, its column partials and its new
row statistics (for max(mean(R), eps1)) added in order. The fp32 math
before the sums is the rule's, as the CPU's. So the two backends compute the
same bits (tests/test_adafactor.py), and a param the same bits alone or in
any group, the order being a function of its shape. The price is serial
chains on a GPU as long as the CPU's: 8192 lane steps per 64K item, one
step per row of a matrix for its mean(R) (50257 for GPT-2's wte), one per
item for the totals; the element pass (d), which moves most of the bytes,
is free of them. Not measured on a GPU.

Bytes per element (fp32 matrix): (a) reads p and g (g twice: rows, then
columns), (c) g, (d) p and g and writes p: 24 B as the CPU passes, + 4 B for
the second read of g; (b) reads 8 B per row and per item and column.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import triton
import triton.language as tl
from fusedopt.kernels.mta import _TORCH_TO_TRITON, FP_FUSION, _address, _device_guard, upload
from fusedopt.kernels.storage import from_float, to_float
from torch import Tensor

# Columns of the tensor table, one int64 row per param: addresses first (0
# where the param keeps no such state), then its geometry and its places in
# the call's scratch buffers.
COL_PARAM = tl.constexpr(0)
COL_GRAD = tl.constexpr(1)
COL_ROW_STAT = tl.constexpr(2)
COL_COL_STAT = tl.constexpr(3)
COL_FULL_STAT = tl.constexpr(4)
COL_MOMENTUM = tl.constexpr(5)
COL_FACTORED = tl.constexpr(6)  # 1: batch matrices of rows x cols; 0: a vector of cols elements
COL_BATCH = tl.constexpr(7)
COL_ROWS = tl.constexpr(8)
COL_COLS = tl.constexpr(9)
COL_ROW_BLOCKS = tl.constexpr(10)  # tiles down one matrix (a vector: tiles in all)
COL_COL_BLOCKS = tl.constexpr(11)  # tiles across one matrix (a vector: 1)
COL_FIRST_TILE = tl.constexpr(12)  # its first program in the element pass
COL_FIRST_ITEM = tl.constexpr(13)  # its first program in the reduction passes
COL_ITEMS = tl.constexpr(14)
COL_ITEM_ROWS = tl.constexpr(15)  # rows per item of a matrix (csrc/cpu/reduce.h plan_items)
COL_ROW_SUMS = tl.constexpr(16)  # its first row sum of g^2 (double), [batch * rows]
COL_COL_PART = tl.constexpr(17)  # its first column partial (double), [item, cols]
COL_FLOOR = tl.constexpr(18)  # its first matrix's max(mean(R), eps1)
TENSOR_COLS = tl.constexpr(19)
# The per-tensor scalars the tile kernels read, one fp32 row per param, in this order.
SCALARS = ("ema_weight", "eps1_sq", "param_decay", "step_size", "beta1", "one_minus_beta1")
SCALAR_COLS = tl.constexpr(len(SCALARS))
COL_STEP_SIZE = SCALARS.index("step_size")

# Elements per reduction item: kReduceItemElements of csrc/cpu/reduce.h, whose
# items (whole rows of a matrix, runs of a vector) these passes take over.
REDUCE_ITEM_ELEMENTS = tl.constexpr(1 << 16)
# Accumulators per row sum: kLanes of csrc/cpu/reduce.h.
LANES = tl.constexpr(8)
# Tile of the element pass on a GPU: 4 rows x 256 columns (8 elements per
# thread at 4 warps, as kernels/mta.py's 1024-element blocks). Measured from
# the sm_90 cubin (fp32, GradScaler, momentum): 78 registers, no stack; 16 x
# 256 took 255 registers and a 104 B stack (spills; the per-param kernel
# before this one took 250 at 16 x 256), 8 x 256 163. Not timed on a GPU.
BLOCK_ROWS, BLOCK_COLS = 4, 256
# The reduction passes on a GPU: a matrix item's ROW_BLOCK rows side by side,
# ROW_GROUPS x LANES columns per load (16 x 32 fp32: 128 B per row); a
# vector's run RUN_GROUPS x LANES elements per load (1 KB); each load's groups
# then added in order, RUN_GROUPS steps over 256 doubles (its serial chain is
# the CPU's: 8192 lane steps per 64K item). Column partials COL_BLOCK columns
# wide, PART_ROWS rows per load; the statistics pass's rows in chunks of
# STAT_BLOCK, added in order (serial: one step per row, as the CPU's). Not
# measured on a GPU (none was available): a starting point.
ROW_BLOCK, ROW_GROUPS, RUN_GROUPS = 16, 4, 32
COL_BLOCK, PART_ROWS, STAT_BLOCK = 256, 1, 32
# Under the interpreter each program and each nested @triton.jit call costs
# ~1-2 ms whatever its size (MACHINE.md): larger blocks keep the tests fast.
INTERPRETER_BLOCK_ROWS, INTERPRETER_BLOCK_COLS = 64, 1024
INTERPRETER_ROW_BLOCK, INTERPRETER_ROW_GROUPS, INTERPRETER_RUN_GROUPS = 64, 16, 64
INTERPRETER_COL_BLOCK, INTERPRETER_PART_ROWS, INTERPRETER_STAT_BLOCK = 1024, 64, 256
# Plans kept, least recently used dropped first: one per (params list, tile
# shape) a model steps; a plan holds no caller's tensor (Note [factored plans]).
MAX_PLANS = 256


@triton.jit
def _tile(row, local, FACTORED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(matrix, rows, columns, row block, column block, flat offsets, mask) of
    tile `local` of the param whose tensor-table row is `row`. A matrix's tiles
    run row block by row block, BLOCK_R x BLOCK_C each; a vector's are flat
    runs of BLOCK_R * BLOCK_C elements (rows and columns then unused)."""
    if FACTORED:
        rows_n = tl.load(row + COL_ROWS)
        cols_n = tl.load(row + COL_COLS)
        n_row_blocks = tl.load(row + COL_ROW_BLOCKS)
        n_col_blocks = tl.load(row + COL_COL_BLOCKS)
        pid_r = local // n_col_blocks
        pid_c = local % n_col_blocks
        b = pid_r // n_row_blocks
        rows = (pid_r % n_row_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows < rows_n)[:, None] & (cols < cols_n)[None, :]
        offs = (b * rows_n + rows)[:, None] * cols_n + cols[None, :]
    else:
        b = 0
        pid_r = local
        pid_c = 0
        rows = local * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        offs = rows.to(tl.int64)[:, None] * BLOCK_C + cols[None, :]
        mask = offs < tl.load(row + COL_COLS)
    return b, rows, cols, pid_r, pid_c, offs, mask


@triton.jit
def _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE: tl.constexpr):
    g = to_float(tl.load(g_ptr + offs, mask=mask, other=0.0))
    if UNSCALE:
        g = tl.div_rn(g, tl.load(scale_ptr))
    return g


@triton.jit
def _variance(
    row,
    g,
    offs,
    b,
    rows,
    cols,
    mask,
    floor_ptr,
    w,
    FACTORED: tl.constexpr,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
):
    if FACTORED:
        rows_n = tl.load(row + COL_ROWS)
        cols_n = tl.load(row + COL_COLS)
        row_stat = _address(row, COL_ROW_STAT, tl.float32, False)
        col_stat = _address(row, COL_COL_STAT, tl.float32, False)
        r = tl.load(row_stat + b * rows_n + rows, mask=rows < rows_n, other=1.0)
        c = tl.load(col_stat + b * cols_n + cols, mask=cols < cols_n, other=1.0)
        floor = tl.load(floor_ptr + tl.load(row + COL_FLOOR) + b)
        v = FACTORED_VARIANCE(r[:, None], c[None, :], floor)
    else:
        full = _address(row, COL_FULL_STAT, tl.float32, False)
        v = VECTOR_VARIANCE(tl.load(full + offs, mask=mask, other=1.0), g, w)
    # Masked lanes: 1, so that their U is finite (g = 0 there; a V of 0 would
    # make 0 * inf) and nothing warns under the interpreter.
    return tl.where(mask, v, 1.0)


# What an item's sums add up (the `fill` of csrc/cpu/reduce.h's reduce_item).
FILL_PARAM_SQ = tl.constexpr(0)  # p^2
FILL_GRAD_SQ = tl.constexpr(1)  # g^2, g unscaled
FILL_UPDATE_SQ = tl.constexpr(2)  # U^2


@triton.jit
def _fill(
    row,
    offs,
    mask,
    b,
    rows,
    cols,
    scale_ptr,
    floor_ptr,
    w,
    eps1_sq,
    FILL: tl.constexpr,
    FACTORED: tl.constexpr,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
):
    """The fp32 values that a reduction adds at `offs`, 0 under the mask."""
    if FILL == FILL_PARAM_SQ:
        x = to_float(tl.load(_address(row, COL_PARAM, PARAM_DTYPE, False) + offs, mask=mask))
        x = x * x
    else:
        x = _load_grad(_address(row, COL_GRAD, PARAM_DTYPE, False), offs, mask, scale_ptr, UNSCALE)
        if FILL == FILL_UPDATE_SQ:
            v = _variance(
                row,
                x,
                offs,
                b,
                rows,
                cols,
                mask,
                floor_ptr,
                w,
                FACTORED,
                FACTORED_VARIANCE,
                VECTOR_VARIANCE,
            )
            x = RAW_UPDATE(x, v, eps1_sq)
        x = x * x
    return tl.where(mask, x, 0.0)


@triton.jit
def _item_geometry(row, item, FACTORED: tl.constexpr):
    """(matrix, first row, rows, columns, first element) of a reduction item,
    as csrc/cpu/reduce.h's plan_items cuts them: whole rows of a matrix, or a
    run of a vector seen as one row."""
    if FACTORED:
        rows_n = tl.load(row + COL_ROWS)
        cols_n = tl.load(row + COL_COLS)
        item_rows = tl.load(row + COL_ITEM_ROWS)
        items_per_matrix = tl.load(row + COL_ITEMS) // tl.load(row + COL_BATCH)
        b = item // items_per_matrix
        row0 = (item % items_per_matrix) * item_rows
        n_rows = tl.minimum(item_rows, rows_n - row0)
        start = (b * rows_n + row0) * cols_n
    else:
        b = item * 0
        row0 = item * 0
        n_rows = item * 0 + 1
        start = item * REDUCE_ITEM_ELEMENTS
        cols_n = tl.minimum(tl.load(row + COL_COLS) - start, REDUCE_ITEM_ELEMENTS)
    return b, row0, n_rows, cols_n, start


@triton.jit
def _item_sum(
    row,
    item,
    row_sums_ptr,
    scale_ptr,
    floor_ptr,
    w,
    eps1_sq,
    FILL: tl.constexpr,
    FACTORED: tl.constexpr,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
    ROW_GROUPS: tl.constexpr,
    RUN_GROUPS: tl.constexpr,
):
    """reduce_item of csrc/cpu/reduce.h on item `item` of a param: the sum of
    each row in LANES double accumulators (element j into lane j % LANES, in
    order), the lanes added in order, the rows' sums added in order; returns
    the item's sum and, where row_sums_ptr is given, stores the row sums
    there. A matrix's ROW_BLOCK rows side by side, ROW_GROUPS x LANES columns
    loaded at once and added group by group. Adding a masked 0.0 leaves a sum of squares
    unchanged, so masked lanes and rows change no bit."""
    b, row0, n_rows, cols_n, start = _item_geometry(row, item, FACTORED)
    lane = tl.arange(0, LANES)
    whole = tl.zeros([1], tl.float64)
    if FACTORED:
        rows_n = tl.load(row + COL_ROWS)
        r_local = tl.arange(0, ROW_BLOCK)
        for r_start in range(0, n_rows, ROW_BLOCK):
            live = r_start + r_local < n_rows
            rows = row0 + r_start + r_local
            acc = tl.zeros([ROW_BLOCK, LANES], tl.float64)
            for j0 in range(0, cols_n, ROW_GROUPS * LANES):
                cols = j0 + tl.arange(0, ROW_GROUPS * LANES)
                mask = live[:, None] & (cols < cols_n)[None, :]
                offs = start + (r_start + r_local).to(tl.int64)[:, None] * cols_n + cols[None, :]
                x = _fill(
                    row,
                    offs,
                    mask,
                    b,
                    rows,
                    cols,
                    scale_ptr,
                    floor_ptr,
                    w,
                    eps1_sq,
                    FILL,
                    FACTORED,
                    FACTORED_VARIANCE,
                    VECTOR_VARIANCE,
                    RAW_UPDATE,
                    PARAM_DTYPE,
                    UNSCALE,
                )
                x = tl.reshape(x.to(tl.float64), [ROW_BLOCK, ROW_GROUPS, LANES])
                # Groups past the row's end add only 0.0: skipped (the
                # interpreter pays ~2 ms per step of these loops).
                for q in range(0, tl.minimum(ROW_GROUPS, (cols_n - j0 + LANES - 1) // LANES)):
                    at = tl.zeros([ROW_BLOCK, 1, LANES], tl.int32) + q
                    acc += tl.reshape(tl.gather(x, at, 1), [ROW_BLOCK, LANES])
            row_sum = tl.zeros([ROW_BLOCK], tl.float64)
            for k in tl.static_range(LANES):
                at = tl.zeros([ROW_BLOCK, 1], tl.int32) + k
                row_sum += tl.reshape(tl.gather(acc, at, 1), [ROW_BLOCK])
            if row_sums_ptr is not None:
                tl.store(row_sums_ptr + b * rows_n + rows, row_sum, mask=live)
            whole = _in_order(whole, row_sum, tl.minimum(ROW_BLOCK, n_rows - r_start))
    else:
        # A vector's item is one row: its lanes take RUN_GROUPS x LANES
        # elements per load, added group by group.
        group = tl.arange(0, RUN_GROUPS)
        acc = tl.zeros([LANES], tl.float64)
        for j0 in range(0, cols_n, RUN_GROUPS * LANES):
            index = j0 + group[:, None] * LANES + lane[None, :]
            mask = index < cols_n
            x = _fill(
                row,
                start + index,
                mask,
                b,
                group,
                lane,
                scale_ptr,
                floor_ptr,
                w,
                eps1_sq,
                FILL,
                FACTORED,
                FACTORED_VARIANCE,
                VECTOR_VARIANCE,
                RAW_UPDATE,
                PARAM_DTYPE,
                UNSCALE,
            )
            x = x.to(tl.float64)
            for q in range(0, tl.minimum(RUN_GROUPS, (cols_n - j0 + LANES - 1) // LANES)):
                acc += tl.reshape(tl.gather(x, tl.zeros([1, LANES], tl.int32) + q, 0), [LANES])
        whole = _in_order(whole, acc, LANES)
    return tl.sum(whole, axis=0)


@triton.jit
def _reduce_kernel(
    tensor_table,
    item_table,
    scale_ptr,
    floor_ptr,
    scalars_ptr,
    item_sums_ptr,
    row_sums_ptr,
    col_part_ptr,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    UPDATES: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
    ROW_GROUPS: tl.constexpr,
    RUN_GROUPS: tl.constexpr,
    COL_BLOCK: tl.constexpr,
    PART_ROWS: tl.constexpr,
):
    """One reduction item per program, as csrc/cpu/factored.cpp's passes:
    pass (a) (UPDATES false): item_sums[item] = the sum of p^2; for a matrix
    the row sums of g^2 (row_sums) and the item's column partials of g^2
    (col_part[item, cols], each column's rows added in order); pass (c)
    (UPDATES true): item_sums[item] = the sum of U^2."""
    pid = tl.program_id(0)
    tensor = tl.load(item_table + pid)
    row = tensor_table + tensor * TENSOR_COLS
    item = pid - tl.load(row + COL_FIRST_ITEM)
    factored = tl.load(row + COL_FACTORED)
    w = tl.load(scalars_ptr + tensor * SCALAR_COLS)
    eps1_sq = tl.load(scalars_ptr + tensor * SCALAR_COLS + 1)
    for FACTORED in tl.static_range(2):
        if factored == FACTORED:
            if UPDATES:
                whole = _item_sum(
                    row,
                    item,
                    None,
                    scale_ptr,
                    floor_ptr,
                    w,
                    eps1_sq,
                    FILL_UPDATE_SQ,
                    FACTORED,
                    FACTORED_VARIANCE,
                    VECTOR_VARIANCE,
                    RAW_UPDATE,
                    PARAM_DTYPE,
                    UNSCALE,
                    ROW_BLOCK,
                    ROW_GROUPS,
                    RUN_GROUPS,
                )
                tl.store(item_sums_ptr + pid, whole)
            else:
                whole = _item_sum(
                    row,
                    item,
                    None,
                    scale_ptr,
                    floor_ptr,
                    w,
                    eps1_sq,
                    FILL_PARAM_SQ,
                    FACTORED,
                    FACTORED_VARIANCE,
                    VECTOR_VARIANCE,
                    RAW_UPDATE,
                    PARAM_DTYPE,
                    UNSCALE,
                    ROW_BLOCK,
                    ROW_GROUPS,
                    RUN_GROUPS,
                )
                tl.store(item_sums_ptr + pid, whole)
                if FACTORED:
                    row_sums = row_sums_ptr + tl.load(row + COL_ROW_SUMS)
                    _item_sum(
                        row,
                        item,
                        row_sums,
                        scale_ptr,
                        floor_ptr,
                        w,
                        eps1_sq,
                        FILL_GRAD_SQ,
                        FACTORED,
                        FACTORED_VARIANCE,
                        VECTOR_VARIANCE,
                        RAW_UPDATE,
                        PARAM_DTYPE,
                        UNSCALE,
                        ROW_BLOCK,
                        ROW_GROUPS,
                        RUN_GROUPS,
                    )
                    _column_partials(
                        row,
                        item,
                        scale_ptr,
                        col_part_ptr,
                        PARAM_DTYPE,
                        UNSCALE,
                        COL_BLOCK,
                        PART_ROWS,
                    )


@triton.jit
def _column_partials(
    row,
    item,
    scale_ptr,
    col_part_ptr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    COL_BLOCK: tl.constexpr,
    PART_ROWS: tl.constexpr,
):
    """col_part[item, j] = the sum of g^2 over column j of the item's rows, in
    double, row after row (reduce_item's col_sums); PART_ROWS rows loaded at
    once and added one by one."""
    b, row0, n_rows, cols_n, start = _item_geometry(row, item, True)
    g_ptr = _address(row, COL_GRAD, PARAM_DTYPE, False)
    out = col_part_ptr + tl.load(row + COL_COL_PART) + item.to(tl.int64) * cols_n
    r_local = tl.arange(0, PART_ROWS)
    for c0 in range(0, cols_n, COL_BLOCK):
        cols = c0 + tl.arange(0, COL_BLOCK)
        acc = tl.zeros([COL_BLOCK], tl.float64)
        for r_start in range(0, n_rows, PART_ROWS):
            mask = (r_start + r_local < n_rows)[:, None] & (cols < cols_n)[None, :]
            offs = start + (r_start + r_local).to(tl.int64)[:, None] * cols_n + cols[None, :]
            g = _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE)
            sq = tl.where(mask, g * g, 0.0).to(tl.float64)
            for q in range(0, tl.minimum(PART_ROWS, n_rows - r_start)):
                at = tl.zeros([1, COL_BLOCK], tl.int32) + q
                acc += tl.reshape(tl.gather(sq, at, 0), [COL_BLOCK])
        tl.store(out + cols, acc, mask=cols < cols_n)


@triton.jit
def _in_order(total, values, count):
    """total + values[0] + ... + values[count - 1] in double, left to right;
    `total` a block of one. (tl.gather picks each value: a tl.sum per value would
    cost a nested @triton.jit call, ~2 ms each under the interpreter.)"""
    for q in range(0, count):
        total += tl.gather(values, tl.zeros([1], tl.int32) + q, 0)
    return total


@triton.jit
def _items_total(item_sums_ptr, row):
    """A param's item sums added in item order (csrc/cpu/factored.cpp)."""
    first, count = tl.load(row + COL_FIRST_ITEM), tl.load(row + COL_ITEMS)
    total = tl.cast(0.0, tl.float64)
    for k in range(0, count):
        total += tl.load(item_sums_ptr + first + k)
    return total


@triton.jit
def _statistics_kernel(
    tensor_table,
    scalars_ptr,
    item_sums_ptr,
    row_sums_ptr,
    col_part_ptr,
    floor_ptr,
    param_sq_ptr,
    found_ptr,
    eps1,
    EMA: tl.constexpr,
    ROW_MEAN_FLOOR: tl.constexpr,
    HAS_FOUND: tl.constexpr,
    BLOCK: tl.constexpr,
    COL_BLOCK: tl.constexpr,
):
    """Pass (b) of param program_id(0), in update_statistics' order
    (csrc/cpu/factored.cpp): program (i, 0) stores the sum of p^2
    (param_sq[i]) and, for a matrix, each row's EMA of mean(g^2) and the
    matrix's max(mean(R), eps1) (R added row after row); program (i, j) the
    EMA of mean(g^2) of columns [j COL_BLOCK, (j + 1) COL_BLOCK) of each
    matrix, its items' partials added in order. With found_inf nonzero the
    statistics keep their values."""
    i = tl.program_id(0)
    chunk = tl.program_id(1)
    row = tensor_table + i * TENSOR_COLS
    factored = tl.load(row + COL_FACTORED) != 0
    batch = tl.load(row + COL_BATCH)
    rows_n = tl.load(row + COL_ROWS)
    cols_n = tl.load(row + COL_COLS)
    w = tl.load(scalars_ptr + i * SCALAR_COLS)
    keep = True
    if HAS_FOUND:
        keep = tl.load(found_ptr) == 0.0
    # (stores masked by a where, not an &: the interpreter cannot & a bool
    # block with a scalar)
    if chunk == 0:
        tl.store(param_sq_ptr + i, _items_total(item_sums_ptr, row))
        if factored:
            row_stat = _address(row, COL_ROW_STAT, tl.float32, False)
            row_sums = row_sums_ptr + tl.load(row + COL_ROW_SUMS)
            for b in range(0, batch):
                row_stat_sum = tl.zeros([1], tl.float64)
                for start in range(0, rows_n, BLOCK):
                    r = b * rows_n + start + tl.arange(0, BLOCK)
                    live = start + tl.arange(0, BLOCK) < rows_n
                    mean = (tl.load(row_sums + r, mask=live, other=0.0) / cols_n).to(tl.float32)
                    new = EMA(tl.load(row_stat + r, mask=live, other=0.0), mean, w)
                    tl.store(row_stat + r, new, mask=tl.where(keep, live, False))
                    new = tl.where(live, new, 0.0).to(tl.float64)
                    row_stat_sum = _in_order(row_stat_sum, new, tl.minimum(BLOCK, rows_n - start))
                row_mean = (tl.sum(row_stat_sum, axis=0) / rows_n).to(tl.float32)
                tl.store(floor_ptr + tl.load(row + COL_FLOOR) + b, ROW_MEAN_FLOOR(row_mean, eps1))
    if factored and chunk * COL_BLOCK < cols_n:
        col_stat = _address(row, COL_COL_STAT, tl.float32, False)
        col_part = col_part_ptr + tl.load(row + COL_COL_PART)
        items_per_matrix = tl.load(row + COL_ITEMS) // batch
        c = chunk * COL_BLOCK + tl.arange(0, COL_BLOCK)
        live = c < cols_n
        for b in range(0, batch):
            total = tl.zeros([COL_BLOCK], tl.float64)
            for k in range(0, items_per_matrix):
                offs = (b * items_per_matrix + k) * cols_n + c
                total += tl.load(col_part + offs, mask=live, other=0.0)
            mean = (total / rows_n).to(tl.float32)
            old = tl.load(col_stat + b * cols_n + c, mask=live, other=0.0)
            tl.store(col_stat + b * cols_n + c, EMA(old, mean, w), mask=tl.where(keep, live, False))


@triton.jit
def _items_total_kernel(tensor_table, item_sums_ptr, out_ptr):
    """out[param] = its item sums added in order (the sum of U^2 of pass (c))."""
    i = tl.program_id(0)
    tl.store(out_ptr + i, _items_total(item_sums_ptr, tensor_table + i * TENSOR_COLS))


@triton.jit
def _apply_kernel(
    tensor_table,
    tile_table,
    scale_ptr,
    found_ptr,
    floor_ptr,
    scalars_ptr,
    grad_sign,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    APPLY: tl.constexpr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    HAS_FOUND: tl.constexpr,
    FIRST_MOMENT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass (d), one tile per program; with found_inf nonzero it writes nothing."""
    pid = tl.program_id(0)
    tensor = tl.load(tile_table + pid)
    row = tensor_table + tensor * TENSOR_COLS
    local = pid - tl.load(row + COL_FIRST_TILE)
    factored = tl.load(row + COL_FACTORED)
    scalars = scalars_ptr + tensor * SCALAR_COLS
    for FACTORED in tl.static_range(2):
        if factored == FACTORED:
            b, rows, cols, pid_r, pid_c, offs, mask = _tile(row, local, FACTORED, BLOCK_R, BLOCK_C)
            if HAS_FOUND:
                # (a where, not an &: the interpreter cannot & a bool block with a scalar)
                mask = tl.where(tl.load(found_ptr) == 0.0, mask, False)
            g_ptr = _address(row, COL_GRAD, PARAM_DTYPE, False)
            g = _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE)
            if UNSCALE:
                tl.store(g_ptr + offs, from_float(g, PARAM_DTYPE), mask=mask)
            w, eps1_sq = tl.load(scalars), tl.load(scalars + 1)
            v = _variance(
                row,
                g,
                offs,
                b,
                rows,
                cols,
                mask,
                floor_ptr,
                w,
                FACTORED,
                FACTORED_VARIANCE,
                VECTOR_VARIANCE,
            )
            if not FACTORED:
                tl.store(_address(row, COL_FULL_STAT, tl.float32, False) + offs, v, mask=mask)
            u = RAW_UPDATE(g * grad_sign, v, eps1_sq)
            p_ptr = _address(row, COL_PARAM, PARAM_DTYPE, False)
            p = to_float(tl.load(p_ptr + offs, mask=mask, other=0.0))
            m_ptr = _address(row, COL_MOMENTUM, tl.float32, False)
            m = tl.load(m_ptr + offs, mask=mask, other=0.0) if FIRST_MOMENT else p
            p, m = APPLY(
                p,
                u,
                m,
                FIRST_MOMENT,
                tl.load(scalars + 2),
                tl.load(scalars + 3),
                tl.load(scalars + 4),
                tl.load(scalars + 5),
            )
            tl.store(p_ptr + offs, from_float(p, PARAM_DTYPE), mask=mask)
            if FIRST_MOMENT:
                tl.store(m_ptr + offs, m, mask=mask)


def _view(p: Tensor) -> tuple[bool, int, int, int]:
    """(factored, batch, rows, cols) of a param."""
    if p.dim() >= 2:
        rows, cols = p.shape[-2], p.shape[-1]
        return True, p.numel() // (rows * cols), rows, cols
    return False, 1, 1, p.numel()


def _state_address(state: dict, name: str) -> int:
    tensor = state.get(name)
    return 0 if tensor is None else tensor.data_ptr()


class _Plan:
    """The tables of one list of params and states (Note [factored plans]).

    Note [factored plans]: the tables are a function of the params' shapes and
    the addresses of params and states, and of the tile shape: each step reads
    those again and reuses the plan only when all are equal (as Note [plan
    validity] in kernels/mta.py), so a plan is never stale, only rebuilt. Per
    step and param the host then reads one grad address, compares a shape and
    four state addresses: a fixed number of torch ops per call otherwise. The
    tensor table goes to the device again at each step (the grads' column), as
    Note [table uploads] in kernels/mta.py says: into a new tensor, from
    pinned memory, without a host sync; the item and tile tables once per plan."""

    def __init__(self, params, key_addresses, shapes, block_r: int, block_c: int):
        device = params[0].device
        self.key_addresses, self.shapes, self.device = key_addresses, shapes, device
        n = len(params)
        host = torch.zeros((n, TENSOR_COLS.value), dtype=torch.int64)
        host[:, COL_PARAM.value : COL_MOMENTUM.value + 1] = torch.tensor(
            key_addresses, dtype=torch.int64
        ).view(n, COL_MOMENTUM.value + 1)
        tiles, items, row_sums, col_part, floors = 0, 0, 0, 0, 0
        item_elements = REDUCE_ITEM_ELEMENTS.value
        for i, p in enumerate(params):
            # A zero-size param is an empty vector: no tiles, no items, no statistics.
            factored, batch, rows, cols = _view(p) if p.numel() else (False, 1, 1, 0)
            if factored:
                n_row_blocks = triton.cdiv(rows, block_r)
                n_col_blocks = triton.cdiv(cols, block_c)
                n_tiles = batch * n_row_blocks * n_col_blocks
                # csrc/cpu/reduce.h plan_items: whole rows per item.
                item_rows = 1 if cols >= item_elements else item_elements // cols
                n_items = batch * triton.cdiv(rows, item_rows)
            else:
                n_row_blocks, n_col_blocks = triton.cdiv(cols, block_r * block_c), 1
                n_tiles = n_row_blocks
                item_rows, n_items = 1, triton.cdiv(cols, item_elements)
            host[i, COL_FACTORED.value :] = torch.tensor(
                [
                    int(factored),
                    batch,
                    rows,
                    cols,
                    n_row_blocks,
                    n_col_blocks,
                    tiles,
                    items,
                    n_items,
                    item_rows,
                    row_sums,
                    col_part,
                    floors,
                ]
            )
            tiles += n_tiles
            items += n_items
            if factored:
                row_sums += batch * rows
                col_part += n_items * cols
                floors += batch
        self.host = host
        self.n_tiles, self.n_items = tiles, items
        self.sizes = (max(row_sums, 1), max(col_part, 1), max(floors, 1))
        # Column chunks of the statistics pass: the widest matrix's.
        self.widest = int(host[:, COL_COLS.value].mul(host[:, COL_FACTORED.value]).max())
        index = torch.arange(n, dtype=torch.int32)
        tiles_per_param = torch.diff(host[:, COL_FIRST_TILE.value], append=torch.tensor([tiles]))
        self.captured_uploads: list[Tensor] = []
        self.tile_table = self._upload(torch.repeat_interleave(index, tiles_per_param))
        self.item_table = self._upload(torch.repeat_interleave(index, host[:, COL_ITEMS.value]))
        self.numels = torch.tensor([p.numel() for p in params], dtype=torch.float64).to(device)

    def _upload(self, host: Tensor) -> Tensor:
        return upload(host, self.device, self.captured_uploads)

    def tensor_table(self, grads) -> Tensor:
        """The tensor table with this step's grads, on the device."""
        self.host[:, COL_GRAD.value] = torch.tensor(list(map(Tensor.data_ptr, grads)))
        return self._upload(self.host)


class Launcher:
    """Steps a call's params with a factored rule in five launches (`launches`
    counts them, for tests and benchmarks)."""

    def __init__(self) -> None:
        self.launches = 0
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()

    def _plan(self, params, per_param_states, block_r: int, block_c: int) -> _Plan:
        key = (id(params), params[0].device, block_r, block_c)
        names = ("row_var", "col_var", "variance", "exp_avg")
        key_addresses = list(
            itertools.chain.from_iterable(
                (p.data_ptr(), 0, *(_state_address(s, name) for name in names))
                for p, s in zip(params, per_param_states)
            )
        )
        shapes = [p.shape for p in params]
        plan = self._plans.get(key)
        if plan is None or plan.key_addresses != key_addresses or plan.shapes != shapes:
            plan = _Plan(params, key_addresses, shapes, block_r, block_c)
            self._plans[key] = plan
        self._plans.move_to_end(key)
        if len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)
        return plan

    def step(
        self,
        rule,
        params,
        grads,
        per_param_states,
        state_steps,
        *,
        lr,
        hyper,
        grad_scale=None,
        found_inf=None,
        interpreter: bool = False,
    ) -> None:
        """One step of every param with the rule module `rule` (kernels/rules/),
        the lists already checked (one device and param dtype, dense, fp32
        states); `per_param_states` maps each param's state names to its
        tensors. Counts advance after the element pass, unless found_inf (Note
        [step-count protocol] in fusedopt/registry.py)."""
        if not params:
            return
        c = rule.config(hyper)
        if interpreter:
            block_r, block_c = INTERPRETER_BLOCK_ROWS, INTERPRETER_BLOCK_COLS
            blocks = {
                "ROW_BLOCK": INTERPRETER_ROW_BLOCK,
                "ROW_GROUPS": INTERPRETER_ROW_GROUPS,
                "RUN_GROUPS": INTERPRETER_RUN_GROUPS,
                "COL_BLOCK": INTERPRETER_COL_BLOCK,
                "PART_ROWS": INTERPRETER_PART_ROWS,
            }
            stat_block = INTERPRETER_STAT_BLOCK
        else:
            block_r, block_c = BLOCK_ROWS, BLOCK_COLS
            blocks = {
                "ROW_BLOCK": ROW_BLOCK,
                "ROW_GROUPS": ROW_GROUPS,
                "RUN_GROUPS": RUN_GROUPS,
                "COL_BLOCK": COL_BLOCK,
                "PART_ROWS": PART_ROWS,
            }
            stat_block = STAT_BLOCK
        device = params[0].device
        dtype = _TORCH_TO_TRITON[params[0].dtype]
        plan = self._plan(params, per_param_states, block_r, block_c)
        n = len(params)
        unscale = grad_scale is not None
        eps1 = rule.eps1_of(c, torch.finfo(params[0].dtype).eps)
        f64 = {"dtype": torch.float64, "device": device}
        f32 = {"dtype": torch.float32, "device": device}
        # The per-tensor scalars but the step size (pass (c) needs it), float64
        # from the counts: fills, not copies from the host (a copy of a
        # pageable scalar syncs).
        t = torch.stack(list(state_steps)).to(**f64) + 1.0
        w = rule.ema_weight(c, t)
        decay = rule.param_decay(c, lr)
        decay = decay.to(**f64) if isinstance(decay, Tensor) else torch.full((), decay, **f64)
        columns = [w, torch.full((), eps1 * eps1, **f64), decay, torch.zeros((), **f64)]
        columns += [torch.full((), c.beta1, **f64), torch.full((), 1.0 - c.beta1, **f64)]
        scalars = torch.stack(torch.broadcast_tensors(*columns), dim=1).float()
        if plan.n_tiles:
            with _device_guard(device):
                table = plan.tensor_table(grads)
                math = (rule.factored_variance, rule.vector_variance, rule.raw_update)
                row_size, col_size, floor_size = plan.sizes
                item_sums = torch.empty(plan.n_items, **f64)
                row_sums = torch.empty(row_size, **f64)
                col_part = torch.empty(col_size, **f64)
                floor = torch.empty(floor_size, **f32)
                param_sq = torch.empty(n, **f64)
                launch = {"enable_fp_fusion": FP_FUSION}
                reduce = {"PARAM_DTYPE": dtype, "UNSCALE": unscale, **blocks, **launch}
                # (a) sums of p^2; per row and column sums of g^2.
                _reduce_kernel[(plan.n_items,)](
                    table,
                    plan.item_table,
                    grad_scale,
                    floor,
                    scalars,
                    item_sums,
                    row_sums,
                    col_part,
                    *math,
                    UPDATES=False,
                    **reduce,
                )
                # (b) the statistics, unchanged where found_inf.
                _statistics_kernel[(n, max(1, triton.cdiv(plan.widest, blocks["COL_BLOCK"])))](
                    table,
                    scalars,
                    item_sums,
                    row_sums,
                    col_part,
                    floor,
                    param_sq,
                    found_inf,
                    eps1,
                    EMA=rule.ema,
                    ROW_MEAN_FLOOR=rule.row_mean_floor,
                    HAS_FOUND=found_inf is not None,
                    BLOCK=stat_block,
                    COL_BLOCK=blocks["COL_BLOCK"],
                    **launch,
                )
                alpha = rule.alpha(c, lr, t, param_sq, plan.numels)
                # (c) the sum of U^2, then s = alpha / max(1, RMS(U) / d).
                _reduce_kernel[(plan.n_items,)](
                    table,
                    plan.item_table,
                    grad_scale,
                    floor,
                    scalars,
                    item_sums,
                    None,
                    None,
                    *math,
                    UPDATES=True,
                    **reduce,
                )
                update_sq = torch.empty(n, **f64)
                _items_total_kernel[(n,)](table, item_sums, update_sq, **launch)
                step = rule.step_size(c, alpha, update_sq, plan.numels)
                scalars[:, COL_STEP_SIZE] = step.float()
                # (d) the element pass.
                _apply_kernel[(plan.n_tiles,)](
                    table,
                    plan.tile_table,
                    grad_scale,
                    found_inf,
                    floor,
                    scalars,
                    -1.0 if c.maximize else 1.0,
                    *math,
                    APPLY=rule.apply,
                    PARAM_DTYPE=dtype,
                    UNSCALE=unscale,
                    HAS_FOUND=found_inf is not None,
                    FIRST_MOMENT=c.first_moment,
                    BLOCK_R=block_r,
                    BLOCK_C=block_c,
                    **launch,
                )
            self.launches += 5
        counts = list(state_steps)
        if found_inf is None:
            torch._foreach_add_(counts, 1.0)
        else:
            torch._foreach_add_(counts, (found_inf.to(counts[0].device) == 0).float())


# The launcher of the triton backend's factored steps (its plans are kept
# between steps, Note [factored plans]).
LAUNCHER = Launcher()


def step(rule, params, grads, per_param_states, state_steps, **kwargs) -> None:
    """LAUNCHER.step: the entry point of fusedopt/triton_backend.py."""
    LAUNCHER.step(rule, params, grads, per_param_states, state_steps, **kwargs)
