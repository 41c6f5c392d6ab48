"""k-step parity of fusedopt's Adam/AdamW with torch.optim and the fp64 reference.

The backends under test are the ones that run on this machine ("cpu", the C++
SIMD loops, and "reference"); the Triton backend has its own test files.
"""

import itertools

import fusedopt
import pytest
import torch
from helpers import EDGE_SIZES, clone_params, make_params, run_lockstep
from tolerances import (
    FP64_ERROR_RATIO,
    MAX_STEP_OVER_LR,
    ULPS_PER_STEP_VS_FP64,
    ULPS_PER_STEP_VS_REFERENCE,
    assert_normwise_close,
    ulp,
    ulps,
)

STEPS = 10
BACKENDS = ("cpu", "reference")
FLAGS = list(itertools.product([False, True], [False, True], [0.0, 0.1]))  # amsgrad, maximize, wd


def torch_class(name: str):
    return {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad,maximize,weight_decay", FLAGS)
def test_fp32_matches_torch(backend, name, amsgrad, maximize, weight_decay):
    ours = make_params(EDGE_SIZES)
    theirs = clone_params(ours)
    kwargs = dict(
        lr=1e-2,
        betas=(0.8, 0.95),
        eps=1e-6,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    fp64 = clone_params(ours, torch.float64)
    opt = getattr(fusedopt, name)(ours, backend=backend, **kwargs)
    ref = torch_class(name)(theirs, foreach=False, **kwargs)
    oracle = getattr(fusedopt, name)(fp64, backend="reference", **kwargs)
    run_lockstep([opt, ref, oracle], [ours, theirs, fp64], STEPS)
    for p, q, exact in zip(ours, theirs, fp64):
        assert_normwise_close(p, q)
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            assert_normwise_close(opt.state[p][key], ref.state[q][key])
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == STEPS
        if p.numel():
            err = (p.double() - exact).norm().item()
            torch_err = (q.double() - exact).norm().item()
            floor = ulp(torch.float32, exact.abs().max().item())  # torch may be exact by luck
            assert err <= FP64_ERROR_RATIO * max(torch_err, floor)


def test_weight_decay_changes_the_result():
    """Guards the parity tests above against a weight decay that is ignored by
    both sides: with decay the params must differ from without."""
    with_wd, without = make_params([1000]), make_params([1000])
    a = fusedopt.AdamW(with_wd, lr=1e-2, weight_decay=0.5)
    b = fusedopt.AdamW(without, lr=1e-2, weight_decay=0.0)
    run_lockstep([a, b], [with_wd, without], 3)
    assert not torch.allclose(with_wd[0], without[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_low_precision_error_budget(dtype, backend, name, amsgrad):
    """bf16/fp16 params against an fp64 trajectory: each element within its
    rounding budget (tolerances.ULPS_PER_STEP_VS_FP64), and in the 2-norm no
    worse than torch in that dtype (torch keeps the moments in bf16/fp16,
    fusedopt in fp32). lr is large enough that updates exceed an ulp of |p|,
    else both sides stall alike and the comparison says nothing."""
    lr = 0.1
    ours = make_params([4097, 7919, 3], dtype=dtype)
    fp64 = clone_params(ours, torch.float64)
    torch_low = clone_params(ours)
    kwargs = dict(lr=lr, weight_decay=0.1, amsgrad=amsgrad)
    opt = getattr(fusedopt, name)(ours, backend=backend, **kwargs)
    oracle = getattr(fusedopt, name)(fp64, backend="reference", **kwargs)
    torch_opt = torch_class(name)(torch_low, foreach=False, **kwargs)
    run_lockstep([opt, oracle, torch_opt], [ours, fp64, torch_low], STEPS)
    for p, exact, q in zip(ours, fp64, torch_low):
        diff = (p.double() - exact).abs()
        path = exact.abs() + STEPS * MAX_STEP_OVER_LR * lr
        budget = STEPS * ULPS_PER_STEP_VS_FP64[dtype] * ulps(dtype, path)
        assert (diff <= budget).all(), f"over the rounding budget by {(diff - budget).max():.3g}"
        if p.numel() < 1000:
            continue  # a norm over a few roundings is one element's luck
        torch_err = (q.double() - exact).norm().item()
        if dtype == torch.float16:
            # torch's fp16 Adam turns NaN (its fp16 v underflows to 0, and so
            # does eps=1e-8): nothing to compare with, only to record.
            assert not torch_err < float("inf")
            continue
        assert diff.norm().item() <= torch_err, f"worse than torch in {dtype}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cpu_matches_reference(dtype):
    """The CPU loop and the reference implement one policy (fp32 math and
    states, one rounding at the store): they agree to a param ulp per step."""
    ours = make_params(EDGE_SIZES, dtype=dtype)
    theirs = clone_params(ours)
    a = fusedopt.AdamW(ours, lr=1e-2, backend="cpu")
    b = fusedopt.AdamW(theirs, lr=1e-2, backend="reference")
    run_lockstep([a, b], [ours, theirs], STEPS)
    for p, q in zip(ours, theirs):
        if p.numel() == 0:
            continue
        bound = STEPS * ULPS_PER_STEP_VS_REFERENCE * ulp(dtype, q.abs().max().item())
        assert (p.double() - q.double()).abs().max().item() <= bound
        assert a.state[p]["exp_avg"].dtype == torch.float32
        assert_normwise_close(a.state[p]["exp_avg_sq"], b.state[q]["exp_avg_sq"])


def test_param_groups_with_their_own_hyperparameters():
    ours = make_params([100, 200, 300])
    theirs = clone_params(ours)

    def groups(ps):
        return [
            {"params": [ps[0]], "lr": 1e-1, "betas": (0.5, 0.6)},
            {"params": [ps[1]], "weight_decay": 0.3, "amsgrad": True},
            {"params": [ps[2]], "eps": 1e-3, "maximize": True},
        ]

    opt = fusedopt.AdamW(groups(ours), lr=1e-2)
    ref = torch.optim.AdamW(groups(theirs), lr=1e-2, foreach=False)
    run_lockstep([opt, ref], [ours, theirs], STEPS)
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q)


def test_lr_scheduler_drives_fusedopt_as_torch():
    ours = make_params([1000])
    theirs = clone_params(ours)
    opt = fusedopt.AdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS) for o in (opt, ref)]
    run_lockstep(
        [opt, ref],
        [ours, theirs],
        STEPS,
        before_step=lambda k: [s.step() for s in scheds] if k else None,
    )
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != 1e-2
    assert_normwise_close(ours[0], theirs[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_lr(backend):
    ours = make_params([513])
    theirs = clone_params(ours)
    opt = fusedopt.AdamW(ours, lr=torch.tensor(1e-2), backend=backend)
    ref = torch.optim.AdamW(theirs, lr=torch.tensor(1e-2), foreach=False)
    run_lockstep([opt, ref], [ours, theirs], STEPS)
    assert_normwise_close(ours[0], theirs[0])


def test_params_without_grad_are_skipped():
    ours = make_params([10, 20])
    untouched = ours[1].detach().clone()
    opt = fusedopt.AdamW(ours, lr=1e-2)
    ours[0].grad = torch.ones(10)
    opt.step()
    assert torch.equal(ours[1], untouched)
    assert len(opt.state[ours[1]]) == 0
    assert opt.state[ours[0]]["step"].item() == 1
