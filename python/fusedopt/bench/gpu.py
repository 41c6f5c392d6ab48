"""The GPU harness (fusedopt-bench on a GPU, bench/bench_cuda.py,
bench/bench_triton.py): optimizer steps on CUDA tensors, every implementation
in turn, in one interleaved run.

For each workload and implementation it reports
  launches   the GPU work of one step, counted by torch's profiler from the
             device's own records (CUPTI): kernels, and copies or memsets apart;
  host ms    wall time of step() from an idle GPU, without a sync: the Python,
             checks and launches that a training loop's CPU spends on it;
  kernel ms  the step's time on the GPU: CUDA events around step(), the L2
             flushed before it (FLUSH_BYTES written), and its launches queued
             behind a sleep kernel, so that the host's time before the first
             launch is not counted. A step that launches more than the driver's
             queue holds (about a thousand) still waits for the host there: its
             kernel ms is then launch-bound, near its host ms;
  GB/s       the bytes model (workloads.py) x elements / kernel time, and its
             share of the device-to-device copy bandwidth measured in the same
             run (read + write counted, as the bytes model counts them).

Medians of REPEATS rounds after WARMUP rounds. The implementations step the
same params and grads (each with its own states), one host-timed and one
kernel-timed step of each per round, so that clock and thermal drift hit them
alike. Rows go to CSV with provenance; plotting is apart from measuring.
"""

from __future__ import annotations

import csv
import datetime
import platform
import re
import shlex
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusedopt.bench import output
from fusedopt.bench import workloads as cli_workloads
from fusedopt.bench.competitors import ENTRIES, optimizer_names, states_used, torch_has
from fusedopt.bench.provenance import git_rev, run_text
from fusedopt.bench.workloads import (
    gpt2_small_shapes,
    llama_3_2_1b_shapes,
    state_bytes_per_element,
)

# Written before every kernel-timed step: more than twice the L2 of an H100
# (50 MB), H200 (60 MB) or B200 (126 MB), so no line of the last step survives.
FLUSH_BYTES = 256 << 20
# Each of the two arrays of the copy-bandwidth measurement: 1 GiB, 20 times an
# H100's L2, so that the copy streams from HBM.
COPY_BYTES = 1 << 30
COPY_REPEATS = 10
WARMUP = 3
REPEATS = 20
# The sleep queued before a kernel-timed step lasts SLEEP_FACTOR x that round's
# host time + SLEEP_MARGIN_S: the host must finish launching before the GPU
# wakes, whatever noise the second step's host time has. SLEEP_MAX_S bounds
# the launch-bound steps (2000 tensors through torch's for-loop: ~20,000
# launches), whose launches overflow the queue anyway.
SLEEP_FACTOR = 1.5
SLEEP_MARGIN_S = 2e-4
SLEEP_MAX_S = 0.05
# Cycles of the sleep kernel's calibration: ~5 ms at an H100's 1.98 GHz.
SLEEP_CALIBRATION_CYCLES = 10_000_000
# Share of the free GPU memory a workload may plan to use: the caching
# allocator rounds and fragments, and a step's temporaries are estimated.
MEMORY_HEADROOM = 0.9
# CUPTI's kinds of device work that a launch makes (FunctionEvent.activity_type,
# which torch 2.14 has and 2.11 has not); its annotations ("gpu_user_annotation":
# the GPU side of record_function ranges, such as torch's "Optimizer.step#...")
# and overhead records are no launch. Without activity_type, a copy is known
# by CUPTI's name for it ("Memcpy HtoD (Pageable -> Device)", "Memset (Device)")
# and an annotation by bearing its CPU range's name.
LAUNCH_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")
COPY_ACTIVITIES = ("gpu_memcpy", "gpu_memset")
COPY_EVENT_PREFIXES = ("Memcpy", "Memset")

