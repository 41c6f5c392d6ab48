"""The Triton kernel frame (kernels/mta.py) with every rule (kernels/rules/),
under the interpreter (TRITON_INTERPRET=1, set by conftest.py): parity with
fusedopt.reference through the ReferenceBackend, the edges that blocks and
vector hints create, where the per-tensor scalars come from, the step-count
protocol, GradScaler's tensors, the plan cache, and the launch count.

The interpreter costs 1-2 ms per program, so tensors are small and BLOCK is
small too, to still make several blocks and tails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Triton is what these tests test: without it (a CPU-only torch) there is nothing to run.
pytest.importorskip("triton")

import torch  # noqa: E402
from _op_hyper import OP_HYPER, scalar_states  # noqa: E402
from fusedopt import backends  # noqa: E402
from fusedopt.kernels import mta, rules  # noqa: E402
from fusedopt.reference import WeightDecayMode  # noqa: E402
from fusedopt.registry import RULES  # noqa: E402

# The kernels run here on CPU tensors, which only the interpreter takes; with
# it off (make gpu-test), the shared harness's CUDA rows and tests/test_gpu.py
# run them on the GPU.
pytestmark = pytest.mark.skipif(
    not backends.triton_interpreter_on(),
    reason="runs the Triton kernels on CPU tensors: needs TRITON_INTERPRET=1",
)

BLOCK = 1024
SIZES = [0, 1, 3, 4, 17, 1031, 4097, 2053, 0]  # primes, one block + 7, zero-size first and last
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ADAM, RMSPROP, SGD = RULES["adam"], RULES["rmsprop"], RULES["sgd"]
ADAGRAD, ADADELTA = RULES["adagrad"], RULES["adadelta"]
RADAM, ADAMAX = RULES["radam"], RULES["adamax"]
RPROP, LION = RULES["rprop"], RULES["lion"]
HEADERS = Path(__file__).resolve().parents[1] / "csrc" / "include" / "fusedopt" / "rules"
# Rules whose per-tensor scalars the prologue computes on the device: every
# rule, those with scalar states (NAdam, ASGD) included, which read theirs in
# the prologue and advance them in the count kernel (Note [scalar states] in
# core/rule.h).
DEVICE_SCALAR_RULES = list(RULES.values())
SCALAR_STATE_RULES = [rule for rule in RULES.values() if rule.scalars]

# Tolerances, per param dtype, against the reference (which runs in fp32 too):
#  - fp32: the per-tensor scalars come from fp64 exp2/log2 on the device, and
#    the interpreter's numpy ops may round differently from torch's vectorized
#    CPU kernels (and fuse nothing where torch's lerp/addcmul may): a few ulps
#    at most (fp32 ulp is 6e-8 relative).
#  - bf16 and fp16: one rounding to nearest even at the store, as the
#    reference's (bf16 by integer operations, kernels/storage.py, where the
#    interpreter's own cast truncates), but a 1-ulp fp32 difference can flip
#    the rounding of a value near a tie: within 1 ulp of the dtype. Against
#    the CPU backend the results are equal: tests/test_bit_identity.py.
FP32_RTOL, FP32_ATOL = 2e-6, 1e-7
MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11}


def adam_hyper(**overrides) -> dict:
    hyper = dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.DECOUPLED,
        lr_max=2e-2,
        decay_after=False,
        eps_mode=0,
        correct_bias=True,
        amsgrad=False,
        maximize=False,
    )
    return {**hyper, **overrides}


def sgd_hyper(**overrides) -> dict:
    hyper = dict(
        momentum=0.9,
        dampening=0.0,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.L2,
        lr_max=2e-2,
        nesterov=False,
        maximize=False,
        first_step=False,
    )
    return {**hyper, **overrides}


def rmsprop_hyper(**overrides) -> dict:
    """torch's convention, every state used; the TF switches as overrides."""
    hyper = dict(
        alpha=0.9,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.L2,
        lr_max=2e-2,
        momentum=0.9,
        centered=True,
        maximize=False,
        eps_in_sqrt=False,
        tf_ema_order=False,
        lr_in_momentum=False,
    )
    return {**hyper, **overrides}


def rprop_hyper(**overrides) -> dict:
    hyper = dict(etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0, maximize=False)
    return {**hyper, **overrides}


def lion_hyper(**overrides) -> dict:
    hyper = dict(
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.DECOUPLED,
        lr_max=2e-2,
        maximize=False,
    )
    return {**hyper, **overrides}


def adagrad_hyper(**overrides) -> dict:
    hyper = dict(
        lr_decay=0.1,
        eps=1e-10,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.L2,
        lr_max=2e-2,
        maximize=False,
    )
    return {**hyper, **overrides}


def radam_hyper(**overrides) -> dict:
    hyper = dict(
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.L2,
        lr_max=2e-2,
        maximize=False,
    )
    return {**hyper, **overrides}


def adamax_hyper(**overrides) -> dict:
    return radam_hyper(**overrides)  # the same hyperparameters


