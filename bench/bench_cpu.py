"""CPU optimizer steps: fusedopt's cpu backend beside torch's paths, in one run.

    python bench/bench_cpu.py                # every workload, prints tables
    python bench/bench_cpu.py --quick        # small workloads only (a smoke run)

Four sections:
  1. AdamW (fp32) on 2000 x 4096, one 64M tensor and GPT-2 small: torch
     for-loop, foreach, fused and fusedopt cpu, ms per step and GB/s;
  2. SGD with momentum (fp32) on the same workloads beside torch's paths;
  3. host cost: 2000 one-element params, where the step is all per-tensor
     host work, fusedopt cpu beside torch fused;
  4. CUDA launches per step that fusedopt's CUDA plan makes on 2000 x 4096 and
     GPT-2 small (read from the kernels' own launch planner, no GPU needed).

Every implementation steps the same workload in turn, interleaved repetition by
repetition, so that machine noise hits all alike; the tables quote medians.
The roofline is measured in the same run: an in-place `a += s * b` moves 12 B
per element and, like an optimizer step, writes only what it read.

Bytes per fp32 param (bench/README.md): AdamW reads p, g, m, v and writes p,
m, v: 28 B; SGD with momentum reads p, g, b and writes p, b: 20 B.
Effective GB/s = bytes per param x params / step time.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fusedopt
import torch
from workloads import bytes_per_element, gpt2_small_shapes, sgd_bytes_per_element

# The roofline array: 2 x 64M fp32 = 512 MiB, far beyond any cache.
ROOFLINE_ELEMENTS = 64 * 2**20
# Host-cost workload: one-element params, so the arithmetic is nothing and the
# step time is the per-tensor work of Python, dispatch and checks.
HOST_COST_TENSORS = 2000

WORKLOADS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "2000 x 4096": lambda: [(4096,)] * 2000,
    "one 64M tensor": lambda: [(64 * 2**20,)],
    "GPT-2 small (124M)": gpt2_small_shapes,
}
QUICK_WORKLOADS = {"200 x 4096": lambda: [(4096,)] * 200, "one 1M tensor": lambda: [(2**20,)]}
LAUNCH_WORKLOADS = {"2000 x 4096": WORKLOADS["2000 x 4096"], "GPT-2 small": gpt2_small_shapes}

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
# Per optimizer: its bytes per fp32 param and the implementations beside each other.
OPTIMIZERS: dict[str, tuple[int, dict[str, Factory]]] = {
    "AdamW": (
        bytes_per_element(torch.float32),
        {
            "torch for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False),
            "torch foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
            "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
            "fusedopt cpu": lambda ps: fusedopt.AdamW(ps, lr=1e-3, backend="cpu"),
        },
    ),
    "SGD momentum 0.9": (
        sgd_bytes_per_element(torch.float32),
        {
            "torch for-loop": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=False),
            "torch foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
            "torch fused": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
            "fusedopt cpu": lambda ps: fusedopt.SGD(ps, lr=1e-3, momentum=0.9, backend="cpu"),
        },
    ),
}


def measure_roofline_gbs(repeats: int) -> float:
    """Best GB/s of an in-place a += s * b over arrays far larger than cache.
    The best, not the median: the roofline is what the machine can do, and on
    a shared machine the slower runs measure the neighbours."""
    a = torch.rand(ROOFLINE_ELEMENTS)
    b = torch.rand(ROOFLINE_ELEMENTS)
    a.add_(b, alpha=1e-3)  # warm-up: fault the pages in
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a.add_(b, alpha=1e-3)
        times.append(time.perf_counter() - start)
    return 12 * ROOFLINE_ELEMENTS / min(times) / 1e9


def make_optimizer(factory: Factory, shapes: list[tuple[int, ...]]) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = factory(params)
    opt.step()  # creates the state outside the timed steps
    return opt


def time_steps(
    factories: dict[str, Factory], shapes: list[tuple[int, ...]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per step of each implementation, interleaved repetition by repetition."""
    optimizers = {name: make_optimizer(f, shapes) for name, f in factories.items()}
    times: dict[str, list[float]] = {name: [] for name in factories}
    for rep in range(warmup + repeats):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def provenance() -> dict[str, str]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fusedopt_commit": commit,
        "fusedopt_cpu_isa": str(fusedopt._extension.cpu_isa()),
    }


