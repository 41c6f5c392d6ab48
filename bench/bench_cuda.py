"""Microbenchmark of one AdamW step on a GPU: fusedopt's CUDA backend against
torch.optim.AdamW(foreach=True) and torch.optim.AdamW(fused=True).

    python bench/bench_cuda.py [--dtype float32|bfloat16] [--amsgrad] [--csv out.csv]

The workload is GPT-2 small's parameter list (124M elements in 148 tensors).
Each step is timed with CUDA events after warm-up, with the L2 cache flushed
before every timed step, and reported as the median over repeats, in GB/s of
the bytes model (bench/README.md) and as a fraction of this GPU's measured
copy bandwidth. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from workloads import bytes_per_element, gpt2_small_shapes

WARMUP = 5
REPEATS = 30
L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 (H100 50 MB, B200 126 MB)


def measured_copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write), median of 10."""
    src = torch.empty(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n_bytes / statistics.median(times[2:])


def time_steps(step, flush: torch.Tensor) -> float:
    """Median seconds of step() over REPEATS, each after an L2 flush."""
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(REPEATS):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def make_optimizer(kind: str, params, amsgrad: bool):
    import fusedopt

    if kind == "fusedopt-cuda":
        return fusedopt.AdamW(params, lr=1e-3, amsgrad=amsgrad, backend="cuda")
    if kind == "torch-foreach":
        return torch.optim.AdamW(params, lr=1e-3, amsgrad=amsgrad, foreach=True)
    return torch.optim.AdamW(params, lr=1e-3, amsgrad=amsgrad, fused=True)


def provenance() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "commit": commit,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--amsgrad", action="store_true")
    parser.add_argument("--csv", type=Path, help="append one row per method to this CSV file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA GPU is present on this machine; nothing to measure.")
        return 0

    dtype = getattr(torch, args.dtype)
    shapes = gpt2_small_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    # fusedopt keeps fp32 states; torch keeps them in the param's dtype.
    torch_state_bytes = torch.finfo(dtype).bits // 8
    torch_bytes = bytes_per_element(dtype, args.amsgrad, torch_state_bytes) * numel
    model_bytes = {
        "fusedopt-cuda": bytes_per_element(dtype, args.amsgrad) * numel,
        "torch-foreach": torch_bytes,
        "torch-fused": torch_bytes,
    }
    peak = measured_copy_bandwidth()
    flush = torch.empty(L2_FLUSH_BYTES // 4, device="cuda")
    info = provenance()
    print(f"{info['gpu']}, torch {info['torch']}, commit {info['commit']}, {info['date']}")
    print(
        f"{len(shapes)} tensors, {numel / 1e6:.1f}M params, {args.dtype}, amsgrad="
        f"{args.amsgrad}: {model_bytes['fusedopt-cuda'] / 1e9:.2f} GB per fusedopt step; "
        f"copy bandwidth {peak / 1e9:.0f} GB/s"
    )
    rows = []
    for kind in ("fusedopt-cuda", "torch-foreach", "torch-fused"):
        params = [torch.randn(s, device="cuda", dtype=dtype, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = make_optimizer(kind, params, args.amsgrad)
        seconds = time_steps(opt.step, flush)
        rate = model_bytes[kind] / seconds
        print(
            f"  {kind:14s} {seconds * 1e3:8.3f} ms  {rate / 1e9:7.0f} GB/s  "
            f"{100 * rate / peak:5.1f}% of copy bandwidth"
        )
        rows.append(
            {
                **info,
                "method": kind,
                "dtype": args.dtype,
                "amsgrad": args.amsgrad,
                "numel": numel,
                "ms": seconds * 1e3,
                "gb_per_s": rate / 1e9,
                "fraction_of_copy": rate / peak,
            }
        )
        del opt, params
    if args.csv:
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
