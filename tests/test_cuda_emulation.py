"""The CUDA op's host side and its kernels' traversal, run on the CPU, for every rule.

fusedopt_testing::<rule>_emulate_step_ (csrc/testing/emulation.cpp) fills the
kernel arguments exactly as the CUDA op does (csrc/binding/cuda_work.h,
prepare_cuda) and runs the kernels' body (csrc/include/fusedopt/mta/
traversal.h: element_thread, then advance_thread) for every (block,
thread) of the grid, one after another: one block per chunk, or a smaller
persistent grid whose blocks loop over the launch's chunks (max_grid_blocks;
the CUDA op caps it at 2 blocks per SM). The traversal has no shared memory
and no barriers, so this is the same computation as on a GPU up to
floating-point contraction.

What it covers, for every rule of fusedopt.registry.RULES and each of its
state sets: the launch split (slots and chunks per launch derived from the
rule) and the chunk table's entry -> (tensor, chunk) map, the persistent
grid's share-out of the table, the chunk and element index math, the choice
between the 16-byte vector path and the scalar path (the alignment of every
stream, states included), the scalar path's 4 strided elements per thread and
their masks, the state-major state lists, the GradScaler unscale and skip, the
per-tensor scalars computed on the host and in the kernel (capturable: step
counts and lr in device memory), the scalar states of NAdam and ASGD read by
the element kernels and advanced by their own advance launch (Note [scalar
states] in core/rule.h), the step-count protocol (Note [step-count protocol]
in fusedopt/registry.py) across several advance launches, and the fp32 /
bf16 / fp16 conversions as the host compiler builds them.
What it does not cover: the device compiler's code (FMA contraction, the
device conversion intrinsics, the fp64 pow of the capturable path, 64-bit
address arithmetic in SASS), the launch itself and the stream, concurrency
between blocks. Those are compiled-only here (tests/test_cuda_sass.py reads the
SASS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import fusedopt  # noqa: F401  (registers the ops)
import pytest
import torch
from _op_hyper import OP_HYPER, scalar_states
from fusedopt._C import kernel_arg_bytes
from fusedopt.reference import codecs
from fusedopt.registry import RULES, Rule

pytest.importorskip(
    "fusedopt._testing", reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
)

CHUNK = 65536  # mta::kChunkSize
GROUP = 4  # elements per vector group of one thread (mta/traversal.h)
# Blocks of a launch's grid where it has fewer than chunks: one block takes
# every chunk; 3 blocks take uneven shares (4, 3, 3 of SIZES' 10 chunks). The
# other tests run one block per chunk (max_grid_blocks=None).
SMALL_GRIDS = [1, 3]
# Exact in float32 (the emulation reads lr from a float32 tensor), and large
# enough that most bf16 params move (one bf16 ulp of a value near 1 is 2^-7).
LR = 2.0**-5
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STATS = (
    "launches",
    "chunks",
    "blocks",
    "vector",
    "scalar",
    "misaligned",
    "out_of_range",
    "never",
    "more_than_once",
    "advances",
)
# Rules with scalar states (Note [scalar states] in core/rule.h).
SCALAR_STATE_RULES = [name for name in RULES if RULES[name].scalars]
# (rule, steps_in_kernel): where a call's counts can live.
COUNT_PLACES = [(name, False) for name in RULES] + [(name, True) for name in RULES]
# (steps_in_kernel, lr_in_kernel) of the device-side scalars. Host counts with
# a device lr are refused for a rule with scalar states: the host would need
# lr's value to advance them (test_host_scalar_states_refuse_a_device_lr).
IN_KERNEL = [(True, False), (False, True), (True, True)]
DEVICE_SCALAR_CASES = [
    (name, counts, lr)
    for name in RULES
    for counts, lr in IN_KERNEL
    if counts or not RULES[name].scalars
]

# Step counts one step-increment launch advances (mta::kStepsPerLaunch: the
# kernel-parameter space less found_inf and n_steps, 8 bytes per pointer).
STEPS_PER_LAUNCH = (kernel_arg_bytes - 16) // 8


@dataclass(frozen=True)
class RuleCases:
    """A rule's hyperparameters for these tests: `hyper` (every name of
    Rule.hyper), overrides that reach each of its state sets (each crossed with
    the three weight-decay modes), and other switches."""

    hyper: dict
    state_variants: dict[str, dict]
    extra: dict[str, dict] = field(default_factory=dict)


CASES = {
    "adadelta": RuleCases(
        hyper=OP_HYPER["adadelta"],
        state_variants={"plain": {}},
        extra={
            "maximize": dict(maximize=True),
            "rho-1": dict(rho=1.0),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
        },
    ),
    "adagrad": RuleCases(
        hyper=OP_HYPER["adagrad"],
        state_variants={"plain": {}},
        extra={
            "maximize": dict(maximize=True),
            "no-lr-decay": dict(lr_decay=0.0),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
        },
    ),
    "adam": RuleCases(
        hyper={**OP_HYPER["adam"], "amsgrad": False},
        state_variants={"plain": {}, "amsgrad": dict(amsgrad=True)},
        extra={
            "maximize": dict(maximize=True),
            "amsgrad-maximize": dict(amsgrad=True, maximize=True),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
            # Note [Adam conventions]: each eps_mode, no bias correction, HF's decay order.
            "eps-hat": dict(eps_mode=1),
            "eps-root-amsgrad": dict(eps_mode=2, amsgrad=True),
            "no-correct-bias": dict(correct_bias=False),
            "decay-after": dict(decay_after=True, eps_mode=1),
            "decay-after-fully": dict(decay_after=True, weight_decay_mode=2),
        },
    ),
    "asgd": RuleCases(
        hyper=OP_HYPER["asgd"],
        state_variants={"averaging": {}, "copying": dict(t0=1e6)},
        extra={"maximize": dict(maximize=True), "no-decay": dict(weight_decay=0.0)},
    ),
    "nadam": RuleCases(
        hyper=OP_HYPER["nadam"],
        state_variants={"plain": {}},
        extra={"maximize": dict(maximize=True), "no-decay": dict(weight_decay=0.0)},
    ),
    "adamax": RuleCases(
        hyper=OP_HYPER["adamax"],
        state_variants={"plain": {}},
        extra={
            "maximize": dict(maximize=True),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
        },
    ),
    # make_case's counts (3) give un-rectified steps; test_per_tensor_step_counts'
    # (0, 1, 7, 1000) both kinds, against the reference.
    "radam": RuleCases(
        hyper=OP_HYPER["radam"],
        state_variants={"plain": {}},
        extra={
            "maximize": dict(maximize=True),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
        },
    ),
    "rprop": RuleCases(
        hyper=OP_HYPER["rprop"],
        state_variants={"plain": {}},
        extra={
            "maximize": dict(maximize=True),
            # Step sizes around 0.05-0.25 (STATE_INIT): both clamps bite.
            "clamped": dict(etaminus=0.3, etaplus=1.5, step_size_min=0.04, step_size_max=0.2),
        },
    ),
    "lion": RuleCases(
        hyper=OP_HYPER["lion"],
        state_variants={"plain": {}},
        extra={
            "maximize": dict(maximize=True),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
        },
    ),
    "sgd": RuleCases(
        hyper=OP_HYPER["sgd"],
        state_variants={
            "no-momentum": dict(momentum=0.0),
            "first-step": dict(first_step=True),
            "momentum": {},
            "nesterov": dict(nesterov=True, dampening=0.0),
        },
        extra={
            "maximize": dict(maximize=True),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
        },
    ),
    "rmsprop": RuleCases(
        hyper=OP_HYPER["rmsprop"],
        state_variants={
            "plain": dict(momentum=0.0, centered=False),
            "momentum": dict(centered=False),
            "centered": dict(momentum=0.0),
            "momentum-centered": {},
        },
        extra={
            "maximize": dict(maximize=True),
            "no-decay": dict(weight_decay=0.0, weight_decay_mode=0),
            # TF1's RMSProp (timm's RMSpropTF): every switch of the convention.
            "tf": dict(eps_in_sqrt=True, tf_ema_order=True, lr_in_momentum=True),
            "tf-torch-momentum": dict(eps_in_sqrt=True, tf_ema_order=True),
            "tf-alpha-low": dict(eps_in_sqrt=True, tf_ema_order=True, alpha=0.3),
        },
    ),
}

# How each state starts: the second moments are nonnegative, as Adam keeps them.
STATE_INIT = {
    "exp_avg": lambda n, gen: torch.randn(n, generator=gen) * 0.1,
    "exp_avg_sq": lambda n, gen: torch.rand(n, generator=gen) * 0.01,
    "max_exp_avg_sq": lambda n, gen: torch.rand(n, generator=gen) * 0.02,
    "momentum_buffer": lambda n, gen: torch.randn(n, generator=gen) * 0.1,
    "ax": lambda n, gen: torch.randn(n, generator=gen),
    # RMSprop keeps square_avg >= grad_avg^2; here square_avg - grad_avg^2 >=
    # 0.0075 (|grad_avg| <= 0.05), so the centered root is real and its
    # difference well conditioned (else an FMA in torch's addcmul, which the
    # reference calls, against none in the kernels is amplified without bound).
    "square_avg": lambda n, gen: 0.01 + torch.rand(n, generator=gen) * 0.01,
    "grad_avg": lambda n, gen: (torch.rand(n, generator=gen) - 0.5) * 0.1,
    "sum": lambda n, gen: torch.rand(n, generator=gen) * 0.1,
    # As large as square_avg: a step of about lr * g, which moves bf16 params.
    "acc_delta": lambda n, gen: torch.rand(n, generator=gen) * 0.01,
    # Adamax's infinity norm: at least eps, as after a first step with eps > 0.
    "exp_inf": lambda n, gen: torch.rand(n, generator=gen) * 0.1 + 1e-3,
    # Rprop: the last gradient, some of it 0 (a flip the step before); positive step sizes.
    "prev": lambda n, gen: torch.randn(n, generator=gen) * (torch.rand(n, generator=gen) > 0.1),
    "step_size": lambda n, gen: 0.05 + 0.2 * torch.rand(n, generator=gen),
}


def variants(name: str) -> dict[str, dict]:
    cases = CASES[name]
    out = {}
    # Rules with weight decay: each state set in each mode.
    modes = (0, 1, 2) if "weight_decay_mode" in cases.hyper else (None,)
    for sv_id, overrides in cases.state_variants.items():
        for mode in modes:
            if mode is None:
                out[sv_id] = {**cases.hyper, **overrides}
            else:
                out[f"{sv_id}-wd{mode}"] = {**cases.hyper, **overrides, "weight_decay_mode": mode}
    for extra_id, overrides in cases.extra.items():
        out[extra_id] = {**cases.hyper, **overrides}
    return out


def full_variant(name: str) -> str:
    """The variant that uses every state of the rule."""
    rule = RULES[name]
    for vid, hyper in variants(name).items():
        if rule.used_states(hyper) == rule.states:
            return vid
    raise AssertionError(f"no variant of {name} uses all of {rule.states}")


def full_hyper(name: str) -> dict:
    return variants(name)[full_variant(name)]


@dataclass
class Case:
    rule: Rule
    hyper: dict
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: dict[str, list[torch.Tensor]]  # the used states, in the rule's order
    # The op's state_steps: the counts, then each scalar state (Note [scalar
    # states]); empty for a rule without step counts.
    steps: list[torch.Tensor]

    @property
    def counts(self) -> list[float]:
        return [s.item() for s in self.steps[: len(self.params)]]

    def op_lists(self):
        # Note [state-major lists]: every param's first state, then every param's second...
        flat = [t for name in self.states for t in self.states[name]]
        return self.params, self.grads, flat, self.steps

    def tensors(self) -> list[torch.Tensor]:
        return [
            *self.params,
            *self.grads,
            *(t for s in self.states.values() for t in s),
            *self.steps,
        ]

    def clone(self) -> Case:
        return Case(
            self.rule,
            self.hyper,
            [t.clone() for t in self.params],
            [t.clone() for t in self.grads],
            {k: [t.clone() for t in v] for k, v in self.states.items()},
            [t.clone() for t in self.steps],
        )


def make_case(name, numels, dtype, hyper, *, steps=None, seed=0, state_dtype=torch.float32) -> Case:
    """`state_dtype`: the states' storage (float32, or bfloat16: Note [state
    dtypes] in csrc/include/fusedopt/core/storage.h), rounded from the same
    float32 draws."""
    rule = RULES[name]
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in numels]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in numels]
    states = {
        s: [STATE_INIT[s](n, gen).to(state_dtype) for n in numels] for s in rule.used_states(hyper)
    }
    counts = steps if steps is not None else [3] * len(numels)
    state_steps = scalar_states(name, counts)
    return Case(rule, hyper, params, grads, states, state_steps)


def emulate(
    case: Case,
    *,
    grad_scale=None,
    found_inf=None,
    steps_in_kernel=False,
    lr_in_kernel=False,
    threads=512,
    grid=None,
) -> dict[str, int]:
    op = getattr(torch.ops.fusedopt_testing, f"{case.rule.name}_emulate_step_")
    stats = op(
        *case.op_lists(),
        lr=torch.tensor(LR),
        **case.hyper,
        grad_scale=grad_scale,
        found_inf=found_inf,
        steps_in_kernel=steps_in_kernel,
        lr_in_kernel=lr_in_kernel,
        threads_per_block=threads,
        max_grid_blocks=grid,
    )
    return dict(zip(STATS, stats, strict=True))


def cpu_op(case: Case, *, grad_scale=None, found_inf=None) -> None:
    case.rule.op(*case.op_lists(), lr=LR, **case.hyper, grad_scale=grad_scale, found_inf=found_inf)


def reference_step(case: Case, *, grad_scale=None) -> None:
    for i in range(len(case.params)):
        state = {name: tensors[i] for name, tensors in case.states.items()}
        n = len(case.params)
        for j, key in enumerate(case.rule.scalar_keys):
            state[key] = case.steps[j * n + i]
        case.rule.reference(
            case.params[i],
            case.grads[i],
            state,
            lr=LR,
            grad_scale=None if grad_scale is None else grad_scale.item(),
            **case.hyper,
        )


def n_streams(case: Case, unscale: bool) -> int:
    """Accesses per element or vector group: loads p, g and each used state;
    stores p and each used state; + the unscaled g stored back."""
    return 3 + 2 * len(case.states) + int(unscale)


def expected_accesses(numels, streams: int) -> tuple[int, int]:
    """(vector, scalar) accesses of the traversal on aligned tensors: per whole
    group of 4 elements of a chunk, one access per stream (a 16-byte pack of
    fp32, an 8-byte pack of bf16/fp16); per tail element, one per stream."""
    groups = tails = 0
    for n in numels:
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            groups += size // GROUP
            tails += size % GROUP
    return groups * streams, tails * streams


def n_chunks(numels) -> int:
    return sum(-(-n // CHUNK) for n in numels)


def assert_clean(stats, numels):
    assert stats["misaligned"] == 0
    assert stats["out_of_range"] == 0
    assert stats["more_than_once"] == 0
    assert stats["never"] == 0, f"{stats['never']} of {sum(numels)} elements not updated"
    assert stats["chunks"] == n_chunks(numels)


def assert_same(a: Case, b: Case):
    for x, y in zip(a.tensors(), b.tensors(), strict=True):
        assert x.shape == y.shape
        assert torch.equal(x, y), (x.float() - y.float()).abs().max()


def assert_grads_untouched(case: Case, before: Case):
    for got, old in zip(case.grads, before.grads, strict=True):
        assert torch.equal(got, old), "grads are written only when unscaling"


# Error budget against the fp32 reference, per stored dtype: fp32 within a few
# ulps (the reference forms 1 - beta^t and its products in another order);
# bf16 / fp16 params within one ulp of the stored value (one rounding at the
# store, either side of the exact result). States are always fp32.
TOLERANCE = {
    torch.float32: dict(rtol=1e-6, atol=1e-7),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-6),
}

# Zero-size first and last, primes (2, 3, 7919, 65537), one past 4096, one
# past a chunk, two chunks and 5.
SIZES = [0, 1, 2, 3, 7919, 4097, 65537, 2 * CHUNK + 5, 0]

VARIANTS = [(name, vid) for name in RULES for vid in variants(name)]


def test_every_rule_has_cases_reaching_its_full_state_set():
    assert set(CASES) == set(RULES), "add the new rule's entry to CASES and STATE_INIT"
    for name, rule in RULES.items():
        for hyper in variants(name).values():
            assert set(hyper) == set(rule.hyper), name
        sets = {rule.used_states(h) for h in variants(name).values()}
        assert rule.states in sets, f"{name}: no variant uses every state"
        assert set(rule.states) <= set(STATE_INIT)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}-{v}" for n, v in VARIANTS])
def test_matches_cpu_op_and_reference(name, variant, dtype):
    case = make_case(name, SIZES, dtype, variants(name)[variant])
    before, on_cpu, ref = case.clone(), case.clone(), case.clone()
    stats = emulate(case)
    assert_clean(stats, SIZES)
    assert stats["launches"] == 1
    assert (stats["vector"], stats["scalar"]) == expected_accesses(
        SIZES, n_streams(case, unscale=False)
    )
    cpu_op(on_cpu)
    # The same rule on the same scalars, compiled by the same host compiler.
    assert_same(case, on_cpu)
    reference_step(ref)
    for got, want in zip(case.params, ref.params, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    moved = sum(int((got != old).sum()) for got, old in zip(case.params, before.params))
    assert moved > sum(SIZES) // 2, f"the step moved {moved} of {sum(SIZES)} elements"
    for name_ in case.states:
        for got, want in zip(case.states[name_], ref.states[name_], strict=True):
            torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    assert case.counts == ([4.0] * len(case.params) if case.rule.has_step else [])
    assert_grads_untouched(case, before)


# Every variant in fp32; the 16-bit dtypes (other pack widths) on each rule's
# full state set.
GRID_CASES = [(name, vid, torch.float32) for name, vid in VARIANTS] + [
    (name, full_variant(name), dtype) for name in RULES for dtype in DTYPES[1:]
]


@pytest.mark.parametrize("grid", SMALL_GRIDS)
@pytest.mark.parametrize(
    "name,variant,dtype", GRID_CASES, ids=[f"{n}-{v}-{d}" for n, v, d in GRID_CASES]
)
def test_persistent_grid_matches_one_block_per_chunk(name, variant, dtype, grid):
    """A grid smaller than the chunk table (mta::grid_blocks): block b takes
    chunks b, b + grid, ...; every element is still updated once, with the
    same accesses, and the results are the CPU backend's bit for bit."""
    case = make_case(name, SIZES, dtype, variants(name)[variant])
    on_cpu = case.clone()
    stats = emulate(case, grid=grid)
    assert_clean(stats, SIZES)
    assert (stats["launches"], stats["blocks"]) == (1, grid)
    assert (stats["vector"], stats["scalar"]) == expected_accesses(
        SIZES, n_streams(case, unscale=False)
    )
    cpu_op(on_cpu)
    assert_same(case, on_cpu)