def adadelta_hyper(**overrides) -> dict:
    hyper = dict(
        rho=0.9,
        eps=1e-6,
        weight_decay=0.1,
        weight_decay_mode=WeightDecayMode.L2,
        lr_max=2e-2,
        maximize=False,
    )
    return {**hyper, **overrides}


# Each rule's hyperparameters (tests/_op_hyper.py's OP_HYPER for a rule without
# a function here), and the overrides of each of its state sets (the last one
# uses every state).
HYPER = {
    "adam": adam_hyper,
    "sgd": sgd_hyper,
    "rmsprop": rmsprop_hyper,
    "adagrad": adagrad_hyper,
    "adadelta": adadelta_hyper,
    "radam": radam_hyper,
    "adamax": adamax_hyper,
    "rprop": rprop_hyper,
    "lion": lion_hyper,
}
STATE_SET_OVERRIDES = {
    "adam": (dict(amsgrad=False), dict(amsgrad=True)),
    "sgd": (dict(momentum=0.0), dict(momentum=0.9)),
    "rmsprop": (dict(momentum=0.0, centered=False), dict(centered=False), dict(momentum=0.0), {}),
}


def rule_hyper(name: str, **overrides) -> dict:
    base = HYPER[name]() if name in HYPER else dict(OP_HYPER[name])
    return {**base, **overrides}


def full_hyper(name: str) -> dict:
    """The rule's hyperparameters under which a step uses every state."""
    return rule_hyper(name, **STATE_SET_OVERRIDES.get(name, ({},))[-1])


