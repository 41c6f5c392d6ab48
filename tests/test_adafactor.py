"""fusedopt.Adafactor against torch.optim.Adafactor (foreach=False, its
plainest loop) and transformers.optimization.Adafactor, on every backend that
implements the rule (REDUCTION_RULES["adafactor"].backends); torch's own
catalog runs in tests/test_optim_db.py.

Tolerances (TOL below, each with its reason) are normwise per tensor,
||ours - theirs|| <= bound * ||theirs||, as tests/tolerances.py's fp32 parity."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fusedopt
import pytest
import torch
from fusedopt.backends import states_by_param
from fusedopt.registry import REDUCTION_RULES
from tolerances import assert_normwise_close, ulps

RULE = REDUCTION_RULES["adafactor"]
# The backends that step the CPU tensors of these tests: the cuda backend
# steps CUDA tensors only; its kernels' bodies run here in emulation
# (test_cuda_passes_emulated_match_the_cpu_bit_for_bit).
BACKENDS = [name for name in RULE.backends if name != "cuda"]
STEPS = 5

# Bounds with their reasons.
TOL = {
    # torch's row/column means are vector_norm(g)^2 / n in fp32, ours sums in
    # double (cpu) or takes torch's mean (reference): the means differ by an
    # ulp or two, and V = R C / mean(R) by a few; U = rsqrt(V) g and the RMS
    # clip keep that relative size. Measured over the grid below: <= 2e-7.
    "torch_fp32": 1e-6,
    # transformers forms the same estimate in another order (rsqrt(R / mean(R))
    # rsqrt(C) instead of rsqrt(R C / mean(R))), its EMAs as mul+add instead of
    # lerp, its clip and step size as fp32 tensor ops: a few ulps per step of
    # difference in U, and the step's relative size follows. Measured: <= 6e-7.
    "transformers_fp32": 5e-6,
    # The states of the CPU passes against the reference's: exp_avg sums s U,
    # whose relative error is a few ulps (V = R C / mean(R) takes the sums'
    # order through three roundings, rsqrt halves it, the RMS clip adds one):
    # measured <= 5e-6 over LARGE_SHAPES; row_var, col_var, variance <= 1e-7.
    "states_vs_reference": 2e-5,
    # bf16/fp16 params: against an fp64 trajectory, each element within half an
    # ulp of its dtype per step (one rounding at the store; fp32 states and
    # math) plus 5% for the fp32 noise of an update below ulp(|p|): the rounding
    # budget of tests/tolerances.py (_ROUNDING_BUDGET).
    "ulps_per_step_vs_fp64": 0.55,
}

SHAPES = [(5, 7), (3,), (2, 4, 6), (1, 1), (), (13, 1), (1, 17), (97,), (3, 5, 7)]
GRID = [
    {},
    {"weight_decay": 0.1, "maximize": True},
    {"lr": torch.tensor(0.02)},
    {"lr": 1.0, "eps": (1e-8, 1e-3), "d": 2.0, "beta2_decay": -0.5},
    {"eps": (0.5, 0.0)},  # eps1 large: both clamps bind
    {"lr": 0.3, "weight_decay": 0.5, "d": 1.0},
]


def _grads(shapes, steps, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(steps)]


def _params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def _run(opt_cls, params, grads, **kwargs):
    params = [p.clone().requires_grad_() for p in params]
    opt = opt_cls(params, **copy.deepcopy(kwargs))
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", GRID, ids=lambda kw: ",".join(kw) or "defaults")
def test_matches_torch(backend, kwargs):
    params, grads = _params(SHAPES), _grads(SHAPES, STEPS)
    ours, opt = _run(fusedopt.Adafactor, params, grads, backend=backend, **kwargs)
    theirs, ref = _run(torch.optim.Adafactor, params, grads, foreach=False, **kwargs)
    assert [c.backend.name for _, _, _, c in opt.last_step()] == [backend]
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q, TOL["torch_fp32"])
        assert opt.state[p].keys() == ref.state[q].keys()
        for key, value in ref.state[q].items():
            assert opt.state[p][key].shape == value.shape, key
            assert_normwise_close(opt.state[p][key], value, TOL["torch_fp32"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_foreach(backend):
    """torch's foreach path (the fastest it has), same results."""
    params, grads = _params(SHAPES), _grads(SHAPES, STEPS)
    ours, _ = _run(fusedopt.Adafactor, params, grads, backend=backend, weight_decay=0.1)
    theirs, _ = _run(torch.optim.Adafactor, params, grads, foreach=True, weight_decay=0.1)
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q, TOL["torch_fp32"])