WORKLOADS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "2000 x 4096": lambda: [(4096,)] * 2000,
    "GPT-2 small (124M)": gpt2_small_shapes,
    "one 64M tensor": lambda: [(64 * 2**20,)],
    "Llama-3.2-1B (1.24B)": llama_3_2_1b_shapes,
}
# torch's three paths, by the flag that picks each.
TORCH_FLAGS = {
    "torch for-loop": {"foreach": False},
    "torch foreach": {"foreach": True},
    "torch fused": {"fused": True},
}


@dataclass(frozen=True)
class Implementation:
    """One way to step: how to build the optimizer over a param list, and
    what its states cost per element (for the bytes model and the memory
    plan)."""

    name: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    states: int  # states read and written per element by one step
    state_bytes: int  # bytes of each state element
    # Bytes per element of the largest temporary a step allocates: torch's
    # foreach Adam makes sqrt(v) for every tensor at once (_foreach_sqrt).
    transient_bytes: int = 0
    # An exact launch counter where the implementation keeps one (the Triton
    # launcher's), read before and after the profiled step.
    launch_counter: Callable[[], int] | None = None

    def bytes_per_element(self, dtype: torch.dtype) -> int:
        return state_bytes_per_element(dtype, self.states, self.state_bytes)


@dataclass(frozen=True)
class OptimizerCase:
    """An optimizer as benchmarked: fusedopt's class and torch's twin, the
    kwargs both take, the states its step uses, and torch's paths to run."""

    name: str
    fusedopt_name: str
    kwargs: dict
    states: int
    torch_cls: type[torch.optim.Optimizer] | None
    torch_paths: tuple[str, ...] = tuple(TORCH_FLAGS)
    torch_kwargs: dict = field(default_factory=dict)  # torch's alone, added to kwargs


def triton_launches() -> int:
    from fusedopt import backends

    return backends.get("triton").launcher.launches


def implementations(
    case: OptimizerCase, dtype: torch.dtype, backends: Sequence[str] = ("cuda", "triton")
) -> list[Implementation]:
    """torch's paths (states in the param's dtype, as torch keeps them) and
    fusedopt's backends (fp32 states whatever the param dtype)."""
    import fusedopt

    param_bytes = torch.finfo(dtype).bits // 8
    out = []
    for path in case.torch_paths:
        out.append(
            Implementation(
                path,
                lambda ps, flag=TORCH_FLAGS[path]: case.torch_cls(
                    ps, **case.kwargs, **case.torch_kwargs, **flag
                ),
                case.states,
                param_bytes,
                transient_bytes=param_bytes if path == "torch foreach" else 0,
            )
        )
    cls = getattr(fusedopt, case.fusedopt_name)
    for backend in backends:
        out.append(
            Implementation(
                f"fusedopt {backend}",
                lambda ps, backend=backend: cls(ps, **case.kwargs, backend=backend),
                case.states,
                4,
                launch_counter=triton_launches if backend == "triton" else None,
            )
        )
    return out


def plan_bytes(numel: int, dtype: torch.dtype, impls: Iterable[Implementation]) -> int:
    """GPU memory a workload needs: params and grads once (every
    implementation steps the same ones), each implementation's states, and the
    largest temporary of one step (one steps at a time)."""
    impls = list(impls)
    param_bytes = torch.finfo(dtype).bits // 8
    states = sum(i.states * i.state_bytes for i in impls)
    transient = max((i.transient_bytes for i in impls), default=0)
    return numel * (2 * param_bytes + states + transient)


def classify_device_events(events: Iterable) -> tuple[int, int] | None:
    """(kernels, copies and memsets) among a profile's events; None when it
    holds no device work at all (the profiler could not trace the GPU)."""
    events = list(events)
    cpu_names = {e.name for e in events if e.device_type == torch.autograd.DeviceType.CPU}
    kernels = copies = 0
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kind = getattr(e, "activity_type", None)
        if kind is None:
            if e.name in cpu_names:
                continue
            copy = e.name.startswith(COPY_EVENT_PREFIXES)
        elif kind in LAUNCH_ACTIVITIES:
            copy = kind in COPY_ACTIVITIES
        else:
            continue
        copies += copy
        kernels += not copy
    return None if kernels + copies == 0 else (kernels, copies)


