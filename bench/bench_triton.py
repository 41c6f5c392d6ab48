"""Benchmark of the Triton backend.

On a CUDA GPU: one AdamW step of the Triton backend beside torch's fused
AdamW (`torch._fused_adamw_`), timed with CUDA events (warm-up, then the median
of repeats), in ms and GB/s at 28 bytes per fp32 param (read p, g, m, v; write
p, m, v; no GradScaler), and launches per step.

Without a GPU, what the interpreter can honestly say: correctness against
fusedopt.reference, launches per step, and the launcher's host-side time for
many tensors with the kernel launch itself excluded (the Python work that
surrounds it: argument checks, plan lookup, table refresh) beside the host
time of torch's fused AdamW on 1-element CPU tensors (its Python and dispatch
cost; the arithmetic is negligible at 1 element).

    python bench/bench_triton.py [--tensors 2000] [--repeats 50]
"""

from __future__ import annotations

import argparse
import datetime
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
from fusedopt import backends, reference  # noqa: E402
from fusedopt.kernels import adam as kernels  # noqa: E402
from workloads import bytes_per_element  # noqa: E402

# Bytes per fp32 param of one AdamW step: read p, g, m, v; write p, m, v.
BYTES_PER_PARAM_FP32 = bytes_per_element(torch.float32)  # 28
HYPER = dict(
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    weight_decay_mode=1,
    lr_max=1.0,
    amsgrad=False,
    maximize=False,
)


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


def make_lists(sizes, device, step=0.0):
    params = [torch.randn(n, device=device) for n in sizes]
    grads = [torch.randn(n, device=device) for n in sizes]
    exp_avgs = [torch.zeros(n, device=device) for n in sizes]
    exp_avg_sqs = [torch.zeros(n, device=device) for n in sizes]
    steps = [torch.tensor(step) for _ in sizes]
    return [params, grads, exp_avgs, exp_avg_sqs, [], steps]


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
    ours = make_lists(sizes, "cuda" if torch.cuda.is_available() else "cpu", step=2.0)
    theirs = [[t.cpu().clone() for t in ts] for ts in ours]
    backends.get("triton").adam_step(*ours, lr=1e-2, **HYPER)
    worst = 0.0
    for i in range(len(sizes)):
        reference.adam_step_(
            theirs[0][i],
            theirs[1][i],
            theirs[2][i],
            theirs[3][i],
            None,
            theirs[5][i],
            lr=1e-2,
            **{**HYPER, "weight_decay_mode": reference.WeightDecayMode(1)},
        )
        if sizes[i]:
            diff = (ours[0][i].cpu() - theirs[0][i]).abs() / theirs[0][i].abs().clamp_min(1e-6)
            worst = max(worst, diff.max().item())
    return f"max relative difference to fusedopt.reference, fp32, sizes {sizes}: {worst:.1e}"


def launches_per_step(n_tensors: int) -> list[tuple]:
    rows = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for steps_in_kernel in (False, True):
        lists = make_lists([1 + i % 7 for i in range(n_tensors)], device)
        launcher = kernels.AdamLauncher()
        launcher.adam_step(*lists, lr=1e-3, **HYPER, steps_in_kernel=steps_in_kernel)
        rows.append(
            (
                f"{n_tensors} tensors, steps {'in-kernel' if steps_in_kernel else 'on host'}",
                launcher.launches,
            )
        )
    return rows


def host_time(n_tensors: int, repeats: int) -> list[tuple]:
    """The launcher's Python work per step with the kernels stubbed out, beside
    torch's fused AdamW on 1-element CPU tensors."""
    lists = make_lists([1] * n_tensors, "cpu")
    backend = backends.get("triton")
    real = kernels._adam_kernel, kernels._count_steps_kernel
    kernels._adam_kernel = kernels._count_steps_kernel = _NoLaunch()
    try:
        launcher = kernels.AdamLauncher()
        plain = median_ms(
            lambda: launcher.adam_step(*lists, lr=1e-3, **HYPER, steps_in_kernel=False), repeats
        )
        in_kernel = median_ms(
            lambda: launcher.adam_step(*lists, lr=1e-3, **HYPER, steps_in_kernel=True), repeats
        )
        whole = median_ms(lambda: backend.adam_step(*lists, lr=1e-3, **HYPER), repeats)
    finally:
        kernels._adam_kernel, kernels._count_steps_kernel = real
    params, grads, exp_avgs, exp_avg_sqs, _, steps = make_lists([1] * n_tensors, "cpu")

    def torch_fused():
        torch._fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.01,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )

    fused = median_ms(torch_fused, repeats)
    count = median_ms(lambda: torch._foreach_add_(steps, 1.0), repeats)
    return [
        ("triton launcher, steps on host (kernel excluded)", f"{plain:.3f}"),
        ("triton launcher, steps in-kernel (kernels excluded)", f"{in_kernel:.3f}"),
        ("triton backend.adam_step with argument checks (kernel excluded)", f"{whole:.3f}"),
        ("torch _fused_adamw_ on CPU (1-element tensors)", f"{fused:.3f}"),
        ("torch _foreach_add_(steps, 1) on CPU, which torch's Adam adds", f"{count:.3f}"),
    ]


def gpu_time(sizes, repeats: int) -> list[tuple]:
    rows = []
    lists = make_lists(sizes, "cuda")
    lists[5] = [s.cuda() for s in lists[5]]  # torch's fused layout: steps on the device
    numel = sum(sizes)
    launcher = backends.get("triton").launcher

    def ours():
        backends.get("triton").adam_step(*lists, lr=1e-3, **HYPER)

    def theirs():
        torch._foreach_add_(lists[5], 1)
        torch._fused_adamw_(
            lists[0],
            lists[1],
            lists[2],
            lists[3],
            [],
            lists[5],
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.01,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
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
        rows.append(
            (
                f"{len(sizes)} x {sizes[0]}",
                name,
                f"{ms:.3f}",
                f"{numel * BYTES_PER_PARAM_FP32 / ms / 1e6:.0f}",
            )
        )
    before = launcher.launches
    ours()
    rows.append(
        (f"{len(sizes)} x {sizes[0]}", "triton launches per step", launcher.launches - before, "")
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
            f"host-side time per step, {args.tensors} tensors of 1 element "
            f"(median of {args.repeats}, ms):"
        )
        print(table(host_time(args.tensors, args.repeats), ("what", "ms")))


if __name__ == "__main__":
    main()