def _fp64_trajectory(params, grads, **kwargs):
    """The reference rule in fp64: the oracle of the low-precision tests; the
    path's largest |p| per element, for the ulp budget."""
    params = [p.double().requires_grad_() for p in params]
    opt = fusedopt.Adafactor(params, backend="reference", **kwargs)
    peak = [p.detach().abs() for p in params]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.double()
        opt.step()
        peak = [torch.maximum(m, p.detach().abs()) for m, p in zip(peak, params)]
    return params, peak


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_rounding_budget(backend, dtype):
    """bf16/fp16 params: within the rounding budget of an fp64 trajectory, and no
    further from it than torch (which keeps bf16/fp16 states and math)."""
    # eps1 explicit: torch's None is the param dtype's epsilon, which the fp64
    # oracle would take as fp64's.
    kwargs = {"lr": 0.1, "eps": (torch.finfo(dtype).eps, 1e-3), "weight_decay": 0.05}
    params = [p.to(dtype) for p in _params(SHAPES)]
    grads = _grads(SHAPES, STEPS, dtype)
    ours, _ = _run(fusedopt.Adafactor, params, grads, backend=backend, **kwargs)
    theirs, _ = _run(torch.optim.Adafactor, params, grads, foreach=False, **kwargs)
    exact, peak = _fp64_trajectory(params, grads, **kwargs)
    ours_err = theirs_err = 0.0
    for p, q, e, m in zip(ours, theirs, exact, peak):
        budget = STEPS * TOL["ulps_per_step_vs_fp64"] * ulps(dtype, m)
        assert ((p.double() - e).abs() <= budget).all()
        ours_err += (p.double() - e).norm().item() ** 2
        theirs_err += (q.double() - e).norm().item() ** 2
    assert ours_err <= theirs_err


def _hf_twin(settings: dict) -> dict:
    """transformers' arguments for fusedopt's settings (fusedopt/optim/adafactor.py)."""
    hf = {
        "lr": None if settings.get("relative_step", True) else settings["lr"],
        "eps": settings["eps"],
        "clip_threshold": settings.get("d", 1.0),
        "decay_rate": settings.get("beta2_decay", -0.8),
        "beta1": settings.get("beta1"),
        "weight_decay": settings.get("weight_decay", 0.0),
    }
    for key in ("relative_step", "warmup_init", "scale_parameter"):
        hf[key] = settings.get(key, key != "warmup_init")
    return hf


HF_SETTINGS = [
    {"eps": (1e-30, 1e-3)},
    {"eps": (1e-30, 1e-3), "warmup_init": True},
    {"eps": (1e-30, 1e-3), "beta1": 0.9},
    {"eps": (1e-30, 1e-3), "beta1": 0.5, "d": 2.0, "beta2_decay": -0.6},
    {"eps": (1e-30, 1e-2), "relative_step": False, "lr": 1e-3, "beta1": 0.9},
    # The weight decay agrees where transformers' step size is the lr.
    {
        "eps": (1e-30, 1e-3),
        "relative_step": False,
        "scale_parameter": False,
        "lr": 1e-2,
        "weight_decay": 0.1,
    },
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("settings", HF_SETTINGS, ids=lambda kw: ",".join(kw))
def test_matches_transformers(backend, settings):
    transformers = pytest.importorskip("transformers.optimization")
    kwargs = dict(settings)
    kwargs.setdefault("lr", 1e-2)  # transformers' relative step caps rho at 1e-2
    params, grads = _params(SHAPES), _grads(SHAPES, STEPS)
    ours, opt = _run(fusedopt.Adafactor, params, grads, backend=backend, **kwargs)
    theirs, ref = _run(transformers.Adafactor, params, grads, **_hf_twin(settings))
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q, TOL["transformers_fp32"])
        if "beta1" in settings:
            assert_normwise_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"], 1e-5)


def test_transformers_weight_decay_differs_where_its_step_size_is_not_lr():
    """The named difference: torch (and fusedopt) decay by lr * wd, transformers
    by its step size alpha * wd; with wd = 0 the two agree (above)."""
    transformers = pytest.importorskip("transformers.optimization")
    settings = {"eps": (1e-30, 1e-3), "weight_decay": 0.5}
    # |p| ~ 10, so that transformers' alpha = RMS(p) 1e-2 is ~10x the lr.
    params, grads = [10 * p for p in _params(SHAPES)], _grads(SHAPES, 1)
    ours, _ = _run(fusedopt.Adafactor, params, grads, lr=1e-2, **settings)
    theirs, _ = _run(transformers.Adafactor, params, grads, **_hf_twin(settings))
    p, q, p0 = ours[0], theirs[0], params[0]
    # fusedopt: p0 (1 - 1e-2 * 0.5) - U; transformers: p0 (1 - alpha * 0.5) - U.
    assert (p - q).norm() > 1e-3 * p0.norm()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_size_params_advance_their_step_only(backend):
    """torch divides 0.0 by 0.0 for the RMS of an empty param; fusedopt steps
    the others and advances the empty one's count, its states left at zero."""
    shapes = [(0,), (3, 4), (0, 5), (5, 0), (2, 0, 3)]
    params, grads = _params(shapes), _grads(shapes, 2)
    with pytest.raises(ZeroDivisionError):
        _run(torch.optim.Adafactor, params, grads, foreach=False)
    ours, opt = _run(fusedopt.Adafactor, params, grads, backend=backend)
    alone, _ = _run(torch.optim.Adafactor, [params[1]], [[g[1]] for g in grads], foreach=False)
    assert_normwise_close(ours[1], alone[0], TOL["torch_fp32"])
    for p in ours[:1] + ours[2:]:
        state = opt.state[p]
        assert state["step"].item() == 2
        assert all(not v.any() for k, v in state.items() if k != "step")


