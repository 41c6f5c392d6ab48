"""The Triton passes of the factored rules (Note [reduction rules] in
fusedopt/registry.py), mirroring csrc/cpu/factored.h: a param of 2+ dims is
seen as `batch` row-major matrices of rows x cols, a vector as a flat run.

Each pass is one launch for all the params of a call (one device and param
dtype), as the elementwise frame kernels/mta.py: a program reads its param's
index from a tile table (one int32 per program) and the param's addresses and
geometry from a tensor table (one int64 row per param), both cached between
steps (Note [factored plans]).

  (a) _square_sums_kernel  per tile: the sum of p^2 over the tile; for a
                           matrix also the sums of g^2 (unscaled) over the
                           tile's rows and over its columns
  (b) _statistics_kernel   per param (and column chunk): the sum of p^2, the
                           row and column means of g^2, their EMAs (the rule's
                           `ema`), max(mean(R), eps1) per matrix
      torch, a fixed number of float64 ops per call whatever the params: the
      per-tensor scalars, from the device-held counts (no host sync)
  (c) _update_sq_kernel    per tile: the sum of U^2 (the RMS clip), then
      _tile_sums_kernel    per param: its tiles' sums added
  (d) _apply_kernel        the element pass

Five launches per step, however many params: GPT-2 small's 148 took 494
launches before (four per matrix, three per vector) and some 2,500 small
torch ops.

Note [factored sums]: every sum is a function of the param's shape and the
block sizes alone, never of the other params of the call or the schedule: a
tile sums in fp32 (a tl.sum tree fixed by BLOCK_R x BLOCK_C), and the tiles'
sums of a param, its rows' partials and its columns' partials are added in
double, lane k of a block-wide accumulator taking partials k, k + BLOCK, ...
in order, the lanes then added by a tl.sum tree. So a param gets the same
bits stepped alone or in any group (tests/test_adafactor.py). It is not the
CPU backend's order (csrc/cpu/reduce.h: double lanes along each row, items
of whole rows): the two agree within rounding, not bit for bit.

Bytes per element (fp32 matrix): (a) reads p and g, (c) g, (d) p and g and
writes p: 24 B, as the CPU passes; (b) reads the partial sums, 4 B per
BLOCK_R elements (columns) and per BLOCK_C elements (rows).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import triton
import triton.language as tl
from fusedopt.kernels.mta import _TORCH_TO_TRITON, FP_FUSION, _address, _device_guard
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
COL_FIRST_TILE = tl.constexpr(12)  # its first program in the tile passes
COL_TILES = tl.constexpr(13)
COL_ROW_PART = tl.constexpr(14)  # its first row partial: [col block, batch * rows]
COL_COL_PART = tl.constexpr(15)  # its first column partial: [batch * row blocks, cols]
COL_FLOOR = tl.constexpr(16)  # its first matrix's max(mean(R), eps1)
TENSOR_COLS = tl.constexpr(17)
# The per-tensor scalars the tile kernels read, one fp32 row per param, in this order.
SCALARS = ("ema_weight", "eps1_sq", "param_decay", "step_size", "beta1", "one_minus_beta1")
SCALAR_COLS = tl.constexpr(len(SCALARS))
COL_STEP_SIZE = SCALARS.index("step_size")

# Tile of the passes on a GPU: 16 rows x 256 columns of fp32 (16 KB per
# stream per program), enough work per program for a memory-bound pass.
# Not measured on a GPU (none was available): a starting point.
BLOCK_ROWS, BLOCK_COLS = 16, 256
# The statistics pass on a GPU: 1024 lanes (rows, or partials) per step of its
# loops, and columns in chunks of 128 summed over 8 row blocks per step (an
# fp64 accumulator of 8 x 128: 16 doubles per thread at 2 warps). wte of GPT-2
# (50257 x 768) has 3142 row blocks: 393 steps per chunk, 6 chunks in
# parallel. Not measured on a GPU: a starting point.
STAT_BLOCK, STAT_PART_ROWS, STAT_PART_COLS = 1024, 8, 128
# Under the interpreter each program costs ~1-2 ms whatever its size
# (MACHINE.md): larger tiles and chunks keep the tests fast.
INTERPRETER_BLOCK_ROWS, INTERPRETER_BLOCK_COLS = 64, 1024
INTERPRETER_STAT_BLOCK, INTERPRETER_STAT_PART_ROWS, INTERPRETER_STAT_PART_COLS = 16384, 64, 1024
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
def _square_sums_kernel(
    tensor_table,
    tile_table,
    scale_ptr,
    param_part_ptr,
    row_part_ptr,
    col_part_ptr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass (a), one tile per program: the sum of p^2 over the tile
    (param_part[program]); for a matrix the sums of g^2 per row
    (row_part[col block, batch * rows]) and per column (col_part[row block, cols])."""
    pid = tl.program_id(0)
    row = tensor_table + tl.load(tile_table + pid) * TENSOR_COLS
    local = pid - tl.load(row + COL_FIRST_TILE)
    factored = tl.load(row + COL_FACTORED)
    # Both variants are compiled; the param's flag picks one at run time.
    for FACTORED in tl.static_range(2):
        if factored == FACTORED:
            b, rows, cols, pid_r, pid_c, offs, mask = _tile(row, local, FACTORED, BLOCK_R, BLOCK_C)
            p = to_float(tl.load(_address(row, COL_PARAM, PARAM_DTYPE, False) + offs, mask=mask))
            p_sq = tl.where(mask, p * p, 0.0)
            tl.store(param_part_ptr + pid, tl.sum(tl.sum(p_sq, axis=1), axis=0))
            if FACTORED:
                g_ptr = _address(row, COL_GRAD, PARAM_DTYPE, False)
                g = _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE)
                sq = tl.where(mask, g * g, 0.0)
                rows_n = tl.load(row + COL_ROWS)
                cols_n = tl.load(row + COL_COLS)
                total_rows = tl.load(row + COL_BATCH) * rows_n
                row_offs = tl.load(row + COL_ROW_PART) + pid_c * total_rows + b * rows_n + rows
                tl.store(row_part_ptr + row_offs, tl.sum(sq, axis=1), mask=rows < rows_n)
                col_offs = tl.load(row + COL_COL_PART) + pid_r * cols_n + cols
                tl.store(col_part_ptr + col_offs, tl.sum(sq, axis=0), mask=cols < cols_n)


