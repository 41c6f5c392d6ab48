"""Tolerances as data: one table, per param dtype, each bound with its reason,
and the few backend overrides, each with its own. The per-rule piece (how far
a step can move a param) is a RuleBound that each case of tests/cases.py names.

The kinds of bound (the keys of TABLE's rows):

  parity_normwise      fusedopt against torch.optim (foreach=False) after k
                       steps, per tensor, ||ours - torch||_2 <= bound * ||torch||_2.
  fp64_error_ratio     our 2-norm error against an fp64 trajectory, at most this
                       multiple of torch's own error in that dtype
                       (flash-attention's criterion).
  ulps_per_step_vs_fp64
                       bf16/fp16 params: per element, |ours - fp64| <=
                       steps * bound * ulp(|p| along its path) (path: RuleBound).
  error_vs_torch       bf16/fp16 params: our 2-norm error against fp64 at most
                       this multiple of torch's in that dtype; None: not compared.
  ulps_per_step_vs_reference
                       a kernel backend against fusedopt.reference in bf16/fp16
                       after k steps: |ours - ref| <= steps * bound * ulp(max |ref|).
  one_step_vs_reference
                       (rtol, atol) of one step from nonzero states, a kernel
                       backend against the reference, elementwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Bound:
    value: Any
    reason: str


_FMA = (
    "both sides do the same fp32 operations in the same order; what differs is FMA "
    "contraction (torch's vectorized lerp/addcmul/add fuse multiply-adds; fusedopt's CPU "
    "loop is built with -ffp-contract=off so that its ISA variants agree bit for bit)"
)

_ROUNDING_BUDGET = Bound(
    0.55,
    "fusedopt keeps fp32 states, so the error that matters is the rounding of p to its "
    "storage dtype at each store: at most half an ulp of |p| (round to nearest even). The "
    "roundings add up at worst linearly: an update does not depend on p except through "
    "weight decay, which contracts an error (it multiplies p by < 1, or adds wd * p to a "
    "gradient that is subtracted). 0.05 is the margin for the fp32 noise of the update "
    "(a relative 1e-6 of an update smaller than ulp(|p|)).",
)

_SAME_POLICY = Bound(
    1.0,
    "same policy, same operation order (fp32 math and states, one rounding at the store): "
    "the fp32 results before the final rounding differ by FMA contraction only, so a stored "
    "param differs by at most one ulp of its dtype (a rounding boundary between them), and "
    "the trajectories by at most one ulp per step",
)

_VS_TORCH = (
    "torch keeps its states in the param's dtype and rounds intermediate results to it; "
    "where that costs accuracy (Adam's v with beta2 = 0.999, SGD's momentum buffer, "
    "decoupled decay) our error is 0.4-0.9x torch's. Where it does not (SGD without "
    "momentum: both round p once per step, ~6% of elements to the other neighbour; Adam "
    "with beta2 = 0.95) the two errors are samples of one distribution and their ratio "
    "is 1 +- noise: measured 0.97-1.012 over the grid on 4097-7919 elements. 3% covers "
    "the noise; a biased rounding (truncation: 2x and more) still fails. The default "
    "betas, where torch's bf16 v does lose precision, are held to 1.0 "
    "(test_parity.py::test_low_precision_with_default_betas)"
)

TABLE: dict[torch.dtype, dict[str, Bound]] = {
    torch.float32: {
        "parity_normwise": Bound(
            1e-6,
            f"{_FMA}. Normwise, not elementwise: Adam is ill-conditioned where an effective "
            "grad (g + wd*p with L2 decay) cancels to the size of eps, and there an ulp of "
            "difference in g moves the update by 1e-4 of lr and more; such elements occur by "
            "chance in 2M element-steps (seen: one element 2.6e-5 from fp64 in fusedopt, "
            "7.6e-6 in torch, in a tensor whose other elements agree to 1e-7). Measured "
            "normwise: ~5e-8.",
        ),
        "fp64_error_ratio": Bound(
            2.0, "room for the FMA differences, which are of the size of torch's own error"
        ),
        "one_step_vs_reference": Bound(
            (2e-6, 1e-7),
            "a few fp32 ulps: the kernels form per-tensor scalars (1 - beta^t) from exp2/log2 "
            "or in another order than Python's pow, and Triton's interpreter (numpy) may "
            "round differently from torch's vectorized CPU ops",
        ),
    },
    torch.bfloat16: {
        "ulps_per_step_vs_fp64": _ROUNDING_BUDGET,
        "error_vs_torch": Bound(1.03, _VS_TORCH),
        "ulps_per_step_vs_reference": _SAME_POLICY,
        "one_step_vs_reference": Bound(
            (2**-7, 1e-6), "one bf16 ulp (2^-7 relative): one rounding at the store, either side"
        ),
    },
    torch.float16: {
        "ulps_per_step_vs_fp64": _ROUNDING_BUDGET,
        "error_vs_torch": Bound(
            1.03,
            f"{_VS_TORCH}. Where torch's result is not finite (its fp16 Adam: v underflows to "
            "0, and so does eps=1e-8) there is nothing to compare with",
        ),
        "ulps_per_step_vs_reference": _SAME_POLICY,
        "one_step_vs_reference": Bound(
            (2**-10, 1e-6), "one fp16 ulp (2^-10 relative): one rounding at the store"
        ),
    },
}

# (backend name, device type, dtype, kind) -> Bound, replacing TABLE's entry.
OVERRIDES: dict[tuple[str, str, torch.dtype, str], Bound] = {
    ("triton", "cpu", torch.bfloat16, "ulps_per_step_vs_fp64"): Bound(
        1.05,
        "Triton's interpreter TRUNCATES fp32 -> bf16 where torch and every GPU round to "
        "nearest even (seen with triton 3.8): up to one ulp per store instead of half",
    ),
    ("triton", "cpu", torch.bfloat16, "error_vs_torch"): Bound(
        None,
        "the interpreter's truncation is biased, so its error grows linearly with the steps "
        "where round-to-nearest errors grow as their square root: not comparable with torch",
    ),
}


def tol(kind: str, dtype: torch.dtype, backend: str | None = None, device: str = "cpu"):
    """The bound of this kind for params of `dtype` stepped by `backend`."""
    override = OVERRIDES.get((backend, device, dtype, kind))
    return override.value if override is not None else TABLE[dtype][kind].value


# --- how far a step moves a param: one entry per rule ------------------------------


@dataclass(frozen=True)
class RuleBound:
    """`step_over_lr(hyper, t, g_max)`: a bound on |update| / lr at step t (1-based)
    for an element whose effective gradients never exceed g_max (a tensor);
    `hyper` is the optimizer's hyper(group) (fusedopt/optim/*.py)."""

    step_over_lr: Callable[[Mapping[str, Any], int, torch.Tensor], torch.Tensor | float]
    reason: str