def test_unimplemented_backends_say_why():
    p = torch.nn.Parameter(torch.randn(3, 4))
    p.grad = torch.randn(3, 4)
    for name in ("cuda", "triton", "cpu"):
        if name in RULE.backends:
            continue
        opt = fusedopt.Adafactor([p], backend=name)
        with pytest.raises(ValueError, match=f"the {name} backend does not implement"):
            opt.step()
    opt = fusedopt.Adafactor([p])
    (choice,) = [c for _, _, _, c in opt.plan()]
    assert choice.backend.name == "cpu" if "cpu" in RULE.backends else "reference"


def test_channels_last_params_step_on_the_reference():
    """A factored param must be contiguous for the kernels' rows and columns;
    a channels_last one is stepped by the reference, as torch steps it."""
    p0 = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    grads = [[torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)] for _ in range(3)]
    ours, opt = _run(fusedopt.Adafactor, [p0], grads)
    theirs, _ = _run(torch.optim.Adafactor, [p0], grads, foreach=False)
    assert_normwise_close(ours[0], theirs[0], TOL["torch_fp32"])
    assert opt.last_step()[0][3].backend.name == "reference"


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_arguments(backend):
    """grad_scale unscales in the step (stored back unscaled); found_inf skips it."""
    params, grads = _params(SHAPES), _grads(SHAPES, 1)
    plain, _ = _run(fusedopt.Adafactor, params, grads, backend=backend)
    scaled = [p.clone().requires_grad_() for p in params]
    opt = fusedopt.Adafactor(scaled, backend=backend)
    for p, g in zip(scaled, grads[0]):
        p.grad = g * 1024
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    opt.step()
    for p, q, g in zip(scaled, plain, grads[0]):
        assert torch.equal(p, q)
        assert torch.equal(p.grad, g)
    before = [p.detach().clone() for p in scaled]
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(scaled, before))
    assert all(opt.state[p]["step"].item() == 1 for p in scaled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trips_with_torch(backend):
    """torch's checkpoint resumes in fusedopt and fusedopt's in torch."""
    params, grads = _params(SHAPES), _grads(SHAPES, 4)
    theirs, ref = _run(torch.optim.Adafactor, params, grads[:2], foreach=False)
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    opt = fusedopt.Adafactor(ours, backend=backend)
    # A copy: torch's load keeps the loaded tensors themselves where it can.
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    back = [p.detach().clone().requires_grad_() for p in theirs]
    for step_grads in grads[2:]:
        for p, q, g in zip(ours, theirs, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q, TOL["torch_fp32"])
    again = torch.optim.Adafactor(back, foreach=False)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert again.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_dtensor_params_are_refused():
    dist = pytest.importorskip("torch.distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = torch.nn.Parameter(distribute_tensor(torch.randn(4, 4), mesh, [Shard(0)]))
        param.grad = distribute_tensor(torch.randn(4, 4), mesh, [Shard(0)])
        before = param.detach().full_tensor().clone()
        opt = fusedopt.Adafactor([param])
        with pytest.raises(RuntimeError, match="row and column statistics"):
            opt.step()
        assert torch.equal(param.detach().full_tensor(), before) and not opt.state
    finally:
        if started:
            dist.destroy_process_group()


def test_torch_error_messages():
    p = [torch.nn.Parameter(torch.randn(2, 2))]
    with pytest.raises(ValueError, match="beta1 should be in"):
        fusedopt.Adafactor(p, beta1=1.0)
    with pytest.raises(ValueError, match="requires `relative_step=True`"):
        fusedopt.Adafactor(p, warmup_init=True, relative_step=False)
    with pytest.raises(ValueError, match="`foreach=True` cannot apply"):
        fusedopt.Adafactor(p, foreach=True)
    # torch's group keys exactly, unless a keyword torch lacks is given.
    keys = set(torch.optim.Adafactor(p).param_groups[0])
    assert set(fusedopt.Adafactor(p).param_groups[0]) == keys
    assert set(fusedopt.Adafactor(p, beta1=0.9).param_groups[0]) == keys | {"beta1"}


# Shapes of several reduction items each (core/blocked_sums.h: 64K elements per
# item): rows split over items (300 x 700: 93 rows per item), a row longer
# than an item (3 x 70001), a long vector (200003: 4 items), a batch of
# matrices, odd sizes, a zero-size tensor last.
LARGE_SHAPES = [(300, 700), (3, 70001), (200003,), (5, 97, 151), (1, 7), (0, 4)]


@pytest.mark.skipif("cpu" not in RULE.backends, reason="no cpu backend built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_matches_reference_over_items(dtype):
    """The CPU passes against the reference on tensors of many items; bf16/fp16
    params within one ulp per step of the largest |p| of the path (same
    policy, one rounding at the store, so an element differs by at most a
    rounding boundary per step: tests/tolerances.py _SAME_POLICY), fp32
    normwise as the torch parity."""
    kwargs = {"weight_decay": 0.05, "beta1": 0.9, "maximize": True}
    params = [p.to(dtype) for p in _params(LARGE_SHAPES)]
    grads = _grads(LARGE_SHAPES, STEPS, dtype)
    ours, opt = _run(fusedopt.Adafactor, params, grads, backend="cpu", **kwargs)
    ref, ref_opt = _run(fusedopt.Adafactor, params, grads, backend="reference", **kwargs)
    _, peak = _fp64_trajectory(params, grads, **kwargs)
    for p, q, m in zip(ours, ref, peak):
        if dtype == torch.float32:
            assert_normwise_close(p, q, TOL["torch_fp32"])
        else:
            assert ((p.double() - q.double()).abs() <= STEPS * ulps(dtype, m)).all()
        for key, value in ref_opt.state[q].items():
            assert_normwise_close(opt.state[p][key], value, TOL["states_vs_reference"])


@pytest.mark.skipif("cpu" not in RULE.backends, reason="no cpu backend built")
def test_cpu_results_do_not_depend_on_the_threads():
    """Note [deterministic blocked reductions] in
    csrc/include/fusedopt/core/blocked_sums.h: bit for bit."""
    params, grads = _params(LARGE_SHAPES), _grads(LARGE_SHAPES, 2)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(_run(fusedopt.Adafactor, params, grads, backend="cpu")[0])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def _op_lists(shapes, first_moment):
    params = _params(shapes)
    grads = _grads(shapes, 1)[0]
    used = RULE.used_states({"first_moment": first_moment})
    states = [
        torch.zeros(RULE.state_shape(name, p)) + 0.5
        for name in used
        for p in params
        if RULE.state_shape(name, p) is not None
    ]
    steps = [torch.tensor(3.0) for _ in params]
    return params, grads, states, steps


def _op_hyper(first_moment=True):
    return dict(
        beta2_decay=-0.8,
        eps1=-1.0,
        eps2=1e-3,
        d=1.0,
        weight_decay=0.1,
        beta1=0.9,
        first_moment=first_moment,
        relative_step=True,
        warmup_init=False,
        scale_parameter=True,
        maximize=False,
    )


@pytest.mark.skipif("cpu" not in RULE.backends, reason="no cpu backend built")
@pytest.mark.parametrize("overload", ["default", "tensor_lr"])
def test_op_schema_and_fake_impl_pass_opcheck(overload):
    lists = _op_lists([(5, 3), (17,)], first_moment=True)
    lr = 1e-2 if overload == "default" else torch.tensor(1e-2)
    torch.library.opcheck(
        getattr(RULE.op, overload),
        lists,
        dict(lr=lr, **_op_hyper()),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.skipif("cpu" not in RULE.backends, reason="no cpu backend built")
def test_op_refuses_a_state_of_the_wrong_shape_before_writing():
    params, grads, states, steps = _op_lists([(5, 3), (17,)], first_moment=False)
    states[1] = torch.zeros(5, 3)  # col_var of the (5, 3) param must be (1, 3)
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=r"col_var 0 must be a contiguous float32 tensor"):
        RULE.op(params, grads, states, steps, lr=1e-2, **_op_hyper(False))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(s.item() == 3.0 for s in steps)


@pytest.mark.skipif("cpu" not in RULE.backends, reason="no cpu backend built")
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_cpu_isa_variants_agree_bit_for_bit(isa, tmp_path):
    """The passes are built per ISA from one source with -ffp-contract=off, and
    the sums' order is the lanes' (core/blocked_sums.h), not the vector width's:
    identical bits, for every param dtype, with momentum and GradScaler."""
    script = textwrap.dedent(f"""
        import sys, torch, fusedopt
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_adafactor import LARGE_SHAPES, _grads, _params
        out = []
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            ps = [p.to(dtype).requires_grad_() for p in _params(LARGE_SHAPES)]
            opt = fusedopt.Adafactor(ps, backend="cpu", beta1=0.9, weight_decay=0.1)
            opt.grad_scale = torch.tensor(8.0)
            for grads in _grads(LARGE_SHAPES, 2, dtype):
                for p, g in zip(ps, grads):
                    p.grad = g * 8
                opt.step()
            out += [p.detach() for p in ps]
        torch.save(out, sys.argv[1])
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
        outputs[name] = (torch.load(path), run.stdout.strip())
    assert outputs[isa][1] in (isa, "baseline")
    assert all(torch.equal(a, b) for a, b in zip(outputs["default"][0], outputs[isa][0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_and_momentum_switched_on_mid_run(backend):
    """Two buckets in one group (each call's lists checked before either is
    stepped), then beta1 set on the group: exp_avg is created at that step, as
    transformers creates it, and the step equals the reference's."""
    shapes = [(6, 5), (7,), (2, 3, 4)]
    params = _params(shapes)
    params[1] = params[1].bfloat16()
    grads = [[g.to(p.dtype) for g, p in zip(step, params)] for step in _grads(shapes, 3)]

    def run(name):
        ps = [p.clone().requires_grad_() for p in params]
        opt = fusedopt.Adafactor(ps, backend=name, weight_decay=0.1)
        for k, step_grads in enumerate(grads):
            if k == 2:
                opt.param_groups[0]["beta1"] = 0.5
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
        return ps, opt

    ours, opt = run(backend)
    ref, _ = run("reference")
    assert len(opt.last_step()) == 2
    assert all("exp_avg" in opt.state[p] for p in ours)
    # One ulp per step (tests/tolerances.py _SAME_POLICY: same policy, sums in
    # another order), for fp32 and bf16 alike.
    for p, q in zip(ours, ref):
        assert ((p.double() - q.double()).abs() <= ulps(p.dtype, q.double().abs()) * 3).all()


# The CUDA passes emulated on the CPU (csrc/testing/emulation.cpp): the
# option sets, each a change to _op_hyper, and what they exercise.
EMULATION_CASES = {
    "defaults": {},
    # no momentum, absolute step, no RMS scaling: the other branches of (b)-(e)
    "plain": dict(first_moment=False, relative_step=False, scale_parameter=False),
    # maximize (the sign in (e) only), a large eps1 (both floors bind), the clip
    "maximize_eps_clip": dict(maximize=True, eps1=0.5, d=1.0, weight_decay=0.0),
    "warmup": dict(warmup_init=True, beta2_decay=-0.5, eps2=0.0),
}


def _factored_lists(shapes, dtype, first_moment, seed):
    """Fresh op lists (zero states and counts, as the optimizer makes them)."""
    params = _params(shapes, dtype, seed)
    used = RULE.used_states({"first_moment": first_moment})
    states = [
        torch.zeros(RULE.state_shape(name, p))
        for name in used
        for p in params
        if RULE.state_shape(name, p) is not None
    ]
    return params, states, [torch.tensor(0.0) for _ in params]


def _with_grads(lists, grads):
    """The op's four lists: params, grads, states, state_steps."""
    params, states, steps = lists
    return params, grads, states, steps


@pytest.mark.skipif("cuda" not in RULE.backends, reason="the rule has no cuda backend")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", EMULATION_CASES)
@pytest.mark.parametrize("scaler", ["none", "grad_scale"])
def test_cuda_passes_emulated_match_the_cpu_bit_for_bit(dtype, case, scaler):
    """The CUDA kernels' block bodies (csrc/include/fusedopt/mta/factored.h),
    run thread by thread on the CPU, give the cpu backend's bits exactly, in
    params, grads (unscaled in place), every state and the counts, over three
    steps of tensors of many items (rows split over items, a row longer than
    an item, a long vector, a batch of matrices, a zero-size tensor) and
    small ones: both follow Note [deterministic blocked reductions] and call
    the same rule functions, uncontracted. Exact equality: no tolerance."""
    pytest.importorskip(
        "fusedopt._testing", reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
    )
    emulate = torch.ops.fusedopt_testing.adafactor_emulate_factored_step_
    hyper = {**_op_hyper(), **EMULATION_CASES[case]}
    shapes = LARGE_SHAPES + SHAPES
    lists = {
        side: _factored_lists(shapes, dtype, hyper["first_moment"], seed=0)
        for side in ("cpu", "cuda")
    }
    scale = 8.0 if scaler == "grad_scale" else 1.0
    kwargs = dict(hyper, lr=torch.tensor(0.01))
    if scaler == "grad_scale":
        kwargs.update(grad_scale=torch.tensor(scale), found_inf=torch.tensor(0.0))
    for step_grads in _grads(shapes, 3, dtype, seed=2):
        grads = {side: [g * scale for g in step_grads] for side in lists}
        RULE.op.tensor_lr(*_with_grads(lists["cpu"], grads["cpu"]), **kwargs)
        n_items, n_params = emulate(*_with_grads(lists["cuda"], grads["cuda"]), **kwargs)
        assert n_params == len(shapes) and n_items > len(shapes)
        assert all(torch.equal(a, b) for a, b in zip(grads["cpu"], grads["cuda"]))
    for a, b in zip(*(sum(lists[side], []) for side in ("cpu", "cuda"))):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert all(s.item() == 3.0 for s in lists["cuda"][2])
    # Every state of a nonempty param left its zeros: equal bits are not the
    # equality of untouched tensors (params may not move: warmup_init's steps
    # are 1e-6 t lr).
    params, states, _ = lists["cuda"]
    used = RULE.used_states(hyper)
    for param, per_param in zip(params, states_by_param(RULE, params, states, used)):
        assert param.numel() == 0 or all(state.any() for state in per_param.values())


@pytest.mark.skipif("cuda" not in RULE.backends, reason="the rule has no cuda backend")
def test_cuda_passes_emulated_skip_on_found_inf_and_refuse_bad_lists():
    """found_inf nonzero: every kernel returns at once, counts included; the
    op's checks are the cpu backend's (one function, binding/factored_step.h)."""
    pytest.importorskip(
        "fusedopt._testing", reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
    )
    emulate = torch.ops.fusedopt_testing.adafactor_emulate_factored_step_
    shapes = [(5, 3), (17,)]
    params, states, steps = _factored_lists(shapes, torch.float32, True, seed=0)
    grads = _grads(shapes, 1)[0]
    before = [t.clone() for t in params + grads + states + steps]
    emulate(
        params,
        grads,
        states,
        steps,
        lr=torch.tensor(0.01),
        **_op_hyper(),
        grad_scale=torch.tensor(4.0),
        found_inf=torch.tensor(1.0),
    )
    assert all(torch.equal(a, b) for a, b in zip(params + grads + states + steps, before))
    states[1] = torch.zeros(5, 3)  # col_var of the (5, 3) param must be (1, 3)
    with pytest.raises(RuntimeError, match=r"col_var 0 must be a contiguous float32 tensor"):
        emulate(params, grads, states, steps, lr=torch.tensor(0.01), **_op_hyper())


@pytest.mark.skipif("cuda" not in RULE.backends, reason="the rule has no cuda backend")
def test_cuda_backend_is_chosen_for_cuda_tensors_and_refuses_cpu_ones():
    """ "auto" on CUDA tensors tries cuda first (backends.AUTO_ORDER); on this
    CPU-only machine the cuda backend says why it cannot step CPU tensors."""
    from fusedopt import backends

    assert backends.AUTO_ORDER["cuda"][0] == "cuda"
    p = torch.nn.Parameter(torch.randn(3, 4))
    p.grad = torch.randn(3, 4)
    opt = fusedopt.Adafactor([p], backend="cuda")
    # Refused for the tensors' device (or a machine without CUDA), not the rule.
    with pytest.raises(ValueError, match="backend='cuda' cannot step") as refusal:
        opt.step()
    assert "does not implement" not in str(refusal.value)


# --- the Triton passes: one launch per pass for all the params of a call --------

# Every kind of param in one call, under the interpreter's 64 x 1024 tiles
# (kernels/factored.py): zero-size params first, mid and last; matrices of
# one tile and of 2 x 2 tiles and two reduction items (70 x 1030: 63 rows per
# 64K item); one-row, one-column and 1 x 1 matrices; a batch of matrices; a
# scalar; a vector with a tail of 7 past its lanes (1031). A vector of two
# items (> 65536 elements) is left to the CPU tests: its lanes' 8192 serial
# steps per item cost ~2 ms each under the interpreter. Dense params only:
# the backends refuse others (the reference steps a channels_last param,
# test_channels_last_params_step_on_the_reference).
TRITON_MIXED_SHAPES = [
    (0,),
    (5, 7),
    (70, 1030),
    (3,),
    (2, 4, 6),
    (0, 5),
    (1, 17),
    (13, 1),
    (1, 1),
    (),
    (1031,),
    (3, 5, 7),
    (2, 0, 3),
]
TRITON_KWARGS = {"weight_decay": 0.1, "beta1": 0.9, "maximize": True}
requires_interpreter = pytest.mark.skipif(
    "triton" not in BACKENDS or os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton passes run on CPU tensors under TRITON_INTERPRET=1 only",
)


def _triton_launches() -> int:
    from fusedopt.kernels import factored

    return factored.LAUNCHER.launches


def _assert_same_bits(ours, opt, theirs, their_opt):
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q), tuple(p.shape)
        assert opt.state[p].keys() == their_opt.state[q].keys()
        for key, value in their_opt.state[q].items():
            assert torch.equal(opt.state[p][key], value), (tuple(p.shape), key)


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_steps_a_call_in_five_launches_as_each_param_alone(dtype):
    """One launch per pass for the whole call (five per step, however many
    params), and each param's bits those it gets stepped alone: its sums'
    order depends on its shape only (Note [factored sums] in
    kernels/factored.py)."""
    params = [p.to(dtype) for p in _params(TRITON_MIXED_SHAPES)]
    grads = _grads(TRITON_MIXED_SHAPES, 2, dtype)
    before = _triton_launches()
    ours, opt = _run(fusedopt.Adafactor, params, grads, backend="triton", **TRITON_KWARGS)
    assert _triton_launches() - before == 5 * len(grads)
    assert [c.backend.name for _, _, _, c in opt.last_step()] == ["triton"]
    for k in range(len(params)):
        alone_grads = [[g[k]] for g in grads]
        alone, alone_opt = _run(
            fusedopt.Adafactor, [params[k]], alone_grads, backend="triton", **TRITON_KWARGS
        )
        _assert_same_bits([ours[k]], opt, alone, alone_opt)


@requires_interpreter
@pytest.mark.skipif("cpu" not in RULE.backends, reason="no cpu backend built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad_scaler"])
def test_triton_mixed_call_equals_cpu_bit_for_bit(dtype, scaled):
    """The mixed call, Triton against the CPU backend: the same params, grads
    and states, bit for bit (Note [factored sums] in kernels/factored.py),
    with a GradScaler too (grads scaled by 1024, a power of two)."""
    params = [p.to(dtype) for p in _params(TRITON_MIXED_SHAPES)]
    grads = _grads(TRITON_MIXED_SHAPES, 2, dtype)
    results = []
    for backend in ("triton", "cpu"):
        ps = [p.clone().requires_grad_() for p in params]
        opt = fusedopt.Adafactor(ps, backend=backend, **TRITON_KWARGS)
        for step_grads in grads:
            for p, g in zip(ps, step_grads):
                p.grad = g * 1024 if scaled else g.clone()
            if scaled:
                opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
            opt.step()
            assert all(torch.equal(p.grad, g) for p, g in zip(ps, step_grads))
        results.append((ps, opt))
    _assert_same_bits(*results[0], *results[1])


@requires_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_mixed_call_with_grad_scaler(dtype):
    """GradScaler on the mixed call: grads scaled by 1024 (a power of two, so
    exact) and unscaled in the passes give the unscaled step's bits, grads
    stored back unscaled; found_inf then skips the step, counts included."""
    params = [p.to(dtype) for p in _params(TRITON_MIXED_SHAPES)]
    (step_grads,) = _grads(TRITON_MIXED_SHAPES, 1, dtype)
    plain, plain_opt = _run(
        fusedopt.Adafactor, params, [step_grads], backend="triton", **TRITON_KWARGS
    )
    scaled = [p.clone().requires_grad_() for p in params]
    opt = fusedopt.Adafactor(scaled, backend="triton", **TRITON_KWARGS)
    for p, g in zip(scaled, step_grads):
        p.grad = g * 1024
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    opt.step()
    _assert_same_bits(scaled, opt, plain, plain_opt)
    assert all(torch.equal(p.grad, g) for p, g in zip(scaled, step_grads))
    before = [p.detach().clone() for p in scaled]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in scaled]
    launches = _triton_launches()
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert _triton_launches() - launches == 5
    for p, b, state in zip(scaled, before, states):
        assert torch.equal(p, b)
        assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())


