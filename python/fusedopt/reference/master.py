"""Master-weight policies of bf16/fp16 params (Note [master weights] in
csrc/include/fusedopt/core/master.h), in plain PyTorch: the definition every
backend's store is tested against.

A rule always steps an fp32 param; a policy says where that fp32 value comes
from and how the new one is stored into the low-precision param:

  - none (the default): p is the param read into fp32; the store rounds the
    new p to nearest even.
  - master_weights (apex's and optimi's `master_param`): p is an fp32 copy
    kept as a state; the rule steps it, and the param is its RNE rounding.
  - kahan_sum (optimi's `kahan_comp`, Zamirai et al. 2020, "Revisiting
    BFloat16 Training"): a compensation c in the param's dtype carries what
    the last stores rounded away. With p the param in fp32 and p' the rule's
    new value: u = c + (p' - p); the param becomes RNE(p + u) and c becomes
    RNE(u - (param - p)). optimi adds only the rule's step to c (its weight
    decay multiplies the bf16 param directly); here the whole change p' - p,
    decay included, goes through c, as the rule returns only the new p.
    The sums are fp32; param - p is exact (two nearby values of one dtype).
  - stochastic_rounding (torchao's and heavyball's bf16 stochastic rounding):
    the new p is rounded down or up to a bf16 neighbour with probabilities
    that make the stored value unbiased: add 16 random bits to p's fp32 bits,
    then truncate. The bits are the top 16 of the first word of
    Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as
    1, 2, 3"), keyed on the group's seed, counter (element index low, high,
    the param's `rounding_step`, the param's tag): every backend draws the
    same bits for the same element, whatever its chunking.

The policies apply to bfloat16 and float16 params (stochastic rounding to
bfloat16 only); an fp32 or fp64 param in such a group steps as without one
(its store is exact: there is nothing to compensate or round).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# The group keys, one per policy (at most one of them True in a group).
POLICIES = ("master_weights", "kahan_sum", "stochastic_rounding")
NONE = "none"
# The group key of the stochastic-rounding seed, and its default: a fixed seed,
# so that a run is reproducible unless asked otherwise; any int in [0, 2^64).
SEED_KEY = "rounding_seed"
DEFAULT_SEED = 0
# The states each policy keeps per param (torch's key names where one exists).
MASTER_KEY = "master_param"  # fp32, the param's shape and layout
KAHAN_KEY = "kahan_comp"  # the param's dtype, shape and layout
# A float32 one-element count on the param's device, as torch's capturable
# "step": Philox's counter takes it after this step's increment (1 at the first
# step); exact to 2^24 steps. The GPU kernels read it in memory and advance it
# on the device (no host sync: Note [store arguments] in csrc/binding/checks.h).
COUNT_KEY = "rounding_step"
STATE_KEYS = {"master_weights": MASTER_KEY, "kahan_sum": KAHAN_KEY, "stochastic_rounding": None}
POLICY_DTYPES = {
    "master_weights": (torch.bfloat16, torch.float16),
    "kahan_sum": (torch.bfloat16, torch.float16),
    "stochastic_rounding": (torch.bfloat16,),
}

# Philox4x32-10's multipliers and Weyl key increments (Random123, philox.h).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF


def _mulhilo(m: int, x: Tensor) -> tuple[Tensor, Tensor]:
    # The 64-bit product of two 32-bit words fits int64's bits (it wraps past
    # 2^63, but the bit pattern is the unsigned product's).
    product = x * m
    return (product >> 32) & MASK32, product & MASK32


def philox4x32_10(counter: list[Tensor], key: tuple[int, int]) -> list[Tensor]:
    """Random123's philox4x32 with 10 rounds on int64 tensors holding 32-bit
    words: counter (c0, c1, c2, c3), key (k0, k1) -> 4 words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK32 for c in counter)
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def rounding_bits(seed: int, count: int, tag: int, numel: int) -> Tensor:
    """The 16 random bits of each element 0..numel-1 (int64)."""
    index = torch.arange(numel, dtype=torch.int64)
    counter = [index & MASK32, index >> 32, torch.tensor(count), torch.tensor(tag)]
    return philox4x32_10(counter, (seed & MASK32, seed >> 32))[0] >> 16


def stochastic_round_bf16(x: Tensor, bits: Tensor) -> Tensor:
    """x (float32) rounded to a bf16 neighbour: up with probability (the part
    of x below bf16's last bit) / 2^16. A NaN stays a quiet NaN; a value past
    bf16's largest may round to inf, as in torchao."""
    raw = x.view(torch.int32).to(torch.int64) & MASK32
    rounded = ((raw + bits) >> 16) & 0xFFFF
    rounded = torch.where(x.isnan(), (raw >> 16) | 0x40, rounded) << 16
    # Back to int32's bits (two's complement) to view them as float32.
    signed = torch.where(rounded >= 2**31, rounded - 2**32, rounded).to(torch.int32)
    return signed.view(torch.float32).to(torch.bfloat16)


def _memory_order(t: Tensor) -> Tensor:
    """A view of t whose logical order is its memory order (a dense tensor:
    the backends number elements as they lie in memory)."""
    dims = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d]), reverse=True)
    return t.permute(dims)


def step(
    rule: Callable[..., None],
    policy: str,
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    policy_state: Tensor | None,
    count: Tensor | None,
    tag: int,
    seed: int,
    **kwargs: Any,
) -> None:
    """One step of `rule` (a reference rule) on a bf16/fp16 param under
    `policy`: `policy_state` is its master_param or kahan_comp, `count` its
    rounding_step (advanced here, stochastic rounding only)."""
    if policy == "master_weights":
        rule(policy_state, grad, state, **kwargs)
        param.copy_(policy_state)
        return
    old = param.float()
    work = old.clone()
    rule(work, grad, state, **kwargs)
    if policy == "kahan_sum":
        update = policy_state.float() + (work - old)
        param.copy_(old + update)
        policy_state.copy_(update - (param.float() - old))
        return
    count += 1
    ordered = _memory_order(work)
    bits = rounding_bits(seed, int(count.item()), tag, work.numel()).view(ordered.shape)
    _memory_order(param).copy_(stochastic_round_bf16(ordered.contiguous(), bits))
