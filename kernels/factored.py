"""The Triton passes of the factored rules (Note [reduction rules] in
fusedopt/registry.py), mirroring csrc/cpu/factored.h: a param of 2+ dims is
seen as `batch` row-major matrices of rows x cols, a vector as one row.

  (a) _square_sums_kernel   per tile: the sums of x^2 over its rows, its
                            columns and the whole tile (a generic reduction:
                            x is the param or the grad, unscaled)
  (b) torch ops on the device: the partials added in a fixed order, the row
      and column EMAs and the per-tensor scalars (O(rows + cols), float64
      scalars from the device-held counts: no host sync)
  (c) _update_sq_kernel     per tile: the sum of U^2 (the RMS clip)
  (d) _apply_kernel         the element pass

One launch of each kernel per param (not yet one per group, as the
elementwise frame kernels/mta.py does). Every tile's partial sums are stored
and added by torch in their index order, so results do not depend on the
schedule. Bytes per element (fp32 matrix): (a) reads p and g, (c) g, (d) p
and g and writes p: 24 B, as the CPU passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fusedopt.kernels.storage import from_float, to_float

# Tile of the passes on a GPU: 16 rows x 256 columns of fp32 (16 KB per
# stream per program), enough work per program for a memory-bound pass.
# Not measured on a GPU (none was available): a starting point.
BLOCK_ROWS, BLOCK_COLS = 16, 256
# Under the interpreter each program costs ~1-2 ms whatever its size
# (MACHINE.md): larger tiles keep the tests fast.
INTERPRETER_BLOCK_ROWS, INTERPRETER_BLOCK_COLS = 64, 1024
# The per-tensor scalars the element kernels read, in this order.
SCALARS = ("ema_weight", "eps1_sq", "param_decay", "step_size", "beta1", "one_minus_beta1")


@triton.jit
def _tile(pid_r, pid_c, ROWS, COLS, N_ROW_BLOCKS, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(matrix, row indices, column indices, flat offsets, mask) of a tile."""
    b = pid_r // N_ROW_BLOCKS
    rows = (pid_r % N_ROW_BLOCKS) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < ROWS)[:, None] & (cols < COLS)[None, :]
    offs = (b.to(tl.int64) * ROWS + rows)[:, None] * COLS + cols[None, :]
    return b, rows, cols, offs, mask


@triton.jit
def _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE: tl.constexpr):
    g = to_float(tl.load(g_ptr + offs, mask=mask, other=0.0))
    if UNSCALE:
        g = tl.div_rn(g, tl.load(scale_ptr))
    return g


@triton.jit
def _square_sums_kernel(
    x_ptr,
    scale_ptr,
    row_part_ptr,
    col_part_ptr,
    whole_part_ptr,
    ROWS,
    COLS,
    N_ROW_BLOCKS,
    N_COL_BLOCKS,
    TOTAL_ROWS,
    UNSCALE: tl.constexpr,
    ROWS_AND_COLS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial sums of x^2 of one tile: per row (row_part[col block, row]), per
    column (col_part[row block, column]) and whole (whole_part[tile])."""
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    b, rows, cols, offs, mask = _tile(pid_r, pid_c, ROWS, COLS, N_ROW_BLOCKS, BLOCK_R, BLOCK_C)
    x = _load_grad(x_ptr, offs, mask, scale_ptr, UNSCALE)
    sq = tl.where(mask, x * x, 0.0)
    tl.store(whole_part_ptr + pid_r * N_COL_BLOCKS + pid_c, tl.sum(tl.sum(sq, axis=1), axis=0))
    if ROWS_AND_COLS:
        row_offs = pid_c.to(tl.int64) * TOTAL_ROWS + b * ROWS + rows
        tl.store(row_part_ptr + row_offs, tl.sum(sq, axis=1), mask=rows < ROWS)
        tl.store(
            col_part_ptr + pid_r.to(tl.int64) * COLS + cols, tl.sum(sq, axis=0), mask=cols < COLS
        )


@triton.jit
def _variance(
    g,
    offs,
    b,
    rows,
    cols,
    mask,
    row_ptr,
    col_ptr,
    floor_ptr,
    full_ptr,
    w,
    ROWS,
    COLS,
    FACTORED: tl.constexpr,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
):
    if FACTORED:
        row = tl.load(row_ptr + b * ROWS + rows, mask=rows < ROWS, other=1.0)
        col = tl.load(col_ptr + b * COLS + cols, mask=cols < COLS, other=1.0)
        v = FACTORED_VARIANCE(row[:, None], col[None, :], tl.load(floor_ptr + b))
    else:
        v = VECTOR_VARIANCE(tl.load(full_ptr + offs, mask=mask, other=1.0), g, w)
    # Masked lanes: 1, so that their U is finite (g = 0 there; a V of 0 would
    # make 0 * inf) and nothing warns under the interpreter.
    return tl.where(mask, v, 1.0)


@triton.jit
def _update_sq_kernel(
    g_ptr,
    scale_ptr,
    row_ptr,
    col_ptr,
    floor_ptr,
    full_ptr,
    scalars_ptr,
    part_ptr,
    ROWS,
    COLS,
    N_ROW_BLOCKS,
    N_COL_BLOCKS,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    UNSCALE: tl.constexpr,
    FACTORED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The partial sum of U^2 of one tile (part[tile])."""
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    b, rows, cols, offs, mask = _tile(pid_r, pid_c, ROWS, COLS, N_ROW_BLOCKS, BLOCK_R, BLOCK_C)
    g = _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE)
    w, eps1_sq = tl.load(scalars_ptr), tl.load(scalars_ptr + 1)
    v = _variance(
        g,
        offs,
        b,
        rows,
        cols,
        mask,
        row_ptr,
        col_ptr,
        floor_ptr,
        full_ptr,
        w,
        ROWS,
        COLS,
        FACTORED,
        FACTORED_VARIANCE,
        VECTOR_VARIANCE,
    )
    u = RAW_UPDATE(g, v, eps1_sq)
    sq = tl.where(mask, u * u, 0.0)
    tl.store(part_ptr + pid_r * N_COL_BLOCKS + pid_c, tl.sum(tl.sum(sq, axis=1), axis=0))


