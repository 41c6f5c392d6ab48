"""Benchmark of the Triton backend.

On a CUDA GPU: one AdamW step of the Triton backend beside torch's fused
AdamW (`torch._fused_adamw_`), timed with CUDA events (warm-up, then the median
of repeats), in ms and GB/s at 28 bytes per fp32 param (read p, g, m, v; write
p, m, v; no GradScaler), and launches per step.

Without a GPU, what the interpreter can honestly say: correctness of every
rule against fusedopt.reference, launches per step, and the launcher's host
time for many 1-element tensors with the kernel launches stubbed out (the
Python around them: plan lookup and validation, grad addresses, per-tensor
scalars, count handling) beside the host time of torch's fused AdamW on
1-element CPU tensors (its Python and dispatch cost; the arithmetic is
negligible at 1 element).

    python bench/bench_triton.py [--tensors 2000] [--repeats 50]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import subprocess
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fusedopt  # noqa: E402
import triton  # noqa: E402
from fusedopt import backends  # noqa: E402
from fusedopt.kernels import mta, rules  # noqa: E402
from fusedopt.registry import RULES  # noqa: E402
from workloads import bytes_per_element  # noqa: E402

# Bytes per fp32 param of one AdamW step: read p, g, m, v; write p, m, v.
BYTES_PER_PARAM_FP32 = bytes_per_element(torch.float32)  # 28
ADAMW = dict(
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    weight_decay_mode=1,
    lr_max=1.0,
    amsgrad=False,
    maximize=False,
)
SGD = dict(
    momentum=0.9,
    dampening=0.0,
    weight_decay=0.0,
    weight_decay_mode=0,
    lr_max=1.0,
    nesterov=False,
    maximize=False,
    first_step=False,
)
ADAGRAD = dict(
    lr_decay=0.0, eps=1e-10, weight_decay=0.0, weight_decay_mode=0, lr_max=1.0, maximize=False
)
ADADELTA = dict(
    rho=0.9, eps=1e-6, weight_decay=0.0, weight_decay_mode=0, lr_max=1.0, maximize=False
)
HYPER = {"adam": ADAMW, "sgd": SGD, "adagrad": ADAGRAD, "adadelta": ADADELTA}
# The same AdamW as torch's fused op takes it.
TORCH_ADAMW = dict(
    lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False, maximize=False
)
KERNELS = ("_element_kernel", "_per_tensor_kernel", "_advance_counts_kernel")


def provenance() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except OSError:
        commit = "?"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (interpreter)"
    return (
        f"{datetime.datetime.now().isoformat(timespec='seconds')} {platform.node()} "
        f"{platform.processor() or platform.machine()}, {device}; torch {torch.__version__}, "
        f"triton {triton.__version__}, fusedopt {fusedopt.__version__} @ {commit}"
    )


def make_lists(name, sizes, device, count=0.0, counts_device="cpu"):
    """[params, grads, states (state-major), counts] for rule `name`."""
    rule = RULES[name]
    params = [torch.randn(n, device=device) for n in sizes]
    grads = [torch.randn(n, device=device) for n in sizes]
    states = [torch.zeros(n, device=device) for _ in rule.used_states(HYPER[name]) for n in sizes]
    counts = [torch.tensor(count, device=counts_device) for _ in sizes] if rule.has_step else []
    # Scalar states (NAdam's mu_product, ...) at their first values, on the host.
    counts += [torch.tensor(1.0) for _ in rule.scalars for _ in sizes]
    return [params, grads, states, counts]


class _NoLaunch:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def table(rows, header) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def correctness() -> str:
    sizes = [0, 1, 3, 4097, 1031, 0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    worst = {}
    for name, rule in RULES.items():
        ours = make_lists(name, sizes, device, count=2.0)
        theirs = [[t.cpu().clone() for t in ts] for ts in ours]
        backends.get("triton").step(rule, *ours, lr=1e-2, hyper=HYPER[name])
        backends.get("reference").step(rule, *theirs, lr=1e-2, hyper=HYPER[name])
        worst[name] = max(
            ((a.cpu() - b).abs() / b.abs().clamp_min(1e-6)).max().item()
            for a, b in zip(ours[0], theirs[0], strict=True)
            if b.numel()
        )
    text = ", ".join(f"{name} {err:.1e}" for name, err in worst.items())
    return f"max relative difference to fusedopt.reference, fp32, sizes {sizes}: {text}"


def launches_per_step(n_tensors: int) -> list[tuple]:
    rows = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [1 + i % 7 for i in range(n_tensors)]
    for name in RULES:
        for on_device in (False, True) if RULES[name].has_step else (False,):
            lists = make_lists(name, sizes, device)
            launcher = mta.Launcher()
            launcher.step(
                rules.get(name),
                *lists,
                lr=1e-3,
                hyper=HYPER[name],
                counts_on_device=on_device,
                block=mta.INTERPRETER_BLOCK_SIZE,
            )
            where = " (counts on the device)" if on_device else ""
            rows.append((f"{name}, {n_tensors} tensors{where}", launcher.launches))
    return rows


def interleaved_ms(fns: dict, repeats: int) -> dict:
    """Median ms of each function, timed in alternation (one call of each per
    round) so that a noisy machine slows them alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def host_time(n_tensors: int, repeats: int) -> list[tuple]:
    """The launcher's Python work per step with the kernels stubbed out, beside
    torch's fused AdamW on 1-element CPU tensors."""
    real = {k: getattr(mta, k) for k in KERNELS}
    for k in KERNELS:
        setattr(mta, k, _NoLaunch())
    fns = {}
    for name, on_device in (("adam", False), ("adam", True), ("sgd", False)):
        lists = make_lists(name, [1] * n_tensors, "cpu", count=5.0)
        launcher = mta.Launcher()
        where = "device counts" if on_device else ("CPU counts" if name == "adam" else "no counts")
        fns[f"{name} launcher, {where}"] = functools.partial(
            launcher.step,
            rules.get(name),
            *lists,
            lr=1e-3,
            hyper=HYPER[name],
            counts_on_device=on_device,
        )
        if name == "adam" and not on_device:
            fns["  of which _foreach_add_ of the CPU counts"] = functools.partial(
                torch._foreach_add_, lists[3], 0.0
            )
    backend = backends.get("triton")
    lists = make_lists("adam", [1] * n_tensors, "cpu")
    fns["adam TritonBackend.step with argument checks"] = lambda: backend.step(
        RULES["adam"], *lists, lr=1e-3, hyper=ADAMW
    )
    params, grads, states, counts = make_lists("adam", [1] * n_tensors, "cpu")
    n = n_tensors
    fns["torch _fused_adamw_ on CPU (1-element tensors)"] = lambda: torch._fused_adamw_(
        params,
        grads,
        states[:n],
        states[n:],
        [],
        counts,
        **TORCH_ADAMW,
    )
    fns["torch _foreach_add_(steps, 1) on CPU, which torch's Adam adds"] = lambda: (
        torch._foreach_add_(counts, 1.0)
    )
    try:
        medians = interleaved_ms(fns, repeats)
    finally:
        for k, kernel in real.items():
            setattr(mta, k, kernel)
    return [(name, f"{ms:.3f}") for name, ms in medians.items()]


