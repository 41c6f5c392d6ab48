"""fusedopt.Adafactor's CPU step beside torch.optim.Adafactor's paths.

    python bench/bench_adafactor.py            # GPT-2 small (124M params)
    python bench/bench_adafactor.py --quick    # a small workload (a smoke run)

torch.optim.Adafactor's fastest path on the CPU is foreach=True (its default,
foreach=None, is the single-tensor loop: torch keeps it for the memory it
saves); both are timed, interleaved step by step with fusedopt's cpu backend
on the same workload (fp32 params, states made by one step before timing).

Bytes model (csrc/include/fusedopt/rules/adafactor.h): fusedopt's four passes
read p and g, then g, then p and g and write p: 24 B per element of a matrix;
a vector's full second moment adds 12 B. The statistics of a matrix are
O(rows + cols). GB/s is that model over the measured time, and its share of
the in-place roofline measured in the same run (bench_cpu.py).
"""

from __future__ import annotations

import argparse
import statistics

import fusedopt
import torch
from bench_cpu import measure_roofline_gbs, provenance, time_steps
from workloads import gpt2_small_shapes

# fusedopt's bytes per element (fp32): see the module docstring.
MATRIX_BYTES = 24
VECTOR_BYTES = 36


def model_bytes(shapes: list[tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes:
        numel = torch.Size(shape).numel()
        total += numel * (MATRIX_BYTES if len(shape) > 1 else VECTOR_BYTES)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workload, few repeats")
    args = parser.parse_args()
    if args.quick:
        shapes, warmup, repeats = [(768, 768), (768,), (3072, 768)] * 4, 1, 3
    else:
        shapes, warmup, repeats = gpt2_small_shapes(), 2, 7
    factories = {
        "fusedopt cpu": lambda ps: fusedopt.Adafactor(ps, backend="cpu"),
        "torch foreach=True": lambda ps: torch.optim.Adafactor(ps, foreach=True),
        "torch foreach=False": lambda ps: torch.optim.Adafactor(ps, foreach=False),
    }
    times = time_steps(factories, shapes, warmup, repeats)
    roofline = measure_roofline_gbs(5)
    numel = sum(torch.Size(s).numel() for s in shapes)
    info = provenance()
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    print(f"{len(shapes)} tensors, {numel / 1e6:.1f}M params; roofline {roofline:.1f} GB/s")
    fused = statistics.median(times["fusedopt cpu"])
    gbs = model_bytes(shapes) / fused / 1e9
    for name, samples in times.items():
        median = statistics.median(samples)
        line = f"{name:22s} {median * 1e3:9.1f} ms/step (median of {len(samples)})"
        if name == "fusedopt cpu":
            line += f"  {gbs:.1f} GB/s ({gbs / roofline:.0%} of roofline)"
        else:
            line += f"  fusedopt is {median / fused:.1f}x faster"
        print(line)


if __name__ == "__main__":
    main()
