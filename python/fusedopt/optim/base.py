"""FusedOptimizer: what every fusedopt optimizer shares.

An optimizer class is torch's signature, defaults and ValueErrors plus a
`rule` (fusedopt/registry.py) and `hyper(group)`, the op's hyperparameters
read from a param group at every step. Everything else lives here: which
backend steps which bucket of params (one device, one dtype, dense or not),
state creation (float32 states for bf16/fp16 params: Note [fp32 states of
low-precision params]), the atomic step, load_state_dict, plan() and report().

Note [cached step plans]: per group, the bucketed param lists, the backend
choice and the state dicts are built once and kept while nothing they depend
on changes: the group's params list (same list, same tensors), which params
have a grad, the states the rule uses with the current hyperparameters. Each
step then re-gathers only the grads and the state tensors (so a state
replaced in opt.state[p] takes effect, as in torch) and reads the group's
hyperparameters anew (a scheduler may change lr, betas, ... at every step).
add_param_group, load_state_dict and unpickling drop every plan, and so does
a change of `opt.state` itself seen in O(1): another object (a reset,
`opt.state = defaultdict(dict)`) or another number of entries (`clear()`,
`del opt.state[p]`). Replacing one param's whole dict (`opt.state[p] = {}`)
is not seen: change its tensors instead, or call load_state_dict. A plan
can also go stale in what it does not check each step (a grad's layout, say):
when a call of cached plans is refused before anything is written, the step
drops every plan and runs once more on new ones, which check everything.

Note [counts on the device]: on a GPU backend (cuda, triton) each param's
`step` lives on the param's device, as torch's fused optimizers keep it: the
kernels compute the per-step scalars from it and advance it after the element
pass, so a step reads nothing back, not even GradScaler's found_inf, and
launches nothing that depends on a host value but lr. Counts loaded on the
CPU (a checkpoint) move there once, when the plan is built. Exception: the
reference backend (it reads every value on the host anyway). Rules with
scalar states (a running product, a decaying rate: Note [scalar states] in
csrc/include/fusedopt/core/rule.h) keep them beside the counts, and the
kernels read and advance them there too.

Note [CUDA graphs]: a captured step() replays its kernels with the arguments
of the step that was captured. With counts on the device the scalars follow
the counts, but a float lr and a host-held count are baked in, so, as torch
does, step() refuses to be captured unless every group is capturable (lr a
tensor or constant, counts on the device).

Note [state layouts]: a state tensor has its param's layout (created with
memory_format=torch.preserve_format), which the kernels' flat loop needs. When
a param's layout changes after its states exist (`model.to(memory_format=
torch.channels_last)` after some steps, or a checkpoint of a contiguous model
loaded into a channels_last one), torch steps on, its ops being elementwise;
fusedopt re-lays each such state out in its param's layout, values kept, once,
when the plan is built (a cached plan's call is refused before any write, and
the step runs again on a new plan: Note [cached step plans]).

Note [sharded params]: FSDP2 (`fully_shard`) and tensor parallelism make
params, grads and states DTensors, which torch's optimizers step through
DTensor's sharding rules; fusedopt's ops have none. Every rule's update is
elementwise (an element reads only its own param, grad and states, the
group's hyperparameters and its tensor's counts), so each shard steps alone:
a call of DTensor params passes their local shards to the same op, and the
result is the unsharded step's. The states stay DTensors of their param's
placements (made by full_like of the param), as torch keeps them, which is
what torch.distributed.checkpoint's get/set_optimizer_state_dict save, load
and reshard; counts stay plain tensors, as torch's. A class whose step is not
elementwise (row/column statistics of a factored moment, a clip by the norm of
every grad) says why in `whole_tensor_reason(group)`, and a group of it with
sharded params is refused with that reason before anything is written.
Cost: DTensors are detected when a plan is built (and only once
torch.distributed.tensor is imported); a call of plain tensors pays one flag
check per step, a sharded call one attribute read per tensor.

Note [compiled steps]: torch.compile traces step(). The set-up a plan needs
(states, backend choice, the checks of Note [cached step plans]) is
`_init_group`, the name of torch's optimizers' state set-up: dynamo runs a
method of that name eagerly instead of tracing it, and guards on the state
and param groups (torch/_dynamo/variables/optimizer.py), so the graph holds
the gathering of the lists and the ops, and what would drop a plan
recompiles it. Traced in place, the set-up broke the graph at its logger call
and made the step recompile at every call. While tracing, dynamo shows every
group as capturable, which `_capturable` reads as False (inductor, not
step(), decides on CUDA graphs).

Note [fp32 states of low-precision params]: torch keeps an optimizer's moments
in the param's dtype, so a bf16 model's second moment underflows and its
updates stall (AReaL #1292). fusedopt keeps every state in float32 for bf16/fp16 params, and keeps
it float32 through load_state_dict, which torch would cast to the param's dtype.

Note [max_grad_norm]: `max_grad_norm=` (a keyword of every class, and a group
key) clips the grads by their global 2-norm before the update, equal to
torch.nn.utils.clip_grad_norm_(params, max_grad_norm) then step(), with or
without GradScaler. The norm is over the grads of ALL the groups that set
max_grad_norm (as clip_grad_norm_(model.parameters()) and HF Trainer's
max_grad_norm clip over the whole model), one reduction (fusedopt.clip); each
group is clipped with its own max_grad_norm. The coefficient
c = min(max_grad_norm / (norm + 1e-6), 1) is folded into the update pass's
GradScaler input: grad_scale / c (1 / c without a scaler), so the update reads
each grad once, divides it by that, and stores the clipped, unscaled grad back
(torch's clip leaves the clipped grads too); with GradScaler the norm is the
scaled grads' divided by the scale (exact: its scales are powers of two; a
sum of squares that overflows fp32 only once scaled, grads over ~1e19 /
scale, reads as an inf norm), and a found_inf skips the step as before.
Everything stays on the device: no host sync. A non-finite norm without a
scaler makes c 0 or NaN, and the grads 0 or NaN, as torch's clip does. The
key is added to the groups only when given, so the groups keep torch's keys
otherwise.

Note [state dtypes of a group]: a group's `state_dtype` key ("fp32" when
absent, "bf16", "int8"; fusedopt.reference.codecs) says how its element states
are stored; the math stays fp32 (Note [state dtypes] in
csrc/include/fusedopt/core/storage.h). A param's storage is the group's, but
fp32 for a tensor under the group's `min_8bit_size` (bitsandbytes' 4096) with
"int8", and fp64 for an fp64 param (the reference's oracle). Params of one
storage form one call. 8-bit states keep their codes under the state's key
(int8 codes for the signed map, uint8 for the unsigned one) and their
per-block absmax under `<key>_absmax`. A state in another storage than its
group's (a checkpoint, a changed `state_dtype`) is converted once, when the
plan is built. state_dict() gives 8-bit states in torch's layout (float32),
or as codes and absmax with compact=True; load_state_dict takes either.

Note [master weights of a group]: a group's `master_weights`, `kahan_sum` or
`stochastic_rounding` key (at most one True) and `rounding_seed`
(fusedopt.reference.master) say how its bf16/fp16 params are stored; fp32
params of the group step as without. The policy's states (master_param,
kahan_comp, rounding_step) are made when the plan is built, master_param from
the param's value, and kept through load_state_dict in their own dtype (torch
would cast master_param to the param's); the keys stay with the group through a
checkpoint that lacks them. A change of the group's policy rebuilds its plan,
which drops the states of any other policy. Params of one policy form one call; a backend
without the policy's store is passed over by "auto" and refused by name.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import is_
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from fusedopt import _extension, backends, clip
from fusedopt._checks import (
    CODE_DTYPES,
    check_hyper,
    check_lists,
    is_dense,
    param_store_policy,
    same_layout,
    storage_state_dtype,
    store_policy,
)
from fusedopt.reference import WeightDecayMode, codecs, compute_dtype, master
from fusedopt.registry import Rule

logger = logging.getLogger("fusedopt")


def check_lr_and_weight_decay(lr: float | Tensor, weight_decay: float | Tensor) -> None:
    """torch's checks, with torch's messages."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