def gpu_time(sizes, repeats: int) -> list[tuple]:
    rows = []
    lists = make_lists("adam", sizes, "cuda", counts_device="cuda")  # torch's fused layout
    n = len(sizes)
    numel = sum(sizes)
    backend = backends.get("triton")

    def ours():
        backend.step(RULES["adam"], *lists, lr=1e-3, hyper=ADAMW)

    def theirs():
        torch._foreach_add_(lists[3], 1)
        torch._fused_adamw_(
            lists[0],
            lists[1],
            lists[2][:n],
            lists[2][n:],
            [],
            lists[3],
            **TORCH_ADAMW,
        )

    for name, fn in (("triton", ours), ("torch fused", theirs)):
        for _ in range(5):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        ms = statistics.median(times)
        gbs = f"{numel * BYTES_PER_PARAM_FP32 / ms / 1e6:.0f}"
        rows.append((f"{n} x {sizes[0]}", name, f"{ms:.3f}", gbs))
    before = backend.launcher.launches
    ours()
    rows.append(
        (f"{n} x {sizes[0]}", "triton launches per step", backend.launcher.launches - before, "")
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(provenance())
    print(correctness())
    print()
    print(table(launches_per_step(args.tensors), ("case", "kernel launches per step")))
    print()
    if torch.cuda.is_available():
        rows = []
        for sizes in ([4096] * args.tensors, [1 << 22] * 16, [1] * args.tensors):
            rows += gpu_time(sizes, args.repeats)
        print(table(rows, ("tensors", "backend", "ms (median, CUDA events)", "GB/s")))
    else:
        print(
            f"host-side time per step, {args.tensors} tensors of 1 element, kernel launches "
            f"stubbed out (median of {args.repeats}, interleaved, ms):"
        )
        print(table(host_time(args.tensors, args.repeats), ("what", "ms")))


if __name__ == "__main__":
    main()
