"""The Triton Adam kernels under the interpreter (TRITON_INTERPRET=1, set by
conftest.py): parity with fusedopt.reference and torch.optim, the edges that
blocks and vector hints create, GradScaler's tensors, and the launch count.

The interpreter costs 1-2 ms per program, so tensors are small and the block
size is chosen per test (BLOCK below) to still make several blocks and tails.
"""

from __future__ import annotations

import pytest

# Triton is what these tests test: without it (a CPU-only torch) there is nothing to run.
pytest.importorskip("triton")

import fusedopt  # noqa: E402
import torch  # noqa: E402
from fusedopt import backends, reference  # noqa: E402
from fusedopt.kernels import adam as kernels  # noqa: E402
from helpers import adam_hyper  # noqa: E402

# A small block so that small tensors still span several programs, with tails.
BLOCK = 1024
SIZES = [0, 1, 3, 4, 17, 1031, 4097, 2053, 0]  # primes, one block + 7, a zero-size last

# Tolerances, per param dtype, against the reference (which runs in fp32 too):
#  - fp32: the kernel's per-tensor scalars come from fp64 exp2/log2 instead of
#    Python's pow, and the interpreter's numpy ops may round differently from
#    torch's vectorized CPU kernels: a few ulps at most (fp32 ulp is 6e-8 relative).
#  - bf16: the interpreter TRUNCATES fp32 -> bf16 where torch (and every GPU)
#    rounds to nearest even (seen with triton 3.8), so a stored param may be 1 bf16
#    ulp below the reference's: compare within 1 ulp.
#  - fp16: numpy rounds to nearest, but a 1-ulp fp32 difference can still flip
#    the rounding of a value near a tie: within 1 fp16 ulp.
FP32_RTOL, FP32_ATOL = 2e-6, 1e-7
MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11}


def assert_within_one_ulp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """|actual - expected| <= 1 ulp of `expected` in its (16-bit) dtype."""
    assert actual.dtype == expected.dtype
    a, e = actual.float(), expected.float()
    _, exponent = torch.frexp(e)
    ulp = torch.ldexp(torch.ones_like(e), exponent - MANTISSA_BITS[expected.dtype])
    bad = (a - e).abs() > ulp
    assert not bad.any(), f"{int(bad.sum())} elements over 1 ulp: {a[bad][:5]} vs {e[bad][:5]}"


def assert_param_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=FP32_RTOL, atol=FP32_ATOL)
    else:
        assert_within_one_ulp(actual, expected)


