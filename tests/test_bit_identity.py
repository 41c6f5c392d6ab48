"""Note [bit-identical backends] (kernels/mta.py), tested: for the same inputs
the CPU backend, the Triton kernels (under the interpreter) and the CUDA
kernels' body (emulated on the CPU by fusedopt._testing) compute the same
params, grads and states, bit for bit, in fp32, bf16 and fp16, with and
without GradScaler, over several steps.

  - the conversions of kernels/storage.py against torch's, on every 16-bit
    pattern and 2^18 fp32 ones;
  - every optimizer of tests/cases.py, the Triton backend against the CPU
    backend through the optimizer classes: with every state used in every
    dtype, with and without GradScaler (`slow`: every entry of its grid);
  - every rule of fusedopt.registry.RULES at the op level, all three against
    each other: with every state used in every dtype, with fp32 and bf16
    states, with and without GradScaler, with step counts that differ per tensor, with views at odd
    offsets (`slow`: every variant of tests/test_cuda_emulation.py, each
    state set in each weight-decay mode, maximize, the conventions);
  - the one piece that is not identical, the per-tensor scalars computed on
    the device (capturable mode), against the host's: at most one fp32 ulp
    apart, in few tensors and steps.

Sizes reach every path: a Triton full block (vector hints) and its masked
tail, CUDA's 4-element vector groups and their scalar tail, the CPU loops'
SIMD body and tail, an empty tensor. The interpreter costs 3.5-7 ms of CPU
per program for these kernels (measured: SGD fp32 to Adam bf16; it
re-patches triton.language at every nested @triton.jit call), hence the
split between the default run (~15 s of CPU) and the `slow` sweeps (~40 s).
NaN equals NaN here (a NaN's payload is not a value: the CUDA kernels' bf16
store writes 0x7FFF, the CPU's 0x7FC0).
"""

from __future__ import annotations

import importlib.util

import pytest

# Triton is what most of this compares: without it (a CPU-only torch) there is nothing to run.
pytest.importorskip("triton")

import fusedopt  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from _op_hyper import OP_HYPER  # noqa: E402
from cases import CASES  # noqa: E402
from fusedopt.kernels import mta, rules  # noqa: E402
from fusedopt.kernels.storage import from_float, to_float  # noqa: E402
from fusedopt.registry import RULES  # noqa: E402
from helpers import clone_params, draw_grads, make_params  # noqa: E402

TESTING_BUILT = importlib.util.find_spec("fusedopt._testing") is not None
if TESTING_BUILT:
    from test_cuda_emulation import (
        LR,
        blockwise_lists,
        cpu_op,
        emulate,
        emulate_lists,
        full_hyper,
        make_case,
        variants,
    )

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STEPS = 2  # the second from the states the first left
SCALE = 1024.0  # GradScaler's scale: a power of two, so the scaled grads are exact
# Optimizer level: the backend's interpreter block and 17 more (a full block
# and a masked tail for Triton; 4100 CUDA groups and a tail), and an empty tensor.
OPTIMIZER_SIZES = (0, mta.INTERPRETER_BLOCK_SIZE + 17)
# Op level: the launcher's block is ours to choose, so a small one gives the
# same two paths for Triton in a small tensor: 21 = a full block of 16 and a
# tail of 5 (CUDA: 5 groups of 4 and a tail; AVX-512: one vector and a tail).
OP_BLOCK = 16
OP_SIZES = (21, 0)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal, element for element, NaN where the other is NaN."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    a, e = actual.detach().cpu(), expected.detach().cpu()
    same = (a == e) | (a.isnan() & e.isnan())
    assert bool(same.all()), (
        f"{what}: {int((~same).sum())} of {a.numel()} elements differ, "
        f"e.g. {a[~same][:3].tolist()} vs {e[~same][:3].tolist()}"
    )


# --- the conversions: kernels/storage.py as torch (and the CPU backend) round -------------