# The `weight_decay_mode` keyword of every fusedopt optimizer: one name and
# the same values on every class (fusedopt.reference.WeightDecayMode).
WEIGHT_DECAY_MODES = {
    "l2": WeightDecayMode.L2,
    "decoupled": WeightDecayMode.DECOUPLED,
    "fully_decoupled": WeightDecayMode.FULLY_DECOUPLED,
}


def decay_defaults(
    weight_decay_mode: str | None, lr_max: float | None, decoupled_weight_decay: bool = False
) -> dict[str, Any]:
    """The group keys of the `weight_decay_mode` and `lr_max` keywords, only
    when given, so that a torch-style optimizer keeps torch's group keys.

    Modes: "l2" (g += wd * p), "decoupled" (p *= 1 - lr * wd, torch's AdamW),
    "fully_decoupled" (p *= 1 - wd * lr / lr_max: Loshchilov & Hutter's
    eta_t * lambda, as Composer's DecoupledAdamW and optimi do; the decay no
    longer scales with the peak lr, so it needs a far smaller weight_decay:
    wd_fully = wd_torch * lr_max). `lr_max` is a group key: the group's lr
    when the group is added unless given. Not torch's `initial_lr`, which
    OneCycleLR sets to max_lr / div_factor and CyclicLR to base_lr.
    """
    if weight_decay_mode is None:
        if lr_max is not None:
            raise ValueError("lr_max applies to weight_decay_mode='fully_decoupled' only")
        return {}
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"Invalid weight_decay_mode {weight_decay_mode!r}; choose one of "
            f"{sorted(WEIGHT_DECAY_MODES)}"
        )
    if decoupled_weight_decay and weight_decay_mode == "l2":
        raise ValueError("decoupled_weight_decay=True contradicts weight_decay_mode='l2'")
    if weight_decay_mode != "fully_decoupled":
        if lr_max is not None:
            raise ValueError("lr_max applies to weight_decay_mode='fully_decoupled' only")
        return {"weight_decay_mode": weight_decay_mode}
    if lr_max is not None and not lr_max > 0.0:
        raise ValueError(f"Invalid lr_max value: {lr_max} (must be > 0)")
    return {"weight_decay_mode": weight_decay_mode, "lr_max": lr_max}


def check_eps(eps: float) -> None:
    """torch's check, with torch's message."""
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")


def check_betas(betas) -> None:
    """torch's checks of a (beta1, beta2) pair of moment decays, with torch's messages."""
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def weight_decay_hyper(group: Mapping[str, Any], decoupled_default: bool = False) -> dict[str, Any]:
    """The weight-decay hyperparameters every rule's op takes, from the group's
    `weight_decay`, `weight_decay_mode` and `lr_max` (decay_defaults), else
    `decoupled_weight_decay` (the key torch's optimizers use), else the
    class's default mode."""
    mode = group.get("weight_decay_mode")
    if mode is None:
        decoupled = group.get("decoupled_weight_decay", decoupled_default)
        mode = "decoupled" if decoupled else "l2"
    lr_max = group.get("lr_max")
    return {
        "weight_decay": float(group["weight_decay"]),
        "weight_decay_mode": int(WEIGHT_DECAY_MODES[mode]),
        "lr_max": float(lr_max) if lr_max is not None else 1.0,
    }


def check_max_grad_norm(max_grad_norm: float | None) -> None:
    """Note [max_grad_norm]: None (no clipping) or a positive, finite float."""
    if max_grad_norm is not None and not 0.0 < max_grad_norm < float("inf"):
        raise ValueError(
            f"Invalid max_grad_norm value: {max_grad_norm} (a positive, finite norm, or None "
            "for no clipping)"
        )