def count_launches(step: Callable[[], object]) -> tuple[int, int] | None:
    """(kernels, copies) that one call of step() puts on the GPU."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return classify_device_events(prof.events())


class Sleeper:
    """Holds the current stream for a given time: torch.cuda._sleep spins a
    number of clock cycles, calibrated once with CUDA events."""

    def __init__(self) -> None:
        torch.cuda._sleep(SLEEP_CALIBRATION_CYCLES)  # loads the kernel
        start, end = _events()
        start.record()
        torch.cuda._sleep(SLEEP_CALIBRATION_CYCLES)
        end.record()
        torch.cuda.synchronize()
        self.cycles_per_s = SLEEP_CALIBRATION_CYCLES / (start.elapsed_time(end) / 1e3)

    def __call__(self, seconds: float) -> None:
        torch.cuda._sleep(int(seconds * self.cycles_per_s))


def _events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy, read + write counted:
    the median of COPY_REPEATS copies of COPY_BYTES."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    times = []
    for _ in range(COPY_REPEATS):
        start, end = _events()
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * COPY_BYTES / statistics.median(times)


@dataclass
class Samples:
    host_s: list[float]
    kernel_s: list[float]
    launches: tuple[int, int] | None = None
    counted_launches: int | None = None


def time_round(opt, flush: torch.Tensor, sleep: Sleeper) -> tuple[float, float]:
    """(host seconds, kernel seconds) of two steps of `opt`, as the module
    docstring says."""
    torch.cuda.synchronize()
    start_s = time.perf_counter()
    opt.step()
    host = time.perf_counter() - start_s
    torch.cuda.synchronize()
    flush.zero_()
    sleep(min(SLEEP_FACTOR * host + SLEEP_MARGIN_S, SLEEP_MAX_S))
    start, end = _events()
    start.record()
    opt.step()
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / 1e3


def make_params(shapes, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen, device="cuda", dtype=dtype, requires_grad=True)
        p.grad = torch.randn(shape, generator=gen, device="cuda", dtype=dtype)
        params.append(p)
    return params


def measure(
    impls: Sequence[Implementation],
    shapes: Sequence[tuple[int, ...]],
    dtype: torch.dtype,
    flush: torch.Tensor,
    sleep: Sleeper,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
) -> dict[str, Samples]:
    """Every implementation on one workload, interleaved round by round."""
    params = make_params(shapes, dtype)
    optimizers = {impl.name: impl.make(params) for impl in impls}
    for opt in optimizers.values():
        opt.step()  # states, plans and JIT compilation outside the timing
    samples = {name: Samples([], []) for name in optimizers}
    for rnd in range(warmup + repeats):
        for name, opt in optimizers.items():
            host, kernel = time_round(opt, flush, sleep)
            if rnd >= warmup:
                samples[name].host_s.append(host)
                samples[name].kernel_s.append(kernel)
    for impl in impls:
        opt = optimizers[impl.name]
        before = impl.launch_counter() if impl.launch_counter else None
        samples[impl.name].launches = count_launches(opt.step)
        if impl.launch_counter:
            samples[impl.name].counted_launches = impl.launch_counter() - before
    torch.cuda.synchronize()
    return samples


def gpu_slug(name: str) -> str:
    """A GPU's name as a file name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def provenance() -> dict[str, str]:
    import triton

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    driver = run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "gpu": props.name,
        "gpu_count": str(torch.cuda.device_count()),
        "sms": str(props.multi_processor_count),
        "l2_mb": f"{getattr(props, 'L2_cache_size', 0) / 1e6:.0f}",
        "memory_gb": f"{props.total_memory / 1e9:.0f}",
        "driver": driver.splitlines()[0] if driver else "unknown",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton.__version__,
        "python": platform.python_version(),
        "fusedopt_commit": git_rev(),
    }


def _launch_text(s: Samples) -> tuple[str, str]:
    if s.launches is None:
        counted = "?" if s.counted_launches is None else f"{s.counted_launches} (counted)"
        return counted, "?"
    return str(s.launches[0]), str(s.launches[1])


