"""AdamW's CPU step with fp32, bf16 and 8-bit states, beside torch's fused fp32.

    python bench/bench_states.py              # one 64M fp32 tensor (~4 GB of RAM)
    python bench/bench_states.py --quick      # one 4M tensor (a smoke run)

On one fp32 tensor, interleaved step by step: fusedopt's cpu backend with
state_dtype "fp32", "bf16" and "int8" (8-bit blockwise, Dettmers et al. 2022)
and torch.optim.AdamW(fused=True). For each: the median ms per step, the
effective GB/s from its bytes per param (read p, g, m, v; write p, m, v: fp32
states 28 B, bf16 20 B, 8-bit 18 B + 2 x 8 B of absmax per 256 elements), the
persistent state bytes per param (the state tensors' bytes, `step` left out,
over the param's elements), and the step's peak temporary allocation: how far
the process's resident set rose above its size before the step, at its peak
(Linux: VmHWM after a reset; peak_temporary_bytes). Provenance (machine, torch,
commit, date) is printed with the table and written with the CSV
(bench/results/cpu_states.csv).
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
from pathlib import Path

import fusedopt
import torch

# Bytes moved per param (fp32 params and grads): the state dtype's loads and
# stores of two moments, plus p read and written and g read.
PARAM_GRAD_BYTES = 12
STATE_BYTES = {"fp32": 2 * 8, "bf16": 2 * 4, "int8": 2 * 2 + 2 * 8 / 256}
RESULTS = Path(__file__).resolve().parent / "results" / "cpu_states.csv"


def provenance() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor()}",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu_isa": str(fusedopt._extension.cpu_isa()),
        "commit": commit,
    }


def make(kind: str, numel: int) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(numel, generator=gen))
    p.grad = torch.randn(numel, generator=gen) * 1e-2
    if kind == "torch fused":
        return torch.optim.AdamW([p], lr=1e-3, fused=True)
    return fusedopt.AdamW([p], lr=1e-3, state_dtype=kind, backend="cpu")


def state_bytes_per_param(opt: torch.optim.Optimizer) -> float:
    (p,) = opt.param_groups[0]["params"]
    state = opt.state[p]
    return sum(t.nbytes for key, t in state.items() if key != "step") / p.numel()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_temporary_bytes(opt: torch.optim.Optimizer) -> int:
    """The most memory a step added at once: the resident set's peak during
    the step (VmHWM, reset through /proc/self/clear_refs) over its size before.
    With MALLOC_MMAP_THRESHOLD_ set (main() does), every allocation of 64 KB
    or more is its own mapping, returned at its free, so a step's large
    temporaries count even when an earlier step made the same ones."""
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    opt.step()
    return max(0, _status_kb("VmHWM") - before) * 1024


# glibc's fixed mmap threshold (64 KB): see peak_temporary_bytes.
MMAP_THRESHOLD = "65536"


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 4M tensor, 5 steps")
    parser.add_argument("--steps", type=int, default=11, help="timed steps per optimizer")
    parser.add_argument("--csv", type=Path, default=RESULTS)
    args = parser.parse_args()
    numel = (1 << 22) if args.quick else (1 << 26)
    steps = 5 if args.quick else args.steps
    kinds = ("fp32", "bf16", "int8", "torch fused")
    opts = {kind: make(kind, numel) for kind in kinds}
    for opt in opts.values():  # warm-up: states created, pages touched
        opt.step()
        opt.step()
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(steps):
        for kind, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            times[kind].append(time.perf_counter() - start)
    info = provenance()
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"AdamW, one fp32 tensor of {numel / 2**20:.0f}M params, median of {steps} steps")
    header = ("states", "ms/step", "GB/s", "vs torch fused", "state B/param", "peak temp MB")
    print(" | ".join(header))
    rows = []
    torch_ms = statistics.median(times["torch fused"]) * 1e3
    for kind in kinds:
        ms = statistics.median(times[kind]) * 1e3
        moved = PARAM_GRAD_BYTES + STATE_BYTES["fp32" if kind == "torch fused" else kind]
        row = {
            "states": kind,
            "ms": round(ms, 2),
            "gbs": round(moved * numel / ms / 1e6, 1),
            "vs_torch_fused": round(torch_ms / ms, 2),
            "state_bytes_per_param": round(state_bytes_per_param(opts[kind]), 4),
            "peak_temp_mb": round(peak_temporary_bytes(opts[kind]) / 2**20, 2),
        }
        rows.append(row)
        print(" | ".join(str(v) for v in row.values()))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as f:
        for key, value in info.items():
            f.write(f"# {key}: {value}\n")
        f.write(f"# numel: {numel}, steps: {steps}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
