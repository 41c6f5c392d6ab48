"""Backends and how a param group's tensors are matched to one.

A backend steps one bucket of tensors (one device, one dtype) of a group. The
optimizers ask `resolve()` which backend serves a bucket:
  - an explicit `backend=` name serves the bucket or raises, naming why: never
    a silent fallback;
  - "auto" tries, in this documented order, and takes the first that serves:
      CUDA tensors: cuda -> triton -> reference
      CPU tensors:  cpu -> reference
    report() shows what it took and why the ones before it were passed over.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fusedopt import _extension
from fusedopt._checks import (
    INT8_BLOCKWISE,
    KERNEL_PARAM_DTYPES,
    check_lists,
    states_storage,
    storage_state_dtype,
)
from fusedopt.reference import codecs, master
from fusedopt.registry import Rule

BACKEND_NAMES = ("auto", "cuda", "triton", "cpu", "reference")
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


@dataclass(frozen=True)
class Bucket:
    """What a backend must serve: one device, one param dtype, whether every
    param is dense (the kernels' flat loop needs it; the reference does not),
    and how the states are stored (a group's `state_dtype`: "fp32", "bf16",
    "int8"; Note [state dtypes] in csrc/include/fusedopt/core/storage.h),
    and the master-weight policy of its params' store ("none", or a key of
    fusedopt.reference.master.POLICIES)."""

    device: torch.device
    dtype: torch.dtype
    dense: bool
    state_dtype: str = "fp32"
    store: str = "none"


@dataclass(frozen=True)
class Store:
    """A call's master-weight policy (fusedopt.reference.master), per param:
    its master_param or kahan_comp (none for stochastic rounding), its
    rounding_step (stochastic rounding only), its tag (its position in the
    optimizer's params, as state_dict numbers them), and the group's seed."""

    policy: str
    tensors: list[Tensor]
    counts: list[Tensor]
    tags: list[int]
    seed: int


class Backend:
    name: str = ""
    # True when the backend reads lr and step on the device and never syncs the
    # host, so that step() can be captured in a CUDA graph.
    supports_capturable: bool = False
    # True when step counts should live on the params' device (Note [counts on
    # the device] in fusedopt/optim/base.py): the kernels read and advance them there.
    counts_on_device: bool = False
    # What its kernels need of the tensors (fusedopt._checks.check_lists):
    # fp32 states, and dense params with grads and states of the same layout.
    state_dtype: torch.dtype | None = torch.float32
    requires_dense: bool = True
    # The master-weight policies its store implements (Bucket.store).
    store_policies: tuple[str, ...] = ()

    def unavailable_reason(self) -> str | None:
        """None when the backend can run on this machine, else why not."""
        raise NotImplementedError

    def unsupported_reason(self, bucket: Bucket) -> str | None:
        """None when the backend can step this bucket, else why not."""
        raise NotImplementedError

    def step(
        self,
        rule: Rule,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        states: Sequence[Tensor],
        state_steps: Sequence[Tensor],
        *,
        lr: float | Tensor,
        hyper: Mapping[str, Any],
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
        cache: dict[str, Any] | None = None,
        store: Store | None = None,
    ) -> None:
        """Steps every tensor once with `rule` and advances its step count
        (Note [step-count protocol] in fusedopt/registry.py), after checking all
        arguments: a refused call writes nothing. `states` is state-major and
        holds rule.used_states(hyper); `hyper` has exactly rule.hyper's keys.
        With `found_inf` nonzero it writes nothing at all (GradScaler skips the
        step). `cache` is the caller's dict for what the backend keeps between
        steps of these same lists (the optimizer gives one per call of its plan).
        `store` is the call's master-weight policy, given only when it is not
        "none" (and only to a backend whose store_policies has it)."""
        raise NotImplementedError


def _kernel_dtype_reason(bucket: Bucket) -> str | None:
    if bucket.dtype not in KERNEL_PARAM_DTYPES:
        return f"params are {bucket.dtype}; the kernels take float32, bfloat16 and float16"
    if not bucket.dense:
        return (
            "some params are not dense (a strided slice, say) or their grads' strides differ; "
            "the kernels' flat loop needs dense params with grads of the same layout"
        )
    return None


def _no_blockwise_store(bucket: Bucket, name: str) -> str | None:
    """Why a GPU backend cannot step a bucket with 8-bit states and a policy."""
    if bucket.store != master.NONE and bucket.state_dtype == INT8_BLOCKWISE:
        return (
            f"{bucket.store}=True with 8-bit states: the {name} backend's 8-bit kernels have no "
            "master-weight store yet; the cpu and reference backends step it"
        )
    return None


class _CompiledOpBackend(Backend):
    """The C++ op family torch.ops.fusedopt.<rule>_step_, which torch's
    dispatcher sends to the CPU loops or the CUDA kernels by the tensors' device."""

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
        op = rule.op.tensor_lr if isinstance(lr, Tensor) else rule.op.default
        op(
            params,
            grads,
            states,
            state_steps,
            lr=lr,
            **hyper,
            grad_scale=grad_scale,
            found_inf=found_inf,
            **_store_args(store),
        )


# The op's store_policy of each policy: core/master.h's StorePolicy.
STORE_POLICY_CODES = {"master_weights": 1, "kahan_sum": 2, "stochastic_rounding": 3}


def _store_args(store: Store | None) -> dict[str, Any]:
    """The op's arguments of a master-weight policy (Note [store arguments] in
    csrc/binding/checks.h): the policy's code, each param's master_param or
    kahan_comp, or for stochastic rounding its rounding_step count (which the
    op advances), the tags, and the seed's 64 bits as a signed int64."""
    if store is None:
        return {}
    rounding = bool(store.counts)
    return {
        "store_policy": STORE_POLICY_CODES[store.policy],
        "store": store.counts if rounding else store.tensors,
        "store_tags": store.tags if rounding else [],
        "rounding_seed": store.seed - 2**64 if store.seed >= 2**63 else store.seed,
    }


class CpuBackend(_CompiledOpBackend):
    name = "cpu"
    store_policies = master.POLICIES

    def unavailable_reason(self):
        return None if _extension.loaded() else _extension.LOAD_ERROR

    def unsupported_reason(self, bucket):
        if bucket.device.type != "cpu":
            return f"params are on {bucket.device}; the cpu backend steps CPU tensors"
        return _kernel_dtype_reason(bucket)


class CudaBackend(_CompiledOpBackend):
    name = "cuda"
    supports_capturable = True
    counts_on_device = True
    store_policies = master.POLICIES

    def unavailable_reason(self):
        if not _extension.loaded():
            return _extension.LOAD_ERROR
        if not _extension.cuda_built():
            return (
                "fusedopt._C was built without CUDA kernels; rebuild with nvcc and a CUDA "
                "build of torch: FUSEDOPT_CUDA=1 pip install . --no-build-isolation"
            )
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def unsupported_reason(self, bucket):
        if bucket.device.type != "cuda":
            return f"params are on {bucket.device}; the cuda backend steps CUDA tensors"
        reason = _kernel_dtype_reason(bucket) or _no_blockwise_store(bucket, "cuda")
        if reason is None:
            capability = torch.cuda.get_device_capability(bucket.device)
            reason = self.arch_reason(capability, _extension.cuda_archs())
        return reason

    @staticmethod
    def arch_reason(capability: tuple[int, int], archs: str) -> str | None:
        """None when the build runs on a GPU of this compute capability, else why not.

        `archs` is fusedopt._C.cuda_archs, CMake's list comma-joined: "90-real"
        is SASS for sm_90, which runs on 9.x GPUs of minor >= 0; "120" also
        embeds PTX, which the driver compiles for any newer GPU.
        """
        major, minor = capability
        for arch in filter(None, archs.split(",")):
            number = int(arch.split("-")[0])
            arch_major, arch_minor = divmod(number, 10)
            if arch_major == major and arch_minor <= minor:
                return None
            if not arch.endswith("-real") and (arch_major, arch_minor) <= (major, minor):
                return None
        return (
            f"fusedopt._C has no kernels for compute capability {major}.{minor} (built for "
            f"{archs}); rebuild with FUSEDOPT_CUDA_ARCHS including {major}{minor}"
        )


class ReferenceBackend(Backend):
    """The reference rules, one tensor at a time: correct anywhere, fast nowhere."""

    name = "reference"
    supports_capturable = False
    state_dtype = None  # the param's compute dtype: fp64 states for fp64 params
    requires_dense = False
    store_policies = master.POLICIES

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, bucket):
        if bucket.dtype.is_complex:
            return f"params are {bucket.dtype}; complex params are not supported yet"
        if not bucket.dtype.is_floating_point:
            return f"params are {bucket.dtype}; optimizers step floating-point params"
        return None

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
        names = rule.used_states(hyper)
        storage = states_storage(states)
        check_lists(
            params,
            grads,
            states,
            state_steps,
            state_names=names,
            scalar_lists=rule.scalar_lists,
            state_dtype=storage_state_dtype(storage, self.state_dtype),
            require_dense=self.requires_dense,
            state_shape=rule.state_shape,
        )
        if found_inf is not None and found_inf.item() != 0:
            return
        scale = None if grad_scale is None else grad_scale.item()
        lr = lr.item() if isinstance(lr, Tensor) else lr
        n, used = len(params), len(names)
        per_param = states_by_param(rule, params, states, names)
        for i, param in enumerate(params):
            keys = list(per_param[i])
            stored = [per_param[i][key] for key in keys]
            absmax = [states[(used + k) * n + i] for k in range(used)] if storage == "int8" else []
            # Note [state dtypes]: the rule steps fp32 states; the store rounds once.
            values = codecs.decode(stored, absmax)
            state = dict(zip(keys, values))
            for j, key in enumerate(rule.scalar_keys):
                state[key] = state_steps[j * n + i]
            if store is None:
                rule.reference(param, grads[i], state, lr=lr, grad_scale=scale, **hyper)
            else:
                master.step(
                    rule.reference,
                    store.policy,
                    param,
                    grads[i],
                    state,
                    store.tensors[i] if store.tensors else None,
                    store.counts[i] if store.counts else None,
                    store.tags[i],
                    store.seed,
                    lr=lr,
                    grad_scale=scale,
                    **hyper,
                )
            codecs.encode(values, stored, absmax)


