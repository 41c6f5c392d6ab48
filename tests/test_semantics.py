"""Every fusedopt optimizer (tests/cases.py) as a drop-in torch optimizer:
signature, state_dict both ways, checkpoints, argument checks, failure
atomicity, GradScaler's contract, torch.compile, report()."""

from __future__ import annotations

import copy
import inspect

import fusedopt
import pytest
import torch
from cases import CASES, case_params
from helpers import (
    ALL_BACKENDS,
    assert_unchanged,
    backend_params,
    clone_params,
    make_params,
    run_lockstep,
    set_grads,
    snapshot,
)
from tolerances import assert_normwise_close

STEPS = 5
CPU_BACKENDS = ["cpu", "reference"]


def torch_comparable() -> list:
    """(case, kwargs) for grid entries torch's class can run as they are."""
    return [
        pytest.param(case, kw, id=param.id)
        for case in CASES
        for param, kw in zip(case.grid_params(), case.grid)
        if not case.fused_only(kw)
    ]


def stateful() -> list:
    return [pytest.param(case, case.stateful, id=case.name) for case in CASES]


# --- the interface ------------------------------------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_signature_and_defaults_match_torch(case):
    ours = inspect.signature(case.fused_cls.__init__).parameters
    theirs = inspect.signature(case.torch_cls.__init__).parameters
    for arg, param in theirs.items():
        assert arg in ours, f"missing argument {arg}"
        assert ours[arg].default == param.default, f"default of {arg}"
        assert ours[arg].kind == param.kind, f"kind of {arg}"
    assert list(ours) == list(theirs) + list(case.extra_args)
    for arg in case.extra_args:
        assert ours[arg].kind is inspect.Parameter.KEYWORD_ONLY, f"{arg} must be keyword-only"


@pytest.mark.parametrize("case,kwargs", torch_comparable())
def test_state_dict_layout_matches_torch(case, kwargs):
    ours = make_params([7, 5])
    theirs = clone_params(ours)
    opt, ref = case.make(ours, kwargs), case.make_torch(theirs, kwargs)
    run_lockstep([opt, ref], [ours, theirs], 2)
    a, b = opt.state_dict(), ref.state_dict()
    for mine, group in zip(a["param_groups"], b["param_groups"]):
        group = {k: v for k, v in group.items() if k != "foreach"}  # make_torch sets it
        extra = {k: v for k, v in mine.items() if k not in group and k != "foreach"}
        assert extra.keys() == set(case.extra_group_keys)
        for key, value in group.items():
            assert type(mine[key]) is type(value), f"{key}: {mine[key]!r} vs {value!r}"
            if key == "betas":
                assert all(type(x) is type(y) for x, y in zip(mine[key], value)), key
            assert mine[key] == value, key
    assert a["state"].keys() == b["state"].keys()
    for i in b["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for key, value in b["state"][i].items():
            mine = a["state"][i][key]
            assert (mine.dtype, mine.shape, mine.device) == (value.dtype, value.shape, value.device)


@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
@pytest.mark.parametrize("case,kwargs", torch_comparable())
def test_state_dict_round_trip_with_torch(case, kwargs, direction):
    """Train 3 steps with one, load its state into the other, keep stepping:
    the same trajectory as never switching."""
    start = make_params([100, 37])
    first, second, straight = clone_params(start), clone_params(start), clone_params(start)
    ours, theirs = (lambda ps: case.make(ps, kwargs)), (lambda ps: case.make_torch(ps, kwargs))
    make_first, make_second = (theirs, ours) if direction == "torch_to_fusedopt" else (ours, theirs)
    opt_first, reference = make_first(first), theirs(straight)
    run_lockstep([opt_first, reference], [first, straight], 3)
    with torch.no_grad():
        for p, q in zip(second, first):
            p.copy_(q)
    opt_second = make_second(second)
    opt_second.load_state_dict(copy.deepcopy(opt_first.state_dict()))
    run_lockstep([opt_second, reference], [second, straight], STEPS, first=3)
    for p, q in zip(second, straight):
        assert_normwise_close(p, q)
        for key, value in reference.state[q].items():
            assert_normwise_close(opt_second.state[p][key], value)
    if case.fused_cls.rule.has_step:
        assert opt_second.state[second[0]]["step"].item() == 3 + STEPS


@pytest.mark.parametrize("case,kwargs", stateful())
def test_resume_from_checkpoint_equals_uninterrupted(case, kwargs, tmp_path):
    """torch.save / torch.load (weights_only, torch's default) of bf16 params and
    the optimizer: resuming gives the uninterrupted run bit for bit, and the
    states stay float32 (Note [fp32 states of low-precision params])."""
    start = make_params([300, 11], dtype=torch.bfloat16)
    resumed, straight = clone_params(start), clone_params(start)
    opt = case.make(resumed, kwargs)
    run_lockstep([opt], [resumed], 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"params": [p.detach() for p in resumed], "opt": opt.state_dict()}, path)
    checkpoint = torch.load(path)
    restored = [p.clone().requires_grad_() for p in checkpoint["params"]]
    opt2 = case.make(restored, kwargs)
    opt2.load_state_dict(checkpoint["opt"])
    uninterrupted = case.make(straight, kwargs)
    run_lockstep([uninterrupted], [straight], 3)
    run_lockstep([opt2, uninterrupted], [restored, straight], STEPS, first=3)
    for p, q in zip(restored, straight):
        assert torch.equal(p, q)
        assert opt2.state[p].keys() == uninterrupted.state[q].keys() != set()
        for key, value in uninterrupted.state[q].items():
            assert opt2.state[p][key].dtype == torch.float32
            assert torch.equal(opt2.state[p][key], value)


