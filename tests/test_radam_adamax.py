"""What RAdam and Adamax add to the generic harness (tests/cases.py runs both
through every generic test): RAdam's switch between the un-rectified and the
rectified step, a per-tensor scalar that must flip at torch's step on every
backend, and Adamax's infinity norm on non-finite grads, where torch.maximum
propagates NaN."""

from __future__ import annotations

import fusedopt
import pytest
import torch
from helpers import backend_params, clone_params, make_params, run_lockstep
from tolerances import assert_normwise_close

STEPS = 12


def _rho(beta2: float, t: int) -> float:
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * t * beta2**t / (1 - beta2**t)


@pytest.mark.parametrize("beta2", [0.999, 0.9, 0.8, 0.6, 0.0])
@pytest.mark.parametrize("backend", backend_params())
def test_radam_switches_to_the_rectified_step_with_torch(backend, beta2):
    """Step by step against torch across the switch (rho_t > 5 first at step 6
    for beta2 = 0.999 and 0.9, 7 for 0.8; never for 0.6 and 0: rho_inf <= 4)."""
    switch = next((t for t in range(1, STEPS + 1) if _rho(beta2, t) > 5), None)
    assert switch == {0.999: 6, 0.9: 6, 0.8: 7}.get(beta2)
    start = make_params(backend.sizes((4097, 3)))
    ours, theirs = clone_params(start, device=backend.device), clone_params(start)
    kwargs = {"lr": 1e-2, "betas": (0.9, beta2)}
    opt = fusedopt.RAdam(ours, **kwargs, backend=backend.name)
    ref = torch.optim.RAdam(theirs, **kwargs, foreach=False)
    for k in range(STEPS):
        run_lockstep([opt, ref], [ours, theirs], 1, first=k)
        for p, q in zip(ours, theirs):
            assert_normwise_close(p, q)
            assert_normwise_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])


def test_radam_unrectified_step_is_momentum_sgd():
    """Before the switch the step is lr * m / (1 - beta1^t) exactly, eps and v
    unused: with eps = 0 and zero grads (v = 0) no 0/0 leaks in, as in torch;
    after it, torch's 0 * inf gives NaN and so does fusedopt."""
    for backend in ("cpu", "reference"):
        p = torch.zeros(5, requires_grad=True)
        q = p.detach().clone().requires_grad_()
        opt = fusedopt.RAdam([p], lr=1e-2, eps=0.0, backend=backend)
        ref = torch.optim.RAdam([q], lr=1e-2, eps=0.0, foreach=False)
        for t in range(1, 7):
            p.grad, q.grad = torch.zeros(5), torch.zeros(5)
            opt.step()
            ref.step()
            assert torch.equal(p.isnan(), q.isnan())
            assert p.isnan().all() == (t >= 6), t


# Every kind of element torch.maximum meets: NaN and inf grads, a zero grad
# with eps = 0 (u = 0: m / u = 0/0), negative and positive finite.
SPECIAL = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -2.0, 3.0, 1e-30])


@pytest.mark.parametrize("eps", [1e-8, 0.0])
@pytest.mark.parametrize("backend", backend_params())
def test_adamax_non_finite_grads_as_torch(backend, eps):
    """The infinity norm is torch.maximum(u * beta2, |g| + eps): NaN from either
    side stays, inf wins; params and states hold NaN exactly where torch's do."""
    n = SPECIAL.numel()
    ours = [torch.zeros(n, device=backend.device, requires_grad=True)]
    theirs = [torch.zeros(n, requires_grad=True)]
    opt = fusedopt.Adamax(ours, lr=1e-2, eps=eps, backend=backend.name)
    ref = torch.optim.Adamax(theirs, lr=1e-2, eps=eps, foreach=False)
    for k in range(3):
        grad = SPECIAL.roll(k)
        ours[0].grad, theirs[0].grad = grad.to(backend.device), grad.clone()
        opt.step()
        ref.step()
        for mine, torchs in [
            (ours[0], theirs[0]),
            *(
                (opt.state[ours[0]][key], ref.state[theirs[0]][key])
                for key in ("exp_avg", "exp_inf")
            ),
        ]:
            torch.testing.assert_close(mine.detach().cpu(), torchs.detach(), equal_nan=True)
    assert ours[0].isnan().any() and not ours[0].isnan().all()
    assert opt.state[ours[0]]["exp_inf"].isinf().any()
