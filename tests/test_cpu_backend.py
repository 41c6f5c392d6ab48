"""What is particular to the CPU backend (the C++ loops behind
torch.ops.fusedopt.<rule>_step_ on CPU tensors): ISA variants, which layouts
it takes, its own bf16/fp16 conversions, the weight-decay mode no class
exposes, and when it advances step counts. Parity and the chunking edges
are in test_parity.py, for every backend."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fusedopt
import pytest
import torch
from _op_hyper import scalar_states
from cases import CASES, case_params
from fusedopt import backends
from fusedopt.reference import WeightDecayMode
from helpers import EDGE_SIZES, make_params, run_lockstep
from tolerances import assert_normwise_close

if backends.get("cpu").unavailable_reason():
    pytest.skip(backends.get("cpu").unavailable_reason(), allow_module_level=True)

STATEFUL = [pytest.param(case, case.stateful, id=case.name) for case in CASES]


# Added to a state's uniform draw where a rule needs it: RMSprop's square_avg
# stays above grad_avg^2 (< 1), so its centered root is real.
STATE_SHIFT = {"square_avg": 1.0}


def op_lists(case, kwargs, sizes, dtype=torch.float32, step=0.0):
    """(rule, params, grads, states, state_steps, hyper) for calling the rule's
    op through a backend directly: every state the options use, nonzero."""
    rule = case.fused_cls.rule
    params = [p.detach() for p in make_params(sizes, dtype=dtype)]
    opt = case.make([torch.zeros(1, requires_grad=True)], kwargs)
    hyper = opt.hyper(opt.param_groups[0])
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(p.shape, generator=gen).to(dtype) for p in params]
    states = [
        torch.rand(p.shape, generator=gen) + STATE_SHIFT.get(name, 0.0)
        for name in rule.used_states(hyper)
        for p in params
    ]
    steps = scalar_states(rule.name, [step] * len(params))
    return rule, params, grads, states, steps, hyper


def copies(lists):
    return [[t.clone() for t in ts] for ts in lists]


# --- which layouts, which device ------------------------------------------------------


@pytest.mark.parametrize("case,kwargs", STATEFUL)
def test_strided_slice_params_fall_back_to_the_reference_under_auto(case, kwargs):
    base = torch.randn(10, 8)
    sliced = base[:, ::2]  # gaps between elements: not dense
    sliced.grad = torch.randn(10, 8)[:, ::2]
    opt = case.make([sliced], kwargs)
    text = fusedopt.report(opt)
    assert "-> reference" in text and "passed over cpu: some params are not dense" in text
    expected = sliced.clone().requires_grad_()
    expected.grad = sliced.grad.clone()
    ref = case.make_torch([expected], kwargs)
    for _ in range(2):
        opt.step()
        ref.step()
    assert_normwise_close(sliced, expected)


@pytest.mark.parametrize("case,kwargs", STATEFUL)
def test_strided_slice_params_refused_by_an_explicit_cpu_backend(case, kwargs):
    sliced = torch.randn(10, 8)[:, ::2]
    sliced.grad = torch.randn(10, 4)
    with pytest.raises(ValueError, match="backend='cpu' cannot step.*not dense"):
        case.make([sliced], kwargs, "cpu").step()


@pytest.mark.parametrize("case,kwargs", STATEFUL)
def test_backend_cuda_on_cpu_params_is_an_error_naming_why(case, kwargs):
    p = make_params([4])[0]
    p.grad = torch.ones(4)
    with pytest.raises(ValueError, match="backend='cuda' cannot step"):
        case.make([p], kwargs, "cuda").step()


# --- the loops themselves -----------------------------------------------------------------


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_isa_variants_agree_bit_for_bit(isa, tmp_path):
    """The AVX-512, AVX2 and baseline loops are built with -ffp-contract=off
    from one source: on one input they must give identical bits, for every
    rule and param dtype. (A variant the CPU lacks is not chosen:
    FUSEDOPT_CPU_ISA only lowers.)"""
    script = textwrap.dedent(f"""
        import inspect, sys, torch, fusedopt
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from cases import CASES
        from helpers import make_params, run_lockstep
        for case in CASES:
            # With weight decay where the class has it (Rprop has none).
            kwargs = dict(case.stateful)
            if "weight_decay" in inspect.signature(case.fused_cls).parameters:
                kwargs["weight_decay"] = 0.1
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                ps = make_params({list(EDGE_SIZES)!r}, dtype=dtype)
                opt = case.make(ps, kwargs, "cpu")
                run_lockstep([opt], [ps], 3)
                torch.save([p.detach() for p in ps], f"{{sys.argv[1]}}-{{case.name}}-{{dtype}}")
        print(fusedopt._extension.cpu_isa())
    """)
    if fusedopt._extension.cpu_isa() == isa:
        pytest.skip(f"this CPU's best ISA is {isa}: the comparison would be with itself")
    outputs = {}
    for name, env in [("default", {}), (isa, {"FUSEDOPT_CPU_ISA": isa})]:
        path = str(tmp_path / name)
        run = subprocess.run(
            [sys.executable, "-c", script, path],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=True,
        )
        outputs[name] = (path, run.stdout.strip())
    assert outputs[isa][1] in (isa, "baseline")
    for case in CASES:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            a = torch.load(f"{outputs['default'][0]}-{case.name}-{dtype}")
            b = torch.load(f"{outputs[isa][0]}-{case.name}-{dtype}")
            assert all(torch.equal(x, y) for x, y in zip(a, b)), f"{case.name} {dtype}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 3.0, 2.0**-20])
@pytest.mark.parametrize("case,kwargs", STATEFUL)
def test_every_16_bit_grad_converts_like_torch(case, kwargs, dtype, scale):
    """The CPU loop's own bf16/fp16 conversions (integer bit moves, so that they
    vectorize) against torch's, on all 65536 bit patterns: with GradScaler's
    unscale, each grad is read, divided by `scale` in fp32 and stored back
    rounded to nearest even. scale 1 round-trips every value; 3 and 2^-20
    round normals, subnormals, overflow to inf, and NaN."""
    grad = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    param = torch.zeros(grad.shape, dtype=dtype)
    param.grad = grad.clone()
    opt = case.make([param], kwargs, "cpu")
    opt.grad_scale, opt.found_inf = torch.tensor(scale), torch.tensor(0.0)
    opt.step()
    expected = (grad.float() / scale).to(dtype)
    nan = expected.isnan()
    assert torch.equal(param.grad.isnan(), nan)
    assert torch.equal(param.grad[~nan].view(torch.int16), expected[~nan].view(torch.int16))


WEIGHT_DECAY_MODES = [c for c in CASES if "weight_decay_mode" in c.fused_cls.rule.hyper]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", case_params(WEIGHT_DECAY_MODES))
def test_fully_decoupled_weight_decay_matches_the_reference(case, dtype):
    """weight_decay_mode 2 (p *= 1 - wd * lr / lr_max), which no optimizer class
    exposes yet, through the C++ op against the reference rule; and it is not
    mode 1 (p *= 1 - lr * wd) under another name."""
    rule, params, grads, states, steps, hyper = op_lists(case, case.stateful, [4097, 3], dtype)

    def run(backend, mode):
        lists = copies([params, grads, states, steps])
        for _ in range(3):
            backends.get(backend).step(
                rule,
                *lists,
                lr=1e-2,
                hyper={**hyper, "weight_decay": 0.5, "weight_decay_mode": mode, "lr_max": 4e-2},
            )
        return lists[0]

    mode = WeightDecayMode.FULLY_DECOUPLED
    fully, reference = run("cpu", mode), run("reference", mode)
    decoupled = run("cpu", WeightDecayMode.DECOUPLED)
    for p, q, d in zip(fully, reference, decoupled):
        assert_normwise_close(p.float(), q.float())
        assert not torch.allclose(p.float(), d.float())


HAS_STEP = [c for c in CASES if c.fused_cls.rule.has_step]


@pytest.mark.parametrize("case,kwargs", [pytest.param(c, c.stateful, id=c.name) for c in HAS_STEP])
def test_step_counts_advance_only_after_the_loops(case, kwargs):
    """Note [step-count protocol]: the op reads count + 1 and advances the
    counts after the element loops; a step GradScaler skips (found_inf) and a
    refused call leave every count, and every tensor, as it was."""
    rule, params, grads, states, steps, hyper = op_lists(case, kwargs, [4097, 3], step=4.0)
    cpu = backends.get("cpu")
    lists = [params, grads, states, steps]
    before = copies(lists)
    cpu.step(rule, *lists, lr=1e-2, hyper=hyper, found_inf=torch.tensor(1.0))
    for xs, ys in zip(lists, before):
        assert all(torch.equal(x, y) for x, y in zip(xs, ys))
    bad = copies(lists)
    bad[2][-1] = bad[2][-1].double()
    with pytest.raises(RuntimeError, match="must be Float"):
        cpu.step(rule, *bad, lr=1e-2, hyper=hyper)
    n = len(params)
    assert [s.item() for s in bad[3]] == [s.item() for s in before[3]]
    assert all(torch.equal(x, y) for x, y in zip(bad[0], before[0]))
    reference = copies(lists)
    cpu.step(rule, *lists, lr=1e-2, hyper=hyper, found_inf=torch.tensor(0.0))
    backends.get("reference").step(rule, *reference, lr=1e-2, hyper=hyper)
    assert [s.item() for s in steps[:n]] == [5.0] * n
    # Scalar states (Note [scalar states]) as the reference advanced them.
    assert [s.item() for s in steps[n:]] == [s.item() for s in reference[3][n:]]
    for p, q in zip(lists[0], reference[0]):
        assert_normwise_close(p, q)  # the count read was 4 + 1, as the reference's


@pytest.mark.parametrize("case,kwargs", STATEFUL)
def test_op_schema_and_fake_impl_pass_opcheck(case, kwargs):
    """torch.library.opcheck: the schema's mutation annotations are true, the
    fake implementation agrees, and the op works under torch.compile's tracing."""
    rule, params, grads, states, steps, hyper = op_lists(case, kwargs, [5, 17])
    torch.library.opcheck(
        rule.op.default,
        (params, grads, states, steps),
        {"lr": 1e-3, **hyper},
        test_utils=("test_schema", "test_faketensor"),
    )


def test_the_cpu_loops_step_what_auto_gives_them():
    """Guards the tests above: on this machine "auto" picks the CPU loops for
    dense CPU params."""
    params = make_params([4])
    opt = fusedopt.SGD(params)
    run_lockstep([opt], [params], 1)
    assert "-> cpu" in fusedopt.report(opt)