def report(
    title: str,
    workload: str,
    shapes: Sequence[tuple[int, ...]],
    dtype: torch.dtype,
    impls: Sequence[Implementation],
    samples: dict[str, Samples],
    copy_gbs: float,
) -> list[dict]:
    """Prints one workload's table; returns its CSV rows."""
    numel = sum(torch.Size(s).numel() for s in shapes)
    kernel_ms = {n: statistics.median(s.kernel_s) * 1e3 for n, s in samples.items()}
    baseline = kernel_ms.get("torch fused") or min(
        (ms for n, ms in kernel_ms.items() if n.startswith("torch")), default=None
    )
    print(
        f"{title}, {str(dtype).removeprefix('torch.')}, {workload}: {len(shapes)} tensors, "
        f"{numel / 1e6:.1f}M params"
    )
    header = (
        f"  {'implementation':<16} {'launches':>9} {'copies':>6} {'host ms':>8} "
        f"{'kernel ms':>9} {'B/param':>7} {'GB/s':>6} {'% copy':>6} {'vs torch':>8}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    rows = []
    for impl in impls:
        s = samples[impl.name]
        host_ms = statistics.median(s.host_s) * 1e3
        ms = kernel_ms[impl.name]
        per = impl.bytes_per_element(dtype)
        gbs = per * numel / (ms / 1e3) / 1e9
        launches, copies = _launch_text(s)
        speedup = f"{baseline / ms:.2f}x" if baseline else "n/a"
        print(
            f"  {impl.name:<16} {launches:>9} {copies:>6} {host_ms:8.3f} {ms:9.3f} "
            f"{per:7d} {gbs:6.0f} {100 * gbs / copy_gbs:5.0f}% {speedup:>8}"
        )
        rows.append(
            {
                "optimizer": title,
                "dtype": str(dtype).removeprefix("torch."),
                "workload": workload,
                "tensors": len(shapes),
                "params": numel,
                "implementation": impl.name,
                "launches": launches,
                "copies": copies,
                "counted_launches": "" if s.counted_launches is None else s.counted_launches,
                "host_ms": f"{host_ms:.4f}",
                "kernel_ms": f"{ms:.4f}",
                "kernel_min_ms": f"{min(s.kernel_s) * 1e3:.4f}",
                "kernel_max_ms": f"{max(s.kernel_s) * 1e3:.4f}",
                "bytes_per_param": per,
                "gb_per_s": f"{gbs:.1f}",
                "copy_gb_per_s": f"{copy_gbs:.1f}",
                "fraction_of_copy": f"{gbs / copy_gbs:.4f}",
                "speedup_vs_torch": f"{baseline / ms:.3f}" if baseline else "",
            }
        )
    print()
    return rows


def run(
    cases: Sequence[OptimizerCase],
    workloads: dict[str, Callable[[], list[tuple[int, ...]]]],
    dtype: torch.dtype,
    backends: Sequence[str] = ("cuda", "triton"),
    repeats: int = REPEATS,
) -> list[dict]:
    """Every case on every workload; prints the tables, returns the CSV rows
    (provenance added). The copy bandwidth is measured before the runs (the %
    of the tables) and again after them (a much different second value says
    the clocks or the machine changed during the run)."""
    info = provenance()
    for key, value in info.items():
        print(f"  {key}: {value}")
    copy_gbs = copy_bandwidth() / 1e9
    print(f"  device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    print(
        f"  kernel ms: median of {repeats} rounds (CUDA events, L2 flushed, launches queued "
        f"behind a sleep); host ms: median wall time of step(), no sync\n"
    )
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    sleep = Sleeper()
    rows = []
    for workload, make_shapes in workloads.items():
        shapes = make_shapes()
        numel = sum(torch.Size(s).numel() for s in shapes)
        for case in cases:
            impls = implementations(case, dtype, backends)
            need = plan_bytes(numel, dtype, impls)
            free = torch.cuda.mem_get_info()[0]
            if need > MEMORY_HEADROOM * free:
                print(
                    f"{case.name}, {workload}: skipped, needs ~{need / 1e9:.0f} GB of GPU "
                    f"memory, {free / 1e9:.0f} GB free\n"
                )
                continue
            try:
                samples = measure(impls, shapes, dtype, flush, sleep, repeats=repeats)
            except torch.cuda.OutOfMemoryError as error:
                print(f"{case.name}, {workload}: out of GPU memory ({error})\n")
                continue
            finally:
                torch.cuda.empty_cache()
            rows += report(case.name, workload, shapes, dtype, impls, samples, copy_gbs)
    after = copy_bandwidth() / 1e9
    print(f"device-to-device copy after the runs: {after:.0f} GB/s (the % above: {copy_gbs:.0f})")
    return [{**row, **info, "copy_gb_per_s_after": f"{after:.1f}"} for row in rows]


def save_rows(rows: list[dict], script: str, csv_path: Path | None, suffix: str = "") -> int:
    """A GPU benchmark's last step, its exit status: 1 when no workload was
    measured, else the rows written to `csv_path`, or by default to
    bench-out/<date-time>/gpu-<gpu name><suffix>.csv (untracked), and 0."""
    if not rows:
        print(f"{script}: no workload could be measured (see above)")
        return 1
    slug = gpu_slug(torch.cuda.get_device_name())
    write_csv(rows, csv_path or output.default_out_dir() / f"gpu-{slug}{suffix}.csv")
    return 0


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def cases(names: Sequence[str], torch_paths: Sequence[str]) -> list[OptimizerCase]:
    """fusedopt.bench.competitors' optimizers as this harness takes them:
    torch's paths that its twin has on CUDA, and the states each
    configuration's step uses (the bytes model)."""
    out = []
    for name in names:
        entry = ENTRIES[name]
        paths = tuple(f"torch {p}" for p in torch_paths if torch_has(entry, p, "cuda"))
        out.append(
            OptimizerCase(
                name,
                name,
                entry.kwargs,
                states_used(entry),
                entry.torch_cls,
                torch_paths=paths,
                torch_kwargs=entry.torch_kwargs,
            )
        )
    return out


def main(args, argv: list[str], out: Path) -> int:
    """fusedopt-bench on a GPU: the chosen optimizers and workloads through
    run(), CSV and plots into `out`."""
    chosen = [cli_workloads.workload(n) for n in args.workload] if args.workload else None
    defaults = cli_workloads.QUICK_WORKLOADS if args.quick else cli_workloads.WORKLOADS
    workloads = chosen or list(defaults.values())
    backends = [b for b in (args.backend or "cuda,triton").split(",") if b]
    torch_paths = [p for p in args.torch.split(",") if p]
    print("fusedopt-bench, GPU: torch's paths and fusedopt's GPU backends, interleaved")
    rows = []
    for dtype in dict.fromkeys(w.dtype for w in workloads):
        mine = {w.name: w.shapes for w in workloads if w.dtype == dtype}
        extra = {"repeats": args.repeats} if args.repeats else {}
        rows += run(cases(optimizer_names(args.optim), torch_paths), mine, dtype, backends, **extra)
    if not rows:
        print("fusedopt-bench: no workload could be measured (see above)")
        return 1
    write_csv(
        [{**r, "command": shlex.join(["fusedopt-bench", *argv])} for r in rows], out / "results.csv"
    )
    if not args.no_plots:
        plot_rows = [
            {
                "workload": r["workload"],
                "optimizer": r["optimizer"],
                "competitor": r["implementation"],
                "median_ms": r["kernel_ms"],
                "min_ms": r["kernel_min_ms"],
                "max_ms": r["kernel_max_ms"],
                "gb_per_s": r["gb_per_s"],
            }
            for r in rows
        ]
        plot_rows += [
            {
                "workload": w,
                "optimizer": "",
                "competitor": "roofline (device copy)",
                "gb_per_s": r["copy_gb_per_s"],
            }
            for w, r in {r["workload"]: r for r in rows}.items()
        ]
        for path in output.plot_all(plot_rows, out, "kernel ms (CUDA events), GPU"):
            print(f"wrote {path}")
    return 0
