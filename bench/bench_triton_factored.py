"""The host side of the Triton backend's Adafactor step (kernels/factored.py),
on GPT-2 small's 148 params, without a GPU: the kernels are stubbed out (each
launch only counted), so what is timed is the Python and the torch ops around
the launches, which on a GPU is the step's host time. Under the interpreter
kernel times mean nothing, so none is reported. The tensors are CPU
tensors, so the torch ops between launches run their arithmetic here, which
a GPU would run asynchronously: `--shrink 8` keeps the 148 params and their
kinds (so the same launches and torch ops) with every dim cut to at most 8,
which leaves the ops' dispatch cost alone. (The meta device is no cheaper:
many of its kernels are Python.)

Prints launches per step, torch ops per step (aten calls, counted by a
dispatch mode on one step) and the median host ms per step over interleaved
repeats, plans warm (built by a first step).

    python bench/bench_triton_factored.py [--repeats 30] [--shrink N] [--module PATH]

--module times another version of kernels/factored.py, for before and after:
    git show <commit>:kernels/factored.py > /tmp/factored_before.py
    python bench/bench_triton_factored.py --module /tmp/factored_before.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch
from fusedopt.bench.provenance import provenance
from fusedopt.bench.workloads import gpt2_small_shapes
from fusedopt.kernels import factored
from fusedopt.kernels.rules import adafactor as rule
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.jit import JITFunction

# torch.optim.Adafactor's defaults, as fusedopt.Adafactor passes them to the op.
HYPER = {
    "beta2_decay": -0.8,
    "eps1": -1.0,
    "eps2": 1e-3,
    "d": 1.0,
    "weight_decay": 0.0,
    "beta1": 0.0,
    "first_moment": False,
    "relative_step": True,
    "warmup_init": False,
    "scale_parameter": True,
    "maximize": False,
}
LR = 1e-2


class _Stub:
    """A kernel whose launches are counted and do nothing."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs) -> None:
        self.launches += 1


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _module(path: str | None):
    if path is None:
        return factored
    spec = importlib.util.spec_from_file_location("factored_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lists(shapes):
    """Params, grads, each param's states (as the optimizer makes them: row and
    column statistics of a matrix, the full one of a vector) and counts."""
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    states = []
    for p in params:
        if p.dim() >= 2:
            states.append(
                {
                    "row_var": torch.zeros(*p.shape[:-1], 1),
                    "col_var": torch.zeros(*p.shape[:-2], 1, p.shape[-1]),
                }
            )
        else:
            states.append({"variance": torch.zeros_like(p)})
    counts = [torch.zeros(()) for _ in params]
    return params, grads, states, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--shrink", type=int, help="cut every dim to at most this")
    parser.add_argument("--module", help="another kernels/factored.py to time")
    args = parser.parse_args()
    module = _module(args.module)
    stubs = {}
    for name, value in vars(module).items():
        if isinstance(value, JITFunction) and name.endswith("_kernel"):
            stubs[name] = _Stub()
            setattr(module, name, stubs[name])
    shapes = gpt2_small_shapes()
    if args.shrink:
        shapes = [tuple(min(d, args.shrink) for d in s) for s in shapes]
    params, grads, states, counts = _lists(shapes)

    def step() -> None:
        module.step(rule, params, grads, states, counts, lr=LR, hyper=HYPER)

    step()  # builds the plan, where the module keeps one
    launches = sum(s.launches for s in stubs.values())
    step()
    launches = sum(s.launches for s in stubs.values()) - launches
    with _CountOps() as mode:
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    info = provenance([])
    print(", ".join(f"{k}: {info[k]}" for k in ("date", "git_rev", "torch")))
    print(f"module: {args.module or 'fusedopt.kernels.factored'}")
    size = f"dims cut to {args.shrink}" if args.shrink else "full size"
    print(f"GPT-2 small ({size}), {len(shapes)} params, fp32 on the CPU, kernels stubbed out:")
    print(f"  launches per step   {launches}")
    print(f"  torch ops per step  {mode.ops}")
    print(
        f"  host ms per step    {statistics.median(times):.2f} "
        f"(median of {args.repeats}, min {min(times):.2f}, max {max(times):.2f})"
    )


if __name__ == "__main__":
    main()
