"""One optimizer step on a GPU, every way at once: torch's for-loop, foreach
and fused paths beside fusedopt's cuda and triton backends, in one
interleaved run (python/fusedopt/bench/gpu.py says how each column is measured).

    python bench/bench_cuda.py                       # AdamW and SGD momentum, fp32, all workloads
    python bench/bench_cuda.py --dtype bfloat16      # 16-bit params (fusedopt: fp32 states)
    python bench/bench_cuda.py --optimizers AdamW --workloads "GPT-2 small (124M)" --amsgrad

Workloads: 2000 x 4096 (many small tensors: launches and host time), GPT-2
small (148 tensors, 124M params), one 64M tensor (one stream of memory) and
Llama-3.2-1B (146 tensors, 1.24B params; where the GPU memory holds every
implementation's states). Per row: launches per step, host ms, kernel ms,
bytes per param of the bytes model, GB/s, its share of the measured
device-to-device copy bandwidth, and the speed against torch's fused path.
The CSV (default bench-out/<date-time>/gpu-<gpu name>.csv) records provenance.
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from fusedopt.bench.gpu import WORKLOADS, OptimizerCase, run, save_rows

CASES = {
    "AdamW": OptimizerCase(
        "AdamW", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, 2, torch.optim.AdamW
    ),
    "SGD": OptimizerCase(
        "SGD momentum 0.9", "SGD", {"lr": 1e-3, "momentum": 0.9}, 1, torch.optim.SGD
    ),
}


def cases(names: list[str], amsgrad: bool) -> list[OptimizerCase]:
    out = [CASES[name] for name in names]
    if amsgrad:  # v_max: a third state, read and written
        out = [
            OptimizerCase(
                f"{c.name} amsgrad", c.fusedopt_name, {**c.kwargs, "amsgrad": True}, 3, c.torch_cls
            )
            if c.fusedopt_name == "AdamW"
            else c
            for c in out
        ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--optimizers", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--amsgrad", action="store_true", help="AdamW with amsgrad")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--csv", type=Path, help="default: bench-out/<date-time>/gpu-<gpu name>.csv"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA GPU is present on this machine; nothing to measure.")
        return 0

    print("fusedopt GPU benchmark: torch's paths and fusedopt's GPU backends, interleaved")
    workloads = {name: WORKLOADS[name] for name in args.workloads}
    extra = {"repeats": args.repeats} if args.repeats else {}
    rows = run(cases(args.optimizers, args.amsgrad), workloads, getattr(torch, args.dtype), **extra)
    return save_rows(rows, "bench_cuda", args.csv)


if __name__ == "__main__":
    sys.exit(main())
