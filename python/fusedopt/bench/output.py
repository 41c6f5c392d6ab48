"""What a run leaves: a table on stdout, a CSV with provenance, PNG plots,
all in a folder that holds no file tracked by git (plotting apart from
measuring: the plots are drawn from the CSV's rows)."""

from __future__ import annotations

import csv
import datetime
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

# The default folder, under the current one; .gitignore lists it.
DEFAULT_ROOT = Path("bench-out")
# Plot size: 2 panels of ~4.5 x 3.4 in at 90 dpi: readable, and a PNG small
# enough to commit under docs/ (~40 KB).
FIGSIZE = (10, 3.8)
DPI = 90


def default_out_dir() -> Path:
    return DEFAULT_ROOT / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def tracked_files(folder: Path) -> list[str]:
    """Files under `folder` that git tracks (empty outside a checkout)."""
    folder = folder.resolve()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(probe), "ls-files", "--", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.split() if result.returncode == 0 else []


def prepare_out_dir(folder: Path) -> Path:
    """Creates `folder`; refuses one that holds tracked files, so that a run
    never writes over what git tracks (bench/results/ keeps the history)."""
    tracked = tracked_files(folder)
    if tracked:
        raise SystemExit(
            f"fusedopt-bench: --out {folder} holds {len(tracked)} file(s) tracked by git "
            f"(e.g. {tracked[0]}); a run never writes over tracked files: name a new folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_csv(rows: Sequence[dict], info: dict[str, str], path: Path) -> Path:
    """The rows, each with the provenance columns appended."""
    fields = list(dict.fromkeys(k for row in rows for k in row)) + list(info)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **info} for row in rows)
    return path


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]

    def line(cells):
        first, *rest = cells
        return "  ".join([first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:])])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def plot_workload(rows: Sequence[dict], path: Path, title: str) -> Path:
    """One workload's PNG: ms/step (median bar, min-max whisker) and GB/s of
    each competitor, grouped by optimizer, and the roofline as a line.
    `rows`: the CSV rows of one workload (competitor "roofline ..." rows give
    the line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roof_rows = [r for r in rows if r["competitor"].startswith("roofline")]
    roof = [float(r["gb_per_s"]) for r in roof_rows]
    steps = [r for r in rows if not r["competitor"].startswith("roofline")]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in steps))
    names = list(dict.fromkeys(r["competitor"] for r in steps))
    width = 0.8 / max(len(names), 1)
    colors = plt.get_cmap("tab10")
    fig, (ax_ms, ax_bw) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    for i, name in enumerate(names):
        xs, ms, lo, hi, bw = [], [], [], [], []
        for j, opt in enumerate(optimizers):
            row = next(
                (r for r in steps if r["optimizer"] == opt and r["competitor"] == name), None
            )
            if row is None:
                continue
            xs.append(j + (i - (len(names) - 1) / 2) * width)
            med = float(row["median_ms"])
            ms.append(med)
            lo.append(med - float(row["min_ms"]))
            hi.append(float(row["max_ms"]) - med)
            bw.append(float(row["gb_per_s"]))
        ax_ms.bar(xs, ms, width, yerr=[lo, hi], capsize=2, label=name, color=colors(i))
        ax_bw.bar(xs, bw, width, label=name, color=colors(i))
    if roof:
        best = max(roof)
        ax_bw.axhline(best, color="black", linestyle="--", linewidth=1)
        label = f" {roof_rows[0]['competitor']}: {best:.0f} GB/s"
        ax_bw.text(-0.45, best, label, va="bottom", fontsize=8)
    for ax, label in (
        (ax_ms, "ms per step (median; whiskers min-max)"),
        (ax_bw, "GB/s (counted bytes / median)"),
    ):
        ax.set_xticks(range(len(optimizers)), optimizers)
        ax.set_ylabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
    ax_ms.set_yscale("log")
    ax_bw.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(rows: Sequence[dict], folder: Path, caption: str) -> list[Path]:
    """plot_workload for every workload of `rows`; [] without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plots: skipped, matplotlib is not installed (pip install matplotlib)")
        return []
    paths = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == workload]
        paths.append(
            plot_workload(mine, folder / f"{slug(workload)}.png", f"{workload}: {caption}")
        )
    return paths