def _adam_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> float:
    b1, b2 = hyper["beta1"], hyper["beta2"]
    ratio_sum = sum((b1 * b1 / b2) ** j for j in range(t))
    return (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2) * ratio_sum)


ADAM = RuleBound(
    _adam_step_over_lr,
    "m_t = (1-b1) sum_k b1^(t-k) g_k and v_t = (1-b2) sum_k b2^(t-k) g_k^2 (AMSGrad only "
    "raises v), so by Cauchy-Schwarz |m_t| <= (1-b1) sqrt(sum_j (b1^2/b2)^j) sqrt(v_t/(1-b2)); "
    "with the bias corrections |m_hat| / sqrt(v_hat) <= (1-b1)/(1-b1^t) sqrt((1-b2^t)/(1-b2) "
    "sum_{j<t} (b1^2/b2)^j), whatever the gradients (L2 decay and maximize included); eps "
    "only lowers it. It is 1 at t = 1 and, for the default betas, ~1.1 at t = 10. Decoupled "
    "decay multiplies p by 1 - lr*wd < 1, which does not raise |p|.",
)


def _sgd_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> torch.Tensor:
    mu = hyper["momentum"]
    terms = t + 1 if hyper["nesterov"] else t
    return g_max * sum(mu**j for j in range(terms))


