"""fusedopt.Adam and fusedopt.AdamW: drop-in replacements for torch.optim's.

Same signatures, defaults, param-group keys, state keys and state_dict layout
as torch 2.x (`step` is a float32 scalar tensor; `exp_avg`, `exp_avg_sq`,
`max_exp_avg_sq`), so checkpoints move both ways and LR schedulers work as they
are. Differences, all deliberate:
  - every group is stepped by a fused backend (see fusedopt.backends); the
    extra `backend=` argument picks one, and `fusedopt.report(opt)` says which;
  - bf16/fp16 params keep float32 states (torch keeps them in the param's
    dtype), and the math runs in float32; see Note [fp32 states of low-precision
    params];
  - `differentiable=True` and `foreach=True` are refused: a fused kernel is
    neither a graph of autograd ops nor a foreach loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from fusedopt import _extension, backends
from fusedopt._checks import check_adam_lists, is_dense, same_layout
from fusedopt.reference import WeightDecayMode, compute_dtype

logger = logging.getLogger("fusedopt")

# Note [fp32 states of low-precision params]: torch keeps Adam's moments in the
# param's dtype, so a bf16 model's v underflows and its updates stall (AReaL
# #1292). fusedopt keeps them in float32 for bf16/fp16 params, and keeps them
# float32 through load_state_dict, which torch would cast to the param's dtype.
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _scalar(value: float | Tensor, name: str) -> float | Tensor:
    if isinstance(value, Tensor) and value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element")
    return value


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's exact interface.

    `decoupled_weight_decay=True` gives AdamW. `backend` is one of "auto",
    "cuda", "triton", "cpu", "reference" (see fusedopt.backends).
    """

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
        backend: str = "auto",
    ) -> None:
        _scalar(lr, "lr")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if differentiable:
            raise ValueError(
                "fusedopt optimizers are not differentiable (a fused kernel is not a graph of "
                "autograd ops); use torch.optim with differentiable=True"
            )
        if foreach:
            raise ValueError("fusedopt optimizers are fused; `foreach=True` cannot apply")
        if fused is False:
            raise ValueError(
                "fusedopt optimizers are always fused; use torch.optim for fused=False"
            )
        if backend not in backends.BACKEND_NAMES:
            raise ValueError(
                f"fusedopt: unknown backend {backend!r}; choose one of {backends.BACKEND_NAMES}"
            )
        betas = (float(_scalar(betas[0], "betas[0]")), float(_scalar(betas[1], "betas[1]")))
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
        }
        super().__init__(params, defaults)
        # Not a group key: the state_dict keeps torch's layout exactly.
        self.backend = backend
        # GradScaler hands grad_scale and found_inf to step() instead of
        # unscaling grads itself; every backend applies them in its one pass.
        self._step_supports_amp_scaling = True
        _extension.warn_once_if_missing()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)
        self.__dict__.setdefault("backend", "auto")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, but low-precision params keep float32 states
        (Note [fp32 states of low-precision params])."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_states = state_dict["state"]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, param in zip(saved_ids, params):
            # Only where torch's cast lost precision; fp32 params keep exactly
            # what torch's own load made.
            low_precision = compute_dtype(param.dtype) != param.dtype
            if not low_precision or param not in self.state or saved_id not in saved_states:
                continue
            state = self.state[param]
            for key in _STATE_KEYS:
                if key in state:
                    state[key] = saved_states[saved_id][key].to(
                        device=param.device, dtype=compute_dtype(param.dtype)
                    )

    def _weight_decay_mode(self, group: dict[str, Any]) -> WeightDecayMode:
        return WeightDecayMode.DECOUPLED if group["decoupled_weight_decay"] else WeightDecayMode.L2

    def _buckets(self, group: dict[str, Any]) -> dict[backends.Bucket, list[Tensor]]:
        """The group's params that have a grad, by (device, dtype, dense), after
        the checks that must pass before any state is created or written. This
        is the per-step Python cost per param, hence whole-list comprehensions
        (about half the time of one loop doing it all, for 2000 params)."""
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                "Adam does not support sparse gradients, please consider SparseAdam instead"
            )
        dtypes = [p.dtype for p in params]
        # torch refuses a grad of another shape or device when it is assigned;
        # another dtype only gets through with p.grad_dtype = None.
        for p, g, dtype in zip(params, grads, dtypes):
            if g.dtype is not dtype:
                raise RuntimeError(
                    f"fusedopt: a grad must match its param's dtype; got a {g.dtype} grad "
                    f"for a {dtype} param of shape {tuple(p.shape)}"
                )
        # Contiguous pairs (nearly all) settle density without the general test.
        dense = [
            (p.is_contiguous() and g.is_contiguous()) or (is_dense(p) and same_layout(g, p))
            for p, g in zip(params, grads)
        ]
        keys = list(zip([p.device for p in params], dtypes, dense))
        if keys and keys.count(keys[0]) == len(keys):
            return {backends.Bucket(*keys[0]): params}
        buckets: dict[tuple, list[Tensor]] = {}
        for key, p in zip(keys, params):
            buckets.setdefault(key, []).append(p)
        return {backends.Bucket(*key): ps for key, ps in buckets.items()}

    def _new_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        # torch keeps `step` on the CPU unless capturable (note "special device
        # hosting for step" in torch/optim/adam.py).
        step_device = p.device if group["capturable"] else "cpu"
        state = {"step": torch.zeros((), dtype=torch.float32, device=step_device)}
        state_dtype = compute_dtype(p.dtype)
        for key in _STATE_KEYS if group["amsgrad"] else _STATE_KEYS[:2]:
            state[key] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        return state

    def _resolve_all(self) -> list[tuple[int, backends.Bucket, list[Tensor], backends.Choice]]:
        """For each group and bucket of params with grads, the backend that steps
        it. Raises before anything is written when a bucket cannot be served."""
        work = []
        for index, group in enumerate(self.param_groups):
            for bucket, params in self._buckets(group).items():
                choice = backends.resolve(self.backend, bucket, group["capturable"])
                work.append((index, bucket, params, choice))
        return work

    def plan(self) -> list[tuple[int, backends.Bucket, int, backends.Choice]]:
        """(group index, bucket, number of params, backend choice) for the params
        that have grads now: what the next step() will do. fusedopt.report() prints it."""
        return [
            (i, bucket, len(params), choice) for i, bucket, params, choice in self._resolve_all()
        ]

    def _log_choice(self, index: int, bucket: backends.Bucket, choice: backends.Choice) -> None:
        """Says once, at INFO level, which backend steps each bucket."""
        key = (index, bucket)
        logged = self.__dict__.setdefault("_logged_choices", {})
        if logged.get(key) != choice.backend.name:
            logged[key] = choice.backend.name
            logger.info(
                "fusedopt: group %d, %s params on %s -> backend %r%s",
                index,
                bucket.dtype,
                bucket.device,
                choice.backend.name,
                "".join(f"; passed over {n}: {r}" for n, r in choice.passed_over),
            )

    def _gather(
        self,
        index: int,
        bucket: backends.Bucket,
        params: list[Tensor],
        choice: backends.Choice,
        created: list[Tensor],
    ) -> tuple:
        """(backend, tensor lists, hyperparameters) of one bucket's step; states
        made here are recorded in `created`."""
        group = self.param_groups[index]
        self._log_choice(index, bucket, choice)
        amsgrad = group["amsgrad"]
        states = []
        for p in params:
            state = self.state.get(p)
            if not state:
                state = self.state[p] = self._new_state(group, p)
                created.append(p)
            states.append(state)
        lists = (
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            [s["step"] for s in states],
        )
        beta1, beta2 = group["betas"]
        kwargs = dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            weight_decay_mode=self._weight_decay_mode(group),
            lr_max=1.0,
            amsgrad=amsgrad,
            maximize=group["maximize"],
        )
        return choice.backend, lists, kwargs

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)

        # Choose for every bucket and gather every list before anything is
        # written; with several buckets, check them all too, since each
        # backend's own checks would only cover its bucket: a refused step
        # writes nothing, in any group.
        created = []  # params whose state this step created: dropped again if it fails
        calls = [
            self._gather(index, bucket, params, choice, created)
            for index, bucket, params, choice in self._resolve_all()
        ]
        try:
            if len(calls) > 1:
                for backend, lists, kwargs in calls:
                    check_adam_lists(
                        *lists,
                        amsgrad=kwargs["amsgrad"],
                        state_dtype=backend.state_dtype,
                        require_dense=backend.requires_dense,
                    )
            for backend, lists, kwargs in calls:
                backend.adam_step(*lists, **kwargs, grad_scale=grad_scale, found_inf=found_inf)
        except Exception:
            for p in created:
                del self.state[p]
            raise
        return loss


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
            backend=backend,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