def _with_max_grad_norm(init: Callable) -> Callable:
    """A class's __init__ that also takes Note [max_grad_norm]'s keyword,
    without that keyword in the class's own (torch's) signature."""

    @functools.wraps(init)
    def __init__(self, *args, max_grad_norm: float | None = None, **kwargs) -> None:
        if max_grad_norm is not None:
            check_max_grad_norm(max_grad_norm)
            self.__dict__["_max_grad_norm"] = float(max_grad_norm)
        init(self, *args, **kwargs)

    return __init__


def check_fused_flags(foreach: bool | None, differentiable: bool, fused: bool | None) -> None:
    """torch's flags that a fused kernel cannot honour."""
    if differentiable:
        raise ValueError(
            "fusedopt optimizers are not differentiable (a fused kernel is not a graph of "
            "autograd ops); use torch.optim with differentiable=True"
        )
    if foreach:
        raise ValueError("fusedopt optimizers are fused; `foreach=True` cannot apply")
    if fused is False:
        raise ValueError("fusedopt optimizers are always fused; use torch.optim for fused=False")


@dataclass
class _Call:
    """One backend call of a step: a bucket of a group's params with grads."""

    bucket: backends.Bucket
    choice: backends.Choice
    indices: list[int]  # positions in the group's params
    params: list[Tensor]
    state_dicts: list[dict[str, Any]]
    fresh: bool  # its states were created in this step (Rule.fresh_flag)
    sharded: bool  # its params are DTensors: it steps their local shards (Note [sharded params])
    # Each param's position in the optimizer (Note [master weights of a group]).
    tags: list[int] = field(default_factory=list)
    # The backend's own per-call cache (the Triton launcher's tables): it lives
    # and dies with this plan (Note [cached step plans]).
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class _GroupPlan:
    params: list[Tensor]  # the group's params list when the plan was built
    source: list[Tensor]  # that list object itself
    has_grad: list[bool]  # which of them had a grad
    used: tuple[str, ...]
    calls: list[_Call] = field(default_factory=list)
    # The group's master-weight policy when the plan was built: a change rebuilds it.
    store: str = "none"


def _has_grad(grads: list) -> list[bool]:
    # Not `None in grads`: `in` compares each tensor with None through
    # Tensor.__eq__, 18 us per tensor.
    return [g is not None for g in grads]