@triton.jit
def _partials_sum(part_ptr, first, count, BLOCK: tl.constexpr):
    """part[first:first + count] added in double (Note [factored sums])."""
    acc = tl.zeros([BLOCK], tl.float64)
    for start in range(0, count, BLOCK):
        index = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + first + index, mask=index < count, other=0.0).to(tl.float64)
    return tl.sum(acc, axis=0)


@triton.jit
def _statistics_kernel(
    tensor_table,
    scalars_ptr,
    param_part_ptr,
    row_part_ptr,
    col_part_ptr,
    floor_ptr,
    param_sq_ptr,
    found_ptr,
    eps1,
    EMA: tl.constexpr,
    ROW_MEAN_FLOOR: tl.constexpr,
    HAS_FOUND: tl.constexpr,
    BLOCK: tl.constexpr,
    PART_ROWS: tl.constexpr,
    PART_COLS: tl.constexpr,
):
    """Pass (b) of param program_id(0): program (i, 0) stores the sum of p^2
    (param_sq[i]) and, for a matrix, each row's EMA of mean(g^2) and the
    matrix's max(mean(R), eps1); program (i, j) the EMA of mean(g^2) of
    columns [j PART_COLS, (j + 1) PART_COLS) of each matrix. With found_inf
    nonzero the statistics keep their values."""
    i = tl.program_id(0)
    chunk = tl.program_id(1)
    row = tensor_table + i * TENSOR_COLS
    factored = tl.load(row + COL_FACTORED) != 0
    batch = tl.load(row + COL_BATCH)
    rows_n = tl.load(row + COL_ROWS)
    cols_n = tl.load(row + COL_COLS)
    n_row_blocks = tl.load(row + COL_ROW_BLOCKS)
    n_col_blocks = tl.load(row + COL_COL_BLOCKS)
    w = tl.load(scalars_ptr + i * SCALAR_COLS)
    keep = True
    if HAS_FOUND:
        keep = tl.load(found_ptr) == 0.0
    # (stores masked by a where, not an &: the interpreter cannot & a bool
    # block with a scalar)
    if chunk == 0:
        sq = _partials_sum(
            param_part_ptr, tl.load(row + COL_FIRST_TILE), tl.load(row + COL_TILES), BLOCK
        )
        tl.store(param_sq_ptr + i, sq)
        if factored:
            row_stat = _address(row, COL_ROW_STAT, tl.float32, False)
            row_part = row_part_ptr + tl.load(row + COL_ROW_PART)
            for b in range(0, batch):
                row_stat_sum = tl.zeros([BLOCK], tl.float64)
                for start in range(0, rows_n, BLOCK):
                    r = start + tl.arange(0, BLOCK)
                    live = r < rows_n
                    total = tl.zeros([BLOCK], tl.float64)
                    for cb in range(0, n_col_blocks):
                        part = tl.load(
                            row_part + (cb * batch + b) * rows_n + r, mask=live, other=0.0
                        )
                        total += part.to(tl.float64)
                    mean = (total / cols_n).to(tl.float32)
                    old = tl.load(row_stat + b * rows_n + r, mask=live, other=0.0)
                    new = EMA(old, mean, w)
                    tl.store(row_stat + b * rows_n + r, new, mask=tl.where(keep, live, False))
                    row_stat_sum += tl.where(live, new.to(tl.float64), 0.0)
                row_mean = (tl.sum(row_stat_sum, axis=0) / rows_n).to(tl.float32)
                tl.store(floor_ptr + tl.load(row + COL_FLOOR) + b, ROW_MEAN_FLOOR(row_mean, eps1))
    if factored and chunk * PART_COLS < cols_n:
        col_stat = _address(row, COL_COL_STAT, tl.float32, False)
        col_part = col_part_ptr + tl.load(row + COL_COL_PART)
        c = chunk * PART_COLS + tl.arange(0, PART_COLS)
        for b in range(0, batch):
            total = tl.zeros([PART_ROWS, PART_COLS], tl.float64)
            for start in range(0, n_row_blocks, PART_ROWS):
                rb = start + tl.arange(0, PART_ROWS)
                live = (rb < n_row_blocks)[:, None] & (c < cols_n)[None, :]
                offs = (b * n_row_blocks + rb)[:, None] * cols_n + c[None, :]
                total += tl.load(col_part + offs, mask=live, other=0.0).to(tl.float64)
            mean = (tl.sum(total, axis=0) / rows_n).to(tl.float32)
            live = c < cols_n
            old = tl.load(col_stat + b * cols_n + c, mask=live, other=0.0)
            tl.store(col_stat + b * cols_n + c, EMA(old, mean, w), mask=tl.where(keep, live, False))


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


