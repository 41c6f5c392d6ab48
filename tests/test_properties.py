"""Property tests (hypothesis): random shapes, dtypes, layouts,
hyperparameters and step counts, every backend that runs here against the
reference backend stepping contiguous CPU copies of the same values.

What is drawn: an optimizer of tests/cases.py and one value of each of its
options (the combinations the slow exhaustive sweeps take), one to three
params of one dtype (float32, bfloat16, float16) with 1-4 dims of 0-6
elements each, each param in a layout of its own (contiguous, channels_last,
dims reversed in memory, or a strided slice that is not dense), 1-4 steps,
the backend and the seed of the values. A group with a strided slice runs
under backend="auto", which must step it on the reference (no kernel takes
it); every other group runs on the drawn backend.

The default run is a few dozen examples, derandomized (the same examples on
every run, so CI is stable); `pytest -m slow` draws hundreds at random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from cases import CASES
from fusedopt._checks import is_dense
from helpers import ALL_BACKENDS, BackendCase
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tolerances import tol, ulp

BACKENDS = [backend for backend in ALL_BACKENDS if backend.skip_reason() is None]
CASES_BY_NAME = {case.name: case for case in CASES}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "channels_last", "reversed", "sliced")
MAX_DIMS, MAX_SIZE, MAX_PARAMS, MAX_STEPS = 4, 6, 3, 4


@dataclass(frozen=True)
class Example:
    case: str
    kwargs: dict[str, Any]
    dtype: torch.dtype
    shapes: tuple[tuple[int, ...], ...]
    layouts: tuple[str, ...]
    steps: int
    backend: BackendCase
    seed: int


def layouts_for(shape: tuple[int, ...]) -> tuple[str, ...]:
    """The layouts a param of this shape can take (channels_last is 4-d only)."""
    return tuple(layout for layout in LAYOUTS if layout != "channels_last" or len(shape) == 4)


@st.composite
def examples(draw) -> Example:
    name = draw(st.sampled_from(sorted(CASES_BY_NAME)))
    case = CASES_BY_NAME[name]
    kwargs = {option: draw(st.sampled_from(values)) for option, values in case.options.items()}
    count = draw(st.integers(1, MAX_PARAMS))
    shapes = tuple(
        tuple(draw(st.lists(st.integers(0, MAX_SIZE), min_size=1, max_size=MAX_DIMS)))
        for _ in range(count)
    )
    layouts = tuple(draw(st.sampled_from(layouts_for(shape))) for shape in shapes)
    return Example(
        case=name,
        kwargs=kwargs,
        dtype=draw(st.sampled_from(DTYPES)),
        shapes=shapes,
        layouts=layouts,
        steps=draw(st.integers(1, MAX_STEPS)),
        backend=draw(st.sampled_from(BACKENDS)),
        seed=draw(st.integers(0, 2**16)),
    )


def in_layout(values: torch.Tensor, layout: str, device: str) -> torch.Tensor:
    """A tensor equal to `values` whose memory is laid out as `layout`."""
    values = values.to(device)
    if layout == "channels_last":
        return values.contiguous(memory_format=torch.channels_last)
    if layout == "reversed":
        dims = list(range(values.dim()))[::-1]
        return values.permute(dims).contiguous().permute(dims)
    if layout == "sliced":
        base = torch.zeros(*values.shape[:-1], 2 * values.shape[-1], dtype=values.dtype)
        sliced = base.to(device)[..., ::2]
        return sliced.copy_(values)
    return values.clone()


def max_abs(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def check(example: Example) -> None:
    case = CASES_BY_NAME[example.case]
    backend = example.backend
    gen = torch.Generator().manual_seed(example.seed)
    start = [torch.randn(shape, generator=gen).to(example.dtype) for shape in example.shapes]
    ours = [in_layout(v, layout, backend.device) for v, layout in zip(start, example.layouts)]
    theirs = [v.clone() for v in start]
    sliced = "sliced" in example.layouts
    try:
        opt = case.make(ours, example.kwargs, "auto" if sliced else backend.name)
    except ValueError:
        assume(False)  # options torch refuses together (Nesterov without momentum, ...)
    ref = case.make(theirs, example.kwargs, "reference")
    for _ in range(example.steps):
        grads = [torch.randn(shape, generator=gen).to(example.dtype) for shape in example.shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad = torch.empty_like(p).copy_(g)  # the param's layout, as autograd makes it
            q.grad = g.clone()
        opt.step()
        ref.step()
    chosen = {choice.backend.name for *_, choice in opt.last_step()}
    if any(not is_dense(p) for p in ours):
        assert "reference" in chosen  # no kernel steps a param with gaps
    elif not sliced:
        assert chosen == {backend.name}
    for p, q in zip(ours, theirs):
        assert p.shape == q.shape
        error = max_abs(p.detach().cpu().double() - q.double())
        allowed = param_bound(example, q)
        assert error <= allowed, f"param of shape {tuple(q.shape)}: {error:.3g} > {allowed:.3g}"
        assert opt.state.get(p, {}).keys() == ref.state.get(q, {}).keys()
        for key, value in ref.state.get(q, {}).items():
            mine = opt.state[p][key]
            if key == "step":
                assert mine.item() == value.item() == example.steps
                continue
            if key in case.fused_cls.rule.states and is_dense(p):
                assert mine.stride() == p.stride(), f"{key} is not in its param's layout"
            if example.dtype == torch.float32:
                error = max_abs(mine.detach().cpu().double() - value.double())
                # At the state's own scale: a buffer summing terms of size ~10
                # (RMSprop's g / sqrt(v)) is exact to an ulp of the terms.
                allowed = state_bound(example, max(1.0, max_abs(value)))
                assert error <= allowed, f"{key}: {error:.3g} > {allowed:.3g}"


def param_bound(example: Example, expected: torch.Tensor) -> float:
    """How far a param may be from the reference's after the example's steps:
    float32, per step, the bound of one step against the reference
    (tolerances: one_step_vs_reference) at the tensor's largest magnitude;
    bf16/fp16, per step, a param ulp (tolerances: ulps_per_step_vs_reference)."""
    if example.dtype == torch.float32:
        return state_bound(example, max_abs(expected))
    backend = example.backend
    per_step = tol("ulps_per_step_vs_reference", example.dtype, backend.name, backend.device)
    return example.steps * per_step * ulp(example.dtype, max_abs(expected))


def state_bound(example: Example, scale: float) -> float:
    rtol, atol = tol("one_step_vs_reference", torch.float32)
    return example.steps * (rtol * scale + atol)


SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=40, derandomize=True, **SETTINGS)
@given(examples())
def test_every_backend_matches_the_reference(example):
    check(example)


@pytest.mark.slow
@settings(max_examples=400, **SETTINGS)
@given(examples())
def test_every_backend_matches_the_reference_many_examples(example):
    check(example)
