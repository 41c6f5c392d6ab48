"""fusedopt.RMSpropTF: TF1's RMSProp as timm's RMSpropTF (timm 1.0.29,
timm/optim/rmsprop_tf.py). The harness (tests/cases.py) compares it with
timm's class where timm is installed; these tests check the convention from
its formulas in float64, so a CI without timm still checks the math, and
check what fusedopt refuses."""

from __future__ import annotations

import inspect
import math

import fusedopt
import pytest
import torch
from cases import TIMM_RMSPROP_TF
from helpers import backend_params

LR = [1e-2, 3e-2]  # a changing lr: where TF's momentum buffer differs from torch's


def _steps(backend: str, grads, **kwargs) -> tuple[torch.Tensor, dict]:
    p = torch.tensor([0.5, -1.0, 2.0, 0.25], requires_grad=True)
    opt = fusedopt.RMSpropTF([p], lr=LR[0], **kwargs, backend=backend)
    for lr, g in zip(LR, grads):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
    return p.detach().double(), opt.state[p]


GRADS = [torch.tensor([0.3, -2.0, 1e-3, 4.0]), torch.tensor([-0.7, 1.5, 0.2, 4.0])]


@pytest.mark.parametrize("backend", backend_params())
def test_two_steps_follow_tfs_formulas(backend):
    """square_avg from 1 in TF's order, eps under the root, lr inside the buffer:
    v = v + (1 - alpha)(g^2 - v); b = mu b + lr g / sqrt(v + eps); p -= b."""
    alpha, eps, mu = 0.9, 1e-3, 0.9
    p, state = _steps(backend.name, GRADS, alpha=alpha, eps=eps, momentum=mu)
    p_exact = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    v = torch.ones(4, dtype=torch.float64)
    b = torch.zeros(4, dtype=torch.float64)
    for lr, g in zip(LR, GRADS):
        g = g.double()
        v = v + (1 - alpha) * (g * g - v)
        b = mu * b + lr * g / (v + eps).sqrt()
        p_exact = p_exact - b
    torch.testing.assert_close(p, p_exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(state["square_avg"].double(), v, rtol=1e-6, atol=0)
    torch.testing.assert_close(state["momentum_buffer"].double(), b, rtol=1e-6, atol=1e-9)
    assert state["step"].item() == 2


@pytest.mark.parametrize("backend", backend_params())
def test_centered_torch_momentum_and_decoupled_decay_follow_timm(backend):
    """centered: a += (1 - alpha)(g - a), root of v - a^2 + eps; lr_in_momentum=False:
    b = mu b + g / d, p -= lr b; decoupled_decay: p *= 1 - lr wd first."""
    alpha, eps, mu, wd = 0.3, 1e-10, 0.5, 0.1
    kwargs = dict(alpha=alpha, eps=eps, momentum=mu, centered=True, lr_in_momentum=False)
    p, state = _steps(backend.name, GRADS, weight_decay=wd, decoupled_decay=True, **kwargs)
    p_exact = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    v, a, b = torch.ones(4).double(), torch.zeros(4).double(), torch.zeros(4).double()
    for lr, g in zip(LR, GRADS):
        g = g.double()
        p_exact = p_exact * (1 - lr * wd)
        v = v + (1 - alpha) * (g * g - v)
        a = a + (1 - alpha) * (g - a)
        b = mu * b + g / (v - a * a + eps).sqrt()
        p_exact = p_exact - lr * b
    torch.testing.assert_close(p, p_exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(state["grad_avg"].double(), a, rtol=1e-6, atol=1e-9)


def test_corrected_weight_decay_scales_by_lr_over_the_constructors_lr():
    """timm: wd_scale = lr ** 2 / defaults['lr'], p *= 1 - wd_scale * wd."""
    wd = 0.2
    p, _ = _steps(
        "reference",
        [torch.zeros(4), torch.zeros(4)],
        weight_decay=wd,
        decoupled_decay=True,
        corrected_weight_decay=True,
    )
    factor = math.prod(1 - lr * lr / LR[0] * wd for lr in LR)
    expected = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64) * factor
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=0)


def test_caution_is_refused_clearly():
    params = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="does not support caution=True"):
        fusedopt.RMSpropTF(params, caution=True)
    opt = fusedopt.RMSpropTF(params)
    opt.param_groups[0]["caution"] = True  # set later, as a group key
    params[0].grad = torch.ones(3)
    with pytest.raises(ValueError, match="does not support caution=True"):
        opt.step()
    assert torch.equal(params[0], torch.zeros(3)) and not opt.state


def test_corrected_weight_decay_needs_the_decoupled_mode():
    with pytest.raises(ValueError, match="corrected_weight_decay=True applies to the decoupled"):
        fusedopt.RMSpropTF(
            [torch.zeros(1, requires_grad=True)],
            corrected_weight_decay=True,
            weight_decay_mode="fully_decoupled",
        )
    with pytest.raises(ValueError, match="contradicts weight_decay_mode='l2'"):
        fusedopt.RMSpropTF(
            [torch.zeros(1, requires_grad=True)], decoupled_decay=True, weight_decay_mode="l2"
        )


def test_signature_is_timms():
    """timm 1.0.29's exact signature, then fusedopt's keyword-only extras."""
    timm = pytest.importorskip("timm.optim", reason="timm is not installed")
    theirs = inspect.signature(timm.RMSpropTF.__init__).parameters
    ours = inspect.signature(fusedopt.RMSpropTF.__init__).parameters
    assert list(ours) == [*theirs, "weight_decay_mode", "lr_max", "backend"]
    for name, param in theirs.items():
        assert (ours[name].default, ours[name].kind) == (param.default, param.kind), name


def test_the_harness_compares_with_timm_where_installed():
    try:
        import timm.optim
    except ImportError:
        assert issubclass(TIMM_RMSPROP_TF, fusedopt.RMSpropTF)  # the reference stand-in
    else:
        assert TIMM_RMSPROP_TF is timm.optim.RMSpropTF