REFUSED = [
    ({"differentiable": True}, "not differentiable"),
    ({"foreach": True}, "foreach=True"),
    ({"fused": False}, "always fused"),
    ({"backend": "gpu"}, "unknown backend"),
]


def _takes(cls, kwargs: dict) -> bool:
    """True when cls's signature has every keyword of kwargs (torch's Rprop has
    no `fused`: neither has fusedopt's, and both raise TypeError for it)."""
    return kwargs.keys() <= inspect.signature(cls).parameters.keys()


@pytest.mark.parametrize(
    "case,kwargs,message",
    [
        pytest.param(case, kw, message, id=f"{case.name}-{i}")
        for case in CASES
        for i, (kw, message) in enumerate(
            case.bad_kwargs + tuple(r for r in REFUSED if _takes(case.fused_cls, r[0]))
        )
    ],
)
def test_invalid_arguments_raise_value_error(case, kwargs, message):
    """torch's ValueErrors with torch's messages; and fusedopt's own refusals."""
    if not {"differentiable", "foreach", "fused", "backend"} & kwargs.keys():
        with pytest.raises(ValueError, match=message):
            case.torch_cls(make_params([3]), **kwargs)
    with pytest.raises(ValueError, match=message):
        case.fused_cls(make_params([3]), **kwargs)


@pytest.mark.parametrize("case,kwargs", stateful())
def test_sparse_grad_raises_and_changes_nothing(case, kwargs):
    params = make_params([4])
    opt = case.make(params, kwargs)
    params[0].grad = torch.ones(4).to_sparse()
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(params[0], before) and len(opt.state.get(params[0], {})) == 0


