"""The CPU run: every optimizer's competitors and the roofline on every
workload, interleaved step by step (timing.py), with a printed table per
optimizer and workload and the CSV's rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fusedopt.bench import roofline
from fusedopt.bench.competitors import Competitor, competitors
from fusedopt.bench.output import format_table
from fusedopt.bench.timing import BUSY_SPREAD, Stats, interleaved
from fusedopt.bench.workloads import Workload

# Share of the available RAM (MemAvailable) a workload may plan to use: the
# allocator's rounding and each step's temporaries are not in the plan.
MEMORY_HEADROOM = 0.9
# Bytes per element of the temporaries a torch path allocates during a step:
# its for-loop and foreach Adam make up to three fp32 ones (sqrt(v), the
# denominator, the update). With 4 the plan of AdamW on one 64M tensor said
# 3.5 GB and the run's peak RSS was 4.8 GB; 12 and PROCESS_BYTES account for it.
TRANSIENT_BYTES = 12
# RSS of the process before any workload: Python, torch and fusedopt loaded
# (0.7 GB peak for a --quick run of 200 x 4096 here).
PROCESS_BYTES = 700 * 2**20


@dataclass
class Plan:
    """One optimizer on one workload: who steps, and what it costs in RAM."""

    workload: Workload
    optimizer: str
    competitors: list[Competitor]
    ram_bytes: int


def plan_bytes(workload: Workload, comps: Sequence[Competitor], roofline_elements: int) -> int:
    """RAM of one cell: the process, params and grads once (every
    competitor steps the same ones), each competitor's states, a step's
    temporaries, and the roofline's two fp32 arrays."""
    numel = workload.numel()
    param_bytes = torch.finfo(workload.dtype).bits // 8
    states = sum(c.states * (c.state_bytes or param_bytes) for c in comps)
    arrays = numel * (2 * param_bytes + states + TRANSIENT_BYTES) + 2 * 4 * roofline_elements
    return PROCESS_BYTES + arrays


def available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plans(
    workloads: Sequence[Workload],
    names: Sequence[str],
    backends: list[str],
    torch_paths: list[str],
    roofline_elements: int,
) -> tuple[list[Plan], list[str]]:
    """Every cell to run, and a line for each competitor skipped."""
    out, skipped = [], []
    for name in names:
        comps, skips = competitors(name, backends, torch_paths, "cpu")
        skipped += [f"{name}: {line}" for line in skips]
        for w in workloads:
            out.append(Plan(w, name, comps, plan_bytes(w, comps, roofline_elements)))
    return out, skipped


def make_params(workload: Workload) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in workload.shapes():
        p = torch.randn(shape, generator=gen).to(workload.dtype).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(workload.dtype)
        params.append(p)
    return params


def run_cell(
    plan: Plan,
    params: list[torch.Tensor],
    roof_step: Callable[[], object],
    warmup: int,
    repeats: int,
    tick: Callable[[], None],
    say: Callable[[str], None],
) -> dict[str, Stats]:
    """Builds each competitor over `params` and steps it once (states,
    plans, JIT outside the timing; one that raises is skipped and said),
    then times them all and the roofline, interleaved."""
    steps = {}
    for comp in plan.competitors:
        try:
            opt = comp.make(params)
            opt.step()
        except Exception as error:  # another library's failure is a line, not the end
            say(f"{plan.optimizer}, {plan.workload.name}: {comp.name} skipped, it raised {error!r}")
            continue
        finally:
            tick()
        steps[comp.name] = opt.step
    steps[roofline.NAME] = roof_step
    return interleaved(steps, warmup, repeats, tick)


def cell_rows(plan: Plan, stats: dict[str, Stats], roofline_elements: int) -> list[dict]:
    """The CSV rows of one cell; GB/s from the bytes model and the median."""
    w = plan.workload
    numel = w.numel()
    tensors = len(w.shapes())
    roof = stats[roofline.NAME]
    roof_gbs = roofline.gb_per_s(roofline.INPLACE_BYTES_PER_ELEMENT, roofline_elements, roof.median)
    by_name = {c.name: c for c in plan.competitors}
    torch_ms = {n: s.median for n, s in stats.items() if n.startswith("torch")}
    baseline = torch_ms.get("torch fused") or min(torch_ms.values(), default=None)
    rows = []
    for name, s in stats.items():
        is_roof = name == roofline.NAME
        per = (
            roofline.INPLACE_BYTES_PER_ELEMENT
            if is_roof
            else by_name[name].bytes_per_element(w.dtype)
        )
        n = roofline_elements if is_roof else numel
        gbs = roofline.gb_per_s(per, n, s.median)
        rows.append(
            {
                "workload": w.name,
                "dtype": str(w.dtype).removeprefix("torch."),
                "tensors": 1 if is_roof else tensors,
                "params": n,
                "optimizer": plan.optimizer,
                "competitor": name,
                "bytes_per_param": per,
                "min_ms": f"{s.min * 1e3:.3f}",
                "median_ms": f"{s.median * 1e3:.3f}",
                "max_ms": f"{s.max * 1e3:.3f}",
                "median_over_min": f"{s.spread:.3f}",
                "busy": int(s.busy),
                "gb_per_s": f"{gbs:.2f}",
                "roofline_gb_per_s": f"{roof_gbs:.2f}",
                "fraction_of_roofline": f"{gbs / roof_gbs:.3f}",
                "speedup_vs_torch": ""
                if baseline is None or is_roof
                else f"{baseline / s.median:.3f}",
                "repeats": len(s.samples),
            }
        )
    return rows


def table(plan: Plan, rows: Sequence[dict]) -> str:
    w = plan.workload
    head = (
        f"{plan.optimizer}, {w.name}: {rows[0]['tensors']} tensors, {w.numel() / 1e6:.1f}M params, "
        f"{rows[0]['dtype']}, ~{plan.ram_bytes / 1e9:.1f} GB RAM"
    )
    baseline = (
        "torch fused" if any(r["competitor"] == "torch fused" for r in rows) else "torch best"
    )
    header = (
        "competitor",
        "B/param",
        "min ms",
        "median ms",
        "max ms",
        "med/min",
        "GB/s",
        "% roof",
        f"vs {baseline}",
    )
    body = [
        (
            r["competitor"],
            r["bytes_per_param"],
            r["min_ms"],
            r["median_ms"],
            r["max_ms"],
            r["median_over_min"] + (" !" if r["busy"] else "  "),
            f"{float(r['gb_per_s']):.1f}",
            f"{100 * float(r['fraction_of_roofline']):.0f}%",
            f"{float(r['speedup_vs_torch']):.2f}x" if r["speedup_vs_torch"] else "",
        )
        for r in rows
    ]
    return head + "\n" + format_table(header, body)


def busy_warning(rows: Sequence[dict]) -> str | None:
    """One line naming the worst cell when any cell's median/min exceeds
    BUSY_SPREAD, else None."""
    busy = [r for r in rows if r["busy"]]
    if not busy:
        return None
    worst = max(busy, key=lambda r: float(r["median_over_min"]))
    return (
        f"warning: the machine was busy: {len(busy)} of {len(rows)} cells have median/min above "
        f"{BUSY_SPREAD} (marked !), worst {worst['competitor']} on {worst['workload']} "
        f"({worst['optimizer']}): median {worst['median_ms']} ms vs min {worst['min_ms']} ms. "
        f"Ratios and GB/s of those cells are unreliable: rerun when the machine is idle "
        f"(or compare the min columns)."
    )
