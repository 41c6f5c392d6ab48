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
    "contraction (torch's vectorized lerp/addcmul/add fuse multiply-adds; fusedopt's kernels "
    "contract nothing, so that every backend and ISA computes the same bits: Note "
    "[bit-identical backends] in kernels/mta.py)"
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
# None today: every backend rounds to nearest even at the store, the Triton
# interpreter included since its bf16 conversions are integer operations
# (kernels/storage.py), and the kernel backends compute the CPU backend's bits
# (Note [bit-identical backends] in kernels/mta.py, tests/test_bit_identity.py).
OVERRIDES: dict[tuple[str, str, torch.dtype, str], Bound] = {}


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
    corrected = (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2) * ratio_sum)
    if hyper.get("correct_bias", True):  # RAdam (no such option) reuses this bound
        return corrected
    return corrected * (1 - b1**t) / math.sqrt(1 - b2**t)  # |m| / sqrt(v), uncorrected


ADAM = RuleBound(
    _adam_step_over_lr,
    "m_t = (1-b1) sum_k b1^(t-k) g_k and v_t = (1-b2) sum_k b2^(t-k) g_k^2 (AMSGrad only "
    "raises v), so by Cauchy-Schwarz |m_t| <= (1-b1) sqrt(sum_j (b1^2/b2)^j) sqrt(v_t/(1-b2)); "
    "with the bias corrections |m_hat| / sqrt(v_hat) <= (1-b1)/(1-b1^t) sqrt((1-b2^t)/(1-b2) "
    "sum_{j<t} (b1^2/b2)^j), whatever the gradients (L2 decay and maximize included); eps "
    "only lowers it. It is 1 at t = 1 and, for the default betas, ~1.1 at t = 10. Decoupled "
    "decay multiplies p by 1 - lr*wd < 1, which does not raise |p|, before the update or "
    "after it (HF's order). Every eps_mode divides the same m_hat by sqrt(v_hat) plus a "
    "nonnegative term (eps outside, inside the root, or eps_hat / sqrt(1-b2^t)); "
    "correct_bias=False steps by m / sqrt(v) = m_hat / sqrt(v_hat) * (1-b1^t) / "
    "sqrt(1-b2^t).",
)


def _radam_rect(hyper: Mapping[str, Any], t: int) -> float:
    """torch's r_t at step t, 0 where rho_t <= 5 (the un-rectified step)."""
    b2 = hyper["beta2"]
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho_t <= 5:
        return 0.0
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def _radam_step_over_lr(
    hyper: Mapping[str, Any], t: int, g_max: torch.Tensor
) -> torch.Tensor | float:
    rect = _radam_rect(hyper, t)
    if rect == 0.0:
        return g_max
    return rect * _adam_step_over_lr(hyper, t, g_max)


RADAM = RuleBound(
    _radam_step_over_lr,
    "un-rectified (rho_t <= 5) the step is lr * m_hat, and m_hat = (1-b1)/(1-b1^t) sum_k "
    "b1^(t-k) g_k is an average of the effective grads, so |m_hat| <= G (max|g|, plus wd * "
    "max|p| with L2 decay, which path_bound adds). Rectified, the step is lr * r_t * m_hat * "
    "sqrt(1-b2^t) / (sqrt(v) + eps) <= lr * r_t * |m_hat| / sqrt(v_hat): ADAM's bound (its "
    "Cauchy-Schwarz argument holds for these m and v) times r_t, and r_t < 1 since (x-4)(x-2)/x "
    "increases for x > 2 and rho_t < rho_inf. Decoupled decay only shrinks |p|.",
)


def _adamax_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> float:
    b1, b2 = hyper["beta1"], hyper["beta2"]
    return (1 - b1) / (1 - b1**t) * sum((b1 / b2) ** j for j in range(t))