class FusedOptimizer(Optimizer):
    rule: ClassVar[Rule]
    # Group keys that pickles of older versions may lack, with their defaults
    # (torch's __setstate__ fills them in the same way): these, and the
    # class's own `group_key_defaults`, each only where the class has the key
    # (in its defaults), so that a class keeps torch's group keys exactly.
    common_group_key_defaults: ClassVar[dict[str, Any]] = {
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": False,
    }
    group_key_defaults: ClassVar[dict[str, Any]] = {}
    # Appended to the error for a sparse grad (torch's wording, where it has one).
    sparse_grad_hint: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_max_grad_norm(cls.__dict__["__init__"])

    def __init__(self, params, defaults: dict[str, Any], backend: str) -> None:
        max_grad_norm = self.__dict__.pop("_max_grad_norm", None)
        if max_grad_norm is not None:
            defaults = {**defaults, "max_grad_norm": max_grad_norm}
        if backend not in backends.BACKEND_NAMES:
            raise ValueError(
                f"fusedopt: unknown backend {backend!r}; choose one of {backends.BACKEND_NAMES}"
            )
        super().__init__(params, defaults)
        # Not a group key: the state_dict keeps torch's layout exactly.
        self.backend = backend
        # GradScaler hands grad_scale and found_inf to step() instead of
        # unscaling grads itself; every backend applies them in its one pass.
        self._step_supports_amp_scaling = True
        self._plans: dict[int, _GroupPlan] = {}
        # (self.state, its length) when the plans were last used. The step
        # mutates this list, _plans and _last_step in place, never rebinds
        # them: torch 2.11's dynamo refuses a setattr on the optimizer inside a
        # compiled step (tests/test_semantics.py, test_step_under_torch_compile_equals_eager).
        # Neither list changes length: dynamo's guards hold list lengths, and a
        # list that grew at the first step recompiled the second (Note [compiled steps]).
        self._state_seen: list = [None, -1]
        # One slot: what the last step() stepped, as plan() lists it; report()
        # shows it once the grads are gone (zero_grad).
        self._last_step: list[list[tuple[int, backends.Bucket, int, backends.Choice]]] = [[]]
        _extension.warn_once_if_missing()

    def hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The rule's hyperparameters (registry.Rule.hyper) of this group now."""
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps defaults, state and param_groups: deepcopy and pickle
        # would lose the backend.
        return {**super().__getstate__(), "backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in {**self.common_group_key_defaults, **self.group_key_defaults}.items():
                if key in self.defaults:
                    group.setdefault(key, value)
        # Checkpoints of older torch (and transformers' AdamW) hold `step` and
        # the scalar states as Python numbers; torch's __setstate__, which its
        # load_state_dict calls too, turns them into float32 tensors, on the CPU
        # (the plan moves counts to their device: Note [counts on the device]).
        for param_state in self.state.values():
            if not isinstance(param_state, dict):
                continue
            for key in self.rule.scalar_keys:
                value = param_state.get(key)
                if value is not None and not isinstance(value, Tensor):
                    param_state[key] = torch.tensor(float(value), dtype=torch.float32)
        self.__dict__.setdefault("backend", "auto")
        self._plans = {}
        self._state_seen = [None, -1]
        self._last_step = [[]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_max_grad_norm(param_group.get("max_grad_norm"))
        storage = param_group.get("state_dtype", "fp32")
        if storage not in codecs.STATE_DTYPES:
            raise ValueError(
                f"fusedopt: state_dtype must be one of {codecs.STATE_DTYPES}, got {storage!r}"
            )
        store_policy(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("weight_decay_mode") == "fully_decoupled" and group.get("lr_max") is None:
            # decay_defaults: the group's lr now, before any scheduler moves it.
            group["lr_max"] = float(group["lr"])
        self.__dict__["_plans"] = {}

    def whole_tensor_reason(self, group: Mapping[str, Any]) -> str | None:
        """Note [sharded params]: None when this group's step is elementwise
        (each element's update reads only its own param, grad and states, the
        group's hyperparameters and the tensor's counts), so that each shard of
        a sharded param steps alone; else what in it needs whole tensors (a
        class with row/column statistics says so here), and step() refuses
        sharded params of this group. A class that overrides it returns the
        base's reason too."""
        if group.get("max_grad_norm") is not None:
            return "max_grad_norm clips by the norm of every grad (Note [max_grad_norm])"
        if group.get("state_dtype") == "int8":
            return (
                "8-bit states quantize blocks of the whole tensor's memory order, which "
                "a shard boundary splits (Note [state dtypes of a group])"
            )
        if store_policy(group) != master.NONE:
            return (
                "a master-weight policy's store is not written for local shards yet (and "
                "stochastic rounding keys its bits on the whole tensor's element index)"
            )
        return None

    def initial_state_value(self, group: Mapping[str, Any], key: str) -> float:
        """The value a new state tensor `key` starts at (torch's zeros, unless
        the class says otherwise: a class's initial accumulator, a running
        product that starts at 1), for element and scalar states alike."""
        return 0.0

    def state_dict(self, compact: bool = False) -> dict[str, Any]:
        """torch's state_dict. 8-bit states (Note [state dtypes of a group])
        are decoded into float32 under torch's keys, so that torch's optimizer
        of the same name loads them; compact=True keeps their codes and
        absmax (~1.02 B per element instead of 4), which load_state_dict takes back."""
        saved = super().state_dict()
        if compact:
            return saved
        for index, packed in saved["state"].items():
            suffixed = [key for key in packed if key.endswith(ABSMAX_SUFFIX)]
            if suffixed:
                # A copy: torch's dict holds the optimizer's own state dicts.
                packed = saved["state"][index] = dict(packed)
                for key in suffixed:
                    name = key.removesuffix(ABSMAX_SUFFIX)
                    packed[name] = codecs.decode_8bit(packed[name], packed.pop(key))
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, but low-precision params keep float32 states
        (Note [fp32 states of low-precision params]), and 8-bit states saved
        compact are decoded (Note [state dtypes of a group])."""
        loaded: list[dict[str, Any]] = []

        def capture(optimizer: Optimizer, final: dict[str, Any]) -> None:
            loaded.append(final)

        # Registered last, so it sees the dict every user pre-hook returned:
        # the one torch's load reads, and so the one whose fp32 states count.
        # A group keeps its storage keys through a checkpoint that lacks them
        # (torch's or an fp32 one): its states are converted instead (Note
        # [state dtypes of a group]).
        storage_keys = [
            {key: g[key] for key in (*STORAGE_GROUP_KEYS, *POLICY_GROUP_KEYS) if key in g}
            for g in self.param_groups
        ]
        handle = self.register_load_state_dict_pre_hook(capture)
        try:
            super().load_state_dict(state_dict)
        finally:
            handle.remove()
        for group, keys in zip(self.param_groups, storage_keys):
            for key, value in keys.items():
                group.setdefault(key, value)
        state_dict = loaded[-1]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_states = state_dict["state"]
        self._plans = {}
        params = [(g, p) for g in self.param_groups for p in g["params"]]
        for saved_id, (group, param) in zip(saved_ids, params):
            if param not in self.state or saved_id not in saved_states:
                continue
            state, saved = self.state[param], saved_states[saved_id]
            # Compact 8-bit states: torch's load cast the codes to the param's
            # dtype. A group that stores them 8-bit takes the saved codes as
            # they are; any other decodes them. The next plan stores every
            # state as its group says.
            eight_bit = self.state_storage(group, param) == "int8"
            for key in self.rule.states:
                absmax = saved.get(key + ABSMAX_SUFFIX)
                state.pop(key + ABSMAX_SUFFIX, None)
                if absmax is None or key not in state:
                    continue
                if eight_bit:
                    state[key] = saved[key].to(param.device, copy=True)
                    state[key + ABSMAX_SUFFIX] = absmax.to(param.device, torch.float32, copy=True)
                else:
                    values = codecs.decode_8bit(saved[key], absmax.float())
                    state[key] = values.to(device=param.device, dtype=compute_dtype(param.dtype))
            # Note [master weights of a group]: torch cast them to the param's dtype.
            for key in (master.MASTER_KEY, master.COUNT_KEY):
                if key in state and key in saved:
                    state[key] = saved[key].to(param.device, torch.float32, copy=True)
            # Scalar states (NAdam's mu_product) stay float32 beside the count:
            # torch's load casts them to the param's dtype and device.
            for key in self.rule.scalars:
                if key in state and "step" in state:
                    state[key] = torch.as_tensor(
                        saved[key], dtype=torch.float32, device=state["step"].device
                    )
            # Only where torch's cast lost precision; fp32 params keep exactly
            # what torch's own load made.
            if compute_dtype(param.dtype) == param.dtype:
                continue
            for key in self.rule.states:
                if key in state and key + ABSMAX_SUFFIX not in saved:
                    state[key] = saved[key].to(
                        device=param.device, dtype=compute_dtype(param.dtype)
                    )

    # --- plans ---------------------------------------------------------------

    def _counts_device(
        self, group: Mapping[str, Any], p: Tensor, backend: backends.Backend
    ) -> torch.device:
        """Where a param's step count and scalar states live: Note [counts on the device]."""
        if _capturable(group):
            return p.device
        if backend.counts_on_device:
            return p.device
        return torch.device("cpu")

    def _new_state(
        self, group: Mapping[str, Any], p: Tensor, used: tuple[str, ...], counts_device
    ) -> None:
        if not used and not self.rule.has_step:
            return  # nothing to keep: torch leaves no entry in self.state either
        state = self.state[p]
        for key in self.rule.scalar_keys:
            if key not in state:
                value = 0.0 if key == "step" else self.initial_state_value(group, key)
                state[key] = torch.tensor(value, dtype=torch.float32, device=counts_device)
            elif state[key].device != counts_device:
                # Loaded from a checkpoint (or made by another backend): moved
                # once, when the plan is built.
                state[key] = state[key].to(counts_device)
        storage = self.state_storage(group, p)
        shape_of = self.rule.state_shape
        for key in self.rule.states_of(p, used):
            shape = None if shape_of is None else shape_of(key, p)
            param_shaped = shape in (None, tuple(p.shape))
            if key not in state and not param_shaped:
                # Note [param-shaped states] in fusedopt/registry.py: contiguous.
                state[key] = torch.full(
                    shape,
                    self.initial_state_value(group, key),
                    dtype=compute_dtype(p.dtype),
                    device=p.device,
                )
            elif key not in state:
                value = self.initial_state_value(group, key)
                _store_state(state, key, p, storage, key in self.rule.nonnegative, value)
            elif not param_shaped:
                continue
            elif not _stored_as(state, key, p, storage) and _is_a_storage(state, key, p):
                # Note [state dtypes of a group]: converted once, values kept.
                # (A state in no storage, a float64 one say, is left to the
                # backend's checks, which refuse it.)
                values = _state_values(state, key)
                _store_state(state, key, p, storage, key in self.rule.nonnegative, values)
            elif _needs_relayout(state[key], p):
                # Note [state layouts]: the param's layout changed after this
                # state was made; a copy in the param's layout keeps the values.
                state[key] = torch.empty_like(
                    p, dtype=state[key].dtype, memory_format=torch.preserve_format
                ).copy_(state[key])

    def state_storage(self, group: Mapping[str, Any], p: Tensor) -> str:
        """How p's element states are stored: Note [state dtypes of a group]."""
        storage = group.get("state_dtype", "fp32")
        if p.dtype == torch.float64:
            return "fp32"
        if storage == "int8" and p.numel() < group.get("min_8bit_size", codecs.MIN_8BIT_SIZE):
            return "fp32"
        return storage

    def _bucket_keys(self, params: list[Tensor], grads: list[Tensor]) -> list[tuple]:
        """(device, dtype, dense) of each param, after the checks that must pass
        before any state is created or written. A DTensor's are its local
        shard's (Note [sharded params])."""
        if _dtensor_class() is not None:
            params, grads = _locals(params, unwrap_any=True), _locals(grads, unwrap_any=True)
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients{self.sparse_grad_hint}"
            )
        dtypes = [p.dtype for p in params]
        # torch refuses a grad of another shape or device when it is assigned;
        # another dtype only gets through with p.grad_dtype = None.
        if [g.dtype for g in grads] != dtypes:
            for p, g in zip(params, grads):
                if g.dtype is not p.dtype:
                    raise RuntimeError(
                        f"fusedopt: a grad must match its param's dtype; got a {g.dtype} grad "
                        f"for a {p.dtype} param of shape {tuple(p.shape)}"
                    )
        # Contiguous pairs (nearly all) settle density without the general test.
        dense = [
            (p.is_contiguous() and g.is_contiguous()) or (is_dense(p) and same_layout(g, p))
            for p, g in zip(params, grads)
        ]
        return list(zip([p.device for p in params], dtypes, dense))

    def _build_plan(
        self, group: dict[str, Any], grads: list, used: tuple[str, ...], created: list[Tensor]
    ) -> _GroupPlan:
        source = group["params"]
        has_grad = _has_grad(grads)
        indices = [i for i, g in enumerate(grads) if g is not None]
        params = [source[i] for i in indices]
        keys = self._bucket_keys(params, [grads[i] for i in indices])
        fresh_flag = self.rule.fresh_flag
        dtensor = _dtensor_class()
        policy = store_policy(group)
        split: dict[tuple, list[int]] = {}
        for position, (i, key) in enumerate(zip(indices, keys)):
            p = source[i]
            fresh = fresh_flag is not None and any(k not in self.state[p] for k in used)
            sharded = dtensor is not None and isinstance(p, dtensor)
            stored = (self.state_storage(group, p), param_store_policy(policy, p))
            split.setdefault((*key, *stored, fresh, sharded), []).append(position)
        plan = _GroupPlan(list(source), source, has_grad, used, store=policy)
        offset = 0
        for other in self.param_groups:
            if other is group:
                break
            offset += len(other["params"])
        for (device, dtype, dense, storage, store, fresh, sharded), positions in split.items():
            bucket = backends.Bucket(device, dtype, dense, storage, store)
            choice = backends.resolve(self.backend, bucket, _capturable(group), self.rule)
            call_params = [params[k] for k in positions]
            if sharded:
                self._check_sharded(group, call_params)
            for p in call_params:
                if not self.state.get(p):
                    created.append(p)
                self._new_state(group, p, used, self._counts_device(group, p, choice.backend))
                if store != master.NONE or p in self.state:
                    _new_policy_state(self.state[p], p, store)
            if sharded:
                _check_placements(call_params, [self.state[p] for p in call_params], used)
            stateful = bool(used) or self.rule.has_step or store != master.NONE
            plan.calls.append(
                _Call(
                    bucket,
                    choice,
                    [indices[k] for k in positions],
                    call_params,
                    [self.state[p] for p in call_params] if stateful else [],
                    fresh,
                    sharded,
                    [offset + indices[k] for k in positions],
                )
            )
        return plan

    def _init_group(
        self,
        index: int,
        group: dict[str, Any],
        used: tuple[str, ...],
        created: list[Tensor],
        grads: list | None = None,
    ) -> bool:
        """Makes self._plans[index] the group's valid plan: the cached one, or
        a new one (True), whose new states' params are appended to `created`.
        The first group's call first drops every plan if `opt.state` was
        replaced or resized (Note [cached step plans]). Named as torch's
        optimizers name their state set-up, so that torch.compile runs it
        eagerly (Note [compiled steps]); `grads`, the group's, are gathered
        here when not given."""
        if index == 0:
            seen = self._state_seen
            if seen[0] is not self.state or seen[1] != len(self.state):
                self._plans.clear()
        if grads is None:
            grads = [p.grad for p in group["params"]]
        if self._cached_plan(index, group, grads, used) is not None:
            return False
        plan = self._plans[index] = self._build_plan(group, grads, used, created)
        for call in plan.calls:
            self._log_choice(index, call)
        return True

    def _check_sharded(self, group: Mapping[str, Any], params: list[Tensor]) -> None:
        """Note [sharded params]: this group may step these DTensor params
        shard by shard, or a RuntimeError names the constraint."""
        reason = self.whole_tensor_reason(group)
        if reason is not None:
            raise RuntimeError(
                f"fusedopt: {type(self).__name__} cannot step sharded (DTensor) params: "
                f"fusedopt steps each local shard alone, which needs an elementwise update, "
                f"but {reason}. Step this group's params unsharded (keep them out of "
                f"fully_shard, or use torch.optim)"
            )
        for p in params:
            placements = getattr(p.grad, "placements", "a plain tensor")
            if placements != p.placements or p.grad.device_mesh != p.device_mesh:
                raise RuntimeError(
                    f"fusedopt: the grad of a DTensor param of shape {tuple(p.shape)} must have "
                    f"its param's placements {p.placements} on its mesh (fusedopt steps each "
                    f"local shard with its own grad); got {placements}"
                )

    def _gather_states(self, used: tuple[str, ...], call: _Call) -> list[Tensor]:
        """A call's states, state-major (Note [state-major lists] in
        fusedopt/registry.py): per used state, each param's that keeps one."""
        if self.rule.state_shape is None:
            return [sd[name] for name in used for sd in call.state_dicts]
        return [
            sd[name]
            for name in used
            for p, sd in zip(call.params, call.state_dicts)
            if name in self.rule.states_of(p, (name,))
        ]

    def _cached_plan(
        self, index: int, group: dict[str, Any], grads: list, used
    ) -> _GroupPlan | None:
        """The group's cached plan if still valid (Note [cached step plans]), else None."""
        plan = self._plans.get(index)
        source = group["params"]
        if (
            plan is None
            or plan.source is not source
            or plan.used != used
            or plan.store != store_policy(group)
            or plan.has_grad != _has_grad(grads)
            or len(plan.params) != len(source)
            or not all(map(is_, plan.params, source))
        ):
            return None
        return plan

    def plan(self) -> list[tuple[int, backends.Bucket, int, backends.Choice]]:
        """(group index, bucket, number of params, backend choice) for the params
        that have grads now: what the next step() will do. fusedopt.report() prints it."""
        out = []
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            keys = self._bucket_keys(params, [p.grad for p in params])
            policy = store_policy(group)
            keys = [
                (*key, self.state_storage(group, p), param_store_policy(policy, p))
                for key, p in zip(keys, params)
            ]
            counts: dict[tuple, int] = {}
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            for key, count in counts.items():
                bucket = backends.Bucket(*key)
                choice = backends.resolve(self.backend, bucket, _capturable(group), self.rule)
                out.append((index, bucket, count, choice))
        return out

    def _log_choice(self, index: int, call: _Call) -> None:
        """Says once, at INFO level, which backend steps each bucket."""
        key = (index, call.bucket)
        logged = self.__dict__.setdefault("_logged_choices", {})
        if logged.get(key) != call.choice.backend.name:
            logged[key] = call.choice.backend.name
            logger.info(
                "fusedopt: group %d, %s params on %s -> backend %r%s",
                index,
                call.bucket.dtype,
                call.bucket.device,
                call.choice.backend.name,
                "".join(f"; passed over {n}: {r}" for n, r in call.choice.passed_over),
            )

    # --- the step --------------------------------------------------------------

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
        # Nothing can be capturing before CUDA is initialized: a CPU-only user
        # pays one flag check, and never initializes CUDA.
        if torch.cuda.is_initialized():
            self._check_capture()
        try:
            work = self._step(grad_scale, found_inf)
        except _StalePlan:
            # Note [cached step plans]: nothing was written; new plans check everything.
            work = self._step(grad_scale, found_inf)
        if any(call.fresh for _, call, *_ in work):
            self._plans.clear()  # fresh states are old from now on
        self._state_seen[:] = (self.state, len(self.state))
        self._last_step[0] = [
            (index, call.bucket, len(call.params), call.choice) for index, call, *_ in work
        ]
        return loss

    def last_step(self) -> list[tuple[int, backends.Bucket, int, backends.Choice]]:
        """What the last step() stepped, in plan()'s form (empty before the
        first step, and after load_state_dict or unpickling)."""
        return list(self.__dict__.get("_last_step", [[]])[0])

    def _step(self, grad_scale: Tensor | None, found_inf: Tensor | None) -> list:
        rule = self.rule
        # Every list is gathered, and with several calls every call checked,
        # before anything is written: each backend's own checks would only
        # cover its call, and a refused step writes nothing, in any group.
        created: list[Tensor] = []  # params whose state this step created: dropped if it fails
        work = []
        rebuilt = False  # some plan was built in this step
        building = False  # in _init_group: a refusal there is the caller's error
        started = 0  # backend calls made
        # Outside the try: refused hyperparameters are the caller's error, not a
        # stale plan. Every group's are checked before any group is stepped, on
        # every backend, by the ops' own checks (fusedopt._checks.check_hyper);
        # a compiled step leaves them to the ops, which torch.compile traces.
        hypers = [self.hyper(group) for group in self.param_groups]
        if not torch.compiler.is_compiling():
            for group, hyper in zip(self.param_groups, hypers):
                check_hyper(rule, group["lr"], hyper)
                check_max_grad_norm(group.get("max_grad_norm"))
        grad_scales = self._clipped_grad_scales(grad_scale)
        try:
            for index, group in enumerate(self.param_groups):
                hyper = hypers[index]
                used = rule.used_states(hyper)
                grads = [p.grad for p in group["params"]]
                # Dynamo runs _init_group eagerly only when it can map each
                # argument back to a Python value (Note [compiled steps]): an
                # empty list, not the grads, which eager steps gather once.
                group_created: list[Tensor] = []
                building = True
                if torch.compiler.is_compiling():
                    rebuilt |= self._init_group(index, group, used, group_created)
                else:
                    rebuilt |= self._init_group(index, group, used, group_created, grads)
                building = False
                created += group_created
                plan = self._plans[index]
                for call in plan.calls:
                    whole = len(call.indices) == len(grads)
                    call_grads = grads if whole else [grads[i] for i in call.indices]
                    states = self._gather_states(used, call)
                    if call.bucket.state_dtype == "int8":
                        states += [
                            sd[name + ABSMAX_SUFFIX] for name in used for sd in call.state_dicts
                        ]
                    steps = [sd[key] for key in rule.scalar_keys for sd in call.state_dicts]
                    params = call.params
                    if call.sharded:  # Note [sharded params]
                        params, call_grads, states = map(_locals, (params, call_grads, states))
                    if rule.fresh_flag is not None:
                        hyper = {**hyper, rule.fresh_flag: call.fresh}
                    store = _store_of(group, call)
                    extra = {} if store is None else {"store": store}
                    work.append(
                        (index, call, params, group["lr"], hyper, call_grads, states, steps, extra)
                    )
            if len(work) > 1:
                for _, call, params, _, hyper, call_grads, states, steps, _ in work:
                    backend = call.choice.backend
                    check_lists(
                        params,
                        call_grads,
                        states,
                        steps,
                        state_names=rule.used_states(hyper),
                        scalar_lists=rule.scalar_lists,
                        state_dtype=storage_state_dtype(
                            call.bucket.state_dtype, backend.state_dtype
                        ),
                        require_dense=backend.requires_dense,
                        state_shape=rule.state_shape,
                    )
            copies: dict[tuple[int, torch.device], Tensor] = {}
            for index, call, params, lr, hyper, call_grads, states, steps, extra in work:
                started += 1
                device = call.bucket.device
                call.choice.backend.step(
                    rule,
                    params,
                    call_grads,
                    states,
                    steps,
                    lr=_on_device(lr, device, copies),
                    hyper=hyper,
                    grad_scale=_on_device(grad_scales[index], device, copies),
                    found_inf=_on_device(found_inf, device, copies),
                    cache=call.cache,
                    **extra,
                )
        except Exception as error:
            for p in created:
                self.state.pop(p, None)
            self._plans.clear()
            if not (rebuilt or building) and started <= 1:
                raise _StalePlan from error
            raise
        return work

    def _clipped_grad_scales(self, grad_scale: Tensor | None) -> list[Tensor | None]:
        """Each group's GradScaler input, with Note [max_grad_norm]'s clip
        coefficient folded in where the group sets max_grad_norm."""
        clipped = [g.get("max_grad_norm") is not None for g in self.param_groups]
        grads = [
            p.grad
            for group, on in zip(self.param_groups, clipped)
            if on
            for p in group["params"]
            if p.grad is not None
        ]
        if not grads:
            return [grad_scale] * len(self.param_groups)
        total = clip.grad_norm(grads, backend=self.backend).to(torch.float32)
        scale = 1.0
        if grad_scale is not None:
            scale = grad_scale.to(total.device)
            total = total / scale
        return [
            scale / clip.clip_coefficient(total, group["max_grad_norm"]) if on else grad_scale
            for group, on in zip(self.param_groups, clipped)
        ]

    def _check_capture(self) -> None:
        """Note [CUDA graphs]: torch's capture health check, with its message.
        Skipped while torch.compile traces, as torch's is: inductor decides
        whether its graphs can be captured."""
        if torch.compiler.is_compiling() or not torch.cuda.is_current_stream_capturing():
            return
        if not all(group.get("capturable", True) for group in self.param_groups):
            raise RuntimeError(
                f"Attempting CUDA graph capture of step() for an instance of "
                f"{type(self).__name__} but param_groups' capturable is False."
            )


def _dtensor_class() -> type | None:
    """DTensor, once torch.distributed.tensor is imported; None before: no
    param can be a DTensor then, and a model without one imports nothing."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def _locals(tensors: list, unwrap_any: bool = False) -> list:
    """The local shards of DTensors (Note [sharded params]): the attribute, not
    to_local(), which returns a new view of a Parameter(DTensor) at every call
    (torch 2.14). With `unwrap_any`, lists that may mix DTensors with plain
    tensors (or None grads) are unwrapped too."""
    if not unwrap_any:
        return [t._local_tensor for t in tensors]
    dtensor = _dtensor_class()
    return [t._local_tensor if isinstance(t, dtensor) else t for t in tensors]


def _check_placements(params: list[Tensor], state_dicts: list[dict], used) -> None:
    """Note [sharded params]: a sharded param's states are DTensors of its
    placements (as its new states are, and as torch.distributed.checkpoint
    loads them), so that each local shard steps with its own states."""
    for p, state in zip(params, state_dicts):
        for key in used:
            value = state[key]
            if getattr(value, "placements", None) != p.placements:
                got = getattr(value, "placements", "a plain tensor")
                raise RuntimeError(
                    f"fusedopt: state {key!r} of a DTensor param of shape {tuple(p.shape)} must "
                    f"be a DTensor with its param's placements {p.placements}, got {got}; load "
                    f"a sharded model's optimizer state with torch.distributed.checkpoint."
                    f"state_dict.set_optimizer_state_dict"
                )


def _capturable(group: Mapping[str, Any]) -> bool:
    """The group's `capturable` (Note [CUDA graphs]), or False while
    torch.compile traces: inductor, not step(), decides whether its graphs are
    captured, and dynamo's traced view of a group says capturable=True (its
    OptimizerVariable sets the key, on CPU params too), which made a plan
    built in the trace refuse every CPU backend (Note [compiled steps])."""
    return bool(group.get("capturable", False)) and not torch.compiler.is_compiling()


# The key of an 8-bit state's per-block absmax: the state's own key + this.
ABSMAX_SUFFIX = "_absmax"
# The group keys that say how states are stored.
STORAGE_GROUP_KEYS = ("state_dtype", "min_8bit_size")
# The group keys of master-weight policies (Note [master weights of a group]).
POLICY_GROUP_KEYS = (*master.POLICIES, master.SEED_KEY)


def _new_policy_state(state: dict[str, Any], p: Tensor, policy: str) -> None:
    """The states of p's master-weight policy, where missing: master_param from
    p's value, kahan_comp zeros, rounding_step 0; another policy's are dropped,
    so that a policy turned off and on again starts from the param (Note
    [master weights of a group])."""
    for other in master.POLICIES:
        if other != policy:
            state.pop(master.STATE_KEYS[other] or master.COUNT_KEY, None)
    key = master.STATE_KEYS.get(policy)
    if policy == "master_weights" and key not in state:
        state[key] = torch.empty_like(
            p, dtype=torch.float32, memory_format=torch.preserve_format
        ).copy_(p)
    elif policy == "kahan_sum" and key not in state:
        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif policy == "stochastic_rounding" and master.COUNT_KEY not in state:
        state[master.COUNT_KEY] = torch.zeros((), dtype=torch.float32, device=p.device)


def _store_of(group: Mapping[str, Any], call: _Call) -> backends.Store | None:
    """The call's master-weight policy and its tensors, gathered anew each step
    (a state replaced in opt.state[p] takes effect, as the rule's states do)."""
    policy = call.bucket.store
    if policy == master.NONE:
        return None
    key = master.STATE_KEYS[policy]
    return backends.Store(
        policy,
        [sd[key] for sd in call.state_dicts] if key else [],
        [sd[master.COUNT_KEY] for sd in call.state_dicts] if key is None else [],
        call.tags,
        int(group.get(master.SEED_KEY, master.DEFAULT_SEED)),
    )


def _stored_as(state: dict[str, Any], key: str, p: Tensor, storage: str) -> bool:
    """True when state[key] is stored as `storage` says (in p's layout, for
    8-bit codes, whose blocks follow the memory order)."""
    t = state[key]
    if storage == "int8":
        return t.dtype in CODE_DTYPES and key + ABSMAX_SUFFIX in state and not _needs_relayout(t, p)
    want = torch.bfloat16 if storage == "bf16" else compute_dtype(p.dtype)
    return t.dtype == want and key + ABSMAX_SUFFIX not in state


def _is_a_storage(state: dict[str, Any], key: str, p: Tensor) -> bool:
    """True when state[key] is stored in one of the state dtypes (so another
    group setting may convert it)."""
    return any(_stored_as(state, key, p, storage) for storage in codecs.STATE_DTYPES)


def _state_values(state: dict[str, Any], key: str) -> Tensor:
    """A stored state's values (8-bit: decoded, its absmax key dropped)."""
    absmax = state.pop(key + ABSMAX_SUFFIX, None)
    if absmax is not None:
        return codecs.decode_8bit(state[key], absmax)
    return state[key]


def _store_state(
    state: dict[str, Any],
    key: str,
    p: Tensor,
    storage: str,
    nonnegative: bool,
    values: Tensor | float,
) -> None:
    """state[key] (and its absmax) in `storage`, in p's layout, from values."""
    dtype = torch.bfloat16 if storage == "bf16" else compute_dtype(p.dtype)
    laid_out = torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)
    if storage != "int8":
        state[key] = (
            laid_out.copy_(values) if isinstance(values, Tensor) else laid_out.fill_(values)
        )
        return
    if not isinstance(values, Tensor):
        values = laid_out.fill_(values)
    state[key], state[key + ABSMAX_SUFFIX] = codecs.new_8bit(values, p, not nonnegative)


def state_dtype_defaults(state_dtype: str) -> dict[str, Any]:
    """The `state_dtype` group key of a class's keyword, only where it leaves
    float32 (so a torch-style optimizer keeps torch's group keys)."""
    if state_dtype not in codecs.STATE_DTYPES:
        raise ValueError(
            f"fusedopt: state_dtype must be one of {codecs.STATE_DTYPES}, got {state_dtype!r}"
        )
    return {} if state_dtype == "fp32" else {"state_dtype": state_dtype}


def _needs_relayout(state: Tensor, p: Tensor) -> bool:
    """Note [state layouts]: a state of its param's shape and device but
    another layout, where the param has one the kernels take (dense)."""
    return (
        state.stride() != p.stride()
        and state.shape == p.shape
        and state.device == p.device
        and not same_layout(state, p)
        and is_dense(p)
    )


def _on_device(value, device: torch.device, copies: dict) -> Any:
    """GradScaler's grad_scale and found_inf, and a tensor lr, on the device
    of the params a call steps: GradScaler keeps one of each on one device, and
    a model on several GPUs needs a copy per device, made once per step and
    without a host sync, as torch's fused optimizers do. A CPU lr stays (the
    backends read it as a host value)."""
    if not isinstance(value, Tensor) or value.device == device or value.device.type == "cpu":
        return value
    key = (id(value), device)
    if key not in copies:
        copies[key] = value.to(device, non_blocking=True)
    return copies[key]


class _StalePlan(Exception):
    """A call of cached plans was refused before anything was written."""