_AOT_SCRIPT = """
import json, os, re, subprocess, sys, tempfile
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedopt.kernels import factored
from fusedopt.kernels.rules import adafactor as rule

math = dict(
    FACTORED_VARIANCE=rule.factored_variance,
    VECTOR_VARIANCE=rule.vector_variance,
    RAW_UPDATE=rule.raw_update,
)
tiles = dict(tensor_table="*i64", tile_table="*i32", scale_ptr="*fp32")
reduce_sig = dict(
    tensor_table="*i64", item_table="*i32", scale_ptr="*fp32", floor_ptr="*fp32",
    scalars_ptr="*fp32", item_sums_ptr="*fp64", row_sums_ptr="*fp64", col_part_ptr="*fp64",
)
blocks = dict(
    ROW_BLOCK=factored.ROW_BLOCK, ROW_GROUPS=factored.ROW_GROUPS,
    RUN_GROUPS=factored.RUN_GROUPS, COL_BLOCK=factored.COL_BLOCK,
    PART_ROWS=factored.PART_ROWS,
)
kernels = {
    "reduce_inputs": (
        factored._reduce_kernel, reduce_sig, dict(**math, UNSCALE=True, UPDATES=False, **blocks)
    ),
    "reduce_updates": (
        factored._reduce_kernel, reduce_sig, dict(**math, UNSCALE=True, UPDATES=True, **blocks)
    ),
    "statistics": (
        factored._statistics_kernel,
        dict(
            tensor_table="*i64", scalars_ptr="*fp32", item_sums_ptr="*fp64",
            row_sums_ptr="*fp64", col_part_ptr="*fp64", floor_ptr="*fp32",
            param_sq_ptr="*fp64", found_ptr="*fp32", eps1="fp32",
        ),
        dict(EMA=rule.ema, ROW_MEAN_FLOOR=rule.row_mean_floor, HAS_FOUND=True,
             BLOCK=factored.STAT_BLOCK, COL_BLOCK=factored.COL_BLOCK),
    ),
    "items_total": (
        factored._items_total_kernel,
        dict(tensor_table="*i64", item_sums_ptr="*fp64", out_ptr="*fp64"),
        {},
    ),
    "apply": (
        factored._apply_kernel,
        dict(**tiles, found_ptr="*fp32", floor_ptr="*fp32", scalars_ptr="*fp32",
             grad_sign="fp32"),
        dict(**math, APPLY=rule.apply, UNSCALE=True, HAS_FOUND=True, FIRST_MOMENT=True,
             BLOCK_R=factored.BLOCK_ROWS, BLOCK_C=factored.BLOCK_COLS),
    ),
}
# The cuobjdump that ships in triton's wheel (MACHINE.md).
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
out = {}
for name, (fn, sig, consts) in kernels.items():
    for dtype, param_dtype in {"fp32": tl.float32, "bf16": tl.bfloat16}.items():
        if "PARAM_DTYPE" not in fn.arg_names and dtype != "fp32":
            continue
        if "PARAM_DTYPE" in fn.arg_names:
            consts = {**consts, "PARAM_DTYPE": param_dtype}
        signature = {**sig, **dict.fromkeys(consts, "constexpr")}
        compiled = triton.compile(
            ASTSource(
                fn=fn,
                signature=signature,
                constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
            ),
            target=GPUTarget("cuda", int(sys.argv[1]), 32),
            options={"num_warps": 4, "enable_fp_fusion": False},
        )
        ptx = compiled.asm["ptx"]
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            usage = subprocess.run(
                [cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True, check=True
            ).stdout
        registers, stack = re.search(r"REG:(\\d+) STACK:(\\d+)", usage).groups()
        out[f"{name} {dtype}"] = {
            "f64": ".f64" in ptx,
            "fma": "fma.rn.f32" in ptx,
            "registers": int(registers),
            "stack": int(stack),
        }
print(json.dumps(out))
"""
# The element pass has no FP64 (Note [bit-identical backends] in
# kernels/mta.py: the element loops have none); the reductions add in double
# by design, as the CPU's (Note [factored sums] in kernels/factored.py).
REDUCTIONS = {"reduce_inputs", "reduce_updates", "statistics", "items_total"}
# Stack per kernel, bytes: none in the element pass (16 x 256 tiles spilled
# on sm_90: kernels/factored.py BLOCK_ROWS); 8 in the reductions, measured in
# the sum of U^2 on sm_100 and sm_120: one register saved across the calls to
# IEEE division's and square root's slow paths (one STL/LDL pair, 24 CALLs).
MAX_STACK = {"apply": 0, **dict.fromkeys(REDUCTIONS, 8)}


@pytest.mark.parametrize("arch", [80, 90, 100, 120])
def test_triton_passes_compile_for_every_arch(arch):
    """Compiled only (no GPU here): the kernels of kernels/factored.py build to
    PTX and a cubin for each arch of the wheel's list, with a GradScaler and
    momentum, fp32 and bf16 params, with no contracted FMA (Note
    [bit-identical backends] in kernels/mta.py), no FP64 instruction in the
    element pass and double sums in the reductions, and stacks within
    MAX_STACK. Not yet checked: 128-bit accesses (the tiles carry no
    divisibility hints)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, str(arch)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert {name.split()[0] for name in facts} == REDUCTIONS | {"apply"}
    for name, fact in facts.items():
        assert not fact["fma"] and fact["stack"] <= MAX_STACK[name.split()[0]], (name, fact)
        assert fact["f64"] == (name.split()[0] in REDUCTIONS), (name, fact)
