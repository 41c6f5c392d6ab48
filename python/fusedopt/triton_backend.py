"""The Triton backend: the multi-tensor kernels of fusedopt.kernels.

It serves CUDA tensors wherever `triton` imports, with or without the compiled
extension fusedopt._C; under TRITON_INTERPRET=1 it also steps CPU tensors (the
interpreter runs the same kernels on the host: that is how they are tested on
a machine without a GPU).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from fusedopt import backends
from fusedopt._checks import check_adam_lists


def _device_scalar(value: Tensor | None, name: str, device: torch.device) -> None:
    if value is not None and (value.numel() != 1 or value.device != device):
        raise RuntimeError(
            f"fusedopt: {name} must be a one-element tensor on the params' device {device}, "
            f"got {value.numel()} elements on {value.device}"
        )


class TritonBackend(backends.Backend):
    name = "triton"
    # With step counts on the params' device (torch's capturable layout) the
    # kernels read lr, step, grad_scale and found_inf in memory: no host sync.
    supports_capturable = True

    def __init__(self) -> None:
        self._launcher = None

    @property
    def launcher(self):
        """The AdamLauncher (its `launches` counts kernel launches)."""
        if self._launcher is None:
            from fusedopt.kernels.adam import AdamLauncher

            self._launcher = AdamLauncher()
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
        return backends._kernel_dtype_reason(bucket)

    def adam_step(
        self,
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        *,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        weight_decay_mode,
        lr_max,
        amsgrad,
        maximize,
        grad_scale=None,
        found_inf=None,
    ):
        check_adam_lists(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            state_steps,
            amsgrad=amsgrad,
            state_dtype=torch.float32,
            require_dense=True,
        )
        if not params:
            return
        device = params[0].device
        bucket = backends.Bucket(device, params[0].dtype, True)
        reason = self.unavailable_reason() or self.unsupported_reason(bucket)
        if reason is not None:
            raise RuntimeError(f"fusedopt: the triton backend cannot step these params: {reason}")
        if any(p.device != device or p.dtype != params[0].dtype for p in params):
            raise RuntimeError("fusedopt: the triton backend steps one device and dtype per call")
        step_devices = {s.device for s in state_steps}
        if len(step_devices) != 1 or not step_devices <= {device, torch.device("cpu")}:
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
                lr = lr.item()
        _device_scalar(grad_scale, "grad_scale", device)
        _device_scalar(found_inf, "found_inf", device)
        self.launcher.adam_step(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            state_steps,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            weight_decay_mode=int(weight_decay_mode),
            lr_max=lr_max,
            amsgrad=amsgrad,
            maximize=maximize,
            grad_scale=grad_scale,
            found_inf=found_inf,
            steps_in_kernel=step_devices == {device} and device.type != "cpu",
        )
