"""Master-weight policies of bf16/fp16 params (fusedopt.reference.master; Note
[master weights of a group] in fusedopt/optim/base.py): `master_weights`,
`kahan_sum`, `stochastic_rounding` (+ `rounding_seed`) as group keys.

  - Philox4x32-10 against Random123's published known answers (kat_vectors);
  - stochastic rounding unbiased in expectation (a stated binomial bound);
  - the reference: master_weights steps exactly the fp32 run; kahan_sum and
    stochastic rounding move a param whose updates plain bf16 rounds away;
  - every policy on the cpu backend against the reference, bit for bit;
  - an fp32 param in a policy group steps as without (a no-op, not an error:
    a model's fp32 norms and bf16 weights commonly share one group);
  - refusals: two policies, a bad seed, stochastic rounding of fp16, and the
    backends without the policy's store (named, and passed over by "auto");
  - state_dict round trip: a checkpoint mid-run continues bit for bit;
  - quality: a small bf16 model ends closer to its fp32 run with each policy
    than plain bf16 does.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import re
import shutil
import subprocess

import fusedopt
import pytest
import torch
from _cuda_tools import REPO, run_cuobjdump
from _op_hyper import OP_HYPER, op_lists
from fusedopt import backends
from fusedopt.reference import master
from helpers import draw_grads, make_params, train_tiny_gpt2

POLICIES = master.POLICIES
SIZES = [1, 3, 257, (5, 7)]


# --- Philox ---------------------------------------------------------------------------

# Random123 1.14, examples/kat_vectors: "philox4x32 10 <counter x4> <key x2> <result x4>".
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    out = master.philox4x32_10([torch.tensor(c) for c in counter], key)
    assert [int(w) for w in out] == list(expected)


# A kernel of the store's device functions (core/master.h, core/philox.h), for
# nvcc: the headers are written for the CUDA traversal to use later.
DEVICE_PROBE = r"""
#include "fusedopt/core/master.h"
__global__ void probe(fusedopt::Bf16* out, const float* x, unsigned long long seed, unsigned step) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = fusedopt::stochastic_round_bf16(x[i], fusedopt::rounding_bits(seed, step, 7u, i));
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (compiled, never run)")
def test_philox_header_compiles_for_the_gpu(tmp_path):
    """nvcc compiles the headers for sm_90; in the SASS the 10 rounds are
    unrolled: a multiply by Philox's M0 or M1 per product, 2 per round but the
    last, whose word 0 needs one (19 with nvcc 13.0), and no local memory (a
    spilled or indexed Philox4 would show as LDL/STL). Compiled and inspected
    only: no GPU has run it."""
    source = tmp_path / "probe.cu"
    source.write_text(DEVICE_PROBE)
    cubin = tmp_path / "probe.cubin"
    include = REPO / "csrc" / "include"
    subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_90", f"-I{include}", "-cubin", "-o", cubin, source],
        check=True,
        capture_output=True,
    )
    sass = run_cuobjdump("-sass", path=cubin)
    # M0 and M1 as SASS writes them: signed 32-bit immediates.
    multipliers = [f"-{2**32 - m:#x}" for m in (master.PHILOX_M0, master.PHILOX_M1)]
    lines = sass.splitlines()
    products = [line for line in lines if "IMAD" in line and any(m in line for m in multipliers)]
    assert len(products) == 2 * master.PHILOX_ROUNDS - 1
    opcodes = [line.split()[1] for line in lines if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    assert "EXIT" in opcodes and not [op for op in opcodes if op.startswith(("LDL", "STL"))]


# --- stochastic rounding ----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounding_unbiased(fraction, sign):
    """x = a + f * ulp between bf16 neighbours a and b: the mean of N rounded
    copies (element indices 0..N-1, one Philox stream) is x. The rounded value
    is a or b, b with some probability q: the mean's error is (q_hat - f) * ulp
    with q_hat's standard deviation sqrt(f (1 - f) / N) <= 0.5 / sqrt(N). The
    bound is 6 of those (a false failure ~2e-9 for a fair generator; the
    draw is fixed anyway); round to nearest misses it by 0.1 ulp at least."""
    n = 1 << 20
    a = 1.5
    ulp = 2.0**-7  # bf16's spacing in [1, 2)
    x = torch.full((n,), sign * (a + fraction * ulp), dtype=torch.float32)
    rounded = master.stochastic_round_bf16(x, master.rounding_bits(7, 1, 0, n)).double()
    assert set(rounded.abs().unique().tolist()) <= {a, a + ulp}
    bound = 6 * 0.5 / n**0.5 * ulp
    assert abs(rounded.mean().item() - x[0].item()) <= bound
    nearest = x.to(torch.bfloat16).double()
    assert abs(nearest.mean().item() - x[0].item()) > bound


def test_stochastic_rounding_edges():
    """Exact bf16 values stay; NaN stays NaN; inf stays inf; bits differ per
    element, step, tag and seed."""
    x = torch.tensor([1.0, -2.5, 0.0, float("inf"), float("-inf"), float("nan")])
    out = master.stochastic_round_bf16(x, torch.full((6,), 0xFFFF, dtype=torch.int64))
    assert out[:5].float().tolist() == x[:5].tolist() and out[5].isnan()
    base = master.rounding_bits(0, 1, 0, 64)
    for other in (
        master.rounding_bits(1, 1, 0, 64),
        master.rounding_bits(0, 2, 0, 64),
        master.rounding_bits(0, 1, 1, 64),
    ):
        assert not torch.equal(base, other)
    assert base.unique().numel() > 60 and int(base.max()) < 1 << 16


# --- the reference ---------------------------------------------------------------------


def _run(policy, dtype, backend, steps=5, opt_cls=None, **group):
    params = make_params(SIZES, dtype)
    opt_cls = opt_cls or fusedopt.AdamW
    options = {} if policy == master.NONE else {policy: True}
    opt = opt_cls(
        [{"params": params, **options, **group}], lr=1e-2, weight_decay=0.1, backend=backend
    )
    for k in range(steps):
        for p, g in zip(params, draw_grads(params, k)):
            p.grad = g
        opt.step()
    return params, opt


def test_master_weights_step_the_fp32_run():
    """master_param is the fp32 run (fp32 params, the same bf16 grads) bit for
    bit; the bf16 param is its round to nearest."""
    params, opt = _run("master_weights", torch.bfloat16, "reference")
    fp32 = make_params(SIZES, torch.bfloat16)
    fp32 = [p.detach().float().requires_grad_() for p in fp32]
    ref = fusedopt.AdamW(fp32, lr=1e-2, weight_decay=0.1, backend="reference")
    for k in range(5):
        for p, g in zip(fp32, draw_grads(make_params(SIZES, torch.bfloat16), k)):
            p.grad = g.float()
        ref.step()
    for p, q in zip(params, fp32):
        assert torch.equal(opt.state[p]["master_param"], q.detach())
        assert torch.equal(p.detach(), q.detach().to(torch.bfloat16))


@pytest.mark.parametrize("policy", ["kahan_sum", "stochastic_rounding", "master_weights"])
def test_policies_keep_updates_plain_bf16_loses(policy):
    """SGD with updates of 1/16 ulp: plain bf16 never moves a param of 1.0;
    each policy follows the fp32 run (100 steps, lr * g = 2^-11: the fp32
    param ends at 1 - 100 * 2^-11). master_weights and kahan_sum: every element
    within one bf16 ulp (2^-8 below 1). stochastic_rounding: each element is a
    random walk of 100 unbiased roundings, at most 2^-7 each, so its error's
    standard deviation is at most sqrt(100 / 4) * 2^-7; the mean of 4096 such
    within 6 of their standard deviations: 6 * 5 * 2^-7 / 64 < 2^-8."""
    p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    options = {} if policy == master.NONE else {policy: True}
    opt = fusedopt.SGD([{"params": [p], **options}], lr=2.0**-11, backend="reference")
    plain = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    plain_opt = fusedopt.SGD([plain], lr=2.0**-11, backend="reference")
    for _ in range(100):
        p.grad = torch.ones_like(p)
        plain.grad = torch.ones_like(plain)
        opt.step()
        plain_opt.step()
    target = 1.0 - 100 * 2.0**-11
    assert torch.equal(plain.detach(), torch.ones_like(plain))
    error = p.detach().double() - target
    assert abs(error.mean().item()) <= 2.0**-8
    if policy != "stochastic_rounding":
        assert error.abs().max().item() <= 2.0**-8


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_fp32_param_is_a_no_op(policy, backend):
    """An fp32 param in a policy group steps exactly as without the policy and
    keeps no policy state."""
    params, opt = _run(policy, torch.float32, backend)
    plain, _ = _run(master.NONE, torch.float32, backend)
    for p, q in zip(params, plain):
        assert torch.equal(p, q)
        assert not set(opt.state[p]) & {master.MASTER_KEY, master.KAHAN_KEY, master.COUNT_KEY}


# --- cpu against the reference ------------------------------------------------------------

# Optimizers that cover the kinds of rule: moments with a step count (AdamW),
# no step count and a fresh-state flag (SGD with momentum), a scalar state
# beside the count (NAdam), a sign update (Lion), no state at all (plain SGD).
CPU_CASES = {
    "adamw": (fusedopt.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "sgd_momentum": (fusedopt.SGD, {"lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-3}),
    "sgd": (fusedopt.SGD, {"lr": 1e-2}),
    "nadam": (fusedopt.NAdam, {"lr": 1e-2}),
    "lion": (fusedopt.Lion, {"lr": 1e-3, "weight_decay": 0.1}),
}
# Across the CPU's 64K-element chunks (binding/cpu_step.h kCpuChunkSize): a
# chunk boundary inside a param checks the element index of Philox's counter.
CPU_SIZES = [1, 3, 257, (2, 3, 5, 7), (1 << 16) + 5, (3, 1500)]


def _cpu_rule(rule):
    """The rule's CPU op as a reference rule on an fp32 param: the oracle's
    store (fusedopt.reference.master) around the cpu backend's own math, so
    that the comparison checks the store bit for bit (the reference rules
    match the compiled ones to rounding, not bit for bit: tests/test_parity.py)."""

    def step(param, grad, state, *, lr, grad_scale=None, **hyper):
        states = [state[name] for name in rule.used_states(hyper)]
        steps = [state[key] for key in rule.scalar_keys]
        scale = None if grad_scale is None else torch.tensor(grad_scale)
        rule.op.default([param], [grad.float()], states, steps, lr=lr, **hyper, grad_scale=scale)

    return step


def _lockstep(
    policy,
    dtype,
    case,
    state_dtype="fp32",
    channels_last=False,
    steps=4,
    grad_scale=None,
    pair=("cpu", "reference"),
):
    """`pair`'s two backends step the same params and grads; the params and
    every state equal bit for bit ("reference" steps the cpu op's rule under
    the reference store: _cpu_rule)."""
    cls, kwargs = CPU_CASES[case]
    runs = []
    for backend in pair:
        params = make_params(CPU_SIZES, dtype)
        if channels_last:
            params[3] = params[3].detach().to(memory_format=torch.channels_last).requires_grad_()
        group = {"params": params, policy: True, "rounding_seed": 2**63 + 5}
        if state_dtype != "fp32":
            group["state_dtype"] = state_dtype
        opt = cls([group], backend=backend, **kwargs)
        if backend == "reference":
            opt.rule = dataclasses.replace(cls.rule, reference=_cpu_rule(cls.rule))
        if grad_scale is not None:
            opt.grad_scale = torch.tensor(grad_scale)
        for k in range(steps):
            for p, g in zip(params, draw_grads(params, k)):
                p.grad = torch.empty_like(p).copy_(g)
            opt.step()
        assert {choice.backend.name for *_, choice in opt.last_step()} == {backend}
        runs.append((params, opt))
    (cpu, cpu_opt), (ref, ref_opt) = runs
    for p, q in zip(cpu, ref):
        assert torch.equal(p.detach().view(torch.int16), q.detach().view(torch.int16)), (
            f"{policy} {case} {pair}: param of shape {tuple(p.shape)}"
        )
        for key, value in ref_opt.state[q].items():
            assert torch.equal(cpu_opt.state[p][key], value), key


@pytest.mark.parametrize("case", CPU_CASES)
@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_equals_reference_bf16(policy, case):
    _lockstep(policy, torch.bfloat16, case)


@pytest.mark.parametrize("policy", ["master_weights", "kahan_sum"])
def test_cpu_equals_reference_fp16(policy):
    _lockstep(policy, torch.float16, "adamw")


@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_equals_reference_with_grad_scaler(policy):
    """GradScaler's grad_scale: the store loop unscales as the plain loop does."""
    _lockstep(policy, torch.bfloat16, "adamw", grad_scale=1024.0)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_found_inf_skips_the_store_too(policy, backend):
    """found_inf nonzero: params, policy states and rounding_step unchanged."""
    params, opt = _run(policy, torch.bfloat16, backend, steps=2)
    before = copy.deepcopy((params, opt.state_dict()))
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    for p, q in zip(params, before[0]):
        assert torch.equal(p, q)
    for key, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, before[1]["state"][key][name]), name


@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_equals_reference_bf16_states_channels_last(policy):
    """bf16 states, and a channels_last param: elements are numbered in memory
    order on both backends."""
    _lockstep(policy, torch.bfloat16, "adamw", state_dtype="bf16", channels_last=True)


# --- triton (under the interpreter) against cpu ---------------------------------------
# The Triton frame's store (kernels/mta.py _store_param, kernels/storage.py's
# Philox mirror) bit for bit against the cpu loop's: the same rule math on both
# (Note [bit-identical backends] in kernels/mta.py). CPU_SIZES' largest param
# spans 5 of the interpreter's 16K-element programs (INTERPRETER_BLOCK_SIZE):
# block starts inside a param check Philox's element index.


@pytest.mark.parametrize("case", CPU_CASES)
@pytest.mark.parametrize("policy", POLICIES)
def test_triton_equals_cpu_bf16(policy, case):
    _lockstep(policy, torch.bfloat16, case, pair=("triton", "cpu"))


@pytest.mark.parametrize("policy", ["master_weights", "kahan_sum"])
def test_triton_equals_cpu_fp16(policy):
    _lockstep(policy, torch.float16, "adamw", pair=("triton", "cpu"))


@pytest.mark.parametrize("policy", POLICIES)
def test_triton_equals_cpu_with_grad_scaler(policy):
    _lockstep(policy, torch.bfloat16, "adamw", grad_scale=1024.0, pair=("triton", "cpu"))


@pytest.mark.parametrize("policy", POLICIES)
def test_triton_equals_cpu_bf16_states_channels_last(policy):
    _lockstep(
        policy,
        torch.bfloat16,
        "adamw",
        state_dtype="bf16",
        channels_last=True,
        pair=("triton", "cpu"),
    )


@pytest.mark.parametrize("found", [0.0, 1.0])
def test_triton_device_path_advances_rounding_step_unless_found_inf(found):
    """The GPU layout (counts, found_inf and rounding_step read in memory, no
    host read) driven on CPU tensors: found_inf nonzero writes nothing, zero
    steps and advances every rounding_step, a zero-size param's too."""
    from fusedopt.kernels import mta, rules

    params, grads, states, steps = op_lists("adam", [300, 0, 40], torch.bfloat16)
    counts = [torch.full((), 3.0) for _ in params]
    before = [p.clone() for p in params]
    mta.Launcher().step(
        rules.get("adam"),
        params,
        grads,
        states,
        steps,
        lr=1e-2,
        hyper=OP_HYPER["adam"],
        found_inf=torch.tensor(found),
        counts_on_device=True,
        block=mta.INTERPRETER_BLOCK_SIZE,
        store_policy=backends.STORE_POLICY_CODES["stochastic_rounding"],
        store=counts,
        store_tags=[0, 1, 2],
        rounding_seed=7,
    )
    assert [c.item() for c in counts] == [3.0 + (found == 0.0)] * 3
    assert [c.item() for c in steps] == [float(found == 0.0)] * 3
    assert all(torch.equal(p, q) for p, q in zip(params, before)) == (found != 0.0)


# --- refusals ---------------------------------------------------------------------------


def test_bad_groups_are_refused():
    p = make_params([3], torch.bfloat16)
    with pytest.raises(ValueError, match="at most one of"):
        fusedopt.SGD([{"params": p, "master_weights": True, "kahan_sum": True}], lr=0.1)
    with pytest.raises(ValueError, match="must be a bool"):
        fusedopt.SGD([{"params": p, "kahan_sum": 1}], lr=0.1)
    for seed in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match=r"rounding_seed must be an int in \[0, 2\^64\)"):
            fusedopt.SGD([{"params": p, "rounding_seed": seed}], lr=0.1)


def test_stochastic_rounding_of_fp16_is_refused():
    (p,) = make_params([3], torch.float16)
    opt = fusedopt.SGD([{"params": [p], "stochastic_rounding": True}], lr=0.1)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="stochastic_rounding=True applies to torch.bfloat16"):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize("policy", POLICIES)
def test_kernel_backends_take_the_store_but_not_with_8bit_states(policy):
    """cuda and triton step every policy of an elementwise rule ("auto" keeps
    cuda first for CUDA params); with 8-bit states each says why not."""
    from fusedopt.triton_backend import TritonBackend

    for cls in (backends.CudaBackend, TritonBackend, backends.CpuBackend):
        assert policy in cls.store_policies
    bucket = backends.Bucket(torch.device("cuda"), torch.bfloat16, True, "int8", policy)
    for name in ("cuda", "triton"):
        reason = backends._no_blockwise_store(bucket, name)
        assert reason is not None and f"{policy}=True with 8-bit states" in reason
    cpu_bucket = backends.Bucket(torch.device("cpu"), torch.bfloat16, True, "fp32", policy)
    assert backends.resolve("auto", cpu_bucket).backend.name == "cpu"


@pytest.mark.parametrize("case", ["adamw", "lion"])
@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_equals_reference_8bit_states(policy, case):
    """8-bit states under a policy: each block decoded, stepped by the store
    loop, re-encoded (its params over 4,096 elements, two of them across a
    chunk boundary, so that 8-bit states are kept and Philox's element index
    runs on across blocks and chunks)."""
    _lockstep(policy, torch.bfloat16, case, state_dtype="int8")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_policy_change_rebuilds_the_plan(backend):
    """master_weights turned off drops master_param (the param steps on
    alone); turned on again, the master restarts from the param's value."""
    (p,) = make_params([33], torch.bfloat16)
    opt = fusedopt.SGD([{"params": [p], "master_weights": True}], lr=2.0**-11, backend=backend)
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["master_param"].dtype == torch.float32
    opt.param_groups[0]["master_weights"] = False
    opt.step()
    assert "master_param" not in opt.state[p]
    opt.param_groups[0]["kahan_sum"] = True
    opt.step()
    assert set(opt.state[p]) == {"kahan_comp"}
    opt.param_groups[0]["kahan_sum"] = False
    opt.param_groups[0]["master_weights"] = True
    before = p.detach().float()
    opt.step()
    assert set(opt.state[p]) == {"master_param"}
    assert torch.equal(opt.state[p]["master_param"], before - 2.0**-11)


# --- state_dict -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_state_dict_round_trip(policy, backend):
    """3 steps, a checkpoint loaded into a fresh optimizer (torch's deepcopy of
    the state_dict, as torch.save would), 3 more: equal to 6 straight steps bit
    for bit; master_param stays float32 and the policy keys stay with the group."""
    straight, _ = _run(policy, torch.bfloat16, backend, steps=6, rounding_seed=11)
    params, opt = _run(policy, torch.bfloat16, backend, steps=3, rounding_seed=11)
    saved = copy.deepcopy(opt.state_dict())
    fresh = fusedopt.AdamW([{"params": params}], lr=1e-2, weight_decay=0.1, backend=backend)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0][policy] is True
    assert fresh.param_groups[0]["rounding_seed"] == 11
    if policy == "master_weights":
        assert all(fresh.state[p]["master_param"].dtype == torch.float32 for p in params)
    for k in range(3, 6):
        for p, g in zip(params, draw_grads(params, k)):
            p.grad = g
        fresh.step()
    for p, q in zip(params, straight):
        assert torch.equal(p, q)