@triton.jit
def _convert_kernel(src, dst, n, DST: tl.constexpr, BLOCK: tl.constexpr):
    """dst = src through fp32: to_float on the load, from_float on the store."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = to_float(tl.load(src + offs, mask=mask))
    tl.store(dst + offs, from_float(x, DST), mask=mask)


def _convert(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=dtype)
    block = 1 << 16
    triton_dtype = {
        torch.float32: tl.float32,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
    }
    _convert_kernel[(triton.cdiv(x.numel(), block),)](
        x, out, x.numel(), DST=triton_dtype[dtype], BLOCK=block
    )
    return out


def _fp32_patterns() -> torch.Tensor:
    """2^18 random fp32 bit patterns (every exponent, NaNs with any payload),
    the 16-bit formats' edges, and values next to bf16/fp16 ties."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (1 << 18,), generator=gen).to(torch.int32)
    edges = torch.tensor(
        [
            0.0,
            -0.0,
            float("inf"),
            -float("inf"),
            float("nan"),
            65504.0,
            65519.996,
            65520.0,
            3.3895313e38,
            3.4028235e38,
            1e-45,
            2.9802322e-08,
            5.9604645e-08,
            1.0 + 2**-8,
            1.0 + 3 * 2**-8,
            1.0 + 2**-11,
            1.0 + 3 * 2**-11,
            9.1835e-41,
        ]
    )
    return torch.cat([bits.view(torch.float32), edges, torch.randn(1 << 12, generator=gen)])


