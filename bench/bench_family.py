"""Every fusedopt optimizer's CPU step beside torch's fastest path for it.

    python bench/bench_family.py            # GPT-2 small and 2000 x 4096
    python bench/bench_family.py --quick    # small workloads (a smoke run)

For each optimizer: fusedopt's cpu backend, torch's foreach path and torch's
fused path where torch has one (Adam, AdamW, SGD, Adagrad), interleaved step
by step on the same workload (fp32), with ms per step, effective GB/s from
the optimizer's bytes model and its share of the in-place bandwidth roofline
measured in the same run (bench_cpu.py: an `a += s*b` moves 12 B per element
and, like an optimizer step, writes only what it read).

Bytes model (bench/workloads.py, state_bytes_per_element): read p and g, write
p, and read and write each state the step uses: 12 + 8 per fp32 state.
Results go to bench/results/cpu_family.csv, with provenance.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fusedopt
import torch
from bench_cpu import measure_roofline_gbs, provenance, time_steps
from workloads import gpt2_small_shapes, state_bytes_per_element

WORKLOADS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "GPT-2 small (124M)": gpt2_small_shapes,
    "2000 x 4096": lambda: [(4096,)] * 2000,
}
QUICK_WORKLOADS = {"200 x 4096": lambda: [(4096,)] * 200}


@dataclass(frozen=True)
class Entry:
    """One optimizer as benchmarked: fusedopt's class name, its kwargs (the
    usual configuration: the states most runs keep), and torch's twin, if any."""

    name: str
    kwargs: dict[str, Any]
    torch_cls: type[torch.optim.Optimizer] | None
    torch_has_fused: bool = False
    torch_kwargs: dict[str, Any] = field(default_factory=dict)


ENTRIES = (
    Entry("AdamW", {"lr": 1e-3}, torch.optim.AdamW, torch_has_fused=True),
    Entry("Adam", {"lr": 1e-3, "weight_decay": 1e-2}, torch.optim.Adam, torch_has_fused=True),
    Entry("SGD", {"lr": 1e-3, "momentum": 0.9}, torch.optim.SGD, torch_has_fused=True),
    Entry("Adagrad", {"lr": 1e-2}, torch.optim.Adagrad, torch_has_fused=True),
    Entry("RMSprop", {"lr": 1e-3, "momentum": 0.9}, torch.optim.RMSprop),
    Entry("RMSpropTF", {"lr": 1e-3, "momentum": 0.9}, None),
    Entry("RAdam", {"lr": 1e-3}, torch.optim.RAdam),
    Entry("NAdam", {"lr": 1e-3}, torch.optim.NAdam),
    Entry("Adamax", {"lr": 1e-3}, torch.optim.Adamax),
    Entry("Adadelta", {"lr": 1.0}, torch.optim.Adadelta),
    Entry("Rprop", {"lr": 1e-3}, torch.optim.Rprop),
    Entry("ASGD", {"lr": 1e-3}, torch.optim.ASGD),
    Entry("Lion", {"lr": 1e-4}, None),
)


def factories(entry: Entry) -> dict[str, Callable]:
    out = {}
    if entry.torch_cls is not None:
        kwargs = {**entry.kwargs, **entry.torch_kwargs}
        out["torch foreach"] = lambda ps: entry.torch_cls(ps, **kwargs, foreach=True)
        if entry.torch_has_fused:
            out["torch fused"] = lambda ps: entry.torch_cls(ps, **kwargs, fused=True)
    cls = getattr(fusedopt, entry.name)
    out["fusedopt cpu"] = lambda ps: cls(ps, **entry.kwargs, backend="cpu")
    return out


def bytes_per_param(entry: Entry) -> int:
    """From the rule: the states this configuration's step uses."""
    cls = getattr(fusedopt, entry.name)
    opt = cls([torch.zeros(1, requires_grad=True)], **entry.kwargs)
    used = cls.rule.used_states(opt.hyper(opt.param_groups[0]))
    return state_bytes_per_element(torch.float32, len(used))


def run(entry: Entry, workloads, warmup: int, repeats: int, roofline: float) -> list[dict]:
    b = bytes_per_param(entry)
    rows = []
    for workload, make_shapes in workloads.items():
        shapes = make_shapes()
        n_params = sum(torch.Size(s).numel() for s in shapes)
        times = time_steps(factories(entry), shapes, warmup, repeats)
        medians = {impl: statistics.median(t) * 1e3 for impl, t in times.items()}
        torch_best = min(
            (ms for impl, ms in medians.items() if impl.startswith("torch")), default=None
        )
        for impl, ms in medians.items():
            gbs = b * n_params / (ms / 1e3) / 1e9
            speedup = f"{torch_best / ms:.2f}x" if torch_best else "n/a"
            print(
                f"{entry.name:<10} {workload:<20} {impl:<14} {ms:9.2f} {gbs:7.1f} "
                f"{100 * gbs / roofline:5.0f}% {speedup:>9}"
            )
            rows.append(
                {
                    "optimizer": entry.name,
                    "kwargs": repr(entry.kwargs),
                    "bytes_per_param": b,
                    "workload": workload,
                    "tensors": len(shapes),
                    "params": n_params,
                    "implementation": impl,
                    "median_ms": f"{ms:.3f}",
                    "min_ms": f"{min(times[impl]) * 1e3:.3f}",
                    "gb_per_s": f"{gbs:.2f}",
                    "roofline_gb_per_s": f"{roofline:.2f}",
                    "speedup_vs_torch_fastest": f"{torch_best / ms:.3f}" if torch_best else "",
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs="*", help="optimizer names (default: all)")
    parser.add_argument(
        "--csv", type=Path, default=Path(__file__).parent / "results" / "cpu_family.csv"
    )
    args = parser.parse_args()
    workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    entries = [e for e in ENTRIES if not args.only or e.name in args.only]

    info = provenance()
    print(f"fusedopt optimizer family, CPU, fp32 (median of {repeats} interleaved steps)")
    for key, value in info.items():
        print(f"  {key}: {value}")
    roofline = measure_roofline_gbs(repeats=max(repeats, 5))
    print(f"in-place bandwidth (a += s*b): {roofline:.1f} GB/s\n")
    header = (
        f"{'optimizer':<10} {'workload':<20} {'implementation':<14} {'ms/step':>9} "
        f"{'GB/s':>7} {'% bw':>6} {'vs torch':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for entry in entries:
        rows += run(entry, workloads, warmup, repeats, roofline)
    # Measured again after the runs: the better of the two is the roofline (on
    # a shared machine a slow run measures the neighbours).
    best = max(roofline, measure_roofline_gbs(repeats=max(repeats, 5)))
    print(f"\nin-place bandwidth, best of two runs: {best:.1f} GB/s", end="")
    print(" (% bw above uses the first run)" if best > roofline else "")
    for row in rows:
        row["roofline_best_gb_per_s"] = f"{best:.2f}"
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row)) + list(info)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **info} for row in rows)
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
