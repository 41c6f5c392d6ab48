"""Shared test machinery: seeded params and grads, and stepping optimizers in lockstep."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from fusedopt.reference import WeightDecayMode

# Sizes that exercise the chunk and vector edges: empty, one element, less than
# one SIMD vector, one past a power of two, primes, and a size spanning
# several 64K-element CPU chunks with a ragged end.
EDGE_SIZES = (0, 1, 3, 16, 4097, 7919, 65537, 3 * 65536 + 5)


def make_params(
    sizes: Sequence[int | tuple[int, ...]], dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(s,) if isinstance(s, int) else s for s in sizes]
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def clone_params(
    params: Sequence[torch.Tensor], dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    return [p.detach().clone().to(dtype or p.dtype).requires_grad_() for p in params]


def set_grads(param_lists: Sequence[Sequence[torch.Tensor]], step: int, seed: int = 1) -> None:
    """Gives each list the same grads (drawn in the first list's dtype, then cast
    exactly to wider dtypes) for this step."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    first = param_lists[0]
    grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in first]
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = torch.empty_like(p).copy_(g)  # the param's layout, as autograd makes it


def run_lockstep(
    optimizers: Sequence[torch.optim.Optimizer],
    param_lists: Sequence[Sequence[torch.Tensor]],
    steps: int,
    before_step: Callable[[int], None] | None = None,
) -> None:
    for k in range(steps):
        set_grads(param_lists, k)
        if before_step is not None:
            before_step(k)
        for opt in optimizers:
            opt.step()


def adam_hyper(**overrides) -> dict:
    """The Adam ops' keyword arguments after `lr`, for tests that call an op or
    a backend directly: AdamW's defaults unless overridden."""
    kwargs = dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.01,
        weight_decay_mode=WeightDecayMode.DECOUPLED,
        lr_max=1.0,
        amsgrad=False,
        maximize=False,
    )
    kwargs.update(overrides)
    return kwargs