# numpy's fp16 cast (the interpreter's) warns where it rounds to inf, as it should.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stores_round_like_torch(dtype):
    """fp32 -> bf16/fp16 in the kernels is torch's round to nearest even, on
    every pattern: overflow to inf, subnormals, an inf stays inf, a NaN stays
    NaN (the interpreter's own bf16 cast truncates, and turns a NaN whose
    payload is in the low half into an inf)."""
    x = _fp32_patterns()
    assert_same_bits(_convert(x, dtype), x.to(dtype), f"fp32 -> {dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_loads_are_exact(dtype):
    """All 65536 bf16/fp16 patterns to fp32 as torch converts them (the
    interpreter's own bf16 cast garbles the subnormals)."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    assert_same_bits(_convert(x, torch.float32), x.float(), f"{dtype} -> fp32")


# --- every optimizer, through its class: Triton against the CPU backend ----------------


def _step_optimizers(case, kwargs, dtype, scaled: bool):
    """The case's optimizer on the Triton and the CPU backend, STEPS steps on
    the same grads (GradScaler's grad_scale and found_inf when `scaled`)."""
    start = make_params(OPTIMIZER_SIZES, dtype=dtype)
    sides = {}
    for backend in ("triton", "cpu"):
        params = clone_params(start)
        sides[backend] = (params, case.make(params, kwargs, backend))
    for k in range(STEPS):
        grads = draw_grads(start, k)
        for params, opt in sides.values():
            for p, g in zip(params, grads):
                p.grad = g * SCALE if scaled else g.clone()
            if scaled:
                opt.grad_scale = torch.tensor(SCALE)
                opt.found_inf = torch.tensor(0.0)
            opt.step()
    return sides


def _assert_optimizers_same(sides) -> None:
    (params, opt), (cpu_params, cpu_opt) = sides["triton"], sides["cpu"]
    assert "-> triton" in fusedopt.report(opt) and "-> cpu" in fusedopt.report(cpu_opt)
    for i, (p, q) in enumerate(zip(params, cpu_params)):
        assert_same_bits(p, q, f"param {i}")
        assert_same_bits(p.grad, q.grad, f"grad {i}")
        assert opt.state[p].keys() == cpu_opt.state[q].keys()
        for key, value in cpu_opt.state[q].items():
            assert_same_bits(opt.state[p][key], value, f"state {key} of param {i}")


STATEFUL = [pytest.param(case, id=case.name) for case in CASES]


@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad_scaler"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STATEFUL)
def test_optimizer_triton_equals_cpu(case, dtype, scaled):
    """Each optimizer with every state used (its `stateful` kwargs)."""
    _assert_optimizers_same(_step_optimizers(case, case.stateful, dtype, scaled))


GRID = [
    pytest.param(case, kwargs, id=f"{case.name}-{i}")
    for case in CASES
    for i, kwargs in enumerate(case.grid)
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case,kwargs", GRID)
def test_optimizer_grid_triton_equals_cpu(case, kwargs, dtype):
    """Every option of every optimizer (its grid), lr a float and a tensor."""
    _assert_optimizers_same(_step_optimizers(case, kwargs, dtype, scaled=False))


# --- every rule, at the op level: CPU, Triton and the CUDA emulation ---------------


needs_testing = pytest.mark.skipif(
    not TESTING_BUILT, reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
)
VARIANTS = [(name, vid) for name in RULES for vid in variants(name)] if TESTING_BUILT else []


def _three_ways(case, *, scaled: bool):
    """The case stepped by the CPU op, the Triton launcher and the CUDA
    emulation, each on its own copy, with fresh grads at every step."""
    copies = {"cpu": case.clone(), "triton": case.clone(), "cuda": case.clone()}
    launcher = mta.Launcher()
    dtype = case.params[0].dtype
    for k in range(STEPS):
        gen = torch.Generator().manual_seed(1000 + k)
        grads = [torch.randn(p.shape, generator=gen) for p in case.params]
        for copy in copies.values():
            for g, new in zip(copy.grads, grads):
                g.copy_((new * SCALE if scaled else new).to(dtype))
        extra = {}
        if scaled:
            extra = dict(grad_scale=torch.tensor(SCALE), found_inf=torch.tensor(0.0))
        cpu_op(copies["cpu"], **extra)
        params, grads_, states, counts = copies["triton"].op_lists()
        rule = rules.get(case.rule.name)
        launcher.step(
            rule, params, grads_, states, counts, lr=LR, hyper=case.hyper, block=OP_BLOCK, **extra
        )
        emulate(copies["cuda"], **extra)
    return copies


def _assert_three_same(copies) -> None:
    want = copies["cpu"].tensors()
    for backend in ("triton", "cuda"):
        for i, (got, exp) in enumerate(zip(copies[backend].tensors(), want, strict=True)):
            assert_same_bits(got, exp, f"{backend} tensor {i}")


@needs_testing
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad_scaler"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RULES)
def test_rule_three_backends_same_bits(name, dtype, scaled):
    """Each rule with every state used."""
    case = make_case(name, OP_SIZES, dtype, full_hyper(name))
    _assert_three_same(_three_ways(case, scaled=scaled))


@pytest.mark.slow
@needs_testing
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}-{v}" for n, v in VARIANTS])
def test_rule_variants_three_backends_same_bits(name, variant, dtype):
    """Each state set in each weight-decay mode, maximize, the conventions."""
    case = make_case(name, OP_SIZES, dtype, variants(name)[variant])
    _assert_three_same(_three_ways(case, scaled=False))


@needs_testing
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad_scaler"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RULES)
def test_rule_bf16_states_three_backends_same_bits(name, dtype, scaled):
    """Each rule with every state used and stored as bf16 (Note [state
    dtypes] in csrc/include/fusedopt/core/storage.h): loaded exactly, stored
    rounded to nearest even once, on all three."""
    case = make_case(name, OP_SIZES, dtype, full_hyper(name), state_dtype=torch.bfloat16)
    _assert_three_same(_three_ways(case, scaled=scaled))


# 8-bit blockwise states: the Triton block must hold whole 256-element state
# blocks; 1300 = two full programs of 512 and a masked tail of 276 (CUDA: 5
# warps' blocks and a 20-element one).
OP_BLOCK_8BIT = 512
OP_SIZES_8BIT = (1300, 0)


@needs_testing
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad_scaler"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", RULES)
def test_rule_8bit_states_three_backends_same_bits(name, dtype, scaled):
    """Each rule with every state used and stored as 8-bit blockwise codes
    (Note [8-bit blocks in a program] in kernels/mta.py, Note [8-bit blocks
    on the GPU] in mta/traversal.h): the same params, grads, codes and absmax
    on all three, over two steps."""
    case = make_case(name, OP_SIZES_8BIT, dtype, full_hyper(name))
    lists = blockwise_lists(case)
    copies = {b: [[t.clone() for t in ts] for ts in lists] for b in ("cpu", "triton", "cuda")}
    launcher = mta.Launcher()
    for k in range(STEPS):
        gen = torch.Generator().manual_seed(1000 + k)
        grads = [torch.randn(p.shape, generator=gen) for p in case.params]
        for copy in copies.values():
            for g, new in zip(copy[1], grads):
                g.copy_((new * SCALE if scaled else new).to(dtype))
        extra = {}
        if scaled:
            extra = dict(grad_scale=torch.tensor(SCALE), found_inf=torch.tensor(0.0))
        case.rule.op(*copies["cpu"], lr=LR, **case.hyper, **extra)
        launcher.step(
            rules.get(name),
            *copies["triton"],
            lr=LR,
            hyper=case.hyper,
            block=OP_BLOCK_8BIT,
            **extra,
        )
        emulate_lists(case, copies["cuda"], **extra)
    want = [t for ts in copies["cpu"] for t in ts]
    for backend in ("triton", "cuda"):
        got = [t for ts in copies[backend] for t in ts]
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_bits(g, w, f"{backend} tensor {i}")


@needs_testing
@pytest.mark.parametrize("name", [name for name in RULES if RULES[name].has_step])
def test_rule_counts_that_differ_per_tensor(name):
    """Per-tensor counts (after a partial load_state_dict): the host computes
    a scalar row per tensor (Triton: float64 tensors, so torch.pow, which
    differs from libm's pow in ~1% of doubles; C++: libm's pow per tensor);
    rounded to fp32, still the same bits at these counts."""
    case = make_case(name, [5, 21, 3, 17], torch.float32, full_hyper(name), steps=[0, 1, 7, 1000])
    _assert_three_same(_three_ways(case, scaled=False))


@needs_testing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", RULES)
def test_rule_views_at_odd_offsets(name, dtype):
    """Every stream a view one element into its storage: the masked (Triton)
    and scalar (CUDA) paths, and the CPU loop on unaligned memory."""
    case = make_case(name, [OP_SIZES[0] + 1], dtype, full_hyper(name))
    for tensors in (case.params, case.grads, *case.states.values()):
        tensors[0] = tensors[0][1:]
    _assert_three_same(_three_ways(case, scaled=False))


# --- the per-tensor scalars computed on the device: bounded, not identical -------------

# Step counts of the device-scalar sweep: every count below 2000 (where bias
# corrections are far from 1 and change fastest) and every 61st up to 10^5;
# the full 10^5 of the Note's measurement took ~90 s under the interpreter.
SWEEP_COUNTS = torch.cat([torch.arange(2000.0), torch.arange(2000.0, 100_000.0, 61.0)])
# Configs of the sweep: each rule with device-side scalars at OP_HYPER, the
# Adam-like ones also at other betas, Adam in each eps convention.
_BETAS = ((0.9, 0.95), (0.8, 0.99), (0.95, 0.9999))
SWEEP = [
    (name, {**OP_HYPER[name], **extra})
    for name in RULES
    if not RULES[name].scalars and rules.get(name).PerTensor._fields
    for extra in (
        [{}]
        + (
            [{"beta1": b1, "beta2": b2} for b1, b2 in _BETAS]
            if name in ("adam", "radam", "adamax")
            else []
        )
        + ([{"eps_mode": 1}, {"eps_mode": 2}, {"decay_after": True}] if name == "adam" else [])
    )
]
# Rows of the sweep (a tensor at one step) whose fp32 scalars may differ from
# the host's, each field by one ulp at most. Measured: 1 row of the ~77,000
# here, 1 of the 2.1 * 10^6 of the full sweep (RAdam's rectification at
# beta2 = 0.9999, t = 18; Note [bit-identical backends]); 10 is room for
# another platform's libm, and far below what a worse prologue gives
# (test_device_scalar_check_can_fail).
MAX_DIFFERING_ROWS = 10


def _prologue(rule, config, lr: float, counts: torch.Tensor, split: bool = True) -> torch.Tensor:
    """The per-tensor table that mta._per_tensor_kernel (the capturable
    prologue) fills for tensors at these counts (float32, one per tensor).
    `split=False` drops the low halves of the Config: fp32 hyperparameters,
    what the launcher's hi/lo split exists to avoid."""
    n = counts.numel()
    table = torch.zeros((n, mta.TENSOR_COLS.value), dtype=torch.int64)
    table[:, mta.COL_COUNT.value] = counts.data_ptr() + 4 * torch.arange(n)
    out = torch.zeros((n, mta.PER_TENSOR_COLS.value), dtype=torch.float32)
    config_hi, config_lo = mta._split_config(config)
    if not split:
        config_lo = type(config)(*(0.0 for _ in config_lo))
    lr_hi, lr_lo = mta._split(lr)
    mta._per_tensor_kernel[(triton.cdiv(n, mta.TABLE_BLOCK),)](
        table,
        out,
        n,
        None,
        lr_hi,
        lr_lo,
        0.0,
        config_hi,
        config_lo,
        PER_TENSOR_DEVICE=rule.per_tensor_device,
        CONFIG=type(config),
        LR_IN_MEMORY=False,
        COUNTS_IN_MEMORY=True,
        N_SCALARS=0,  # the sweep's rules keep no scalar states
        BLOCK=mta.TABLE_BLOCK,
        enable_fp_fusion=mta.FP_FUSION,
    )
    return out[:, : len(rule.PerTensor._fields)]


def _host(rule, config, lr: float, counts: torch.Tensor) -> torch.Tensor:
    """The host's per-tensor scalars (Python floats: libm's pow, the C++
    per_tensor's order), rounded to fp32 as the per-tensor table holds them."""
    steps = (counts.double() + 1.0).tolist()
    return torch.tensor([list(rule.per_tensor(config, lr, s)) for s in steps]).float()


def _fp32_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in fp32 ulps (the distance of their bit patterns; same signs here)."""
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


# RAdam's prologue takes the sqrt of both branches of its rectification and
# selects one: numpy warns of the square root of the unselected negative.
@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")
def test_device_scalars_within_one_ulp_of_the_host():
    """The prologue's float64 scalars (exp2/log2 for pow, the Config as two
    fp32 halves) rounded to fp32, against the host's (libm's pow, as the C++
    CPU backend), at SWEEP_COUNTS of every SWEEP config: at most one ulp
    apart, in at most MAX_DIFFERING_ROWS rows."""
    counts = SWEEP_COUNTS.float()
    differing = 0
    for name, hyper in SWEEP:
        rule = rules.get(name)
        config = rule.config(hyper)
        ulps = _fp32_ulps(_prologue(rule, config, 1e-3, counts), _host(rule, config, 1e-3, counts))
        assert int(ulps.max()) <= 1, (name, hyper, int(ulps.max()))
        differing += int((ulps > 0).any(1).sum())
    assert differing <= MAX_DIFFERING_ROWS, differing


def test_device_scalar_check_can_fail():
    """The sweep's comparison sees what a worse prologue would do: with the
    Config's fp32 halves dropped (beta2 = 0.999 rounded to fp32), Adam's
    scalars are off in most of the first 1000 steps, by more than one ulp."""
    rule = rules.get("adam")
    config = rule.config(OP_HYPER["adam"])
    counts = torch.arange(1000, dtype=torch.float32)
    ulps = _fp32_ulps(
        _prologue(rule, config, 1e-3, counts, split=False), _host(rule, config, 1e-3, counts)
    )
    assert int((ulps > 0).any(1).sum()) > MAX_DIFFERING_ROWS and int(ulps.max()) > 1


def test_sweep_covers_every_device_scalar_rule():
    """Every rule whose scalars the prologue computes is swept (Rprop's
    PerTensor is empty: nothing to compare). NAdam's and ASGD's device path
    (scalar states) is compared with their host path bit for bit in
    tests/test_triton_frame.py and tests/test_cuda_emulation.py."""
    want = {n for n in RULES if not RULES[n].scalars and rules.get(n).PerTensor._fields}
    assert {name for name, _ in SWEEP} == want