def make_lists(sizes, dtype, amsgrad, step=3.0, seed=0):
    """Params, grads and nonzero states as after a few steps."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    exp_avgs = [0.1 * torch.randn(n, generator=gen) for n in sizes]
    exp_avg_sqs = [0.01 * torch.rand(n, generator=gen) for n in sizes]
    maxes = [v + 0.01 * torch.rand(v.shape, generator=gen) for v in exp_avg_sqs]
    steps = [torch.tensor(step) for _ in sizes]
    return [params, grads, exp_avgs, exp_avg_sqs, maxes if amsgrad else [], steps]


def clone_lists(lists):
    return [[t.clone() for t in ts] for ts in lists]


def reference_step(lists, *, lr, grad_scale=None, **hyper):
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps = lists
    for i in range(len(params)):
        reference.adam_step_(
            params[i],
            grads[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            maxes[i] if hyper["amsgrad"] else None,
            steps[i],
            lr=lr,
            grad_scale=grad_scale,
            **{**hyper, "weight_decay_mode": reference.WeightDecayMode(hyper["weight_decay_mode"])},
        )


def assert_lists_close(actual, expected):
    for name, xs, ys in zip(
        ["param", "grad", "exp_avg", "exp_avg_sq", "max", "step"], actual, expected, strict=True
    ):
        for x, y in zip(xs, ys, strict=True):
            if name in ("param", "grad"):
                assert_param_close(x, y)
            else:
                torch.testing.assert_close(x, y, rtol=FP32_RTOL, atol=FP32_ATOL)


def hyper(weight_decay_mode=1, amsgrad=False, maximize=False, weight_decay=0.1, lr_max=1.0):
    return adam_hyper(
        weight_decay=weight_decay,
        weight_decay_mode=weight_decay_mode,
        lr_max=lr_max,
        amsgrad=amsgrad,
        maximize=maximize,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_decay_mode", [0, 1, 2])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("steps_in_kernel", [False, True])
def test_matches_reference(dtype, weight_decay_mode, amsgrad, maximize, steps_in_kernel):
    h = hyper(weight_decay_mode, amsgrad, maximize, lr_max=2e-2)
    lists = make_lists(SIZES, dtype, amsgrad)
    expected = clone_lists(lists)
    kernels.AdamLauncher().adam_step(
        *lists, lr=1e-2, **h, steps_in_kernel=steps_in_kernel, block=BLOCK
    )
    reference_step(expected, lr=1e-2, **h)
    assert_lists_close(lists, expected)
    assert all(s.item() == 4.0 for s in lists[5]), "every step count, empty tensors' too, +1"


def test_fp32_result_moves_and_tolerance_is_tight():
    """The fp32 tolerance must be able to fail: one step moves params by ~lr,
    10^4 times FP32_ATOL, and a wrong lr is caught."""
    lists = make_lists([4097], torch.float32, False)
    before = lists[0][0].clone()
    expected = clone_lists(lists)
    kernels.AdamLauncher().adam_step(
        *lists, lr=1.001e-2, **hyper(), steps_in_kernel=False, block=BLOCK
    )
    reference_step(expected, lr=1e-2, **hyper())
    assert (lists[0][0] - before).abs().max() > 1e-3
    with pytest.raises(AssertionError):
        assert_param_close(lists[0][0], expected[0][0])


def test_one_ulp_check_can_fail():
    x = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    assert_within_one_ulp(x + torch.tensor([0.0078125, 0.0], dtype=torch.bfloat16), x)
    with pytest.raises(AssertionError):
        assert_within_one_ulp(x + torch.tensor([0.015625 * 2, 0.0], dtype=torch.bfloat16), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_views_take_the_masked_path(dtype):
    """A param that is a view at an odd element offset has no 16-byte aligned
    address: none of its blocks may be flagged full (that flag is what licenses
    the vector hints), and its results stay right."""
    n = 3000
    buffers = [torch.randn(n + 1).to(dtype), torch.randn(n + 1).to(dtype)]
    param, grad = buffers[0][1:], buffers[1][1:]
    aligned = torch.randn(n).to(dtype)
    lists = [
        [param, aligned],
        [grad, torch.randn(n).to(dtype)],
        [torch.zeros(n), torch.zeros(n)],
        [torch.zeros(n), torch.zeros(n)],
        [],
        [torch.tensor(0.0), torch.tensor(0.0)],
    ]
    expected = clone_lists(lists)
    outside = buffers[0][0].clone()  # the element just before the view
    launcher = kernels.AdamLauncher()
    launcher.adam_step(*lists, lr=1e-2, **hyper(), steps_in_kernel=False, block=BLOCK)
    reference_step(expected, lr=1e-2, **hyper())
    assert_lists_close(lists, expected)
    (plan,) = launcher._plans.values()
    codes = plan.block_table[:, kernels.COL_CODE.value]
    tensor, full = codes >> 1, codes & 1
    assert full[tensor == 0].sum() == 0, "an unaligned view's block is flagged for vector hints"
    assert full[tensor == 1].tolist() == [1, 1, 0], "3000 = 2 full blocks of 1024 + a tail"
    assert torch.equal(buffers[0][0], outside) and param.data_ptr() % 16 != 0


def test_many_tiny_tensors_one_launch():
    """2000 tensors of 1 to 7 elements: one launch for the whole bucket."""
    sizes = [1 + i % 7 for i in range(2000)]
    lists = make_lists(sizes, torch.float32, False)
    expected = clone_lists(lists)
    launcher = kernels.AdamLauncher()
    launcher.adam_step(*lists, lr=1e-2, **hyper(), steps_in_kernel=False)
    assert launcher.launches == 1
    reference_step(expected, lr=1e-2, **hyper())
    assert_lists_close(lists, expected)


def test_steps_in_kernel_is_two_launches_and_reuses_the_plan():
    launcher = kernels.AdamLauncher()
    lists = make_lists([5, 9], torch.float32, False)
    for _ in range(2):
        launcher.adam_step(*lists, lr=1e-2, **hyper(), steps_in_kernel=True, block=BLOCK)
    assert launcher.launches == 4
    assert len(launcher._plans) == 1


def test_new_grads_refresh_the_table():
    """Grads may be new tensors each step (zero_grad(set_to_none=True)): the
    plan must follow them, not read the freed ones."""
    launcher = kernels.AdamLauncher()
    lists = make_lists([33, 2000], torch.float32, False)
    expected = clone_lists(lists)
    for seed in range(2):
        fresh = make_lists([33, 2000], torch.float32, False, seed=10 + seed)[1]
        lists[1], expected[1] = fresh, [g.clone() for g in fresh]
        launcher.adam_step(*lists, lr=1e-2, **hyper(), steps_in_kernel=False, block=BLOCK)
        reference_step(expected, lr=1e-2, **hyper())
    assert_lists_close(lists, expected)
    assert len(launcher._plans) == 1


def test_steps_that_differ_per_tensor():
    """After a partial load_state_dict, tensors can be at different steps: each
    gets its own bias corrections, on both paths."""
    for steps_in_kernel in (False, True):
        lists = make_lists([7, 1030, 5], torch.float32, True)
        lists[5] = [torch.tensor(0.0), torch.tensor(41.0), torch.tensor(1000.0)]
        expected = clone_lists(lists)
        kernels.AdamLauncher().adam_step(
            *lists, lr=1e-2, **hyper(amsgrad=True), steps_in_kernel=steps_in_kernel, block=BLOCK
        )
        reference_step(expected, lr=1e-2, **hyper(amsgrad=True))
        assert_lists_close(lists, expected)


@pytest.mark.parametrize("steps_in_kernel", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_scale_and_found_inf(steps_in_kernel, dtype):
    sizes = [3, 1500]
    # found_inf nonzero: nothing at all is written, step counts included.
    lists = make_lists(sizes, dtype, True)
    before = clone_lists(lists)
    kernels.AdamLauncher().adam_step(
        *lists,
        lr=1e-2,
        **hyper(amsgrad=True),
        grad_scale=torch.tensor(1024.0),
        found_inf=torch.tensor(1.0),
        steps_in_kernel=steps_in_kernel,
        block=BLOCK,
    )
    for xs, ys in zip(lists, before, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x, y)
    # found_inf zero: grads are divided by the scale and stored back unscaled.
    expected = clone_lists(lists)
    kernels.AdamLauncher().adam_step(
        *lists,
        lr=1e-2,
        **hyper(amsgrad=True),
        grad_scale=torch.tensor(1024.0),
        found_inf=torch.tensor(0.0),
        steps_in_kernel=steps_in_kernel,
        block=BLOCK,
    )
    reference_step(expected, lr=1e-2, grad_scale=1024.0, **hyper(amsgrad=True))
    assert_lists_close(lists, expected)
    assert lists[1][1].abs().max() < 0.01, "grads were stored back unscaled"


@pytest.mark.parametrize("steps_in_kernel", [False, True])
def test_lr_as_a_tensor(steps_in_kernel):
    lists = make_lists([3, 1100], torch.float32, False)
    expected = clone_lists(lists)
    lr = torch.tensor(3e-3)
    kernels.AdamLauncher().adam_step(
        *lists, lr=lr, **hyper(), steps_in_kernel=steps_in_kernel, block=BLOCK
    )
    reference_step(expected, lr=lr.item(), **hyper())
    assert_lists_close(lists, expected)


def test_in_kernel_path_never_syncs(monkeypatch):
    """With steps, lr, grad_scale and found_inf in memory, the launcher reads no
    tensor's value on the host (what capturable needs): every host read raises."""
    lists = make_lists([3, 1100], torch.float32, False)
    scalars = [torch.tensor(2e-3), torch.tensor(8.0), torch.tensor(0.0)]
    launcher = kernels.AdamLauncher()

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host read"):
        bool(torch.tensor(1.0))
    # The interpreter itself reads memory through numpy, not these methods.
    launcher.adam_step(
        *lists,
        lr=scalars[0],
        **hyper(),
        grad_scale=scalars[1],
        found_inf=scalars[2],
        steps_in_kernel=True,
        block=BLOCK,
    )
    monkeypatch.undo()
    assert [s.item() for s in lists[5]] == [4.0, 4.0]


