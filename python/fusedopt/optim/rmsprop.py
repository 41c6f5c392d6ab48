"""fusedopt.RMSprop and fusedopt.RMSpropTF: one rule (rules/rmsprop.h), two
conventions.

RMSprop is torch.optim.RMSprop: its signature, defaults, group keys and state
(`step`, `square_avg`, `momentum_buffer` with momentum > 0, `grad_avg` when
centered): the update lr * g / (sqrt(v) + eps).

RMSpropTF is TensorFlow 1's RMSProp as timm 1.0.29's `timm.optim.RMSpropTF`
has it, with timm's signature and defaults: eps inside the square root
(lr * g / sqrt(v + eps), eps=1e-10), `square_avg` starting at 1, the averages
updated in TF's order (v += (1 - alpha) * (g^2 - v)), and the lr accumulated
in the momentum buffer (`lr_in_momentum=True`, TF's default: a schedule
changes the step of new gradients only). TF-trained recipes (EfficientNet,
MobileNet: alpha=0.9, eps=1e-3, momentum=0.9) depend on these; with torch's
RMSprop the same numbers train differently.

Both take fusedopt's `weight_decay_mode` ("l2", "decoupled",
"fully_decoupled") and `lr_max` (fusedopt.optim.base.decay_defaults); timm's
`decoupled_decay=True` is the "decoupled" mode (p *= 1 - lr * wd).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from fusedopt.optim.base import (
    FusedOptimizer,
    check_eps,
    check_fused_flags,
    check_lr_and_weight_decay,
    decay_defaults,
    weight_decay_hyper,
)
from fusedopt.reference import WeightDecayMode
from fusedopt.registry import RULES


class RMSprop(FusedOptimizer):
    """RMSprop with torch.optim.RMSprop's exact interface. `backend` is one of
    "auto", "cuda", "triton", "cpu", "reference" (see fusedopt.backends)."""

    rule = RULES["rmsprop"]
    group_key_defaults = {"momentum": 0, "centered": False, "capturable": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        check_lr_and_weight_decay(lr, weight_decay)
        check_eps(eps)
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        check_fused_flags(foreach, differentiable, None)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            **decay_defaults(weight_decay_mode, lr_max),
        }
        super().__init__(params, defaults, backend)

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "alpha": float(group["alpha"]),
            "eps": float(group["eps"]),
            **weight_decay_hyper(group),
            "momentum": float(group["momentum"]),
            "centered": bool(group["centered"]),
            "maximize": bool(group["maximize"]),
            "eps_in_sqrt": False,
            "tf_ema_order": False,
            "lr_in_momentum": False,
        }


def _check_timm_scalar(name: str, value: float | Tensor) -> None:
    """timm's _validate_scalar (timm/optim/_helpers.py), with its messages."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar or scalar tensor.")
        if float(value) < 0.0:
            raise ValueError(f"Invalid {name}: {value}")
    elif float(value) < 0.0:
        raise ValueError(f"Invalid {name}: {value}")


_CAUTION_REFUSED = (
    "fusedopt.RMSpropTF does not support caution=True: Cautious Optimizers "
    "(arXiv:2411.16085) rescale the update by the mean of its mask over the whole "
    "tensor, a reduction that a one-pass elementwise step cannot make; use "
    "timm.optim.RMSpropTF"
)


class RMSpropTF(FusedOptimizer):
    """TensorFlow 1's RMSProp with timm.optim.RMSpropTF's interface (timm
    1.0.29): the same signature, defaults, group keys and state keys, so
    timm checkpoints load as they are.

    `corrected_weight_decay=True` with `decoupled_decay=True` scales the decay
    as timm does, p *= 1 - wd * lr^2 / lr0 with lr0 the constructor's lr
    (arXiv:2506.02285). `caution=True` is refused (see _CAUTION_REFUSED).
    """

    rule = RULES["rmsprop"]
    # timm's __setstate__ fills in these; torch's common keys (maximize,
    # foreach, ...) are not RMSpropTF's, and timm's checkpoints lack them.
    common_group_key_defaults = {}
    group_key_defaults = {
        "momentum": 0,
        "centered": False,
        "caution": False,
        "corrected_weight_decay": False,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-10,
        weight_decay: float = 0,
        momentum: float = 0.0,
        centered: bool = False,
        decoupled_decay: bool = False,
        corrected_weight_decay: bool = False,
        lr_in_momentum: bool = True,
        caution: bool = False,
        *,
        weight_decay_mode: str | None = None,
        lr_max: float | None = None,
        backend: str = "auto",
    ) -> None:
        _check_timm_scalar("learning rate", lr)
        _check_timm_scalar("epsilon", eps)
        _check_timm_scalar("momentum", momentum)
        _check_timm_scalar("weight_decay", weight_decay)
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        if caution:
            raise ValueError(_CAUTION_REFUSED)
        if corrected_weight_decay and weight_decay_mode not in (None, "decoupled"):
            raise ValueError(
                "corrected_weight_decay=True applies to the decoupled decay only, "
                f"not to weight_decay_mode={weight_decay_mode!r}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "decoupled_decay": decoupled_decay,
            "corrected_weight_decay": corrected_weight_decay,
            "lr_in_momentum": lr_in_momentum,
            "caution": caution,
            **decay_defaults(weight_decay_mode, lr_max, decoupled_decay),
        }
        super().__init__(params, defaults, backend)

    def initial_state_value(self, group: Mapping[str, Any], key: str) -> float:
        # timm: `state['square_avg'] = torch.ones_like(p)  # PyTorch inits to zero`
        return 1.0 if key == "square_avg" else 0.0

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        if group["caution"]:
            raise ValueError(_CAUTION_REFUSED)
        decay = weight_decay_hyper({**group, "decoupled_weight_decay": group["decoupled_decay"]})
        decoupled = decay["weight_decay_mode"] == WeightDecayMode.DECOUPLED
        if group["corrected_weight_decay"] and decoupled:
            # timm: wd_scale = lr ** 2 / self.defaults['lr'], then p *= 1 - wd_scale * wd:
            # the decoupled mode's 1 - lr * wd with wd * lr / lr0 for wd.
            decay["weight_decay"] *= float(group["lr"]) / float(self.defaults["lr"])
        return {
            "alpha": float(group["alpha"]),
            "eps": float(group["eps"]),
            **decay,
            "momentum": float(group["momentum"]),
            "centered": bool(group["centered"]),
            "maximize": False,
            "eps_in_sqrt": True,
            "tf_ema_order": True,
            "lr_in_momentum": bool(group["lr_in_momentum"]),
        }