SGD = RuleBound(
    _sgd_step_over_lr,
    "without momentum the step is lr*|g| <= lr*G. With momentum, b_1 = g_1 and b_t = mu "
    "b_(t-1) + (1-d) g_t with 0 <= d <= 1, so |b_t| <= G sum_{j<t} mu^j (<= G/(1-mu)); "
    "Nesterov steps by g_t + mu b_t, |.| <= G sum_{j<=t} mu^j (<= G/(1-mu) too: "
    "G + mu G/(1-mu) = G/(1-mu), tighter than lr*G/(1-mu)*(1+mu)). G bounds the effective "
    "grad: max|g| plus, with L2 decay, wd * max|p| so far. Decoupled decay only shrinks |p|.",
)


def _rprop_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> float:
    return hyper["etaplus"] ** t


RPROP = RuleBound(
    _rprop_step_over_lr,
    "the step is sign(g) * step_size, |.| <= step_size. The step sizes start at lr (the "
    "state is made at the group's lr) and each step multiplies them by etaplus, etaminus or "
    "1, then clamps them to [step_size_min, step_size_max]; etaminus < 1 < etaplus, so by "
    "induction step_size_t <= max(lr * etaplus^t, step_size_min), which is lr * etaplus^t "
    "where step_size_min <= lr, as in every case of tests/cases.py (the clamp to "
    "step_size_max only lowers it). Independent of the gradients; no weight decay.",
)


LION = RuleBound(
    lambda hyper, t, g_max: 1.0,
    "p moves by lr * sign(c), |sign(c)| <= 1, whatever the gradients (L2 decay and maximize "
    "included: they change c, not the size of the step). The decoupled modes multiply p by "
    "1 - lr * wd (or 1 - wd * lr / lr_max) in [0, 1], which does not raise |p|.",
)


def path_bound(
    rule: RuleBound,
    hyper: Mapping[str, Any],
    lr: float,
    p0: torch.Tensor,
    g_max: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Per element, a bound on |p| over `steps` steps from p0 (float64): each
    step adds at most lr * rule.step_over_lr, with G = g_max + wd * |p| so far
    under L2 decay."""
    l2 = hyper["weight_decay"] if hyper.get("weight_decay_mode") == 0 else 0.0
    path = p0.double().abs()
    g_max = g_max.double()
    for t in range(1, steps + 1):
        path = path + lr * rule.step_over_lr(hyper, t, g_max + l2 * path)
    return path


# --- comparisons ----------------------------------------------------------------


def assert_normwise_close(
    actual: torch.Tensor, expected: torch.Tensor, rel: float | None = None
) -> None:
    """||actual - expected||_2 <= rel * ||expected||_2 (0-size tensors pass);
    rel defaults to TABLE's fp32 parity_normwise."""
    rel = tol("parity_normwise", torch.float32) if rel is None else rel
    if expected.numel() == 0:
        return
    err = (actual.detach().cpu().double() - expected.detach().cpu().double()).norm().item()
    scale = expected.detach().double().norm().item()
    assert err <= rel * scale, f"normwise error {err / max(scale, 1e-300):.3g} > {rel:g}"


def ulps(dtype: torch.dtype, magnitudes: torch.Tensor) -> torch.Tensor:
    """Elementwise spacing of `dtype` numbers at each magnitude (float64)."""
    finfo = torch.finfo(dtype)
    m = magnitudes.double().abs().clamp_min(finfo.tiny)
    return torch.exp2(torch.floor(torch.log2(m))) * finfo.eps


def ulp(dtype: torch.dtype, magnitude: float) -> float:
    """The spacing of `dtype` numbers at `magnitude` (its unit in the last place)."""
    return ulps(dtype, torch.tensor([magnitude], dtype=torch.float64)).item()