def states_by_param(
    rule: Rule, params: Sequence[Tensor], states: Sequence[Tensor], names: Sequence[str]
) -> list[dict[str, Tensor]]:
    """Each param's states, from the state-major list of `names` (Note
    [param-shaped states] in fusedopt/registry.py: a param keeps
    rule.states_of of them)."""
    per_param: list[dict[str, Tensor]] = [{} for _ in params]
    position = iter(states)
    for name in names:
        for i, param in enumerate(params):
            if name in rule.states_of(param, (name,)):
                per_param[i][name] = next(position)
    return per_param


def _triton_backend() -> Backend:
    from fusedopt.triton_backend import TritonBackend

    return TritonBackend()


_BACKENDS: dict[str, Backend] = {}


def get(name: str) -> Backend:
    """The backend object of that name (created once)."""
    if name not in _BACKENDS:
        factories = {
            "cpu": CpuBackend,
            "cuda": CudaBackend,
            "reference": ReferenceBackend,
            "triton": _triton_backend,
        }
        if name not in factories:
            raise ValueError(f"fusedopt: unknown backend {name!r}; choose one of {BACKEND_NAMES}")
        _BACKENDS[name] = factories[name]()
    return _BACKENDS[name]


def why_not(name: str, bucket: Bucket, capturable: bool, rule: Rule | None = None) -> str | None:
    """None when backend `name` can step `bucket` (with `rule`, when given), else the reason."""
    if rule is not None and rule.backends is not None and name not in rule.backends:
        return (
            f"the {name} backend does not implement the {rule.name} rule yet (it needs "
            f"reduction passes; implemented on: {', '.join(rule.backends)})"
        )
    backend = get(name)
    reason = backend.unavailable_reason() or backend.unsupported_reason(bucket)
    factored = rule is not None and rule.backends is not None
    if reason is None and bucket.store != "none" and factored and name != "reference":
        reason = (
            f"{bucket.store}=True: the {name} backend's {rule.name} passes have no "
            "master-weight store yet; the reference backend steps it"
        )
    if reason is None and bucket.store not in ("none", *backend.store_policies):
        reason = (
            f"{bucket.store}=True: the {name} backend has no master-weight store yet; "
            f"backends that step it: {', '.join(_store_backends(bucket.store))}"
        )
    if reason is None and capturable and not backend.supports_capturable:
        reason = (
            f"capturable=True needs a backend that reads lr and step on the device; {name} does not"
        )
    return reason