def throughput_rows(optimizer, bytes_per_param, workloads, warmup, repeats, roofline):
    """Times every implementation of `optimizer` on every workload; prints its
    table and returns the CSV rows."""
    _, factories = OPTIMIZERS[optimizer]
    header = (
        f"{'workload':<20} {'implementation':<15} {'ms/step':>9} {'GB/s':>7} {'% bw':>6} "
        f"{'vs torch fused':>15}"
    )
    print(f"{optimizer} (fp32, {bytes_per_param} B/param)")
    print(header)
    print("-" * len(header))
    rows = []
    for name, make_shapes in workloads.items():
        shapes = make_shapes()
        times = time_steps(factories, shapes, warmup, repeats)
        n_params = sum(torch.Size(s).numel() for s in shapes)
        fused_ms = statistics.median(times["torch fused"]) * 1e3
        for impl, samples in times.items():
            ms = statistics.median(samples) * 1e3
            gbs = bytes_per_param * n_params / (ms / 1e3) / 1e9
            print(
                f"{name:<20} {impl:<15} {ms:9.2f} {gbs:7.1f} {100 * gbs / roofline:5.0f}% "
                f"{fused_ms / ms:14.2f}x"
            )
            rows.append(
                {
                    "optimizer": optimizer,
                    "workload": name,
                    "tensors": len(shapes),
                    "params": n_params,
                    "implementation": impl,
                    "median_ms": f"{ms:.3f}",
                    "min_ms": f"{min(samples) * 1e3:.3f}",
                    "gb_per_s": f"{gbs:.2f}",
                    "roofline_gb_per_s": f"{roofline:.2f}",
                    "speedup_vs_torch_fused": f"{fused_ms / ms:.3f}",
                }
            )
        print()
    return rows


def host_cost(repeats: int) -> list[dict]:
    """AdamW on HOST_COST_TENSORS one-element params: fusedopt cpu and torch fused."""
    _, factories = OPTIMIZERS["AdamW"]
    pair = {name: factories[name] for name in ("torch fused", "fusedopt cpu")}
    times = time_steps(pair, [(1,)] * HOST_COST_TENSORS, warmup=5, repeats=repeats)
    fused, ours = (statistics.median(times[n]) * 1e3 for n in pair)
    print(
        f"Host cost, AdamW on {HOST_COST_TENSORS} one-element params (median of {repeats}): "
        f"fusedopt cpu {ours:.2f} ms ({ours / HOST_COST_TENSORS * 1e3:.2f} us per tensor), "
        f"torch fused {fused:.2f} ms: fusedopt takes {ours / fused:.2f} of torch fused's time\n"
    )
    return [
        {
            "optimizer": "AdamW",
            "workload": f"host cost, {HOST_COST_TENSORS} x 1",
            "tensors": HOST_COST_TENSORS,
            "params": HOST_COST_TENSORS,
            "implementation": name,
            "median_ms": f"{statistics.median(samples) * 1e3:.3f}",
            "min_ms": f"{min(samples) * 1e3:.3f}",
        }
        for name, samples in times.items()
    ]


def cuda_launches() -> None:
    """Launches per step of the CUDA plan, from the kernels' own planner
    (fusedopt._testing, built with FUSEDOPT_TESTING=1, as scripts/setup.sh does)."""
    if importlib.util.find_spec("fusedopt._testing") is None:
        print("CUDA launches per step: fusedopt._testing is not built (FUSEDOPT_TESTING=1)\n")
        return
    import fusedopt._testing  # noqa: F401  (registers torch.ops.fusedopt_testing)

    print(f"CUDA launches per step ({fusedopt._C.kernel_arg_bytes} B of kernel parameters):")
    for rule in fusedopt.RULES:
        for name, make_shapes in LAUNCH_WORKLOADS.items():
            numels = [torch.Size(s).numel() for s in make_shapes()]
            flat = torch.ops.fusedopt_testing.launch_plan(rule, numels)
            _, slots, blocks, launches = flat[:4]
            print(
                f"  {rule:<5} {name:<12} {launches} launches "
                f"({slots} tensors and {blocks} chunks of 64K per launch at most), "
                f"plus 1 step-count launch in capturable mode"
                if fusedopt.RULES[rule].has_step
                else f"  {rule:<5} {name:<12} {launches} launches "
                f"({slots} tensors and {blocks} chunks of 64K per launch at most)"
            )
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--csv", type=Path, default=Path(__file__).parent / "results" / "cpu_steps.csv"
    )
    args = parser.parse_args()
    workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
    repeats = args.repeats or (3 if args.quick else 9)
    warmup = 1 if args.quick else 2

    info = provenance()
    print(f"fusedopt CPU benchmark (fp32, median of {repeats} interleaved steps)")
    for key, value in info.items():
        print(f"  {key}: {value}")
    roofline = measure_roofline_gbs(repeats=max(repeats, 5))
    print()
    cuda_launches()
    rows = host_cost(repeats=max(repeats, 15))
    for optimizer, (bytes_per_param, _) in OPTIMIZERS.items():
        rows += throughput_rows(optimizer, bytes_per_param, workloads, warmup, repeats, roofline)
    # Measured again after the workloads: the better of the two is the roofline.
    roofline = max(roofline, measure_roofline_gbs(repeats=max(repeats, 5)))
    print(f"measured in-place bandwidth (a += s*b, best of two runs): {roofline:.1f} GB/s")
    print("(% bw above uses the first run; a row over 100% means the machine was busier then)")

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row)) + list(info)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **info} for row in rows)
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
