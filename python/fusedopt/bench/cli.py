"""fusedopt-bench: optimizer steps of fusedopt beside torch's (and other
libraries') on the machine at hand, with the roofline measured in the same
run; or, with --study decay, what the weight-decay modes do to training.

    fusedopt-bench                        # AdamW and SGD, four workloads (~8 GB of RAM)
    fusedopt-bench --quick                # small workloads, a smoke run (< 1 GB)
    fusedopt-bench --optim all --workload "2000 x 4096" --workload 2000x1
    fusedopt-bench --study decay          # Adam+L2 / AdamW / fully decoupled, SGD / SGDW

Results (table on stdout; results.csv with provenance; one PNG per workload)
go to bench-out/<date-time>/ or --out DIR, never over a file git tracks.
On a machine with a CUDA GPU the same command times the GPU (CUDA events,
fusedopt.bench.gpu); --device cpu keeps it on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from fusedopt.bench import cpu, output, roofline
from fusedopt.bench.competitors import ENTRIES, TORCH_PATHS, optimizer_names
from fusedopt.bench.provenance import provenance
from fusedopt.bench.timing import load_warning
from fusedopt.bench.workloads import QUICK_WORKLOADS, WORKLOADS, workload

# Rounds: warm-up and timed. 7 timed rounds give a median that one outlier
# cannot move and a min/median spread worth reading; --quick keeps 5.
WARMUP, REPEATS = 2, 7
QUICK_WARMUP, QUICK_REPEATS = 1, 5


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--quick", action="store_true", help="small workloads, fewer rounds")
    parser.add_argument(
        "--workload",
        action="append",
        metavar="NAME",
        help=f"repeatable; one of {', '.join(repr(w) for w in {**WORKLOADS, **QUICK_WORKLOADS})}, "
        "or COUNTxNUMEL[:bf16] (default: the first four; --quick: the last two)",
    )
    parser.add_argument(
        "--optim",
        default="adamw,sgd",
        help=f"comma-separated fusedopt classes, any case, or 'all' ({', '.join(ENTRIES)})",
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="fusedopt backends, comma-separated (default: cpu; on a GPU: cuda,triton)",
    )
    parser.add_argument(
        "--torch",
        default=",".join(TORCH_PATHS),
        help="torch's paths to run beside, comma-separated (default: for-loop,foreach,fused)",
    )
    parser.add_argument(
        "--repeats", type=int, help=f"timed rounds (default {REPEATS}; --quick {QUICK_REPEATS})"
    )
    parser.add_argument("--warmup", type=int, help=f"untimed rounds first (default {WARMUP})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, help="results folder (default bench-out/<date-time>)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--study", choices=("decay",), help="run a study instead of the benchmark")
    parser.add_argument("--steps", type=int, help="--study decay: training steps per run")
    return parser.parse_args(argv)


class Progress:
    """A tqdm bar over every step of the run (stderr), or nothing; `say`
    prints lines above it."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                print("(no progress bar: tqdm is not installed; pip install tqdm)")
            else:
                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text, refresh=True)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_cpu(args: argparse.Namespace, argv: list[str], out: Path) -> int:
    names = optimizer_names(args.optim)
    chosen = [workload(n) for n in args.workload] if args.workload else None
    workloads = chosen or list((QUICK_WORKLOADS if args.quick else WORKLOADS).values())
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else WARMUP)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    roof_elements = roofline.QUICK_ROOFLINE_ELEMENTS if args.quick else roofline.ROOFLINE_ELEMENTS
    backends = [b for b in (args.backend or "cpu").split(",") if b]
    torch_paths = [p for p in args.torch.split(",") if p]
    unknown = set(torch_paths) - set(TORCH_PATHS)
    if unknown:
        raise SystemExit(
            f"fusedopt-bench: --torch takes {', '.join(TORCH_PATHS)}; not {sorted(unknown)}"
        )

    info = provenance(argv)
    print(
        f"fusedopt-bench, CPU: {warmup} warm-up + {repeats} timed rounds, competitors interleaved"
    )
    for key, value in info.items():
        print(f"  {key}: {value}")
    warning = load_warning()
    if warning:
        print(warning)
    plans, skipped = cpu.plans(workloads, names, backends, torch_paths, roof_elements)
    for line in skipped:
        print(f"  {line}")
    ram = cpu.available_ram()
    if plans:
        biggest = max(plans, key=lambda p: p.ram_bytes)
        free = f"{ram / 1e9:.1f} GB available" if ram else "available RAM unknown"
        where = f"{biggest.optimizer}, {biggest.workload.name}"
        print(f"  RAM: up to ~{biggest.ram_bytes / 1e9:.1f} GB ({where}); {free}")
    print(roofline.explanation(roof_elements))
    print()

    def steps(plan: cpu.Plan) -> int:  # first steps, then the rounds with the roofline
        return len(plan.competitors) + (warmup + repeats) * (len(plan.competitors) + 1)

    progress = Progress(sum(map(steps, plans)), enabled=not args.no_progress)
    roof_step = roofline.inplace_step(roof_elements)
    rows: list[dict] = []
    params_for: tuple[str, list[torch.Tensor]] | None = None
    start = time.perf_counter()
    for plan in sorted(plans, key=lambda p: list(workloads).index(p.workload)):
        if ram and plan.ram_bytes > cpu.MEMORY_HEADROOM * ram:
            progress.say(
                f"{plan.optimizer}, {plan.workload.name}: skipped, needs "
                f"~{plan.ram_bytes / 1e9:.1f} GB of RAM, {ram / 1e9:.1f} GB available"
            )
            for _ in range(steps(plan)):
                progress.tick()
            continue
        progress.describe(f"{plan.optimizer}, {plan.workload.name}")
        if params_for is None or params_for[0] != plan.workload.name:
            params_for = None  # frees the last workload's params first
            params_for = (plan.workload.name, cpu.make_params(plan.workload))
        stats = cpu.run_cell(
            plan, params_for[1], roof_step, warmup, repeats, progress.tick, progress.say
        )
        cell = cpu.cell_rows(plan, stats, roof_elements)
        progress.say(cpu.table(plan, cell) + "\n")
        rows += cell
    progress.close()
    params_for = None
    elapsed = time.perf_counter() - start

    warning = cpu.busy_warning(rows)
    print(warning or f"machine quiet enough: every cell's median/min is within {cpu.BUSY_SPREAD}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(f"timed part: {elapsed:.0f} s; peak RAM of this process: {peak / 1e9:.1f} GB")
    return finish(rows, info, out, args, "median of interleaved steps, CPU")


def finish(
    rows: list[dict], info: dict[str, str], out: Path, args: argparse.Namespace, caption: str
) -> int:
    if not rows:
        print("fusedopt-bench: nothing was measured (see above)")
        return 1
    print(f"wrote {output.write_csv(rows, info, out / 'results.csv')}")
    if not args.no_plots:
        for path in output.plot_all(rows, out, caption):
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fusedopt-bench: --device cuda, but torch sees no CUDA GPU here")
    out = output.prepare_out_dir(args.out or output.default_out_dir())
    if args.study == "decay":
        from fusedopt.bench import decay

        return decay.main(args, argv, out)
    if args.device != "cpu" and torch.cuda.is_available():
        from fusedopt.bench import gpu

        return gpu.main(args, argv, out)
    return run_cpu(args, argv, out)
