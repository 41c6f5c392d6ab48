"""Persistent optimizer memory per param, measured, for each way of storing
states and params (the README's memory table).

    python bench/bench_memory.py            # GPT-2 small's 148 shapes (~124M params)
    python bench/bench_memory.py --quick    # the same shapes at 1/64 of the rows

For each configuration: fusedopt.AdamW steps once on GPT-2 small's shapes
(params of the configuration's dtype, grads of ones), then every tensor in
opt.state is counted: its bytes (untyped storage, so a view is not counted
twice), split into the rule's states (with 8-bit absmax), the master-weight
policy's states, and the step counts. Divided by the number of params. Then
"param + states": the param's own bytes too, the whole footprint of the
weights and the optimizer (grads excluded: they are the model's, and the same
in every row). The rows are measured, not computed: a state kept in another
dtype or shape than planned shows here. torch.optim.AdamW is the baseline
row. Writes bench/results/memory.csv with provenance.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
from pathlib import Path

import fusedopt
import torch
from fusedopt.bench.workloads import gpt2_small_shapes

RESULTS = Path(__file__).resolve().parent / "results" / "memory.csv"
POLICY_KEYS = ("master_param", "kahan_comp", "rounding_step")

# (label, param dtype, group keys); None: torch.optim.AdamW.
CONFIGS = [
    ("torch AdamW, fp32 params", torch.float32, None),
    ("fp32 params, fp32 states", torch.float32, {}),
    ("fp32 params, bf16 states", torch.float32, {"state_dtype": "bf16"}),
    ("fp32 params, int8 states", torch.float32, {"state_dtype": "int8"}),
    ("bf16 params, fp32 states", torch.bfloat16, {}),
    ("bf16 params, bf16 states", torch.bfloat16, {"state_dtype": "bf16"}),
    ("bf16 params, int8 states", torch.bfloat16, {"state_dtype": "int8"}),
    ("bf16 params, master_weights", torch.bfloat16, {"master_weights": True}),
    (
        "bf16 params, master_weights, bf16 states",
        torch.bfloat16,
        {"master_weights": True, "state_dtype": "bf16"},
    ),
    ("bf16 params, kahan_sum", torch.bfloat16, {"kahan_sum": True}),
    (
        "bf16 params, kahan_sum, bf16 states",
        torch.bfloat16,
        {"kahan_sum": True, "state_dtype": "bf16"},
    ),
    ("bf16 params, stochastic_rounding", torch.bfloat16, {"stochastic_rounding": True}),
    (
        "bf16 params, stochastic_rounding, bf16 states",
        torch.bfloat16,
        {"stochastic_rounding": True, "state_dtype": "bf16"},
    ),
]


def measure(shapes, dtype, group) -> dict[str, float]:
    params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.ones_like(p)
    if group is None:
        opt = torch.optim.AdamW(params, lr=1e-3, foreach=False)
    else:
        opt = fusedopt.AdamW([{"params": params, **group}], lr=1e-3)
    opt.step()
    numel = sum(p.numel() for p in params)
    seen: set[int] = set()
    parts = {"states": 0, "policy": 0, "counts": 0}
    for state in opt.state.values():
        for key, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            part = "counts" if t.numel() == 1 else "policy" if key in POLICY_KEYS else "states"
            parts[part] += storage.nbytes()
    param_bytes = sum(p.untyped_storage().nbytes() for p in params)
    out = {k: v / numel for k, v in parts.items()}
    out["optimizer"] = sum(parts.values()) / numel
    out["param + optimizer"] = (sum(parts.values()) + param_bytes) / numel
    out["params"] = numel
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="GPT-2 small's shapes, 1/64 of the rows"
    )
    args = parser.parse_args()
    shapes = gpt2_small_shapes()
    if args.quick:
        shapes = [(max(1, s[0] // 64), *s[1:]) for s in shapes]
    rows = []
    for label, dtype, group in CONFIGS:
        m = measure(shapes, dtype, group)
        rows.append({"configuration": label, **{k: round(v, 3) for k, v in m.items()}})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"# {rows[0]['params']:.0f} params (GPT-2 small{' / 64' if args.quick else ''}), "
        f"torch {torch.__version__}, commit {commit}, {stamp}"
    )
    print(
        "| configuration | states B/param | policy B/param | counts B/param | "
        "optimizer B/param | param + optimizer B/param |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['configuration']} | {r['states']:.2f} | {r['policy']:.2f} | "
            f"{r['counts']:.4f} | {r['optimizer']:.2f} | {r['param + optimizer']:.2f} |"
        )
    if not args.quick:
        with RESULTS.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*rows[0], "commit", "date"])
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "commit": commit, "date": stamp})
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
