"""--study decay: what the weight-decay modes do to training.

Loshchilov & Hutter (Decoupled Weight Decay Regularization, ICLR 2019, their
Figure 2) show Adam with L2 regularisation next to AdamW as heatmaps of the
final loss over a learning-rate x weight-decay grid: with L2 the good cells
lie on a diagonal (the best weight decay depends on the learning rate); with
the decay decoupled from the gradient, and scaled by the schedule only, the
basin is closer to axis-aligned, so lr and wd can be tuned one at a time.
torch's AdamW multiplies the decay by the lr (p *= 1 - lr * wd), which ties
them again; fusedopt's weight_decay_mode="fully_decoupled" is the paper's
(p *= 1 - wd * lr_t / lr_max: the schedule's factor only).

The task: a small MLP (16 -> 128 -> 128 -> 4) classifying generated points
labelled by a nearly linear teacher, 256 training points with 30% of their
labels replaced by random ones, so that an unregularised net memorises the
noise and its test loss grows; 2048 clean test points. Full-batch steps under
a cosine schedule to 0, the same initialisation for every run. Each mode gets
its own weight-decay axis (its useful range differs by orders of magnitude),
with 0 first. A mode's whole lr x wd grid trains at once: one model per cell,
their weights stacked for batched matmuls, one param group per cell (its lr
and weight decay) in one optimizer: the same arithmetic as separate runs
(tests/test_bench_cli.py checks it), with one call of each op per step for
a mode's 25 cells instead of 25 (not timed against separate runs).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import fusedopt
from fusedopt.bench import output
from fusedopt.bench.provenance import provenance

INPUTS, HIDDEN, CLASSES = 16, 128, 4
TRAIN, TEST = 256, 2048
# Share of training labels replaced by random ones: enough that memorising
# them costs test loss (without decay the best test loss is reached early and
# rises after; ln 4 = 1.39 is a uniform guess).
LABEL_NOISE = 0.3
# The teacher's nonlinearity: a sin bump on its logits, so that the MLP has
# something to learn beyond a linear model, but little.
TEACHER_BUMP = 0.5
# Full-batch steps per run: at 300, the lowest lrs stop before memorising
# the noise and match the best decayed cell; at 600 every lr overfits
# without decay (Adam + L2, lr 3e-4: test loss 0.81 without, 0.70 with).
STEPS = 600
QUICK_STEPS = 60
# The study's threads: its matmuls are small (25 x 256 x 128 x 128), and on a
# shared machine a second intra-op thread that waits for a busy core costs
# more than it brings: at load 9 on this project's 2 cores a relu over 25 x
# 256 x 128 took 25 ms with 2 threads, 0.8 ms with 1.
THREADS = 1
# A final loss above this counts as diverged; the heatmap's colour scale
# stops here so one blow-up does not flatten it.
LOSS_CAP = 3.0


@dataclass(frozen=True)
class Mode:
    """One way to decay: a name, the optimizer, its lr and wd axes."""

    name: str
    make: Callable[[list[dict]], torch.optim.Optimizer]  # param groups with lr and wd
    lrs: tuple[float, ...]
    wds: tuple[float, ...]


def _log_grid(low: float, high: float, n: int) -> tuple[float, ...]:
    return tuple(low * (high / low) ** (i / (n - 1)) for i in range(n))


def modes(points: int) -> list[Mode]:
    """The five modes on `points` x `points` grids (weight decay 0 first)."""
    if points < 3:
        raise ValueError(
            f"a grid needs 3 points per axis at least (0 and two decays), not {points}"
        )
    adam_lrs = _log_grid(1e-4, 1e-2, points)
    sgd_lrs = _log_grid(1e-3, 1e-1, points)

    def wds(low: float, high: float) -> tuple[float, ...]:
        return (0.0, *_log_grid(low, high, points - 1))

    return [
        Mode(
            "Adam + L2",
            fusedopt.Adam,
            adam_lrs,
            wds(1e-4, 1e-1),
        ),
        Mode(
            "AdamW (torch's: lr x wd)",
            fusedopt.AdamW,
            adam_lrs,
            wds(1e-1, 1e2),
        ),
        Mode(
            "AdamW, fully decoupled",
            lambda groups: fusedopt.AdamW(groups, weight_decay_mode="fully_decoupled"),
            adam_lrs,
            wds(1e-4, 1e-1),
        ),
        Mode(
            "SGD + L2 (momentum 0.9)",
            lambda groups: fusedopt.SGD(groups, momentum=0.9),
            sgd_lrs,
            wds(1e-4, 1e-1),
        ),
        Mode(
            "SGDW (momentum 0.9)",
            lambda groups: fusedopt.SGD(groups, momentum=0.9, weight_decay_mode="decoupled"),
            sgd_lrs,
            wds(1e-2, 1e1),
        ),
    ]


def make_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): the teacher's labels, the train
    labels partly replaced by random ones."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(INPUTS, CLASSES, generator=gen)
    x = torch.randn(TRAIN + TEST, INPUTS, generator=gen)
    y = (x @ w + TEACHER_BUMP * torch.sin(3 * x[:, :CLASSES])).argmax(1)
    noisy = torch.rand(TRAIN, generator=gen) < LABEL_NOISE
    y_train = torch.where(noisy, torch.randint(CLASSES, (TRAIN,), generator=gen), y[:TRAIN])
    return x[:TRAIN], y_train, x[TRAIN:], y[TRAIN:]


def init_weights(models: int) -> list[list[torch.Tensor]]:
    """`models` copies of one initialisation (torch.nn.Linear's), each
    [w1, b1, w2, b2, w3, b3] with weights as (in, out)."""
    torch.manual_seed(0)
    layers = [
        torch.nn.Linear(i, o) for i, o in ((INPUTS, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES))
    ]
    first = [t for layer in layers for t in (layer.weight.detach().t(), layer.bias.detach())]
    return [[t.clone().requires_grad_() for t in first] for _ in range(models)]


def forward(weights: list[list[torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """Logits (models, points, CLASSES): every model on the same x."""
    w1, b1, w2, b2, w3, b3 = (torch.stack(ts) for ts in zip(*weights, strict=True))
    h = torch.relu(torch.baddbmm(b1.unsqueeze(1), x.expand(len(weights), *x.shape), w1))
    h = torch.relu(torch.baddbmm(b2.unsqueeze(1), h, w2))
    return torch.baddbmm(b3.unsqueeze(1), h, w3)


def losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each model's mean cross-entropy, (models,)."""
    per_point = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="none")
    return per_point.view(len(logits), -1).mean(1)