@triton.jit
def _apply_kernel(
    p_ptr,
    g_ptr,
    scale_ptr,
    found_ptr,
    row_ptr,
    col_ptr,
    floor_ptr,
    full_ptr,
    m_ptr,
    scalars_ptr,
    grad_sign,
    ROWS,
    COLS,
    N_ROW_BLOCKS,
    FACTORED_VARIANCE: tl.constexpr,
    VECTOR_VARIANCE: tl.constexpr,
    RAW_UPDATE: tl.constexpr,
    APPLY: tl.constexpr,
    UNSCALE: tl.constexpr,
    HAS_FOUND: tl.constexpr,
    FACTORED: tl.constexpr,
    FIRST_MOMENT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The element pass of one tile; with found_inf nonzero it writes nothing."""
    pid_r, pid_c = tl.program_id(0), tl.program_id(1)
    b, rows, cols, offs, mask = _tile(pid_r, pid_c, ROWS, COLS, N_ROW_BLOCKS, BLOCK_R, BLOCK_C)
    if HAS_FOUND:
        # (a where, not an &: the interpreter cannot & a bool block with a scalar)
        mask = tl.where(tl.load(found_ptr) == 0.0, mask, False)
    g = _load_grad(g_ptr, offs, mask, scale_ptr, UNSCALE)
    if UNSCALE:
        tl.store(g_ptr + offs, from_float(g, g_ptr.dtype.element_ty), mask=mask)
    w, eps1_sq = tl.load(scalars_ptr), tl.load(scalars_ptr + 1)
    v = _variance(
        g,
        offs,
        b,
        rows,
        cols,
        mask,
        row_ptr,
        col_ptr,
        floor_ptr,
        full_ptr,
        w,
        ROWS,
        COLS,
        FACTORED,
        FACTORED_VARIANCE,
        VECTOR_VARIANCE,
    )
    if not FACTORED:
        tl.store(full_ptr + offs, v, mask=mask)
    u = RAW_UPDATE(g * grad_sign, v, eps1_sq)
    p = to_float(tl.load(p_ptr + offs, mask=mask, other=0.0))
    m = tl.load(m_ptr + offs, mask=mask, other=0.0) if FIRST_MOMENT else p
    p, m = APPLY(
        p,
        u,
        m,
        FIRST_MOMENT,
        tl.load(scalars_ptr + 2),
        tl.load(scalars_ptr + 3),
        tl.load(scalars_ptr + 4),
        tl.load(scalars_ptr + 5),
    )
    tl.store(p_ptr + offs, from_float(p, p_ptr.dtype.element_ty), mask=mask)
    if FIRST_MOMENT:
        tl.store(m_ptr + offs, m, mask=mask)


def _view(p: torch.Tensor) -> tuple[bool, int, int, int]:
    """(factored, batch, rows, cols) of a param."""
    if p.dim() >= 2:
        rows, cols = p.shape[-2], p.shape[-1]
        return True, p.numel() // (rows * cols), rows, cols
    return False, 1, 1, p.numel()


def step(
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
    the lists already checked; `per_param_states` maps each param's state
    names to its tensors. Counts advance after the element pass, unless
    found_inf (Note [step-count protocol] in fusedopt/registry.py)."""
    c = rule.config(hyper)
    block_r, block_c = (
        (INTERPRETER_BLOCK_ROWS, INTERPRETER_BLOCK_COLS)
        if interpreter
        else (BLOCK_ROWS, BLOCK_COLS)
    )
    unscale = grad_scale is not None
    dummy = params[0]  # any pointer for the arguments a configuration does not read
    eps1 = rule.eps1_of(c, torch.finfo(params[0].dtype).eps)
    # The rule's element math, handed to the kernels as constexpr functions.
    math = (rule.factored_variance, rule.vector_variance, rule.raw_update, rule.apply)
    for p, g, state, count in zip(params, grads, per_param_states, state_steps):
        if p.numel() == 0:
            continue
        device = p.device
        factored, batch, rows, cols = _view(p)
        br = block_r if factored else 1
        n_row_blocks, n_col_blocks = triton.cdiv(rows, br), triton.cdiv(cols, block_c)
        grid = (batch * n_row_blocks, n_col_blocks)
        f64 = {"dtype": torch.float64, "device": device}
        f32 = {"dtype": torch.float32, "device": device}
        scale = grad_scale if unscale else dummy
        # (a) sum of p^2; per row and column sums of g^2.
        whole = torch.empty(grid[0] * grid[1], **f32)
        _square_sums_kernel[grid](
            p,
            dummy,
            dummy,
            dummy,
            whole,
            rows,
            cols,
            n_row_blocks,
            n_col_blocks,
            batch * rows,
            False,
            False,
            br,
            block_c,
        )
        param_sq = whole.double().sum()
        t = count.to(**f64) + 1.0
        alpha = rule.alpha(c, lr, t, param_sq, p.numel())
        w = rule.ema_weight(c, t)
        row_stat = col_stat = floor = full = dummy
        if factored:
            row_part = torch.empty(n_col_blocks, batch * rows, **f32)
            col_part = torch.empty(grid[0], cols, **f32)
            _square_sums_kernel[grid](
                g,
                scale,
                row_part,
                col_part,
                whole,
                rows,
                cols,
                n_row_blocks,
                n_col_blocks,
                batch * rows,
                unscale,
                True,
                br,
                block_c,
            )
            # (b) the means of g^2, the EMAs (torch's lerp_, as the rule's ema),
            # max(mean(R), eps1) per matrix; unchanged where found_inf.
            row_mean = (row_part.double().sum(0) / cols).float().view(batch, rows)
            col_mean = (col_part.double().view(batch, n_row_blocks, cols).sum(1) / rows).float()
            row_stat, col_stat = state["row_var"], state["col_var"]
            new_row = row_stat.view(batch, rows).lerp(row_mean, w.float())
            new_col = col_stat.view(batch, cols).lerp(col_mean, w.float())
            floor = new_row.double().sum(1).div(rows).float().clamp(min=eps1)
            if found_inf is not None:
                keep = found_inf.to(device) != 0
                new_row = torch.where(keep, row_stat.view(batch, rows), new_row)
                new_col = torch.where(keep, col_stat.view(batch, cols), new_col)
            row_stat.view(batch, rows).copy_(new_row)
            col_stat.view(batch, cols).copy_(new_col)
        else:
            full = state["variance"]
        # Fills, not copies from the host (a copy of a pageable scalar syncs).
        decay = rule.param_decay(c, lr)
        decay = decay.to(**f64) if isinstance(decay, torch.Tensor) else torch.full((), decay, **f64)
        scalars = torch.stack(
            [
                w,
                torch.full((), eps1 * eps1, **f64),
                decay,
                torch.zeros((), **f64),
                torch.full((), c.beta1, **f64),
                torch.full((), 1.0 - c.beta1, **f64),
            ]
        ).float()
        # (c) the sum of U^2, then s = alpha / max(1, RMS(U) / d).
        _update_sq_kernel[grid](
            g,
            scale,
            row_stat,
            col_stat,
            floor,
            full,
            scalars,
            whole,
            rows,
            cols,
            n_row_blocks,
            n_col_blocks,
            *math[:3],
            unscale,
            factored,
            br,
            block_c,
        )
        scalars[3] = rule.step_size(c, alpha, whole.double().sum(), p.numel()).float()
        # (d) the element pass.
        momentum = state.get("exp_avg", dummy)
        _apply_kernel[grid](
            p,
            g,
            scale,
            found_inf if found_inf is not None else dummy,
            row_stat,
            col_stat,
            floor,
            full,
            momentum,
            scalars,
            -1.0 if c.maximize else 1.0,
            rows,
            cols,
            n_row_blocks,
            *math,
            unscale,
            found_inf is not None,
            factored,
            c.first_moment,
            br,
            block_c,
        )
    for count in state_steps:
        if found_inf is None:
            count.add_(1.0)
        else:
            count.add_((found_inf.to(count.device) == 0).float())
