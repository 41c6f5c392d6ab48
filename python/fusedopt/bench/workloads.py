"""What the benchmarks share: the workloads' tensor shapes and the bytes model.

Bytes model (bench/README.md has the table): a step reads p, g and each state
and writes p and each state once per element. fusedopt keeps its states in
fp32 whatever the param dtype; torch keeps them in the param's dtype.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

FP32_STATE_BYTES = 4


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The 148 parameter tensors of GPT-2 small (124.4M params, tied embeddings)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [
            (d,),
            (d,),
            (d, 3 * d),
            (3 * d,),
            (d, d),
            (d,),
            (d,),
            (d,),
            (d, 4 * d),
            (4 * d,),
            (4 * d, d),
            (d,),
        ]
    return shapes + [(d,), (d,)]


def llama_3_2_1b_shapes() -> list[tuple[int, ...]]:
    """The 146 parameter tensors of Llama-3.2-1B (1,235,814,400 params), in
    transformers' order, from meta-llama/Llama-3.2-1B's config.json: hidden
    2048, 16 layers, MLP 8192, vocab 128256, 32 query heads and 8 KV heads of
    64 (grouped-query attention), tied input and output embeddings."""
    d, vocab, layers, mlp, kv = 2048, 128256, 16, 8192, 8 * 64
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [
            (d, d),  # q_proj
            (kv, d),  # k_proj
            (kv, d),  # v_proj
            (d, d),  # o_proj
            (mlp, d),  # gate_proj
            (mlp, d),  # up_proj
            (d, mlp),  # down_proj
            (d,),  # input_layernorm
            (d,),  # post_attention_layernorm
        ]
    return shapes + [(d,)]  # the final norm


def bytes_per_element(
    dtype: torch.dtype, amsgrad: bool = False, state_bytes: int = FP32_STATE_BYTES
) -> int:
    """Bytes one Adam step moves per element, without a GradScaler: 28 for
    fp32, 22 for bf16/fp16 params with fp32 states (fusedopt), 14 for bf16/fp16
    params with bf16/fp16 states (torch); amsgrad reads and writes v_max too."""
    param = torch.finfo(dtype).bits // 8
    reads = 2 * param + 2 * state_bytes  # p, g, m, v
    writes = param + 2 * state_bytes  # p, m, v
    return reads + writes + 2 * state_bytes * amsgrad  # v_max read and written


def sgd_bytes_per_element(dtype: torch.dtype, momentum: bool = True) -> int:
    """Bytes one SGD step moves per element: read p, g (and the momentum buffer
    b), write p (and b): 12 for fp32 without momentum, 20 with."""
    param = torch.finfo(dtype).bits // 8
    return 3 * param + 2 * FP32_STATE_BYTES * momentum


def state_bytes_per_element(
    dtype: torch.dtype, states: int, state_bytes: int = FP32_STATE_BYTES
) -> int:
    """Bytes one step of a rule with `states` states of `state_bytes` each moves
    per element: read p, g and each state, write p and each state. Adagrad
    (sum): 20 for fp32; Adadelta (square_avg, acc_delta): 28; AdamW with bf16
    params and torch's bf16 states: 14."""
    param = torch.finfo(dtype).bits // 8
    return 3 * param + 2 * state_bytes * states


@dataclass(frozen=True)
class Workload:
    """A list of parameter shapes, in one dtype (params and grads)."""

    name: str
    shapes: Callable[[], list[tuple[int, ...]]]
    dtype: torch.dtype = torch.float32

    def numel(self) -> int:
        return sum(torch.Size(s).numel() for s in self.shapes())


# The CPU run's workloads: many small tensors (per-tensor work shows), one
# stream of memory, a real model's mix, and that model with 16-bit params.
WORKLOADS = {
    w.name: w
    for w in (
        Workload("GPT-2 small (124M)", gpt2_small_shapes),
        Workload("2000 x 4096", lambda: [(4096,)] * 2000),
        Workload("one 64M tensor", lambda: [(64 * 2**20,)]),
        Workload("GPT-2 small (124M), bf16", gpt2_small_shapes, torch.bfloat16),
    )
}
# --quick: the same kinds (many tensors, one tensor), each a step of a few ms.
# 200 x 4096 moves 23 MB per AdamW step, inside the 32 MB L3 of this
# project's machine (its GB/s can exceed the DRAM roofline: 5x in one run);
# one 4M tensor moves 117 MB, beyond it.
QUICK_WORKLOADS = {
    w.name: w
    for w in (
        Workload("200 x 4096", lambda: [(4096,)] * 200),
        Workload("one 4M tensor", lambda: [(4 * 2**20,)]),
    )
}
# "COUNTxNUMEL" or "COUNTxNUMEL:bf16" on the command line: COUNT tensors of NUMEL elements.
_CUSTOM = re.compile(r"^(\d+)x(\d+)(?::(fp32|bf16|fp16))?$")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def workload(name: str) -> Workload:
    """A named workload (WORKLOADS, QUICK_WORKLOADS) or "COUNTxNUMEL[:bf16]"."""
    known = {**WORKLOADS, **QUICK_WORKLOADS}
    if name in known:
        return known[name]
    match = _CUSTOM.match(name.replace(" ", ""))
    if match is None:
        raise ValueError(
            f"unknown workload {name!r}: name one of {sorted(known)} or write COUNTxNUMEL "
            f"(optionally :bf16, :fp16 or :fp32), e.g. 8x1024"
        )
    count, numel, dtype = int(match[1]), int(match[2]), _DTYPES[match[3] or "fp32"]
    return Workload(name, lambda: [(numel,)] * count, dtype)
