"""Gradient clipping on the CPU: fusedopt's fused norm against torch's.

On GPT-2 small's 148 grads (124.4M fp32 params), interleaved call by call:
  - the norm alone: torch.nn.utils.get_total_norm (foreach: _foreach_norm,
    then the norm of the norms) vs fusedopt.grad_norm (one reduction);
  - the clip: torch.nn.utils.clip_grad_norm_ (foreach) vs
    fusedopt.clip_grad_norm_ (the fused norm, then torch._foreach_mul_ as torch);
  - clip + AdamW step: torch's clip then torch's fused AdamW, vs fusedopt.AdamW
    with max_grad_norm (the norm, then one update pass that divides each grad
    by grad_scale / c), and fusedopt.AdamW without clipping as the floor.
Bytes per param (fp32): norm 4 (read g); clip 12 (norm + read and write g);
torch clip + step 40 (12 + 28); fusedopt max_grad_norm step 36 (4 + 28 + the
clipped grad stored back, 4). Medians of interleaved repetitions after
warm-up; prints a table and writes bench/results/cpu_clip.csv with
provenance. ~1 min and ~3.5 GB of RAM (--quick: 2000 x 4096, seconds).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fusedopt
import torch
from bench_cpu import measure_roofline_gbs, provenance
from workloads import gpt2_small_shapes

MAX_NORM = 1.0


def interleaved(calls: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict:
    """Seconds per call of each, interleaved repetition by repetition."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def make_params(shapes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2000 x 4096 params, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's); on a shared machine 1 thread measures "
        "the code, not the neighbours' scheduling",
    )
    parser.add_argument(
        "--csv", type=Path, default=Path(__file__).parent / "results" / "cpu_clip.csv"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes = [(4096,)] * 2000 if args.quick else gpt2_small_shapes()
    workload = "2000 x 4096" if args.quick else "GPT-2 small"
    repeats = args.repeats or (3 if args.quick else 9)
    warmup = 1 if args.quick else 2

    info = provenance()
    print(f"gradient clipping, CPU, fp32, {workload} (median of {repeats} interleaved calls)")
    for key, value in info.items():
        print(f"  {key}: {value}")
    roofline = measure_roofline_gbs(repeats=5)
    print(f"in-place bandwidth (a += s*b): {roofline:.1f} GB/s\n")

    params = make_params(shapes)
    n = sum(p.numel() for p in params)
    grads = [p.grad for p in params]
    # The step rows share one set of params and grads; each optimizer keeps its own states.
    torch_adamw = torch.optim.AdamW(params, lr=1e-4, fused=True)
    fused_clip = fusedopt.AdamW(params, lr=1e-4, max_grad_norm=MAX_NORM, backend="cpu")
    fused_plain = fusedopt.AdamW(params, lr=1e-4, backend="cpu")
    for opt in (torch_adamw, fused_clip, fused_plain):
        opt.step()  # states created outside the timed calls

    def torch_clip_step():
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
        torch_adamw.step()

    groups = {
        "norm": (
            4,
            {
                "torch get_total_norm (foreach)": lambda: torch.nn.utils.get_total_norm(
                    grads, foreach=True
                ),
                "fusedopt grad_norm": lambda: fusedopt.grad_norm(grads, backend="cpu"),
            },
        ),
        "clip": (
            12,
            {
                "torch clip_grad_norm_ (foreach)": lambda: torch.nn.utils.clip_grad_norm_(
                    params, MAX_NORM, foreach=True
                ),
                "fusedopt clip_grad_norm_": lambda: fusedopt.clip_grad_norm_(
                    params, MAX_NORM, backend="cpu"
                ),
            },
        ),
        "clip + AdamW step": (
            None,
            {
                "torch clip (foreach) + fused AdamW": torch_clip_step,
                "fusedopt AdamW max_grad_norm": fused_clip.step,
                "fusedopt AdamW, no clip": fused_plain.step,
            },
        ),
    }
    step_bytes = {
        "torch clip (foreach) + fused AdamW": 40,
        "fusedopt AdamW max_grad_norm": 36,
        "fusedopt AdamW, no clip": 28,
    }
    header = f"{'what':<18} {'implementation':<36} {'ms':>8} {'GB/s':>7} {'vs torch':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for what, (bytes_per_param, calls) in groups.items():
        times = interleaved(calls, warmup, repeats)
        torch_ms = None
        for name, samples in times.items():
            ms = statistics.median(samples) * 1e3
            per_param = bytes_per_param or step_bytes[name]
            gbs = per_param * n / (ms / 1e3) / 1e9
            torch_ms = torch_ms or ms  # the first row of each group is torch's
            print(f"{what:<18} {name:<36} {ms:8.2f} {gbs:7.1f} {torch_ms / ms:8.2f}x")
            rows.append(
                {
                    "what": what,
                    "implementation": name,
                    "workload": workload,
                    "params": n,
                    "tensors": len(shapes),
                    "ms_median": f"{ms:.3f}",
                    "ms_min": f"{min(samples) * 1e3:.3f}",
                    "bytes_per_param": per_param,
                    "gb_per_s": f"{gbs:.2f}",
                    "speedup_vs_torch": f"{torch_ms / ms:.3f}",
                    "roofline_gb_per_s": f"{roofline:.2f}",
                }
            )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) + list(info)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **info} for row in rows)
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