ADAMAX = RuleBound(
    _adamax_step_over_lr,
    "u_t = max(b2 u_(t-1), |g_t| + eps) >= b2^(t-k) |g_k| for every k <= t, so with m_t = "
    "(1-b1) sum_k b1^(t-k) g_k: |m_t| <= (1-b1) u_t sum_{j<t} (b1/b2)^j, and the step "
    "lr |m_t| / ((1-b1^t) u_t) <= lr (1-b1)/(1-b1^t) sum_{j<t} (b1/b2)^j whatever the "
    "gradients (L2 decay and maximize included; eps only lowers it; needs beta2 > 0). It is 1 "
    "at t = 1. Decoupled decay only shrinks |p|.",
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


def _nadam_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> float:
    b1, b2, psi = hyper["beta1"], hyper["beta2"], hyper["momentum_decay"]

    def mu(i: int) -> float:
        return b1 * (1.0 - 0.5 * 0.96 ** (i * psi))

    product = math.prod(mu(i) for i in range(1, t + 1))
    ratio_sum = sum((b1 * b1 / b2) ** j for j in range(t))
    g_over_d = math.sqrt((1 - b2**t) / (1 - b2))
    return (1 - mu(t)) / (1 - product) * g_over_d + mu(t + 1) / (1 - product * mu(t + 1)) * (
        1 - b1
    ) * g_over_d * math.sqrt(ratio_sum)


NADAM = RuleBound(
    _nadam_step_over_lr,
    "NAdam steps by c1 g_t / d + c2 m_t / d with d >= sqrt(v_t / (1-b2^t)), c1 = (1-mu_t) / "
    "(1 - prod_{i<=t} mu_i), c2 = mu_{t+1} / (1 - prod_{i<=t+1} mu_i). v_t >= (1-b2) g_t^2 "
    "gives |g_t| / d <= sqrt((1-b2^t)/(1-b2)); Cauchy-Schwarz on m_t = (1-b1) sum_k "
    "b1^(t-k) g_k as for Adam gives |m_t| / d <= (1-b1) sqrt((1-b2^t)/(1-b2) sum_{j<t} "
    "(b1^2/b2)^j), whatever the gradients (L2 decay and maximize included). The mu_i < 1 "
    "keep both denominators positive; decoupled decay only shrinks |p|.",
)


def _asgd_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> torch.Tensor:
    return g_max


ASGD = RuleBound(
    _asgd_step_over_lr,
    "ASGD steps by p (1 - lambd eta) - eta g with eta_1 = lr and eta_t = lr / (1 + lambd lr "
    "(t-1))^alpha <= lr for lambd, alpha >= 0 at a fixed lr: |change| <= lambd eta |p| + lr G, "
    "and the first term only shrinks |p| (0 <= 1 - lambd eta <= 1), so the path grows by at "
    "most lr G per step. G bounds the effective grad (g plus wd * p under L2).",
)


def _rmsprop_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> torch.Tensor:
    alpha, mu, eps = hyper["alpha"], hyper["momentum"], hyper["eps"]
    # eps alone: d >= eps, or d >= sqrt(eps) with eps under the root.
    floor = math.sqrt(eps) if hyper["eps_in_sqrt"] else eps
    by_eps = g_max / floor if floor > 0 else torch.full_like(g_max, math.inf)

    def ratio(s: int) -> torch.Tensor:  # a bound on |g_s| / d_s
        kept = (1 - alpha) * (alpha**s if hyper["centered"] else 1.0)
        return torch.clamp(by_eps, max=1 / math.sqrt(kept)) if kept > 0 else by_eps

    return sum(mu**j * ratio(t - j) for j in range(t)) if mu > 0 else ratio(t)


RMSPROP = RuleBound(
    _rmsprop_step_over_lr,
    "|g_t| / d_t, d_t the denominator, for the effective grads (L2 decay and maximize "
    "included). v_t = alpha v_(t-1) + (1-alpha) g_t^2 with v >= 0 (TF's order is the same "
    "sum), so v_t >= (1-alpha) g_t^2 and |g_t|/sqrt(v_t) <= 1/sqrt(1-alpha). Centered, "
    "with w_k = (1-alpha) alpha^(t-k) and W = sum w_k = 1 - alpha^t: v - a^2 = sum w g^2 - "
    "(sum w g)^2 >= (1-W) sum w g^2 (Cauchy-Schwarz: (sum w g)^2 <= W sum w g^2), so "
    "v_t - a_t^2 >= alpha^t (1-alpha) g_t^2 and the ratio is <= 1/sqrt((1-alpha) alpha^t); "
    "TF's v_0 = 1 only adds alpha^t (1 - ...) >= 0. eps only raises d (d >= eps, or "
    "sqrt(eps) under the root), so G/eps bounds it too. With momentum |b_t| <= sum_{j<t} "
    "mu^j ratio_(t-j), times lr (torch) or with each step's lr inside (TF: the same at a "
    "constant lr). Decoupled decay only shrinks |p|.",
)


def _adagrad_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> float:
    return 1.0 + 2.0**-20


ADAGRAD = RuleBound(
    _adagrad_step_over_lr,
    "sum_t = initial_accumulator_value + sum_{k<=t} g_k^2 >= g_t^2 (the initial value is "
    ">= 0), so |g_t| / (sqrt(sum_t) + eps) <= 1, and clr = lr / (1 + (t-1) lr_decay) <= lr "
    "(lr_decay >= 0): |update| <= lr whatever the gradients (L2 decay and maximize "
    "included). 2^-20 covers the fp32 roundings of g*g, the sum, sqrt and the division "
    "(half an ulp, 2^-24 relative, each). Decoupled decay multiplies p by 1 - clr*wd < 1.",
)


def _adadelta_step_over_lr(hyper: Mapping[str, Any], t: int, g_max: torch.Tensor) -> torch.Tensor:
    rho, eps = hyper["rho"], hyper["eps"]
    ratio_max = 1 / math.sqrt(1 - rho) if rho < 1 else math.inf
    ratio = torch.clamp(g_max / math.sqrt(eps), max=ratio_max)
    u = torch.zeros_like(g_max)
    for _ in range(t):
        delta = torch.sqrt(u + eps) * ratio
        u = rho * u + (1 - rho) * delta * delta
    return delta


ADADELTA = RuleBound(
    _adadelta_step_over_lr,
    "v_t = rho v_(t-1) + (1-rho) g_t^2 >= (1-rho) g_t^2 and >= 0 (v_0 = 0), so "
    "r = |g_t| / sqrt(v_t + eps) <= min(G / sqrt(eps), 1 / sqrt(1-rho)); then |delta_t| = "
    "sqrt(u_(t-1) + eps) r and u_t = rho u_(t-1) + (1-rho) delta_t^2 from u_0 = 0: the "
    "recursion the function runs, a bound on |delta_t| at each t (the step is lr*delta). "
    "G bounds the effective grad, with L2 decay wd * max|p| so far; decoupled decay only "
    "shrinks |p|.",
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
