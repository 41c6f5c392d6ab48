"""The Triton backend: the multi-tensor kernels of fusedopt.kernels.

It serves CUDA tensors wherever `triton` imports, with or without the compiled
extension fusedopt._C; under TRITON_INTERPRET=1 it also steps CPU tensors (the
interpreter runs the same kernels on the host: that is how they are tested on
a machine without a GPU). Every rule of fusedopt.registry steps through one
kernel frame (kernels/mta.py) with the rule's Triton mirror (kernels/rules/).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from fusedopt import backends
from fusedopt._checks import (
    check_hyper,
    check_lists,
    same_layout,
    states_storage,
    storage_state_dtype,
)
from fusedopt.reference import master


def _device_scalar(value: Tensor | None, name: str, device: torch.device) -> None:
    if value is not None and (value.numel() != 1 or value.device != device):
        raise RuntimeError(
            f"fusedopt: {name} must be a one-element tensor on the params' device {device}, "
            f"got {value.numel()} elements on {value.device}"
        )


def _check_store(store: backends.Store | None, params) -> None:
    """The ops' check_store (csrc/binding/checks.h, Note [store arguments]),
    for the kernels: a master or compensation per param in its shape and
    layout, or a one-element float32 rounding_step on the params' device."""
    if store is None or not params:
        return
    dtype = params[0].dtype
    if dtype not in master.POLICY_DTYPES[store.policy]:
        raise RuntimeError(
            f"fusedopt: {store.policy} applies to "
            f"{', '.join(map(str, master.POLICY_DTYPES[store.policy]))} params, got {dtype}"
        )
    rounding = store.policy == "stochastic_rounding"
    tensors = store.counts if rounding else store.tensors
    if len(tensors) != len(params) or (rounding and len(store.tags) != len(params)):
        raise RuntimeError(
            f"fusedopt: for {len(params)} params, want {len(params)} store tensors (and tags "
            f"with stochastic rounding), got {len(tensors)} and {len(store.tags)}"
        )
    want = dtype if store.policy == "kahan_sum" else torch.float32
    for i, (p, t) in enumerate(zip(params, tensors)):
        if t.dtype != want or t.device != p.device:
            raise RuntimeError(
                f"fusedopt: store tensor {i} must be {want} on {p.device}, got {t.dtype} on "
                f"{t.device}"
            )
        if rounding and t.numel() != 1:
            raise RuntimeError(
                f"fusedopt: store tensor {i} must be a one-element rounding_step count, got "
                f"{t.numel()} elements"
            )
        if not rounding and (t.shape != p.shape or not same_layout(t, p)):
            raise RuntimeError(
                f"fusedopt: store tensor {i} must have its param's shape {tuple(p.shape)} and "
                f"strides {p.stride()}, got {tuple(t.shape)} and {t.stride()}"
            )


class TritonBackend(backends.Backend):
    name = "triton"
    # With step counts on the params' device (torch's capturable layout) the
    # kernels read lr, counts, grad_scale and found_inf in memory: no host sync.
    supports_capturable = True
    counts_on_device = True
    store_policies = master.POLICIES

    def __init__(self) -> None:
        self._launcher = None

    @property
    def launcher(self):
        """The kernels' Launcher (its `launches` counts kernel launches)."""
        if self._launcher is None:
            from fusedopt.kernels.mta import Launcher

            self._launcher = Launcher()
        return self._launcher

    def unavailable_reason(self):
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        if not torch.cuda.is_available() and not backends.triton_interpreter_on():
            return (
                "no CUDA GPU is visible and the Triton interpreter is off "
                "(TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)"
            )
        return None

    def unsupported_reason(self, bucket):
        if bucket.device.type == "cpu" and not backends.triton_interpreter_on():
            return (
                "params are on cpu; the triton backend steps CUDA tensors (CPU tensors "
                "only under TRITON_INTERPRET=1)"
            )
        if bucket.device.type not in ("cuda", "cpu"):
            return f"params are on {bucket.device}; the triton backend steps CUDA tensors"
        return backends._kernel_dtype_reason(bucket) or backends._no_blockwise_store(
            bucket, "triton"
        )

    def step(
        self,
        rule,
        params,
        grads,
        states,
        state_steps,
        *,
        lr,
        hyper,
        grad_scale=None,
        found_inf=None,
        cache=None,
        store=None,
    ):
        # The ops' checks, in their order: hyperparameters, then the lists.
        check_hyper(rule, lr, hyper)
        check_lists(
            params,
            grads,
            states,
            state_steps,
            state_names=rule.used_states(hyper),
            scalar_lists=rule.scalar_lists,
            state_dtype=storage_state_dtype(states_storage(states), self.state_dtype),
            require_dense=self.requires_dense,
            state_shape=rule.state_shape,
        )
        if not params:
            return
        device, dtype = params[0].device, params[0].dtype
        reason = self.unavailable_reason() or self.unsupported_reason(
            backends.Bucket(device, dtype, True, states_storage(states))
        )
        if reason is not None:
            raise RuntimeError(f"fusedopt: the triton backend cannot step these params: {reason}")
        if any(p.device != device or p.dtype is not dtype for p in params):
            raise RuntimeError("fusedopt: the triton backend steps one device and dtype per call")
        step_devices = {s.device for s in state_steps}
        if rule.has_step and (
            len(step_devices) != 1 or not step_devices <= {device, torch.device("cpu")}
        ):
            raise RuntimeError(
                f"fusedopt: state_steps must all be on the CPU or all on the params' device "
                f"{device}, got {sorted(map(str, step_devices))}"
            )
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise RuntimeError(f"fusedopt: a tensor lr must have one element, got {lr.numel()}")
            if lr.device != device:
                if lr.device.type != "cpu":
                    raise RuntimeError(f"fusedopt: lr is on {lr.device}, the params on {device}")
                lr = lr.item()  # a CPU value: no device sync
        _device_scalar(grad_scale, "grad_scale", device)
        _device_scalar(found_inf, "found_inf", device)
        _check_store(store, params)
        from fusedopt.kernels import mta, rules

        interpreter = backends.triton_interpreter_on()
        if rule.state_shape is not None:
            # A reduction rule (Note [reduction rules] in fusedopt/registry.py).
            from fusedopt.kernels import factored

            names = rule.used_states(hyper)
            factored.step(
                rules.get(rule.name),
                params,
                grads,
                backends.states_by_param(rule, params, states, names),
                state_steps,
                lr=lr,
                hyper=hyper,
                grad_scale=grad_scale,
                found_inf=found_inf,
                interpreter=interpreter,
            )
            return
        self.launcher.step(
            rules.get(rule.name),
            params,
            grads,
            states,
            state_steps,
            lr=lr,
            hyper=hyper,
            grad_scale=grad_scale,
            found_inf=found_inf,
            # Under the interpreter the params' device is the CPU: its counts
            # take the host path there, as a non-capturable GPU step's would.
            counts_on_device=step_devices == {device} and device.type != "cpu",
            block=mta.INTERPRETER_BLOCK_SIZE if interpreter else mta.BLOCK_SIZE,
            plans=cache,
            **backends._store_args(store),
        )
