"""fusedopt.Adam and fusedopt.AdamW: drop-in replacements for torch.optim's;
fusedopt.HFAdamW: transformers.AdamW (v4.x), the BERT-era fine-tuning optimizer.

Same signatures, defaults, param-group keys, state keys and state_dict layout
as torch 2.x (`step` is a float32 scalar tensor; `exp_avg`, `exp_avg_sq`,
`max_exp_avg_sq`), so checkpoints move both ways and LR schedulers work as they
are. Differences, all deliberate:
  - every group is stepped by a fused backend (see fusedopt.backends); the
    extra `backend=` argument picks one, and `fusedopt.report(opt)` says which;
  - bf16/fp16 params keep float32 states (torch keeps them in the param's
    dtype), and the math runs in float32: Note [fp32 states of low-precision
    params] in fusedopt/optim/base.py;
  - `differentiable=True` and `foreach=True` are refused: a fused kernel is
    neither a graph of autograd ops nor a foreach loop.

The conventions other Adam implementations follow are keywords of their own
(Note [Adam conventions] in csrc/include/fusedopt/rules/adam.h), with
bc1 = 1 - beta1^t and bc2 = 1 - beta2^t:
  eps_mode="torch" (default)  p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
  eps_mode="hat"              p -= lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps): Kingma & Ba's
                              efficient form, the "epsilon hat" of TF/Keras; the same
                              update as "torch" with eps_torch = eps_hat / sqrt(bc2), so an
                              eps tuned in one form is sqrt(bc2) times off in the other early on
  eps_mode="root"             p -= lr/bc1 * m / sqrt(v/bc2 + eps): eps under the square
                              root, optax's eps_root (its eps=0)
  correct_bias=False          bc1 = bc2 = 1: no bias correction, as BERT's original
                              optimizer and transformers.AdamW(correct_bias=False)
Each adds its group key (`eps_mode`, `correct_bias`) only when set away from
torch's convention, so a torch-style optimizer keeps torch's group keys; so
does `state_dtype` ("fp32", "bf16", "int8": how the moments are stored, Note
[state dtypes of a group] in fusedopt/optim/base.py). Adam8bit and AdamW8bit
are bitsandbytes' names for state_dtype="int8".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import (
    FusedOptimizer,
    check_betas,
    check_eps,
    check_fused_flags,
    check_lr_and_weight_decay,
    decay_defaults,
    state_dtype_defaults,
    weight_decay_hyper,
)
from fusedopt.reference.adam import EpsMode
from fusedopt.registry import RULES

# The `eps_mode` keyword: Note [Adam conventions] in rules/adam.h.
EPS_MODES = {"torch": EpsMode.TORCH, "hat": EpsMode.HAT, "root": EpsMode.ROOT}


def convention_defaults(correct_bias: bool, eps_mode: str) -> dict[str, Any]:
    """The group keys of the `correct_bias` and `eps_mode` keywords, only where
    they leave torch's convention (as decay_defaults does for the decay)."""
    if eps_mode not in EPS_MODES:
        raise ValueError(f"Invalid eps_mode {eps_mode!r}; choose one of {sorted(EPS_MODES)}")
    keys: dict[str, Any] = {}
    if not correct_bias:
        keys["correct_bias"] = False
    if eps_mode != "torch":
        keys["eps_mode"] = eps_mode
    return keys


def convention_hyper(group: Mapping[str, Any], eps_mode: str = "torch") -> dict[str, Any]:
    """The rule's `eps_mode` and `correct_bias` from the group's keys, else
    the class's convention."""
    return {
        "eps_mode": int(EPS_MODES[group.get("eps_mode", eps_mode)]),
        "correct_bias": bool(group.get("correct_bias", True)),
    }