def make_lists(rule, sizes, dtype, hyper, count=3.0, seed=0):
    """[params, grads, states (state-major), counts] with nonzero states, as
    after a few steps. A fresh SGD buffer (first_step) is NaN: the kernel must
    not read it."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    fills = {
        "exp_avg": lambda n: 0.1 * torch.randn(n, generator=gen),
        "exp_avg_sq": lambda n: 0.01 * torch.rand(n, generator=gen),
        "max_exp_avg_sq": lambda n: 0.02 * torch.rand(n, generator=gen),
        "ax": lambda n: torch.randn(n, generator=gen),
        "exp_inf": lambda n: 0.1 * torch.rand(n, generator=gen) + 1e-3,
        "momentum_buffer": lambda n: (
            torch.full((n,), float("nan"))
            if hyper.get("first_step")
            else torch.randn(n, generator=gen)
        ),
        # square_avg >= grad_avg^2: the centered root stays real. Large enough that
        # |g / d| stays well below the buffer's |b| ~ 1: where mu * b and g / d
        # cancel, the error is an ulp of the terms, and torch's sqrt (the
        # reference's) is not always correctly rounded (seen: sqrt(0.62613028)
        # one fp32 ulp low), so the terms must be small for FP32_ATOL to hold.
        "square_avg": lambda n: 16.0 + 16.0 * torch.rand(n, generator=gen),
        "grad_avg": lambda n: 0.2 * (torch.rand(n, generator=gen) - 0.5),
        "sum": lambda n: 0.1 * torch.rand(n, generator=gen),
        # Adadelta steps by lr * sqrt(acc_delta / square_avg) * g: on square_avg's
        # scale, so that the step moves bf16 params.
        "acc_delta": lambda n: 16.0 * torch.rand(n, generator=gen),
        # Rprop: the last gradient, some of it 0 (a flip the step before); positive step sizes.
        "prev": lambda n: torch.randn(n, generator=gen) * (torch.rand(n, generator=gen) > 0.1),
        "step_size": lambda n: 0.05 + 0.2 * torch.rand(n, generator=gen),
    }
    states = [fills[name](n) for name in rule.used_states(hyper) for n in sizes]
    return [params, grads, states, scalar_states(rule.name, [count] * len(sizes))]


def clone_lists(lists):
    return [[t.clone() for t in ts] for ts in lists]


def reference_step(rule, lists, *, lr, hyper, grad_scale=None, found_inf=None):
    backends.ReferenceBackend().step(
        rule, *lists, lr=lr, hyper=hyper, grad_scale=grad_scale, found_inf=found_inf
    )


def launch(rule, lists, *, lr, hyper, launcher=None, block=BLOCK, **kwargs):
    launcher = launcher or mta.Launcher()
    launcher.step(rules.get(rule.name), *lists, lr=lr, hyper=hyper, block=block, **kwargs)
    return launcher


def assert_within_one_ulp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """|actual - expected| <= 1 ulp of `expected` in its (16-bit) dtype."""
    assert actual.dtype == expected.dtype
    a, e = actual.float(), expected.float()
    _, exponent = torch.frexp(e)
    ulp = torch.ldexp(torch.ones_like(e), exponent - MANTISSA_BITS[expected.dtype])
    bad = (a - e).abs() > ulp
    assert not bad.any(), f"{int(bad.sum())} elements over 1 ulp: {a[bad][:5]} vs {e[bad][:5]}"


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=FP32_RTOL, atol=FP32_ATOL)
    else:
        assert_within_one_ulp(actual, expected)


def assert_lists_close(actual, expected) -> None:
    for xs, ys in zip(actual, expected, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert_close(x, y)


def assert_lists_equal(actual, expected) -> None:
    for xs, ys in zip(actual, expected, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x, y) or (x.isnan() & y.isnan()).all()


# --- parity with the reference ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay_mode", list(WeightDecayMode))
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("counts_on_device", [False, True])
def test_adam_matches_reference(dtype, weight_decay_mode, amsgrad, maximize, counts_on_device):
    hyper = adam_hyper(weight_decay_mode=weight_decay_mode, amsgrad=amsgrad, maximize=maximize)
    lists = make_lists(ADAM, SIZES, dtype, hyper)
    expected = clone_lists(lists)
    launch(ADAM, lists, lr=1e-2, hyper=hyper, counts_on_device=counts_on_device)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert all(c.item() == 4.0 for c in lists[3]), "every count, empty tensors' too, +1"


SGD_CASES = [
    dict(momentum=0.0),
    dict(momentum=0.0, maximize=True, weight_decay_mode=WeightDecayMode.DECOUPLED),
    dict(),
    dict(first_step=True),
    dict(dampening=0.5),
    dict(dampening=0.5, first_step=True),
    dict(nesterov=True),
    dict(nesterov=True, first_step=True, maximize=True),
    dict(weight_decay_mode=WeightDecayMode.DECOUPLED, maximize=True),
    dict(weight_decay_mode=WeightDecayMode.FULLY_DECOUPLED, nesterov=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case", SGD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_sgd_matches_reference(dtype, case):
    hyper = sgd_hyper(**case)
    lists = make_lists(SGD, SIZES, dtype, hyper)
    expected = clone_lists(lists)
    launch(SGD, lists, lr=1e-2, hyper=hyper)
    reference_step(SGD, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)


RMSPROP_CASES = [
    dict(momentum=0.0, centered=False),
    dict(centered=False, maximize=True),
    dict(momentum=0.0, weight_decay_mode=WeightDecayMode.DECOUPLED),
    dict(),
    dict(alpha=0.3, weight_decay_mode=WeightDecayMode.FULLY_DECOUPLED),
    # TF1's RMSProp (timm's RMSpropTF) and each of its switches alone.
    dict(eps_in_sqrt=True, tf_ema_order=True, lr_in_momentum=True),
    dict(eps_in_sqrt=True, tf_ema_order=True, alpha=0.3, momentum=0.0),
    dict(eps_in_sqrt=True),
    dict(tf_ema_order=True, alpha=0.3),
    dict(lr_in_momentum=True, centered=False),
]
ADAGRAD_CASES = [
    dict(),
    dict(lr_decay=0.0, weight_decay=0.0),
    dict(maximize=True, eps=1e-3),
    dict(weight_decay_mode=WeightDecayMode.DECOUPLED, maximize=True),
    dict(weight_decay_mode=WeightDecayMode.FULLY_DECOUPLED),
]
ADADELTA_CASES = [
    dict(),
    dict(rho=0.5, weight_decay=0.0),
    dict(rho=1.0, maximize=True),
    dict(weight_decay_mode=WeightDecayMode.DECOUPLED, eps=1e-3),
    dict(weight_decay_mode=WeightDecayMode.FULLY_DECOUPLED, maximize=True),
]
# Counts before the step: 3 and 4 give rho_t = 3.997 and 4.996 (un-rectified,
# the last one just under torch's 5), 5 gives 5.994 (the first rectified step),
# 40 one well past it; beta2 = 0.6 is never rectified (rho_inf = 4).
RADAM_CASES = [
    dict(count=3.0),
    dict(count=4.0, weight_decay_mode=WeightDecayMode.DECOUPLED, maximize=True),
    dict(count=5.0),
    dict(count=40.0, weight_decay_mode=WeightDecayMode.FULLY_DECOUPLED),
    dict(count=40.0, beta2=0.6, maximize=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case", RMSPROP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "all"
)
def test_rmsprop_matches_reference(dtype, case):
    hyper = rule_hyper("rmsprop", **case)
    lists = make_lists(RMSPROP, SIZES, dtype, hyper)
    expected = clone_lists(lists)
    launch(RMSPROP, lists, lr=1e-2, hyper=hyper)
    reference_step(RMSPROP, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rule,case",
    [(ADAGRAD, c) for c in ADAGRAD_CASES] + [(ADADELTA, c) for c in ADADELTA_CASES],
    ids=lambda x: x.name if hasattr(x, "name") else "-".join(f"{k}={v}" for k, v in x.items()),
)
def test_adagrad_and_adadelta_match_reference(rule, case, dtype):
    hyper = rule_hyper(rule.name, **case)
    lists = make_lists(rule, SIZES, dtype, hyper, count=5.0)
    expected = clone_lists(lists)
    launch(rule, lists, lr=1e-2, hyper=hyper)
    reference_step(rule, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert all(c.item() == 6.0 for c in lists[3]), "every count, empty tensors' too, +1"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("counts_on_device", [False, True])
@pytest.mark.parametrize(
    "case", RADAM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_radam_matches_reference(dtype, case, counts_on_device):
    case = dict(case)
    count = case.pop("count")
    hyper = radam_hyper(**case)
    lists = make_lists(RADAM, SIZES, dtype, hyper, count=count)
    expected = clone_lists(lists)
    launch(RADAM, lists, lr=1e-2, hyper=hyper, counts_on_device=counts_on_device)
    reference_step(RADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay_mode", list(WeightDecayMode))
@pytest.mark.parametrize("maximize", [False, True])
def test_adamax_matches_reference(dtype, weight_decay_mode, maximize):
    hyper = adamax_hyper(weight_decay_mode=weight_decay_mode, maximize=maximize)
    lists = make_lists(ADAMAX, SIZES, dtype, hyper)
    expected = clone_lists(lists)
    launch(ADAMAX, lists, lr=1e-2, hyper=hyper)
    reference_step(ADAMAX, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)


RPROP_CASES = [
    {},
    dict(maximize=True),
    # Step sizes 0.05-0.25 (make_lists): both clamps bite.
    dict(etaminus=0.3, etaplus=1.5, step_size_min=0.04, step_size_max=0.2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case", RPROP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults"
)
def test_rprop_matches_reference(dtype, case):
    hyper = rprop_hyper(**case)
    lists = make_lists(RPROP, SIZES, dtype, hyper)
    expected = clone_lists(lists)
    launch(RPROP, lists, lr=1e-2, hyper=hyper)
    reference_step(RPROP, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert [c.item() for c in lists[3]] == [4.0] * len(SIZES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay_mode", list(WeightDecayMode))
@pytest.mark.parametrize("maximize", [False, True])
def test_lion_matches_reference(dtype, weight_decay_mode, maximize):
    hyper = lion_hyper(weight_decay_mode=weight_decay_mode, maximize=maximize)
    lists = make_lists(LION, SIZES, dtype, hyper)
    expected = clone_lists(lists)
    launch(LION, lists, lr=1e-2, hyper=hyper)
    reference_step(LION, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)


@pytest.mark.parametrize("counts_on_device", [False, True])
@pytest.mark.parametrize("rule", DEVICE_SCALAR_RULES, ids=lambda r: r.name)
def test_lr_as_a_tensor(rule, counts_on_device):
    """A device lr: the prologue kernel computes the per-tensor table (RAdam's
    at a count where rho_t passed 5). A rule with scalar states and its counts
    on the host computes it on the host (the interpreter's lr is a CPU
    tensor, read without a sync)."""
    # RMSprop with its lr inside the buffer: the prologue's other branch of both scales.
    hyper = rule_hyper(rule.name, **({"lr_in_momentum": True} if rule is RMSPROP else {}))
    lists = make_lists(rule, [3, 1100], torch.float32, hyper, count=9.0)
    expected = clone_lists(lists)
    launcher = launch(
        rule, lists, lr=torch.tensor(3e-3), hyper=hyper, counts_on_device=counts_on_device
    )
    reference_step(rule, expected, lr=3e-3, hyper=hyper)
    assert_lists_close(lists, expected)
    prologue = counts_on_device or not rule.scalars
    assert launcher.launches == 1 + prologue + (counts_on_device and rule.has_step)


@pytest.mark.parametrize(
    "lr, counts_on_device",
    [(1e-2, False), (1e-2, True), (torch.tensor(1e-2), False)],
    ids=["host-table", "device-counts", "tensor-lr-host-counts"],
)
def test_counts_that_differ_per_tensor(lr, counts_on_device):
    """After a partial load_state_dict, tensors can be at different steps: each
    gets its own bias corrections, from each source of the per-tensor table."""
    hyper = adam_hyper(amsgrad=True)
    lists = make_lists(ADAM, [7, 1030, 5], torch.float32, hyper)
    lists[3] = [torch.tensor(0.0), torch.tensor(41.0), torch.tensor(1000.0)]
    expected = clone_lists(lists)
    launch(ADAM, lists, lr=lr, hyper=hyper, counts_on_device=counts_on_device)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert [c.item() for c in lists[3]] == [1.0, 42.0, 1001.0]


@pytest.mark.parametrize("name", [name for name in RULES if not RULES[name].scalars])
def test_prologue_matches_host_scalars(name):
    """The device mirror of per_tensor (float64 exp2/log2, the Config rebuilt
    from fp32 halves) against the host's (Python's pow on doubles), for counts
    from 1 to 10^6, within 1 fp32 ulp: the two pows differ by ~1e-12."""
    rule = rules.get(name)
    hyper = {**OP_HYPER[name], "weight_decay_mode": 2}
    config = rule.config(hyper)
    counts = [0.0, 1.0, 9.0, 99.0, 12345.0, 999999.0]
    lists = make_lists(RULES[name], [1] * len(counts), torch.float32, hyper)
    lists[3] = [torch.tensor(c) for c in counts] if rule.HAS_STEP else []
    launcher = launch(RULES[name], lists, lr=torch.tensor(3e-3, dtype=torch.float64), hyper=hyper)
    (plan,) = launcher._plans.values()
    for i, count in enumerate(counts if rule.HAS_STEP else [0.0]):
        expected = torch.tensor(rule.per_tensor(config, 3e-3, count + 1.0), dtype=torch.float32)
        actual = plan.per_tensor_table[i, : len(expected)]
        torch.testing.assert_close(actual, expected, rtol=1.2e-7, atol=0.0)


def _scalar_values(lists, n_params: int, n_scalars: int) -> list[list[float]]:
    """Each scalar state's values, per tensor, from a call's state_steps."""
    steps = lists[3]
    return [
        [t.item() for t in steps[(1 + j) * n_params : (2 + j) * n_params]] for j in range(n_scalars)
    ]


@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", SCALAR_STATE_RULES, ids=lambda r: r.name)
def test_scalar_states_on_the_device_match_the_host_path_and_reference(rule, dtype, lr_kind):
    """Note [scalar states]: counts and scalar states in memory (the prologue
    reads them, the count kernel advances them) against the host path and the
    reference, over four steps of a changing lr (one for 16-bit params: the
    interpreter truncates each store, so their distance to the reference grows
    by up to an ulp a step), with counts that differ per tensor (ASGD passes
    t0 = 1: mu leaves 1, ax starts averaging). The scalar
    states are float32 recurrences on both paths: equal to 1 fp32 ulp (the
    device's pow is exp2(log2) in float64, the host's torch.pow: ~1e-16 apart,
    which flips a float32 rounding only near a tie)."""
    hyper = full_hyper(rule.name)
    sizes = [3, 1500, 0]
    device = make_lists(rule, sizes, dtype, hyper)
    device[3][: len(sizes)] = [torch.tensor(c) for c in (0.0, 1.0, 6.0)]
    host, expected = clone_lists(device), clone_lists(device)
    launcher = mta.Launcher()
    steps = 4 if dtype == torch.float32 else 1
    for k in range(steps):
        lr = 2e-3 * (1 + k)
        launch(
            rule,
            device,
            lr=torch.tensor(lr) if lr_kind == "tensor" else lr,
            hyper=hyper,
            counts_on_device=True,
            launcher=launcher,
        )
        launch(rule, host, lr=lr, hyper=hyper)
        reference_step(rule, expected, lr=lr, hyper=hyper)
    assert launcher.launches == 3 * steps, "a prologue, an element and a count launch per step"
    for actual in (device, expected):
        assert [c.item() for c in actual[3][: len(sizes)]] == [steps, 1.0 + steps, 6.0 + steps]
    n_scalars = len(rule.scalars)
    for values in (host, expected):
        for got, want in zip(
            _scalar_values(device, len(sizes), n_scalars),
            _scalar_values(values, len(sizes), n_scalars),
            strict=True,
        ):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1.2e-7, atol=0)
    assert_lists_close(device[:3], host[:3])
    assert_lists_close(device[:3], expected[:3])


@pytest.mark.parametrize("rule", SCALAR_STATE_RULES, ids=lambda r: r.name)
def test_scalar_state_prologue_and_advance_match_host_scalars(rule):
    """The device mirror of a rule's per_tensor with scalar states, against
    the host's, for counts from 1 to 10^6 and scalar states away from their
    start: the prologue's table within 1 fp32 ulp, the count kernel's new
    values within 1 ulp and all but a rare tie bit for bit."""
    module = rules.get(rule.name)
    hyper = {**OP_HYPER[rule.name], "weight_decay_mode": 2}
    config = module.config(hyper)
    counts = [0.0, 1.0, 9.0, 99.0, 12345.0, 999999.0]
    n = len(counts)
    lists = make_lists(rule, [1] * n, torch.float32, hyper)
    gen = torch.Generator().manual_seed(3)
    starts = [0.2 + 0.7 * torch.rand(n, generator=gen) for _ in rule.scalars]
    lists[3] = [torch.tensor(c) for c in counts] + [
        torch.tensor(v.item()) for values in starts for v in values
    ]
    launcher = launch(rule, lists, lr=torch.tensor(3e-3), hyper=hyper, counts_on_device=True)
    (plan,) = launcher._plans.values()
    steps = torch.tensor(counts, dtype=torch.float64) + 1.0
    scalars, after = module.per_tensor(config, float(torch.tensor(3e-3)), steps, tuple(starts))
    expected = torch.zeros(n, len(scalars))
    for j, field in enumerate(scalars):
        expected[:, j] = torch.as_tensor(field, dtype=torch.float64)
    torch.testing.assert_close(
        plan.per_tensor_table[:, : len(scalars)], expected, rtol=1.2e-7, atol=0.0
    )
    for j, values in enumerate(after):
        got = torch.stack(lists[3][(1 + j) * n : (2 + j) * n])
        torch.testing.assert_close(got, values, rtol=1.2e-7, atol=0.0)
        assert (got == values).sum() >= n - 1
    assert [c.item() for c in lists[3][:n]] == [c + 1.0 for c in counts]


@pytest.mark.parametrize("rule", SCALAR_STATE_RULES, ids=lambda r: r.name)
def test_host_scalar_states_refuse_a_device_lr(rule):
    """With counts on the host, the host advances the scalar states and would
    have to read a device lr: refused before anything is written (a meta
    tensor stands for a CUDA one)."""
    hyper = full_hyper(rule.name)
    lists = make_lists(rule, [3, 40], torch.float32, hyper)
    before = clone_lists(lists)
    with pytest.raises(RuntimeError, match=f"{rule.scalars[0]} on the CPU"):
        launch(rule, lists, lr=torch.tensor(1e-3, device="meta"), hyper=hyper)
    assert_lists_equal(lists, before)


# --- edges of the traversal ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_views_take_the_masked_path(dtype):
    """A param that is a view at an odd element offset has no 16-byte aligned
    address: none of its blocks may be flagged full (that flag is what licenses
    the vector hints), and its results stay right."""
    n = 3000
    buffers = [torch.randn(n + 1).to(dtype), torch.randn(n + 1).to(dtype)]
    hyper = adam_hyper()
    lists = [
        [buffers[0][1:], torch.randn(n).to(dtype)],
        [buffers[1][1:], torch.randn(n).to(dtype)],
        [torch.zeros(n) for _ in range(4)],
        [torch.tensor(0.0), torch.tensor(0.0)],
    ]
    expected = clone_lists(lists)
    outside = buffers[0][0].clone()  # the element just before the view
    launcher = launch(ADAM, lists, lr=1e-2, hyper=hyper)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    (plan,) = launcher._plans.values()
    codes = plan.block_table[:, mta.COL_CODE.value]
    tensor, full = codes >> 1, codes & 1
    assert full[tensor == 0].sum() == 0, "an unaligned view's block is flagged for vector hints"
    assert full[tensor == 1].tolist() == [1, 1, 0], "3000 = 2 full blocks of 1024 + a tail"
    assert torch.equal(buffers[0][0], outside) and lists[0][0].data_ptr() % 16 != 0


def test_many_tiny_tensors_one_launch():
    """2000 tensors of 1 to 7 elements: one launch for the whole bucket."""
    sizes = [1 + i % 7 for i in range(2000)]
    hyper = adam_hyper()
    lists = make_lists(ADAM, sizes, torch.float32, hyper)
    expected = clone_lists(lists)
    launcher = launch(ADAM, lists, lr=1e-2, hyper=hyper, block=mta.INTERPRETER_BLOCK_SIZE)
    assert launcher.launches == 1
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)


@pytest.mark.parametrize("rule", [ADAM, *SCALAR_STATE_RULES], ids=lambda r: r.name)
def test_only_empty_tensors_still_count(rule):
    """Zero-size tensors' counts advance, and their scalar states with them."""
    hyper = full_hyper(rule.name)
    results = []
    for counts_on_device in (False, True):
        lists = make_lists(rule, [0, 0], torch.float32, hyper)
        launcher = launch(rule, lists, lr=1e-2, hyper=hyper, counts_on_device=counts_on_device)
        assert [c.item() for c in lists[3][:2]] == [4.0, 4.0]
        assert launcher.launches == int(counts_on_device), "only the count launch"
        results.append(lists[3])
    assert_lists_close([results[1]], [results[0]])
    if rule.scalars:
        assert not torch.equal(results[1][2], make_lists(rule, [0], torch.float32, hyper)[3][1])