def test_only_empty_tensors_still_count_steps():
    lists = make_lists([0, 0], torch.float32, False)
    launcher = kernels.AdamLauncher()
    launcher.adam_step(*lists, lr=1e-2, **hyper(), steps_in_kernel=False, block=BLOCK)
    assert [s.item() for s in lists[5]] == [4.0, 4.0]
    assert launcher.launches == 0


# The whole optimizer path, on CPU tensors through the interpreter.


def _model_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (7,), (1,), (33, 31), (0,), (4, 4, 2)]
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def _run(optimizer_cls, params, steps=3, **kwargs):
    opt = optimizer_cls(params, **kwargs)
    for k in range(steps):
        gen = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()
    return opt


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_optimizer_matches_torch(amsgrad, maximize, decoupled):
    """fusedopt.AdamW/Adam(backend="triton") against torch.optim's single-tensor
    path over 3 steps: per-step ulp-level differences may compound, hence 1e-5."""
    ours_cls, torch_cls = (
        (fusedopt.AdamW, torch.optim.AdamW) if decoupled else (fusedopt.Adam, torch.optim.Adam)
    )
    kwargs = dict(lr=1e-2, weight_decay=0.05, amsgrad=amsgrad, maximize=maximize)
    ours, theirs = _model_params(torch.float32), _model_params(torch.float32)
    opt = _run(ours_cls, ours, backend="triton", **kwargs)
    ref = _run(torch_cls, theirs, foreach=False, **kwargs)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, q in zip(ours, theirs, strict=True):
        for key, value in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-5, atol=1e-6)
    assert fusedopt.report(opt).count("params on cpu -> triton") == 1