def _store_backends(policy: str) -> list[str]:
    # The classes' attributes: no backend is created (Triton's import) to name them.
    classes = (CudaBackend, CpuBackend, ReferenceBackend)
    return [c.name for c in classes if policy in c.store_policies]


@dataclass(frozen=True)
class Choice:
    backend: Backend
    # (backend name, reason) for each backend "auto" passed over, in order.
    passed_over: tuple[tuple[str, str], ...]


def resolve(
    requested: str, bucket: Bucket, capturable: bool = False, rule: Rule | None = None
) -> Choice:
    """The backend that steps `bucket` with `rule`, or a ValueError that says why none can."""
    if requested != "auto":
        reason = why_not(requested, bucket, capturable, rule)
        if reason is not None:
            raise ValueError(
                f"fusedopt: backend={requested!r} cannot step {bucket.dtype} params on "
                f"{bucket.device}: {reason}. Use backend='auto' to let fusedopt choose."
            )
        return Choice(get(requested), ())
    order = AUTO_ORDER.get(bucket.device.type, ("reference",))
    passed_over = []
    for name in order:
        reason = why_not(name, bucket, capturable, rule)
        if reason is None:
            return Choice(get(name), tuple(passed_over))
        passed_over.append((name, reason))
    raise ValueError(
        f"fusedopt: no backend can step {bucket.dtype} params on {bucket.device}: "
        + "; ".join(f"{n}: {r}" for n, r in passed_over)
    )


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