# --- quality --------------------------------------------------------------------------


def _train(dtype: torch.dtype, options: dict, steps: int = 300) -> torch.Tensor:
    """A 16-64-1 tanh MLP fit to a fixed random teacher with AdamW (lr 1e-3:
    most of its updates are below half a bf16 ulp of the weights), the model
    in `dtype` (forward and backward too); its final params, flat, in fp32."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.to(dtype)
    x = torch.randn(steps, 32, 16, generator=gen)
    y = torch.sin(x.sum(-1, keepdim=True))
    opt = fusedopt.AdamW(
        [{"params": list(model.parameters()), **options}], lr=1e-3, weight_decay=0.01
    )
    for k in range(steps):
        loss = torch.nn.functional.mse_loss(model(x[k].to(dtype)).float(), y[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def test_policies_train_closer_to_fp32_than_plain_bf16():
    """Distance of the bf16 run's final params to the fp32 run's (L2 norm),
    300 steps, backend auto (cpu), measured on x86-64 at this commit:
        fp32's own displacement from the start     1.467
        plain bf16                                 1.185
        master_weights                             0.024
        kahan_sum                                  0.024
        stochastic_rounding                        0.265
    Each policy must end within half of plain bf16's distance (a margin of
    2x over stochastic rounding's measured 0.22 ratio); the bf16 forward and
    backward keep all of them from reaching fp32's params exactly."""
    fp32 = _train(torch.float32, {})
    plain = (_train(torch.bfloat16, {}) - fp32).norm().item()
    for policy in POLICIES:
        distance = (_train(torch.bfloat16, {policy: True}) - fp32).norm().item()
        assert distance < 0.5 * plain, (policy, distance, plain)