@pytest.mark.parametrize("backend", ["auto", *CPU_BACKENDS])
@pytest.mark.parametrize("case", case_params())
def test_complex_params_raise_clearly(case, backend):
    p = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.randn(4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        case.make([p], case.stateful, backend).step()


# --- failure atomicity ----------------------------------------------------------------


@pytest.mark.parametrize("first_step", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,kwargs", stateful())
def test_failed_step_leaves_params_and_state_unchanged(case, kwargs, backend, first_step):
    """A grad of the wrong dtype in the last group fails the step, with the same
    message on the first step and on later ones (whose plans are cached): the
    groups before it must not have moved, and no state may be left half-made."""
    good, bad = make_params([64]), make_params([8])
    opt = case.fused_cls(
        [{"params": good}, {"params": bad, "lr": 0.1}], **copy.deepcopy(kwargs), backend=backend
    )
    if not first_step:
        run_lockstep([opt], [good + bad], 2)
    before = snapshot(good + bad, opt)
    set_grads([good + bad], 7)
    bad[0].grad_dtype = None  # torch refuses a grad of another dtype unless told
    bad[0].grad = bad[0].grad.double()
    with pytest.raises(RuntimeError, match="grad must match its param's dtype"):
        opt.step()
    assert_unchanged(good + bad, opt, before)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,kwargs", stateful())
def test_bad_state_in_a_later_group_leaves_earlier_groups_unchanged(case, kwargs, backend):
    """Each backend checks its own bucket; with several buckets the optimizer
    checks them all before the first write, so a corrupted state tensor in the
    second group stops the first group from stepping too."""
    first, second = make_params([64]), make_params([8])
    opt = case.fused_cls(
        [{"params": first}, {"params": second}], **copy.deepcopy(kwargs), backend=backend
    )
    run_lockstep([opt], [first + second], 1)
    key = next(k for k in opt.state[second[0]] if k != "step")
    opt.state[second[0]][key] = opt.state[second[0]][key][:4]
    before = snapshot(first, opt)
    set_grads([first + second], 5)
    with pytest.raises(RuntimeError, match=f"{key} 0 must be"):
        opt.step()
    assert torch.equal(first[0], before[0][0])
    for k, value in opt.state[first[0]].items():
        assert torch.equal(value, before[1]["state"][0][k])


@pytest.mark.parametrize("case,kwargs", stateful())
def test_kernel_check_failure_leaves_state_unchanged(case, kwargs):
    """The C++ op checks everything before writing: a state tensor of the wrong
    dtype (a corrupted checkpoint, say) fails the step with no write at all,
    step counts included."""
    params = make_params([64, 32])
    opt = case.make(params, kwargs, "cpu")
    run_lockstep([opt], [params], 1)
    key = next(k for k in opt.state[params[1]] if k != "step")
    opt.state[params[1]][key] = opt.state[params[1]][key].double()
    before = snapshot(params, opt)
    set_grads([params], 3)
    with pytest.raises(RuntimeError, match=f"{key} 1 must be Float"):
        opt.step()
    assert_unchanged(params, opt, before)


# --- GradScaler ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
@pytest.mark.parametrize("case,kwargs", stateful())
def test_grad_scaler_contract(case, kwargs, backend):
    """GradScaler hands `grad_scale` and `found_inf` to step() (our
    _step_supports_amp_scaling): grads are unscaled in the pass and stored back
    unscaled; with found_inf set nothing moves, step counts included."""
    start = make_params([129])
    scaled, plain = clone_params(start, device=backend.device), clone_params(start)
    opt, ref = case.make(scaled, kwargs, backend.name), case.make_torch(plain, kwargs)
    assert opt._step_supports_amp_scaling
    device = backend.device
    for k in range(STEPS):
        set_grads([plain], k)
        scaled[0].grad = plain[0].grad.to(device) * 1024.0
        opt.grad_scale = torch.tensor(1024.0, device=device)
        opt.found_inf = torch.tensor(0.0, device=device)
        opt.step()
        ref.step()
        assert_normwise_close(scaled[0].grad, plain[0].grad)
    assert_normwise_close(scaled[0], plain[0])
    before = snapshot(scaled, opt)
    scaled[0].grad = torch.full((129,), float("inf"), device=device)
    opt.found_inf = torch.tensor(1.0, device=device)
    opt.step()
    assert_unchanged(scaled, opt, before)


@pytest.mark.parametrize("case,kwargs", stateful())
def test_grad_scaler_step_end_to_end_on_cpu(case, kwargs):
    """torch.amp.GradScaler("cpu").step(opt) with our optimizer: the same as
    torch's stepped on the unscaled grads."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    twin = copy.deepcopy(model)
    opt, ref = case.make(model.parameters(), kwargs), case.make_torch(twin.parameters(), kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        twin(x).square().mean().backward()
        ref.step()
        ref.zero_grad()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_normwise_close(p, q)


# --- in a training loop ----------------------------------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_training_loop_swap_is_one_import(case):
    """The whole point: replace the torch.optim class by fusedopt's, change
    nothing else, get torch's training curve."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    twin = copy.deepcopy(model)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = {}
    for label, net, cls in [("ours", model, case.fused_cls), ("torch", twin, case.torch_cls)]:
        opt = cls(net.parameters(), **case.train_kwargs)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        for _ in range(30):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
        losses[label] = loss.item()
    assert losses["ours"] == pytest.approx(losses["torch"], rel=1e-5)
    assert losses["ours"] < 0.9  # it trained (the start is ~1.1)


@pytest.mark.parametrize("case,kwargs", stateful())
def test_step_under_torch_compile_equals_eager(case, kwargs):
    """torch.compile traces step() into one graph holding our op (its schema and
    fake implementation make that possible) and gives eager's results bit for bit."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = copy.deepcopy(model)
    x = torch.randn(16, 8)
    compiled_opt = case.make(model.parameters(), kwargs)
    eager_opt = case.make(twin.parameters(), kwargs)
    compiled_step = torch.compile(compiled_opt.step)
    for _ in range(3):
        for net in (model, twin):
            net.zero_grad()
            net(x).sum().backward()
        compiled_step()
        eager_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    for key, value in eager_opt.state[next(twin.parameters())].items():
        assert torch.equal(compiled_opt.state[next(model.parameters())][key], value)
    explained = torch._dynamo.explain(compiled_opt.step)()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.parametrize("case,kwargs", stateful())
def test_deepcopy_keeps_the_backend_and_steps_apart(case, kwargs):
    params = make_params([16])
    opt = case.make(params, kwargs, "reference")
    run_lockstep([opt], [params], 1)
    twin = copy.deepcopy(opt)
    assert twin.backend == "reference"
    copied = twin.param_groups[0]["params"]
    run_lockstep([twin], [copied], 1, first=1)
    assert "-> reference" in fusedopt.report(twin)
    assert not torch.equal(copied[0], params[0])  # the copy stepped alone


@pytest.mark.parametrize("case,kwargs", stateful())
def test_report_names_the_backend_of_each_group(case, kwargs):
    fp32, bf16 = make_params([4]), make_params([4], dtype=torch.bfloat16)
    opt = case.fused_cls([{"params": fp32}, {"params": bf16}], **copy.deepcopy(kwargs))
    assert "no param has a grad yet" in fusedopt.report(opt)
    run_lockstep([opt], [fp32 + bf16], 1)
    text = fusedopt.report(opt)
    assert f"{case.name} (backend='auto')" in text
    assert "group 0: 1 torch.float32 params on cpu -> cpu" in text
    assert "group 1: 1 torch.bfloat16 params on cpu -> cpu" in text
    assert "CPU loop ISA" in text