class Adam(FusedOptimizer):
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's exact interface.

    `decoupled_weight_decay=True` gives AdamW; `weight_decay_mode` ("l2",
    "decoupled", "fully_decoupled") and `lr_max` are fusedopt's one keyword
    for the decay on every class (fusedopt.optim.base.decay_defaults).
    `correct_bias` and `eps_mode` ("torch", "hat", "root") pick the
    convention of the bias corrections and eps (this module's docstring).
    `backend` is one of "auto", "cuda", "triton", "cpu", "reference" (see
    fusedopt.backends).
    """

    rule = RULES["adam"]
    group_key_defaults = {"amsgrad": False, "capturable": False}
    sparse_grad_hint = ", please consider SparseAdam instead"

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        correct_bias: bool = True,
        eps_mode: str = "torch",
        state_dtype: str = "fp32",
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        check_eps(eps)
        check_betas(betas)
        if not (
            all(isinstance(beta, float) for beta in betas)
            or all(isinstance(beta, Tensor) for beta in betas)
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        check_fused_flags(foreach, differentiable, fused)
        for i, beta in enumerate(betas):
            if isinstance(beta, Tensor) and beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
        # As torch keeps them (its _to_scalar): floats, or the user's own 0-dim
        # tensors, so that an in-place change takes effect (hyper() reads them
        # at every step); a 1-element tensor of more dims is squeezed.
        betas = tuple(b.squeeze() if isinstance(b, Tensor) and b.dim() != 0 else b for b in betas)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            **decay_defaults(weight_decay_mode, lr_max, decoupled_weight_decay),
            **convention_defaults(correct_bias, eps_mode),
            **state_dtype_defaults(state_dtype),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": float(beta1),
            "beta2": float(beta2),
            "eps": group["eps"],
            **weight_decay_hyper(group),
            "decay_after": False,
            **convention_hyper(group),
            "amsgrad": group["amsgrad"],
            "maximize": group["maximize"],
        }


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019) with torch.optim.AdamW's exact interface."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        correct_bias: bool = True,
        eps_mode: str = "torch",
        state_dtype: str = "fp32",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            weight_decay_mode=weight_decay_mode,
            lr_max=lr_max,
            correct_bias=correct_bias,
            eps_mode=eps_mode,
            state_dtype=state_dtype,
            backend=backend,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def _check_8bit_options(optim_bits, args, percentile_clipping, block_wise, is_paged) -> None:
    """bitsandbytes' keywords that fusedopt's 8-bit classes take at their
    defaults only, each refused with what it would need."""
    if args is not None:
        raise ValueError(
            "fusedopt: args (bitsandbytes' GlobalOptimManager overrides) is not supported"
        )
    if optim_bits not in (8, 32):
        raise ValueError(
            f"fusedopt: optim_bits must be 8 or 32 (both give 8-bit states), got {optim_bits}"
        )
    if percentile_clipping != 100:
        raise ValueError(
            "fusedopt: percentile_clipping is not supported; clip the gradient norm before the step"
        )
    if not block_wise:
        raise ValueError("fusedopt: only blockwise 8-bit states (block_wise=True) are supported")
    if is_paged:
        raise ValueError("fusedopt: paged optimizer states (is_paged=True) are not supported")


class _Min8bitSize:
    """The 8-bit classes' `min_8bit_size` keyword, as a default of every
    group (a group may set its own)."""

    _min_8bit_size: int

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("min_8bit_size", self._min_8bit_size)
        super().add_param_group(param_group)


class Adam8bit(_Min8bitSize, Adam):
    """bitsandbytes.optim.Adam8bit's names and defaults: Adam with 8-bit
    blockwise states (Dettmers et al. 2022; state_dtype="int8": block 256,
    the signed dynamic map for exp_avg, the unsigned one for exp_avg_sq,
    tensors under `min_8bit_size` elements in float32; Note [state dtypes of a
    group] in fusedopt/optim/base.py). The math is torch.optim.Adam's, with
    its L2 weight decay (bitsandbytes' Adam8bit decays decoupled: pass
    weight_decay_mode="decoupled" for that). `optim_bits`, `args`,
    `percentile_clipping`, `block_wise` and `is_paged` are accepted at their
    defaults only. state_dict() is torch's layout (float32 states, loadable
    by torch.optim.Adam); state_dict(compact=True) keeps codes and absmax."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        is_paged: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        _check_8bit_options(optim_bits, args, percentile_clipping, block_wise, is_paged)
        self._min_8bit_size = min_8bit_size
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, state_dtype="int8", backend=backend
        )


class AdamW8bit(_Min8bitSize, AdamW):
    """bitsandbytes.optim.AdamW8bit's names and defaults: torch's AdamW with
    8-bit blockwise states (as Adam8bit; decoupled weight decay, 1e-2)."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        is_paged: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        _check_8bit_options(optim_bits, args, percentile_clipping, block_wise, is_paged)
        self._min_8bit_size = min_8bit_size
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, state_dtype="int8", backend=backend
        )


class HFAdamW(FusedOptimizer):
    """transformers.AdamW (transformers v4.x, `optimization.py`; removed in
    later versions), the optimizer of BERT-era fine-tuning scripts and the
    CS224N assignments: its signature, defaults, group keys and update, so an
    old recipe reruns with one changed import. It differs from torch's AdamW in
    three places, all kept:
      - eps_mode "hat": step_size = lr * sqrt(bc2) / bc1, denom = sqrt(v) + eps
        (eps added to the uncorrected sqrt(v)), with eps=1e-6 by default;
      - `correct_bias=False` drops both bias corrections (BERT's original);
      - the decoupled decay comes AFTER the update, on the updated params:
        p -= step_size * m / denom, then p -= lr * wd * p (torch decays first;
        the two differ by O(lr^2 * wd) per step).
    `no_deprecation_warning` is accepted and does nothing: the deprecation was
    of transformers' copy in favour of torch.optim.AdamW, and this class stays.
    The moments update by torch's lerp where transformers had mul_/add_: the
    same formula, a rounding apart. Other differences from transformers: the
    `step` state is a float32 tensor as in torch's optimizers (load_state_dict
    takes transformers' int, as every class takes older torch's numbers),
    states stay float32 for bf16/fp16 params, and a negative weight_decay is
    refused (transformers silently skipped it).
    `weight_decay_mode` ("decoupled" by default, "fully_decoupled", "l2") and
    `lr_max` are fusedopt's decay keywords, as on every class.
    """

    rule = RULES["adam"]
    sparse_grad_hint = ", please consider SparseAdam instead"
    # transformers' groups have none of torch's keys: unpickling adds none.
    common_group_key_defaults = {}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        no_deprecation_warning: bool = False,
        *,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        # transformers' checks and messages.
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr} - should be >= 0.0")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter: {betas[0]} - should be in [0.0, 1.0)")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter: {betas[1]} - should be in [0.0, 1.0)")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps} - should be >= 0.0")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "correct_bias": correct_bias,
            **decay_defaults(weight_decay_mode, lr_max),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": float(beta1),
            "beta2": float(beta2),
            "eps": group["eps"],
            **weight_decay_hyper(group, decoupled_default=True),
            "decay_after": True,
            **convention_hyper(group, eps_mode="hat"),
            "amsgrad": False,
            "maximize": False,
        }