# --- the op's store arguments (Note [store arguments] in csrc/binding/checks.h) -------


def _adam_op_call(numels, store_policy, store, store_tags=(), found_inf=None):
    """fusedopt::adam_step_ on the cpu backend, bf16 params, called directly;
    returns the params."""
    params, grads, states, steps = op_lists("adam", numels, torch.bfloat16)
    torch.ops.fusedopt.adam_step_(
        params,
        grads,
        states,
        steps,
        lr=1e-2,
        **OP_HYPER["adam"],
        found_inf=found_inf,
        store_policy=store_policy,
        store=store,
        store_tags=list(store_tags),
        rounding_seed=7,
    )
    return params


def test_op_advances_rounding_step_and_found_inf_leaves_it():
    counts = [torch.zeros((), dtype=torch.float32), torch.full((), 4.0)]
    code = backends.STORE_POLICY_CODES["stochastic_rounding"]
    _adam_op_call([300, 40], code, counts, [0, 1])
    assert [c.item() for c in counts] == [1.0, 5.0]
    _adam_op_call([300, 40], code, counts, [0, 1], found_inf=torch.ones((), dtype=torch.float32))
    assert [c.item() for c in counts] == [1.0, 5.0]


@pytest.mark.parametrize(
    "policy, store, tags, message",
    [
        (9, None, (), "store_policy must be 0 to 3"),
        (0, [torch.zeros(3)], (), "store and store_tags are for a store_policy"),
        (1, [torch.zeros(3)], (), "want 2 store tensors"),
        (1, [torch.zeros(3), torch.zeros(4, dtype=torch.float64)], (), "store tensor 1 must be"),
        (
            2,
            [torch.zeros(3, dtype=torch.bfloat16), torch.zeros(5, dtype=torch.bfloat16)],
            (),
            "store tensor 1 must have its param's shape",
        ),
        (3, [torch.zeros(()), torch.zeros(())], (0,), "want 2 store tensors and 2 store_tags"),
        (3, [torch.zeros(()), torch.zeros(2)], (0, 1), "one-element float32 rounding_step"),
    ],
)
def test_op_refuses_bad_store_arguments(policy, store, tags, message):
    with pytest.raises(RuntimeError, match=message):
        _adam_op_call([3, 4], policy, store, tags)


