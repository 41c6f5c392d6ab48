"""Interleaved timing: every competitor steps once per round, in turn, so
that whatever the machine does meanwhile (other users' jobs, clock changes)
hits them alike; min, median and max per competitor, and the rule that says
the machine was too busy for the numbers to mean much."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# A cell whose median step is more than BUSY_SPREAD times its fastest was
# slowed by something else for at least half of its steps. In the two runs
# recorded in bench/results/ (82 cells, this project's shared 2-core VM) the
# typical cell had median/min 1.08-1.10 (a step's own jitter: page faults,
# thread wake-ups) and 90% were under 1.4-1.5; issue 11's busy run had 3.1
# (torch fused, 76.9 vs 24.9 ms). 1.25 is 2.5x the typical jitter: above it,
# a cell's median can be off by more than the differences the table shows
# (fusedopt and torch fused on one large tensor: within 3%).
BUSY_SPREAD = 1.25


@dataclass(frozen=True)
class Stats:
    """Seconds per step of one competitor on one workload."""

    samples: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """median / min: 1 on a quiet machine."""
        return self.median / self.min

    @property
    def busy(self) -> bool:
        return self.spread > BUSY_SPREAD


def interleaved(
    steps: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Stats]:
    """Each step called warmup + repeats times, one call of each per round;
    the last `repeats` rounds timed. `tick` is called after every call (the
    progress bar)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {repeats}): min/median/max need a step")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rnd in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if rnd >= warmup:
                times[name].append(elapsed)
            tick()
    return {name: Stats(tuple(t)) for name, t in times.items()}


def load_warning() -> str | None:
    """A line when the 1-minute load average says other processes already
    use every core (the run's numbers will be noisy), else None."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load < cores:
        return None
    return (
        f"warning: load average {load:.1f} on {cores} cores before the run: other processes "
        f"are using the CPUs, so expect noisy numbers (the busy check below says how noisy)"
    )
