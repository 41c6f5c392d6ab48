"""The roofline an optimizer step is measured against, and GB/s from counted
bytes.

An optimizer step reads p, g and its states and writes p and the states back
in place: every byte it writes it has just read. The in-place `a += s * b`
does the same (reads a and b, writes a: 12 B per fp32 element), so its
bandwidth is what such a step can reach. STREAM's triad (`a = b + s * c`)
writes an array it did not read, which costs a write-allocate read on x86
unless the stores stream past the cache, so it measures a different mix of
traffic.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import torch

# Bytes one `a += s * b` moves per fp32 element: reads a and b, writes a.
INPLACE_BYTES_PER_ELEMENT = 12
# The roofline's arrays: 2 x 64M fp32 = 512 MiB, 16x the 32 MB L3 of this
# project's machine (and of most server CPUs' per-socket L3), so every byte
# comes from DRAM. --quick: 2 x 16M = 128 MiB, still 4x that L3.
ROOFLINE_ELEMENTS = 64 * 2**20
QUICK_ROOFLINE_ELEMENTS = 16 * 2**20
NAME = "roofline a += s*b"
# The explanation's line width on stdout.
TEXT_WIDTH = 100

EXPLANATION = (
    "Roofline: an in-place a += s*b over {mib} MiB measured in the same rounds as the steps "
    "({bytes} B per element: read a and b, write a). An optimizer step, like it, writes only "
    "what it has read, so this (not STREAM's triad, which writes an array it did not read) is "
    "the bandwidth it can reach. GB/s of a step = its bytes model (read p, g and each state, "
    "write p and each state) x params / median time. A step can exceed the roofline: a "
    "workload whose bytes fit in the caches (the 32 MB L3 here) is not read from DRAM, torch's "
    "add_ is one implementation of the roofline (its threads and loop, not the hardware's "
    "peak), and on a shared machine the two medians can still see different neighbours."
)


def gb_per_s(bytes_per_element: int, numel: int, seconds: float) -> float:
    """Counted bytes moved per second, in GB/s (1e9 bytes)."""
    return bytes_per_element * numel / seconds / 1e9


def inplace_step(elements: int) -> Callable[[], torch.Tensor]:
    """The roofline's step: a += s * b over two fp32 arrays of `elements`."""
    a = torch.rand(elements)
    b = torch.rand(elements)
    # s small: a grows by < 1e-3 per call, finite over any run.
    return lambda: a.add_(b, alpha=1e-6)


def explanation(elements: int) -> str:
    return textwrap.fill(
        EXPLANATION.format(mib=2 * 4 * elements // 2**20, bytes=INPLACE_BYTES_PER_ELEMENT),
        width=TEXT_WIDTH,
    )