@pytest.mark.parametrize("counts_on_device", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", DEVICE_SCALAR_RULES, ids=lambda r: r.name)
def test_grad_scale_and_found_inf(rule, dtype, counts_on_device):
    hyper = full_hyper(rule.name)
    lists = make_lists(rule, [3, 1500], dtype, hyper)
    scale = torch.tensor(1024.0)
    # found_inf nonzero: nothing at all is written, counts included.
    before = clone_lists(lists)
    kwargs = dict(lr=1e-2, hyper=hyper, grad_scale=scale, counts_on_device=counts_on_device)
    launch(rule, lists, found_inf=torch.tensor(1.0), **kwargs)
    assert_lists_equal(lists, before)
    # found_inf zero: grads are divided by the scale and stored back unscaled.
    expected = clone_lists(lists)
    launch(rule, lists, found_inf=torch.tensor(0.0), **kwargs)
    reference_step(rule, expected, lr=1e-2, hyper=hyper, grad_scale=scale)
    assert_lists_close(lists, expected)
    assert lists[1][1].abs().max() < 0.01, "grads were stored back unscaled"


# --- the plan cache (Note [plan validity]) -------------------------------------------


def test_plan_is_reused_while_nothing_changed():
    hyper = adam_hyper()
    lists = make_lists(ADAM, [5, 9], torch.float32, hyper)
    launcher = launch(ADAM, lists, lr=1e-2, hyper=hyper, counts_on_device=True)
    (plan,) = launcher._plans.values()
    block_table = plan.block_table
    launch(ADAM, lists, lr=1e-2, hyper=hyper, counts_on_device=True, launcher=launcher)
    assert launcher.launches == 6, "a prologue, an element and a count launch per step"
    assert list(launcher._plans.values()) == [plan] and plan.block_table is block_table


def test_new_grads_refresh_the_table():
    """Grads may be new tensors each step (zero_grad(set_to_none=True)): the
    plan must follow them, not read the freed ones."""
    hyper = adam_hyper()
    launcher = mta.Launcher()
    lists = make_lists(ADAM, [33, 2000], torch.float32, hyper)
    expected = clone_lists(lists)
    for seed in range(2):
        fresh = make_lists(ADAM, [33, 2000], torch.float32, hyper, seed=10 + seed)[1]
        lists[1], expected[1] = fresh, [g.clone() for g in fresh]
        launch(ADAM, lists, lr=1e-2, hyper=hyper, launcher=launcher)
        reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert len(launcher._plans) == 1


@pytest.mark.parametrize("change", ["state replaced in the list", "param .data swapped"])
def test_a_stale_table_is_never_used(change):
    """The same list objects, whose tensors changed between steps (the old
    memory kept alive, so that the new tensor gets a new address): the kernel
    steps the new tensors and leaves the old memory alone."""
    hyper = adam_hyper()
    launcher = mta.Launcher()
    lists = make_lists(ADAM, [40, 1500], torch.float32, hyper)
    expected = clone_lists(lists)
    launch(ADAM, lists, lr=1e-2, hyper=hyper, launcher=launcher)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    if change.startswith("state"):
        stale = lists[2][1]
        lists[2][1] = stale.clone()  # the same list object, a new exp_avg
    else:
        stale = lists[0][1].data
        lists[0][1].data = stale.clone()
    stale_before = stale.clone()
    launch(ADAM, lists, lr=1e-2, hyper=hyper, launcher=launcher)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert torch.equal(stale, stale_before), "the old memory was written"


def test_a_param_shrunk_in_place_rebuilds_the_blocks():
    """Same address, fewer elements (p.data = p.data[:k]): the block table of
    the old size would read past the new grads; the numel check rebuilds it."""
    hyper = adam_hyper()
    launcher = mta.Launcher()
    lists = make_lists(ADAM, [2500, 7], torch.float32, hyper)
    launch(ADAM, lists, lr=1e-2, hyper=hyper, launcher=launcher)
    storage = lists[0][0]
    tail = storage[1200:].clone()
    lists[0][0] = storage[:1200]
    lists[1][0] = lists[1][0][:1200].clone()
    lists[2][0], lists[2][2] = lists[2][0][:1200], lists[2][2][:1200]
    expected = clone_lists(lists)
    launch(ADAM, lists, lr=1e-2, hyper=hyper, launcher=launcher)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert torch.equal(storage[1200:], tail), "elements past the new size were written"


# --- host reads and the launch count -------------------------------------------------


@pytest.mark.parametrize("rule", [ADAM, *SCALAR_STATE_RULES], ids=lambda r: r.name)
def test_device_counts_path_never_syncs(monkeypatch, rule):
    """With counts (and scalar states), lr, grad_scale and found_inf in
    memory, the launcher reads no tensor's value on the host (what capturable
    needs): every host read raises."""
    hyper = full_hyper(rule.name)
    lists = make_lists(rule, [3, 1100], torch.float32, hyper)
    expected = clone_lists(lists)
    scalars = [torch.tensor(2e-3), torch.tensor(8.0), torch.tensor(0.0)]
    launcher = mta.Launcher()

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host read"):
        bool(torch.tensor(1.0))
    # The interpreter itself reads memory through numpy, not these methods.
    launcher.step(
        rules.get(rule.name),
        *lists,
        lr=scalars[0],
        hyper=hyper,
        grad_scale=scalars[1],
        found_inf=scalars[2],
        counts_on_device=True,
        block=BLOCK,
    )
    monkeypatch.undo()
    assert launcher.launches == 3
    reference_step(rule, expected, lr=2e-3, hyper=hyper, grad_scale=scalars[1])
    assert [c.item() for c in lists[3][:2]] == [4.0, 4.0]
    assert_lists_close(lists, expected)


def test_fp32_result_moves_and_tolerance_is_tight():
    """The fp32 tolerance must be able to fail: one step moves params by ~lr,
    10^4 times FP32_ATOL, and a wrong lr is caught."""
    hyper = adam_hyper()
    lists = make_lists(ADAM, [4097], torch.float32, hyper)
    before = lists[0][0].clone()
    expected = clone_lists(lists)
    launch(ADAM, lists, lr=1.001e-2, hyper=hyper)
    reference_step(ADAM, expected, lr=1e-2, hyper=hyper)
    assert (lists[0][0] - before).abs().max() > 1e-3
    with pytest.raises(AssertionError):
        assert_close(lists[0][0], expected[0][0])


def test_one_ulp_check_can_fail():
    x = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    assert_within_one_ulp(x + torch.tensor([0.0078125, 0.0], dtype=torch.bfloat16), x)
    with pytest.raises(AssertionError):
        assert_within_one_ulp(x + torch.tensor([0.015625 * 2, 0.0], dtype=torch.bfloat16), x)


# --- the backend ---------------------------------------------------------------------


@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
def test_backend_steps_every_rule(rule):
    hyper = full_hyper(rule.name)
    lists = make_lists(rule, [3, 1500, 0], torch.float32, hyper)
    expected = clone_lists(lists)
    backend = backends.get("triton")
    before = backend.launcher.launches
    backend.step(rule, *lists, lr=1e-2, hyper=hyper)
    reference_step(rule, expected, lr=1e-2, hyper=hyper)
    assert_lists_close(lists, expected)
    assert backend.launcher.launches - before == 1


def test_refused_call_writes_nothing():
    hyper = adam_hyper()
    lists = make_lists(ADAM, [3, 5], torch.float32, hyper)
    lists[2][1] = torch.zeros(5, dtype=torch.float64)
    before = clone_lists(lists)
    with pytest.raises(RuntimeError, match="exp_avg 1 must be torch.float32"):
        backends.get("triton").step(ADAM, *lists, lr=1e-2, hyper=hyper)
    assert_lists_equal(lists, before)


def test_backend_availability(monkeypatch):
    backend = backends.get("triton")
    cpu = backends.Bucket(torch.device("cpu"), torch.float32, True)
    assert backend.unavailable_reason() is None
    assert backend.unsupported_reason(cpu) is None
    assert "float64" in backend.unsupported_reason(
        backends.Bucket(torch.device("cpu"), torch.float64, True)
    )
    assert "dense" in backend.unsupported_reason(
        backends.Bucket(torch.device("cpu"), torch.float32, False)
    )
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in backend.unsupported_reason(cpu)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in backend.unavailable_reason()


# --- the rule modules mirror the C++ headers and the registry -----------------------


def _struct_fields(header: str, struct: str) -> list[str]:
    """The member names of `struct <struct> { ... };` in a rule header."""
    body = re.search(rf"struct {struct} \{{(.*?)\}};", header, re.DOTALL).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    return [
        name.strip()
        for statement in body.split(";")
        if statement.strip()
        for name in statement.split(None, 1)[1].split(",")
    ]


@pytest.mark.parametrize("name", list(RULES))
def test_rule_module_mirrors_its_header_and_registry_entry(name):
    rule, entry = rules.get(name), RULES[name]
    header = (HEADERS / f"{name}.h").read_text()
    assert list(rule.Config._fields) == _struct_fields(header, "Config")
    assert list(rule.Launch._fields) == _struct_fields(header, "Launch")
    assert list(rule.PerTensor._fields) == _struct_fields(header, "PerTensor")
    assert len(rule.PerTensor._fields) <= mta.PER_TENSOR_COLS.value
    names = re.search(r"kStateNames\[\] = \{(.*?)\};", header).group(1)
    assert rule.STATE_NAMES == tuple(re.findall(r'"(\w+)"', names)) == entry.states
    assert rule.HAS_STEP == entry.has_step
    scalars = re.search(r"kScalarNames\[\] = \{(.*?)\};", header)
    assert getattr(rule, "SCALAR_NAMES", ()) == entry.scalars
    assert entry.scalars == (tuple(re.findall(r'"(\w+)"', scalars.group(1))) if scalars else ())
    assert len(rule.STATE_NAMES) <= mta.MAX_STATES.value
    assert len(entry.scalars) <= mta.MAX_SCALAR_STATES.value
    assert set(rule_hyper(name)) == set(entry.hyper)
    for overrides in STATE_SET_OVERRIDES.get(name, ({},)):
        h = rule_hyper(name, **overrides)
        used = mta.state_mask(rule, rule.config(h))
        assert [n for k, n in enumerate(rule.STATE_NAMES) if (used >> k) & 1] == list(
            entry.used_states(h)
        )
        assert used in rule.STATE_SETS


def test_weight_decay_modes_match_the_reference():
    from fusedopt.kernels.rules import common

    modes = (common.WD_L2, common.WD_DECOUPLED, common.WD_FULLY_DECOUPLED)
    assert [m.value for m in modes] == [int(m) for m in WeightDecayMode]
