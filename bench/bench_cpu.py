"""CPU AdamW step time and effective bandwidth: fusedopt vs torch's three paths.

    python bench/bench_cpu.py                # all workloads, prints a table
    python bench/bench_cpu.py --quick        # small workloads only (a smoke run)

Every implementation steps the same workload in turn, interleaved repetition by
repetition, so that machine noise hits all alike; the table quotes medians.
The roofline is measured in the same run: an in-place `a += s * b` moves 12 B
per element and, like an optimizer step, writes only what it read.

Bytes model (fp32 AdamW, per parameter): read p, g, m, v and write p, m, v:
7 x 4 B = 28 B. Effective GB/s = 28 B x params / step time.
"""

from __future__ import annotations

import argparse
import csv
import datetime
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
from workloads import bytes_per_element, gpt2_small_shapes

BYTES_PER_PARAM_ADAMW_FP32 = bytes_per_element(torch.float32)  # 28
# The roofline array: 2 x 64M fp32 = 512 MiB, far beyond any cache.
ROOFLINE_ELEMENTS = 64 * 2**20


WORKLOADS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "2000 x 4096": lambda: [(4096,)] * 2000,
    "one 64M tensor": lambda: [(64 * 2**20,)],
    "GPT-2 small (124M)": gpt2_small_shapes,
}
QUICK_WORKLOADS = {"200 x 4096": lambda: [(4096,)] * 200, "one 1M tensor": lambda: [(2**20,)]}

IMPLEMENTATIONS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "torch for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False),
    "torch foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    "fusedopt cpu": lambda ps: fusedopt.AdamW(ps, lr=1e-3, backend="cpu"),
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


def make_optimizer(impl: str, shapes: list[tuple[int, ...]]) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = IMPLEMENTATIONS[impl](params)
    opt.step()  # creates the state outside the timed steps
    return opt


def time_workload(
    shapes: list[tuple[int, ...]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per step of each implementation, interleaved repetition by repetition."""
    optimizers = {impl: make_optimizer(impl, shapes) for impl in IMPLEMENTATIONS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    for rep in range(warmup + repeats):
        for impl, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[impl].append(elapsed)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--csv", type=Path, default=Path(__file__).parent / "results" / "cpu_adamw.csv"
    )
    args = parser.parse_args()
    workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
    repeats = args.repeats or (3 if args.quick else 9)
    warmup = 1 if args.quick else 2

    info = provenance()
    print(f"fusedopt CPU AdamW benchmark (fp32, median of {repeats} interleaved steps)")
    for key, value in info.items():
        print(f"  {key}: {value}")
    roofline = measure_roofline_gbs(repeats=max(repeats, 5))

    results = []
    for name, make_shapes in workloads.items():
        shapes = make_shapes()
        results.append((name, shapes, time_workload(shapes, warmup, repeats)))
    # Measured again after the workloads: the better of the two is the roofline.
    roofline = max(roofline, measure_roofline_gbs(repeats=max(repeats, 5)))
    print(f"  measured in-place bandwidth (a += s*b, best of two runs): {roofline:.1f} GB/s\n")

    rows = []
    header = (
        f"{'workload':<20} {'implementation':<15} {'ms/step':>9} {'GB/s':>7} {'% bw':>6} "
        f"{'vs torch fused':>15}"
    )
    print(header)
    print("-" * len(header))
    for name, shapes, times in results:
        n_params = sum(torch.Size(s).numel() for s in shapes)
        fused_ms = statistics.median(times["torch fused"]) * 1e3
        for impl, samples in times.items():
            ms = statistics.median(samples) * 1e3
            gbs = BYTES_PER_PARAM_ADAMW_FP32 * n_params / (ms / 1e3) / 1e9
            speedup = fused_ms / ms
            print(
                f"{name:<20} {impl:<15} {ms:9.2f} {gbs:7.1f} {100 * gbs / roofline:5.0f}% "
                f"{speedup:14.2f}x"
            )
            rows.append(
                {
                    "workload": name,
                    "tensors": len(shapes),
                    "params": n_params,
                    "implementation": impl,
                    "median_ms": f"{ms:.3f}",
                    "min_ms": f"{min(samples) * 1e3:.3f}",
                    "gb_per_s": f"{gbs:.2f}",
                    "roofline_gb_per_s": f"{roofline:.2f}",
                    "speedup_vs_torch_fused": f"{speedup:.3f}",
                    **info,
                }
            )
        print()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