@pytest.mark.parametrize("policy", POLICIES)
def test_factored_passes_refuse_a_policy_and_auto_takes_the_reference(policy):
    """Adafactor's cpu and Triton passes have no store: an explicit cpu says
    why, "auto" steps the group on the reference backend."""
    params = make_params([(6, 5)], torch.bfloat16)
    params[0].grad = torch.ones_like(params[0])
    opt = fusedopt.Adafactor([{"params": params, policy: True}], lr=1e-2)
    opt.step()
    [(_, bucket, _, choice)] = opt.last_step()
    assert (bucket.store, choice.backend.name) == (policy, "reference")
    explicit = fusedopt.Adafactor([{"params": params, policy: True}], lr=1e-2, backend="cpu")
    with pytest.raises(ValueError, match="passes have no master-weight store yet"):
        explicit.step()


# --- the CUDA kernels' body, emulated on the CPU, against the cpu op ---------------------
# fusedopt._testing runs the CUDA op's argument filling (binding/cuda_work.h)
# and the traversal (mta/traversal.h: store_param, chunk_store) on CPU tensors;
# its params, grads, states and store tensors must equal the cpu op's bit for
# bit. Sizes: one element, a scalar tail, a param over two 64K CUDA chunks (a
# second chunk's element index in Philox's counter), an odd-offset view (the
# scalar path), and an empty param.
EMULATION_SIZES = [1, 3, (1 << 16) + 4099, 4099, 0]
EMULATION_LR = 2.0**-7  # exact in float32: the emulation reads lr from a float32 tensor
EMULATION_RULES = {"adam": torch.float32, "sgd": torch.float32, "nadam": torch.bfloat16}