@pytest.mark.parametrize("grid", [None, 3])
@pytest.mark.parametrize("threads", [1, 37, 128])
@pytest.mark.parametrize("name", RULES)
def test_any_block_size_updates_each_element_once(name, threads, grid):
    """Odd block sizes and grids, on the vector path and on the scalar path's
    strided groups of 4 (the last param is a view one element into its
    storage: its two chunks are all scalar)."""
    numels = [5, 4097, CHUNK + 3]
    case = make_case(name, numels[:-1] + [numels[-1] + 1], torch.float32, full_hyper(name))
    case.params[-1] = case.params[-1][1:]
    for tensors in (case.grads, *case.states.values()):
        tensors[-1] = tensors[-1][1:].clone()
    on_cpu = case.clone()
    assert case.params[-1].data_ptr() % 16 != 0
    stats = emulate(case, threads=threads, grid=grid)
    assert_clean(stats, numels)
    streams = n_streams(case, unscale=False)
    aligned = expected_accesses(numels[:-1], streams)
    assert (stats["vector"], stats["scalar"]) == (aligned[0], aligned[1] + streams * numels[-1])
    cpu_op(on_cpu)
    assert_same(case, on_cpu)


def _stream_ids(name: str) -> list[str]:
    return ["param", "grad", *RULES[name].used_states(full_hyper(name))]


