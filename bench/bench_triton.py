"""Benchmark of the Triton backend.

On a CUDA GPU: correctness of every rule against fusedopt.reference on CUDA
tensors, the launcher's launches per step, and every optimizer of the family
through fusedopt.bench.gpu (the harness of bench_cuda.py): fusedopt's triton
and cuda backends beside torch's foreach and fused paths (the configurations
of fusedopt.bench.competitors), interleaved, on GPT-2 small and 2000 x 4096, with launches,
host ms, kernel ms and GB/s of the bytes model (CSV: bench-out/<date-time>/gpu-<gpu
name>-family.csv).

Without a GPU, what the interpreter can honestly say: correctness of every
rule against fusedopt.reference, launches per step, and the launcher's host
time for many 1-element tensors with the kernel launches stubbed out (the
Python around them: plan lookup and validation, grad addresses, per-tensor
scalars, count handling) beside the host time of torch's fused AdamW on
1-element CPU tensors (its Python and dispatch cost; the arithmetic is
negligible at 1 element).

    python bench/bench_triton.py [--tensors 2000] [--repeats 50] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fusedopt  # noqa: E402
import triton  # noqa: E402
from fusedopt import backends  # noqa: E402
from fusedopt.bench.competitors import ENTRIES  # noqa: E402
from fusedopt.bench.gpu import cases, run, save_rows  # noqa: E402
from fusedopt.bench.workloads import gpt2_small_shapes  # noqa: E402
from fusedopt.kernels import mta, rules  # noqa: E402
from fusedopt.registry import RULES  # noqa: E402

# Rounds per family workload: 14 optimizers x 2 workloads must fit make
# gpu-test's 80 s for this script, Triton's compilations included.
FAMILY_REPEATS = 10
# The family's GPU workloads: those of `fusedopt-bench --optim all` on the CPU.
FAMILY_WORKLOADS = {
    "GPT-2 small (124M)": gpt2_small_shapes,
    "2000 x 4096": lambda: [(4096,)] * 2000,
}


def rule_hyper() -> dict[str, dict]:
    """Each rule's hyperparameters as fusedopt's class for it passes them to
    the backends, in fusedopt.bench.competitors' configurations (the states
    most runs keep); the first class of a rule gives it (AdamW for adam)."""
    hyper: dict[str, dict] = {}
    for entry in ENTRIES.values():
        cls = getattr(fusedopt, entry.name)
        opt = cls([torch.zeros(1, requires_grad=True)], **entry.kwargs)
        hyper.setdefault(cls.rule.name, opt.hyper(opt.param_groups[0]))
    return hyper


HYPER = rule_hyper()
ADAMW = HYPER["adam"]
# The same AdamW as torch's fused op takes it.
TORCH_ADAMW = dict(
    lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False, maximize=False
)
KERNELS = ("_element_kernel", "_per_tensor_kernel", "_advance_counts_kernel")


def provenance() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except OSError:
        commit = "?"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (interpreter)"
    return (
        f"{datetime.datetime.now().isoformat(timespec='seconds')} {platform.node()} "
        f"{platform.processor() or platform.machine()}, {device}; torch {torch.__version__}, "
        f"triton {triton.__version__}, fusedopt {fusedopt.__version__} @ {commit}"
    )


def make_lists(name, sizes, device, count=0.0, counts_device="cpu"):
    """[params, grads, states (state-major), counts] for rule `name`."""
    rule = RULES[name]
    params = [torch.randn(n, device=device) for n in sizes]
    grads = [torch.randn(n, device=device) for n in sizes]
    states = [torch.zeros(n, device=device) for _ in rule.used_states(HYPER[name]) for n in sizes]
    counts = [torch.tensor(count, device=counts_device) for _ in sizes] if rule.has_step else []
    # Scalar states (NAdam's mu_product, ...) at their first values, on the host.
    counts += [torch.tensor(1.0) for _ in rule.scalars for _ in sizes]
    return [params, grads, states, counts]


class _NoLaunch:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def table(rows, header) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def correctness() -> str:
    sizes = [0, 1, 3, 4097, 1031, 0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    worst = {}
    for name, rule in RULES.items():
        ours = make_lists(name, sizes, device, count=2.0)
        theirs = [[t.cpu().clone() for t in ts] for ts in ours]
        backends.get("triton").step(rule, *ours, lr=1e-2, hyper=HYPER[name])
        backends.get("reference").step(rule, *theirs, lr=1e-2, hyper=HYPER[name])
        worst[name] = max(
            ((a.cpu() - b).abs() / b.abs().clamp_min(1e-6)).max().item()
            for a, b in zip(ours[0], theirs[0], strict=True)
            if b.numel()
        )
    text = ", ".join(f"{name} {err:.1e}" for name, err in worst.items())
    return f"max relative difference to fusedopt.reference, fp32, sizes {sizes}: {text}"


def launches_per_step(n_tensors: int) -> list[tuple]:
    rows = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [1 + i % 7 for i in range(n_tensors)]
    for name in RULES:
        # Scalar states stay on the host (Note [scalar states]): no device counts.
        device_counts = RULES[name].has_step and not RULES[name].scalars
        for on_device in (False, True) if device_counts else (False,):
            lists = make_lists(name, sizes, device)
            launcher = mta.Launcher()
            launcher.step(
                rules.get(name),
                *lists,
                lr=1e-3,
                hyper=HYPER[name],
                counts_on_device=on_device,
                block=mta.INTERPRETER_BLOCK_SIZE
                if backends.triton_interpreter_on()
                else mta.BLOCK_SIZE,
            )
            where = " (counts on the device)" if on_device else ""
            rows.append((f"{name}, {n_tensors} tensors{where}", launcher.launches))
    return rows


def interleaved_ms(fns: dict, repeats: int) -> dict:
    """Median ms of each function, timed in alternation (one call of each per
    round) so that a noisy machine slows them alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def host_time(n_tensors: int, repeats: int) -> list[tuple]:
    """The launcher's Python work per step with the kernels stubbed out, beside
    torch's fused AdamW on 1-element CPU tensors."""
    real = {k: getattr(mta, k) for k in KERNELS}
    for k in KERNELS:
        setattr(mta, k, _NoLaunch())
    fns = {}
    for name, on_device in (("adam", False), ("adam", True), ("sgd", False)):
        lists = make_lists(name, [1] * n_tensors, "cpu", count=5.0)
        launcher = mta.Launcher()
        where = "device counts" if on_device else ("CPU counts" if name == "adam" else "no counts")
        fns[f"{name} launcher, {where}"] = functools.partial(
            launcher.step,
            rules.get(name),
            *lists,
            lr=1e-3,
            hyper=HYPER[name],
            counts_on_device=on_device,
        )
        if name == "adam" and not on_device:
            fns["  of which _foreach_add_ of the CPU counts"] = functools.partial(
                torch._foreach_add_, lists[3], 0.0
            )
    backend = backends.get("triton")
    lists = make_lists("adam", [1] * n_tensors, "cpu")
    fns["adam TritonBackend.step with argument checks"] = lambda: backend.step(
        RULES["adam"], *lists, lr=1e-3, hyper=ADAMW
    )
    params, grads, states, counts = make_lists("adam", [1] * n_tensors, "cpu")
    n = n_tensors
    fns["torch _fused_adamw_ on CPU (1-element tensors)"] = lambda: torch._fused_adamw_(
        params,
        grads,
        states[:n],
        states[n:],
        [],
        counts,
        **TORCH_ADAMW,
    )
    fns["torch _foreach_add_(steps, 1) on CPU, which torch's Adam adds"] = lambda: (
        torch._foreach_add_(counts, 1.0)
    )
    try:
        medians = interleaved_ms(fns, repeats)
    finally:
        for k, kernel in real.items():
            setattr(mta, k, kernel)
    return [(name, f"{ms:.3f}") for name, ms in medians.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--csv", type=Path, help="default: bench-out/<date-time>/gpu-<gpu name>-family.csv"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "bench_triton: no CUDA GPU is present on this machine; what the Triton interpreter "
            "can say instead: correctness, launches per step, host time with launches stubbed out."
        )
    print(provenance())
    print(correctness())
    print()
    print(table(launches_per_step(args.tensors), ("case", "kernel launches per step")))
    print()
    if not torch.cuda.is_available():
        print(
            f"host-side time per step, {args.tensors} tensors of 1 element, kernel launches "
            f"stubbed out (median of {args.repeats}, interleaved, ms):"
        )
        print(table(host_time(args.tensors, args.repeats), ("what", "ms")))
        return 0
    print("Every optimizer on the GPU: fusedopt triton and cuda beside torch's paths")
    rows = run(
        cases(list(ENTRIES), ("foreach", "fused")),
        FAMILY_WORKLOADS,
        torch.float32,
        backends=("triton", "cuda"),
        repeats=FAMILY_REPEATS,
    )
    return save_rows(rows, "bench_triton", args.csv, suffix="-family")


if __name__ == "__main__":
    sys.exit(main())