@triton.jit
def _update_sq_kernel(
    tensor_table,
    tile_table,
    scale_ptr,
    floor_ptr,
    scalars_ptr,
    part_ptr,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    PARAM_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass (c), one tile per program: the sum of U^2 over the tile (part[program])."""
    pid = tl.program_id(0)
    tensor = tl.load(tile_table + pid)
    row = tensor_table + tensor * TENSOR_COLS
    local = pid - tl.load(row + COL_FIRST_TILE)
    factored = tl.load(row + COL_FACTORED)
    w = tl.load(scalars_ptr + tensor * SCALAR_COLS)
    eps1_sq = tl.load(scalars_ptr + tensor * SCALAR_COLS + 1)
    for FACTORED in tl.static_range(2):
        if factored == FACTORED:
            b, rows, cols, pid_r, pid_c, offs, mask = _tile(row, local, FACTORED, BLOCK_R, BLOCK_C)
            g_ptr = _address(row, COL_GRAD, PARAM_DTYPE, False)
            g = _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE)
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
            u = RAW_UPDATE(g, v, eps1_sq)
            sq = tl.where(mask, u * u, 0.0)
            tl.store(part_ptr + pid, tl.sum(tl.sum(sq, axis=1), axis=0))


@triton.jit
def _tile_sums_kernel(tensor_table, part_ptr, out_ptr, BLOCK: tl.constexpr):
    """Each param's tiles' partial sums added (out[param], double)."""
    i = tl.program_id(0)
    row = tensor_table + i * TENSOR_COLS
    first, count = tl.load(row + COL_FIRST_TILE), tl.load(row + COL_TILES)
    tl.store(out_ptr + i, _partials_sum(part_ptr, first, count, BLOCK))


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
    pinned memory, without a host sync; the tile table once per plan."""

    def __init__(self, params, key_addresses, shapes, block_r: int, block_c: int):
        device = params[0].device
        self.key_addresses, self.shapes, self.device = key_addresses, shapes, device
        n = len(params)
        host = torch.zeros((n, TENSOR_COLS.value), dtype=torch.int64)
        host[:, COL_PARAM.value : COL_MOMENTUM.value + 1] = torch.tensor(
            key_addresses, dtype=torch.int64
        ).view(n, COL_MOMENTUM.value + 1)
        tiles, row_part, col_part, floors = 0, 0, 0, 0
        for i, p in enumerate(params):
            # A zero-size param is an empty vector: no tiles, no statistics.
            factored, batch, rows, cols = _view(p) if p.numel() else (False, 1, 1, 0)
            if factored:
                n_row_blocks = triton.cdiv(rows, block_r)
                n_col_blocks = triton.cdiv(cols, block_c)
                n_tiles = batch * n_row_blocks * n_col_blocks
            else:
                n_row_blocks, n_col_blocks = triton.cdiv(cols, block_r * block_c), 1
                n_tiles = n_row_blocks
            host[i, COL_FACTORED.value :] = torch.tensor(
                [
                    int(factored),
                    batch,
                    rows,
                    cols,
                    n_row_blocks,
                    n_col_blocks,
                    tiles,
                    n_tiles,
                    row_part,
                    col_part,
                    floors,
                ]
            )
            tiles += n_tiles
            if factored:
                row_part += n_col_blocks * batch * rows
                col_part += batch * n_row_blocks * cols
                floors += batch
        self.host = host
        self.n_tiles = tiles
        self.sizes = (max(row_part, 1), max(col_part, 1), max(floors, 1))
        # Column chunks of the statistics pass: the widest matrix's.
        self.widest = int(host[:, COL_COLS.value].mul(host[:, COL_FACTORED.value]).max())
        counts = host[:, COL_TILES.value]
        tile_host = torch.repeat_interleave(torch.arange(n, dtype=torch.int32), counts)
        self.tile_table = self._upload(tile_host)
        self.numels = torch.tensor([p.numel() for p in params], dtype=torch.float64).to(device)
        self.captured_uploads: list[Tensor] = []

    def _upload(self, host: Tensor) -> Tensor:
        out = torch.empty_like(host, device=self.device)
        if not out.is_cuda:
            return out.copy_(host)
        pinned = host.pin_memory()
        out.copy_(pinned, non_blocking=True)
        if torch.cuda.is_current_stream_capturing():
            self.captured_uploads.append(pinned)
        return out

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
            stat_block, stat_part_rows, stat_part_cols = (
                INTERPRETER_STAT_BLOCK,
                INTERPRETER_STAT_PART_ROWS,
                INTERPRETER_STAT_PART_COLS,
            )
        else:
            block_r, block_c = BLOCK_ROWS, BLOCK_COLS
            stat_block, stat_part_rows, stat_part_cols = STAT_BLOCK, STAT_PART_ROWS, STAT_PART_COLS
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
                tiles = plan.tile_table
                math = (rule.factored_variance, rule.vector_variance, rule.raw_update)
                row_size, col_size, floor_size = plan.sizes
                param_part = torch.empty(plan.n_tiles, **f32)
                row_part = torch.empty(row_size, **f32)
                col_part = torch.empty(col_size, **f32)
                floor = torch.empty(floor_size, **f32)
                param_sq = torch.empty(n, **f64)
                tile_grid = (plan.n_tiles,)
                launch = {"enable_fp_fusion": FP_FUSION}
                # (a) sums of p^2; per row and column sums of g^2.
                _square_sums_kernel[tile_grid](
                    table,
                    tiles,
                    grad_scale,
                    param_part,
                    row_part,
                    col_part,
                    PARAM_DTYPE=dtype,
                    UNSCALE=unscale,
                    BLOCK_R=block_r,
                    BLOCK_C=block_c,
                    **launch,
                )
                # (b) the statistics, unchanged where found_inf.
                _statistics_kernel[(n, max(1, triton.cdiv(plan.widest, stat_part_cols)))](
                    table,
                    scalars,
                    param_part,
                    row_part,
                    col_part,
                    floor,
                    param_sq,
                    found_inf,
                    eps1,
                    EMA=rule.ema,
                    ROW_MEAN_FLOOR=rule.row_mean_floor,
                    HAS_FOUND=found_inf is not None,
                    BLOCK=stat_block,
                    PART_ROWS=stat_part_rows,
                    PART_COLS=stat_part_cols,
                    **launch,
                )
                alpha = rule.alpha(c, lr, t, param_sq, plan.numels)
                # (c) the sum of U^2, then s = alpha / max(1, RMS(U) / d).
                _update_sq_kernel[tile_grid](
                    table,
                    tiles,
                    grad_scale,
                    floor,
                    scalars,
                    param_part,
                    *math,
                    PARAM_DTYPE=dtype,
                    UNSCALE=unscale,
                    BLOCK_R=block_r,
                    BLOCK_C=block_c,
                    **launch,
                )
                update_sq = torch.empty(n, **f64)
                _tile_sums_kernel[(n,)](table, param_part, update_sq, BLOCK=stat_block, **launch)
                step = rule.step_size(c, alpha, update_sq, plan.numels)
                scalars[:, COL_STEP_SIZE] = step.float()
                # (d) the element pass.
                _apply_kernel[tile_grid](
                    table,
                    tiles,
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