UNALIGNED = [(name, stream) for name in RULES for stream in _stream_ids(name)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,stream", UNALIGNED, ids=[f"{n}-{s}" for n, s in UNALIGNED])
def test_unaligned_view_takes_the_scalar_path(name, stream, dtype):
    """One stream (param, grad or a state) is a view one element into its
    storage: 4 or 2 bytes off the 16-byte boundary, so its chunks must not use
    the vector path, whichever stream it is. The others are aligned copies."""
    n = 4099
    case = make_case(name, [n + 1], dtype, full_hyper(name))
    lists = {"param": case.params, "grad": case.grads, **case.states}
    for key, tensors in lists.items():
        tensors[0] = tensors[0][1:] if key == stream else tensors[0][1:].clone()
    for key, tensors in lists.items():
        assert (tensors[0].data_ptr() % 16 != 0) == (key == stream), key
    on_cpu = case.clone()
    stats = emulate(case)
    assert_clean(stats, [n])
    assert stats["vector"] == 0
    assert stats["scalar"] == n_streams(case, unscale=False) * n
    cpu_op(on_cpu)
    assert_same(case, on_cpu)


@pytest.mark.parametrize("grid", [None, 1])
@pytest.mark.parametrize(
    "name,steps_in_kernel,lr_in_kernel",
    DEVICE_SCALAR_CASES,
    ids=[f"{n}-counts{int(c)}-lr{int(lr)}" for n, c, lr in DEVICE_SCALAR_CASES],
)
def test_scalars_computed_in_kernel_match_host(name, steps_in_kernel, lr_in_kernel, grid):
    """grid=1: one block computes each tensor's scalars in turn. Counts,
    scalar states (NAdam's, ASGD's: read by every block, advanced by the last
    launch) and params equal the host path's bit for bit."""
    numels = [3, 4097, CHUNK + 1, 0]
    steps = [0, 7, 1000, 5]  # per-tensor counts, as after a partial state load
    case = make_case(name, numels, torch.float32, full_hyper(name), steps=steps)
    host = case.clone()
    stats = emulate(case, steps_in_kernel=steps_in_kernel, lr_in_kernel=lr_in_kernel, grid=grid)
    assert_clean(stats, numels)
    assert stats["advances"] == int(steps_in_kernel and RULES[name].has_step)
    emulate(host)
    assert_same(case, host)
    if RULES[name].has_step:
        assert case.counts == [s + 1.0 for s in steps]


HAS_STEP = [name for name in RULES if RULES[name].has_step]


@pytest.mark.parametrize("name", SCALAR_STATE_RULES)
def test_host_scalar_states_refuse_a_device_lr(name):
    """Note [scalar states]: with counts on the host, the host advances the
    scalar states and would have to read a device lr: refused before anything
    is written."""
    case = make_case(name, [5, 4097], torch.float32, full_hyper(name))
    before = case.clone()
    with pytest.raises(RuntimeError, match=f"{RULES[name].scalars[0]} on the CPU"):
        emulate(case, lr_in_kernel=True)
    assert_same(case, before)


@pytest.mark.parametrize("steps_in_kernel", [False, True], ids=["host", "device"])
@pytest.mark.parametrize("name", SCALAR_STATE_RULES)
def test_scalar_states_advance_with_the_counts(name, steps_in_kernel):
    """The scalar states after a step are the reference's, whether the host
    or the advance launch stores them, and a call that GradScaler skips
    leaves them as they were (found_inf read by the host, or by the kernels)."""
    numels = [3, 4097, 0]
    case = make_case(name, numels, torch.float32, full_hyper(name), steps=[0, 9, 2])
    ref, skipped = case.clone(), case.clone()
    emulate(case, steps_in_kernel=steps_in_kernel)
    reference_step(ref)
    n = len(numels)
    assert [s.item() for s in case.steps[n:]] == [s.item() for s in ref.steps[n:]]
    assert [s.item() for s in case.steps[n:]] != [s.item() for s in skipped.steps[n:]]
    assert case.counts == [1.0, 10.0, 3.0]
    before = skipped.clone()
    emulate(skipped, found_inf=torch.tensor(1.0), steps_in_kernel=steps_in_kernel)
    assert_same(skipped, before)


@pytest.mark.parametrize("name", SCALAR_STATE_RULES)
def test_scalar_states_over_several_steps_on_the_device(name):
    """Five steps with the counts and scalar states in device memory, the lr
    changing between steps (a scheduler), equal five host-path steps bit for
    bit: each step's element launches read the values the previous advance
    launch stored."""
    numels = [5, 4097]
    case = make_case(name, numels, torch.float32, full_hyper(name), steps=[0, 3])
    host = case.clone()
    op = getattr(torch.ops.fusedopt_testing, f"{name}_emulate_step_")
    for k in range(5):
        lr = torch.tensor(LR * (1 + k) / 4)
        for c, device in ((case, True), (host, False)):
            op(*c.op_lists(), lr=lr, **c.hyper, steps_in_kernel=device, lr_in_kernel=device)
    assert_same(case, host)
    assert case.counts == [5.0, 8.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", HAS_STEP)
def test_per_tensor_step_counts(name, dtype):
    """Tensors of one call at different counts get their own scalars."""
    numels = [3, 4097, CHUNK + 1, 17]
    steps = [0, 1, 7, 1000]
    case = make_case(name, numels, dtype, full_hyper(name), steps=steps)
    on_cpu, ref = case.clone(), case.clone()
    assert_clean(emulate(case), numels)
    cpu_op(on_cpu)
    assert_same(case, on_cpu)
    reference_step(ref)
    for got, want in zip(case.params, ref.params, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    assert case.counts == [s + 1.0 for s in steps]


@pytest.mark.parametrize("grid", [None, 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,steps_in_kernel", COUNT_PLACES)
def test_grad_scaler_unscales_and_stores_grads(name, steps_in_kernel, dtype, grid):
    """grid=1: one block reads grad_scale once for both chunks."""
    numels = [7, 4097]
    case = make_case(name, numels, dtype, full_hyper(name))
    before, on_cpu = case.clone(), case.clone()
    scale = torch.tensor(1024.0)
    stats = emulate(
        case,
        grad_scale=scale,
        found_inf=torch.tensor(0.0),
        steps_in_kernel=steps_in_kernel,
        grid=grid,
    )
    assert_clean(stats, numels)
    assert (stats["vector"], stats["scalar"]) == expected_accesses(
        numels, n_streams(case, unscale=True)
    )
    for got, old in zip(case.grads, before.grads, strict=True):
        assert torch.equal(got, (old.float() / 1024.0).to(dtype)), "grads stored back unscaled"
    cpu_op(on_cpu, grad_scale=scale, found_inf=torch.tensor(0.0))
    assert_same(case, on_cpu)


@pytest.mark.parametrize("grid", [None, 1])
@pytest.mark.parametrize("name,steps_in_kernel", COUNT_PLACES)
def test_found_inf_changes_nothing(name, steps_in_kernel, grid):
    """GradScaler found an inf: no element is read or written (grads included)
    and step counts stay, whether the host reads found_inf (host-owned counts)
    or the kernels do (once per thread, for all of its block's chunks)."""
    numels = [7, 4097]
    case = make_case(name, numels, torch.float32, full_hyper(name))
    before = case.clone()
    stats = emulate(
        case,
        grad_scale=torch.tensor(8.0),
        found_inf=torch.tensor(1.0),
        steps_in_kernel=steps_in_kernel,
        grid=grid,
    )
    assert stats["vector"] == 0 and stats["scalar"] == 0
    assert stats["never"] == sum(numels)
    assert_same(case, before)


@pytest.mark.parametrize("grid", [None, 3])
@pytest.mark.parametrize("name", RULES)
def test_more_tensors_than_one_launch_and_one_step_launch_hold(name, grid):
    _, slots, blocks, _ = torch.ops.fusedopt_testing.launch_plan(name, [])
    assert blocks >= slots, "one-chunk tensors fill a launch's slots before its blocks"
    # Enough one-chunk tensors for several element launches and (counts in
    # device memory) more than one step-increment launch; zero-size ones take
    # no slot but their counts advance too.
    n = max(2 * slots + 3, STEPS_PER_LAUNCH + 7)
    numels = [0 if i % 97 == 0 else 1 + i % 5 for i in range(n)]
    steps = [i % 1000 for i in range(n)]
    case = make_case(name, numels, torch.float32, full_hyper(name), steps=steps)
    on_cpu = case.clone()
    stats = emulate(case, steps_in_kernel=True, grid=grid)
    non_empty = sum(1 for k in numels if k)
    assert stats["launches"] == math.ceil(non_empty / slots) > 1
    if grid is not None:
        assert stats["blocks"] == grid * stats["launches"]
    assert_clean(stats, numels)
    if RULES[name].has_step and not RULES[name].scalars:
        assert stats["advances"] == math.ceil(n / STEPS_PER_LAUNCH) == 2
    elif RULES[name].scalars:
        # Wider entries (the scalar states' addresses): fewer tensors a launch.
        assert stats["advances"] >= 2
    cpu_op(on_cpu)
    assert_same(case, on_cpu)
    if RULES[name].has_step:
        assert case.counts == [s + 1.0 for s in steps]


# --- bf16 states (Note [state dtypes] in csrc/include/fusedopt/core/storage.h) ----------


@pytest.mark.parametrize("grid", [None, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RULES)
def test_bf16_states_match_cpu_op(name, dtype, grid):
    """bf16 states (8-byte packs of 4 on the vector path): every element
    updated once, the same vector/scalar accesses as fp32 states, and the CPU
    backend's bits in params and states; the states stay bf16."""
    case = make_case(name, SIZES, dtype, full_hyper(name), state_dtype=torch.bfloat16)
    before, on_cpu = case.clone(), case.clone()
    stats = emulate(case, grid=grid)
    assert_clean(stats, SIZES)
    assert (stats["vector"], stats["scalar"]) == expected_accesses(
        SIZES, n_streams(case, unscale=False)
    )
    cpu_op(on_cpu)
    assert_same(case, on_cpu)
    for key, tensors in case.states.items():
        assert all(t.dtype == torch.bfloat16 for t in tensors), key
        moved = sum(int((t != old).sum()) for t, old in zip(tensors, before.states[key]))
        assert moved > 0, f"{key} never changed"


@pytest.mark.parametrize("name", RULES)
def test_bf16_state_view_takes_the_scalar_path(name):
    """A bf16 state one element (2 bytes) into its storage: scalar path."""
    n = 4099
    case = make_case(name, [n + 1], torch.float32, full_hyper(name), state_dtype=torch.bfloat16)
    first = next(iter(case.states))
    case.states[first][0] = case.states[first][0][1:]
    case.params[0], case.grads[0] = case.params[0][1:].clone(), case.grads[0][1:].clone()
    for key in list(case.states)[1:]:
        case.states[key][0] = case.states[key][0][1:].clone()
    on_cpu = case.clone()
    stats = emulate(case)
    assert_clean(stats, [n])
    assert (stats["vector"], stats["scalar"]) == (0, n_streams(case, unscale=False) * n)
    cpu_op(on_cpu)
    assert_same(case, on_cpu)


# --- 8-bit blockwise states (Note [8-bit blocks on the GPU] in mta/traversal.h) -------

LANE8 = 8  # elements per lane of the warp that steps a block (kLane8)
# Zero-size first and last, one element, a short block, one past 4096 (a
# one-element last block), one past a chunk, two chunks and 5.
EIGHT_BIT_SIZES = [0, 1, 300, 4097, 65537, 2 * CHUNK + 5, 0]


def blockwise_lists(case: Case, nan_at=None) -> list[list[torch.Tensor]]:
    """The op's lists with the case's states as 8-bit codes, then each one's
    absmax (signed map for states of either sign, unsigned for the rule's
    never-negative ones); `nan_at` (tensor, element): a NaN grad there."""
    codes, absmax = [], []
    for key, tensors in case.states.items():
        signed = key not in case.rule.nonnegative
        for t in tensors:
            values = t.float() if signed else t.float().abs()
            c, a = codecs.new_8bit(values, values, signed)
            codes.append(c)
            absmax.append(a)
    grads = [g.clone() for g in case.grads]
    if nan_at is not None:
        grads[nan_at[0]][nan_at[1]] = float("nan")
    return [list(case.params), grads, codes + absmax, list(case.steps)]


def emulate_lists(
    case: Case, lists, *, grad_scale=None, found_inf=None, threads=512, grid=None
) -> dict[str, int]:
    op = getattr(torch.ops.fusedopt_testing, f"{case.rule.name}_emulate_step_")
    stats = op(
        *lists,
        lr=torch.tensor(LR),
        **case.hyper,
        grad_scale=grad_scale,
        found_inf=found_inf,
        steps_in_kernel=False,
        lr_in_kernel=False,
        threads_per_block=threads,
        max_grid_blocks=grid,
    )
    return dict(zip(STATS, stats, strict=True))


def assert_same_bits(lists, want_lists):
    for got, want in zip(
        (t for ts in lists for t in ts), (t for ts in want_lists for t in ts), strict=True
    ):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("threads, grid", [(512, None), (64, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RULES)
def test_8bit_states_match_cpu_op(name, dtype, threads, grid):
    """8-bit blockwise states, a warp per block: every element updated once,
    one vector access per lane and stream (codes: an 8-byte pack; p and g: one
    16-byte pack of 16-bit values, two of fp32), and the CPU backend's bits in
    params, codes and absmax, a NaN in the one-element last block of 4097
    included; with 2 warps a block and a persistent grid of 3 blocks too."""
    case = make_case(name, EIGHT_BIT_SIZES, dtype, full_hyper(name))
    lists = blockwise_lists(case, nan_at=(EIGHT_BIT_SIZES.index(4097), 4096))
    on_cpu = [[t.clone() for t in ts] for ts in lists]
    before = [c.clone() for c in lists[2][: len(lists[2]) // 2]]
    stats = emulate_lists(case, lists, threads=threads, grid=grid)
    assert_clean(stats, EIGHT_BIT_SIZES)
    packs = 2 if dtype == torch.float32 else 1
    full_lanes = sum(
        min(CHUNK, n - s) // LANE8 for n in EIGHT_BIT_SIZES for s in range(0, n, CHUNK)
    )
    assert stats["vector"] == full_lanes * (3 * packs + 2 * len(case.states))
    case.rule.op(*on_cpu, lr=LR, **case.hyper)
    assert_same_bits(lists, on_cpu)
    moved = sum(int((c != old).sum()) for c, old in zip(lists[2], before))
    assert moved > 0, "no code changed"


def test_8bit_threads_are_whole_warps():
    case = make_case("adam", [300], torch.float32, full_hyper("adam"))
    with pytest.raises(RuntimeError, match="multiple of 32"):
        emulate_lists(case, blockwise_lists(case), threads=48)


@pytest.mark.parametrize("name", RULES)
def test_8bit_unaligned_view_takes_the_scalar_path(name):
    """A param one element into its storage: the scalar path throughout, the
    CPU backend's bits."""
    n = 4099
    case = make_case(name, [n + 1], torch.float32, full_hyper(name))
    case.params[0] = case.params[0][1:]
    case.grads[0] = case.grads[0][1:].clone()
    for key in case.states:
        case.states[key][0] = case.states[key][0][1:].clone()
    lists = blockwise_lists(case)
    on_cpu = [[t.clone() for t in ts] for ts in lists]
    stats = emulate_lists(case, lists)
    assert_clean(stats, [n])
    assert stats["vector"] == 0
    case.rule.op(*on_cpu, lr=LR, **case.hyper)
    assert_same_bits(lists, on_cpu)