def test_optimizer_bf16_matches_reference_backend():
    """One step: the interpreter's truncation (see the tolerance table) lowers a
    stored bf16 param by up to 1 ulp per step, and the next step starts from it,
    so the gap grows by up to an ulp a step."""
    ours, theirs = _model_params(torch.bfloat16), _model_params(torch.bfloat16)
    _run(fusedopt.AdamW, ours, steps=1, backend="triton", amsgrad=True)
    _run(fusedopt.AdamW, theirs, steps=1, backend="reference", amsgrad=True)
    for p, q in zip(ours, theirs, strict=True):
        assert_within_one_ulp(p.detach(), q.detach())


def test_optimizer_one_launch_per_group_and_dtype():
    groups = [
        {"params": _model_params(torch.float32) + _model_params(torch.bfloat16, 1)},
        {"params": _model_params(torch.float16, 2), "lr": torch.tensor(1e-3)},
    ]
    launcher = backends.get("triton").launcher
    before = launcher.launches
    opt = fusedopt.AdamW(groups, backend="triton")
    for group in groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    assert launcher.launches - before == 3


def test_backend_availability(monkeypatch):
    backend = backends.get("triton")
    cpu = backends.Bucket(torch.device("cpu"), torch.float32, True)
    assert backend.unavailable_reason() is None
    assert backend.unsupported_reason(cpu) is None
    assert "float64" in backend.unsupported_reason(
        backends.Bucket(torch.device("cpu"), torch.float64, True)
    )
    assert "dense" in backend.unsupported_reason(
        backends.Bucket(torch.device("cpu"), torch.float32, False)
    )
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in backend.unsupported_reason(cpu)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in backend.unavailable_reason()


def test_refused_call_writes_nothing():
    lists = make_lists([3, 5], torch.float32, False)
    lists[2][1] = torch.zeros(5, dtype=torch.float64)
    before = clone_lists(lists)
    with pytest.raises(RuntimeError, match="exp_avg 1 must be torch.float32"):
        backends.get("triton").adam_step(*lists, lr=1e-2, **hyper())
    for xs, ys in zip(lists, before, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x, y)