def train_grid(mode: Mode, data, steps: int) -> list[dict]:
    """Every (lr, wd) cell of `mode` at once: one model per cell, one param
    group per model; full-batch steps under a cosine schedule to 0, on
    THREADS threads. The sum of the models' losses has each model's own loss
    as its gradient."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _train_grid(mode, data, steps)
    finally:
        torch.set_num_threads(threads)


def _train_grid(mode: Mode, data, steps: int) -> list[dict]:
    x_train, y_train, x_test, y_test = data
    cells = [(lr, wd) for lr in mode.lrs for wd in mode.wds]
    weights = init_weights(len(cells))
    opt = mode.make(
        [
            {"params": w, "lr": lr, "weight_decay": wd}
            for w, (lr, wd) in zip(weights, cells, strict=True)
        ]
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        opt.zero_grad()
        losses(forward(weights, x_train), y_train).sum().backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        train_loss = losses(forward(weights, x_train), y_train)
        logits = forward(weights, x_test)
        test_loss = losses(logits, y_test)
        accuracy = (logits.argmax(2) == y_test).float().mean(1)
    return [
        {
            "mode": mode.name,
            "lr": lr,
            "weight_decay": wd,
            "steps": steps,
            "train_loss": train_loss[i].item(),
            "test_loss": test_loss[i].item(),
            "test_accuracy": accuracy[i].item(),
        }
        for i, (lr, wd) in enumerate(cells)
    ]


def heatmap(rows: list[dict], path: Path, steps: int) -> Path:
    """One panel per mode: final test loss over lr (rows) x wd (columns),
    the best cell boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(3.1 * len(names), 3.4), dpi=80)
    for ax, name in zip(axes, names, strict=True):
        mine = [r for r in rows if r["mode"] == name]
        lrs = sorted({r["lr"] for r in mine})
        wds = sorted({r["weight_decay"] for r in mine})
        grid = torch.full((len(lrs), len(wds)), float("nan"))
        for r in mine:
            grid[lrs.index(r["lr"]), wds.index(r["weight_decay"])] = r["test_loss"]
        shown = grid.clamp(max=LOSS_CAP).nan_to_num(LOSS_CAP)
        image = ax.imshow(shown.numpy(), cmap="viridis_r", vmin=shown.min().item(), vmax=LOSS_CAP)
        for i in range(len(lrs)):
            for j in range(len(wds)):
                value = grid[i, j].item()
                text = "div" if not math.isfinite(value) or value > LOSS_CAP else f"{value:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white")
        best = int(shown.argmin())
        bi, bj = divmod(best, len(wds))
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(wds)), [f"{w:.0e}" if w else "0" for w in wds], fontsize=6)
        ax.set_yticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs], fontsize=6)
        ax.set_xlabel("weight decay", fontsize=7)
        ax.set_title(name, fontsize=8)
    axes[0].set_ylabel("peak lr (cosine to 0)", fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.8).ax.tick_params(labelsize=6)
    fig.suptitle(
        f"Final test loss (lower is better; red: best), MLP on noisy labels, {steps} steps",
        fontsize=9,
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def summary(rows: list[dict]) -> list[str]:
    """Per mode: the best cell, and the best weight decay at each lr (the
    coupling the heatmaps show: does the best wd move with the lr?)."""
    lines = []
    for name in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == name]
        best = min(mine, key=lambda r: r["test_loss"])
        no_decay = min((r for r in mine if r["weight_decay"] == 0.0), key=lambda r: r["test_loss"])
        per_lr = []
        for lr in sorted({r["lr"] for r in mine}):
            at = min((r for r in mine if r["lr"] == lr), key=lambda r: r["test_loss"])
            per_lr.append(f"{lr:.0e}->{at['weight_decay']:.0e}")
        lines.append(
            f"{name}: best test loss {best['test_loss']:.3f} (acc {best['test_accuracy']:.3f}) at "
            f"lr {best['lr']:.1e}, wd {best['weight_decay']:.1e}; best without decay "
            f"{no_decay['test_loss']:.3f}; best wd per lr: {', '.join(per_lr)}"
        )
    return lines


def main(args: argparse.Namespace, argv: list[str], out: Path) -> int:
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    grid = modes(3 if args.quick else 5)
    data = make_data()
    info = provenance(argv)
    runs = sum(len(m.lrs) * len(m.wds) for m in grid)
    print(
        f"fusedopt-bench --study decay: {len(grid)} modes, {runs} runs of {steps} steps "
        f"({THREADS} thread)"
    )
    from fusedopt.bench.cli import Progress

    progress = Progress(len(grid), enabled=not args.no_progress)
    rows = []
    start = time.perf_counter()
    for mode in grid:
        progress.describe(mode.name)
        rows += train_grid(mode, data, steps)
        progress.tick()
    progress.close()
    print(f"{runs} runs in {time.perf_counter() - start:.0f} s")
    for line in summary(rows):
        print(line)
    print(f"wrote {output.write_csv(rows, info, out / 'decay_study.csv')}")
    if not args.no_plots:
        print(f"wrote {heatmap(rows, out / 'decay_study.png', steps)}")
    return 0
