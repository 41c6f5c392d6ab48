"""AdamW's CPU step with fp32, bf16 and 8-bit states, beside torch's fused fp32.

    python bench/bench_states.py              # one 64M fp32 tensor (~4 GB of RAM)
    python bench/bench_states.py --quick      # one 4M tensor (a smoke run)

On one fp32 tensor, interleaved step by step: fusedopt's cpu backend with
state_dtype "fp32", "bf16" and "int8" (8-bit blockwise, Dettmers et al. 2022)
and torch.optim.AdamW(fused=True); then on one bf16 tensor fusedopt with fp32
and bf16 states (issue 10: "14 B/param step traffic for bf16 params instead of
22"). For each: the median ms per step; the median CPU time per step (all
threads: on a machine shared with other jobs, what the step itself costs,
its waits for a core left out, OpenMP's spin at the region's end counted);
the speed-up over torch fused and over fusedopt's fp32 states on the same
param dtype; the effective GB/s from its bytes per param (read p, g, m, v;
write p, m, v: fp32 params with fp32 states 28 B, bf16 states 20 B, 8-bit
18 B + 2 x 8 B of absmax per 256 elements; bf16 params 6 B less); the
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

# Bytes moved per param: p read and written and g read, per param dtype, plus
# the state dtype's loads and stores of two moments.
PARAM_GRAD_BYTES = {torch.float32: 12, torch.bfloat16: 6}
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


# (states, params): fusedopt's state dtype or "torch fused", the param dtype.
KINDS = (
    ("fp32", torch.float32),
    ("bf16", torch.float32),
    ("int8", torch.float32),
    ("torch fused", torch.float32),
    ("fp32", torch.bfloat16),
    ("bf16", torch.bfloat16),
)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def make(states: str, dtype: torch.dtype, numel: int) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(numel, generator=gen).to(dtype))
    p.grad = (torch.randn(numel, generator=gen) * 1e-2).to(dtype)
    if states == "torch fused":
        return torch.optim.AdamW([p], lr=1e-3, fused=True)
    return fusedopt.AdamW([p], lr=1e-3, state_dtype=states, backend="cpu")


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
    opts = {kind: make(*kind, numel) for kind in KINDS}
    for opt in opts.values():  # warm-up: states created, pages touched
        opt.step()
        opt.step()
    times: dict[tuple[str, torch.dtype], list[float]] = {kind: [] for kind in KINDS}
    cpu_times: dict[tuple[str, torch.dtype], list[float]] = {kind: [] for kind in KINDS}
    for _ in range(steps):
        for kind, opt in opts.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            opt.step()
            times[kind].append(time.perf_counter() - start)
            cpu_times[kind].append(time.process_time() - cpu_start)
    info = provenance()
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"AdamW, one tensor of {numel / 2**20:.0f}M params, median of {steps} steps")
    header = ("states", "params", "ms/step", "CPU ms/step", "GB/s", "vs torch fused", "vs fp32")
    print(" | ".join(header + ("state B/param", "peak temp MB")))
    rows = []
    ms_of = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
    torch_ms = ms_of[("torch fused", torch.float32)]
    for kind in KINDS:
        states, dtype = kind
        ms = ms_of[kind]
        moved = PARAM_GRAD_BYTES[dtype] + STATE_BYTES["fp32" if states == "torch fused" else states]
        row = {
            "states": states,
            "params": DTYPE_NAMES[dtype],
            "ms": round(ms, 2),
            "cpu_ms": round(statistics.median(cpu_times[kind]) * 1e3, 2),
            "gbs": round(moved * numel / ms / 1e6, 1),
            "vs_torch_fused": round(torch_ms / ms, 2),
            "vs_fp32_states": round(ms_of[("fp32", dtype)] / ms, 2),
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