def _emulation_lists(rule, policy, dtype, seed):
    """The op's lists and store arguments, param 3 a view at an odd offset."""
    gen = torch.Generator().manual_seed(seed)
    params, grads, states, steps = op_lists(rule, EMULATION_SIZES, dtype)
    params[3] = torch.randn(EMULATION_SIZES[3] + 1, generator=gen).to(dtype)[1:]
    for s in states:
        s.copy_(torch.rand(s.shape, generator=gen))
    code = backends.STORE_POLICY_CODES[policy]
    tags = []
    if policy == "master_weights":
        store = [p.float() + torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
    elif policy == "kahan_sum":
        store = [(torch.randn(p.shape, generator=gen) * 1e-3).to(dtype) for p in params]
    else:
        store = [torch.full((), 5.0) for _ in params]
        tags = list(range(10, 10 + len(params)))
    return [params, grads, states, steps, store], dict(
        store_policy=code, store_tags=tags, rounding_seed=-(2**63) + 3
    )


def _clone_lists(lists):
    return [[t.clone() for t in group] for group in lists]


@pytest.mark.skipif(
    importlib.util.find_spec("fusedopt._testing") is None, reason="needs fusedopt._testing"
)
@pytest.mark.parametrize("steps_in_kernel", [False, True])
@pytest.mark.parametrize("scaler", [None, "grad_scale", "found_inf"])
@pytest.mark.parametrize("rule", EMULATION_RULES)
@pytest.mark.parametrize(
    "policy, dtype",
    [
        ("master_weights", torch.bfloat16),
        ("master_weights", torch.float16),
        ("kahan_sum", torch.bfloat16),
        ("kahan_sum", torch.float16),
        ("stochastic_rounding", torch.bfloat16),
    ],
)
def test_cuda_emulation_equals_cpu(policy, dtype, rule, scaler, steps_in_kernel):
    """Two steps; `rule`'s states in EMULATION_RULES' dtype (NAdam's bf16);
    with GradScaler's scale, or a found_inf that skips the second step
    (rounding_step included), read on the device or on the host."""
    importlib.import_module("fusedopt._testing")  # registers torch.ops.fusedopt_testing
    lists, store_args = _emulation_lists(rule, policy, dtype, seed=1)
    lists[2] = [s.to(EMULATION_RULES[rule]) for s in lists[2]]
    runs = {"cpu": lists, "emulation": _clone_lists(lists)}
    for k in range(2):
        scale = {}
        if scaler == "grad_scale":
            scale["grad_scale"] = torch.tensor(1024.0)
        elif scaler == "found_inf":
            scale["found_inf"] = torch.tensor(float(k))
        for backend, (params, grads, states, steps, store) in runs.items():
            for g in grads:
                g.copy_(torch.randn(g.shape, generator=torch.Generator().manual_seed(k)))
            if backend == "cpu":
                op = getattr(torch.ops.fusedopt, f"{rule}_step_")
                op(
                    params,
                    grads,
                    states,
                    steps,
                    lr=EMULATION_LR,
                    **OP_HYPER[rule],
                    **scale,
                    store=store,
                    **store_args,
                )
                continue
            op = getattr(torch.ops.fusedopt_testing, f"{rule}_emulate_step_")
            stats = op(
                params,
                grads,
                states,
                steps,
                lr=torch.tensor(EMULATION_LR),
                **OP_HYPER[rule],
                **scale,
                store=store,
                **store_args,
                steps_in_kernel=steps_in_kernel,
            )
            # Misaligned, out of range; never updated, twice (all never when skipped).
            skipped = scaler == "found_inf" and k == 1
            assert stats[5:7] == [0, 0] and (skipped or stats[7:9] == [0, 0]), stats
    for name, cpu, emulated in zip(
        ["params", "grads", "states", "steps", "store"], runs["cpu"], runs["emulation"]
    ):
        for i, (a, b) in enumerate(zip(cpu, emulated)):
            assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), (
                f"{name} {i}"
            )


@pytest.mark.slow
def test_tiny_gpt2_300_steps_within_1_percent():
    """Issue 10's criterion: 300 steps of the tiny GPT-2 (helpers.train_tiny_gpt2)
    in bf16 with each policy end within 1% of the fp32 run's loss (mean of the
    last 20 steps). Measured (2026-11-23, ~35 s per run): fp32 6.1485; bf16
    params with kahan_sum 6.1234 (-0.41%), stochastic_rounding 6.1240
    (-0.40%), master_weights 6.1227 (-0.42%). At this lr (3e-3) plain bf16
    also ends within 1% (6.1505): this run checks that no policy hurts; the
    MLP test above, at a smaller lr, is the one that shows what they save."""
    fp32 = train_tiny_gpt2()
    final = {"fp32": sum(fp32[-20:]) / 20}
    for policy in POLICIES:
        curve = train_tiny_gpt2(dtype=torch.bfloat16, **{policy: True})
        print(policy, [round(curve[i], 4) for i in (0, 50, 100, 200, 299)])
        final[policy] = sum(curve[-20:]) / 20
    print(final)
    for policy in POLICIES:
        assert abs(final[policy] - final["fp32"]) <= 0.01 * final["fp32"], final
