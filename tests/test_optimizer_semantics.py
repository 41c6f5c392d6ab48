"""fusedopt.Adam/AdamW as drop-in torch optimizers: signatures, state_dict,
checkpoints, hyperparameter checks, GradScaler's contract, failure atomicity."""

import copy
import inspect

import fusedopt
import pytest
import torch
from helpers import clone_params, make_params, run_lockstep, set_grads
from tolerances import assert_normwise_close

STEPS = 5


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_signature_and_defaults_match_torch(name):
    ours = inspect.signature(getattr(fusedopt, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.optim, name).__init__).parameters
    for arg, param in theirs.items():
        assert arg in ours, f"missing argument {arg}"
        assert ours[arg].default == param.default, f"default of {arg}"
        assert ours[arg].kind == param.kind, f"kind of {arg}"
    assert list(ours) == list(theirs) + ["backend"]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_state_dict_layout_matches_torch(name):
    ours = make_params([7, 5])
    theirs = clone_params(ours)
    opt = getattr(fusedopt, name)(ours, amsgrad=True)
    ref = getattr(torch.optim, name)(theirs, amsgrad=True)
    run_lockstep([opt, ref], [ours, theirs], 2)
    a, b = opt.state_dict(), ref.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in b["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for key, value in b["state"][i].items():
            mine = a["state"][i][key]
            assert (mine.dtype, mine.shape, mine.device) == (value.dtype, value.shape, value.device)
    assert a["state"][0]["step"].dtype == torch.float32 and a["state"][0]["step"].dim() == 0


@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
def test_state_dict_round_trip_with_torch(direction):
    """Train 3 steps with one, load its state into the other, keep stepping:
    the same trajectory as never switching."""
    start = make_params([100, 37])
    first, second, straight = clone_params(start), clone_params(start), clone_params(start)
    make_ours = lambda ps: fusedopt.AdamW(ps, lr=1e-2, amsgrad=True)  # noqa: E731
    make_torch = lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True, foreach=False)  # noqa: E731
    make_first, make_second = (
        (make_torch, make_ours) if direction == "torch_to_fusedopt" else (make_ours, make_torch)
    )
    opt_first = make_first(first)
    reference = make_torch(straight)
    run_lockstep([opt_first, reference], [first, straight], 3)
    with torch.no_grad():
        for p, q in zip(second, first):
            p.copy_(q)
    opt_second = make_second(second)
    opt_second.load_state_dict(copy.deepcopy(opt_first.state_dict()))
    for k in range(3, 3 + STEPS):
        set_grads([second, straight], k)
        opt_second.step()
        reference.step()
    for p, q in zip(second, straight):
        assert_normwise_close(p, q)
    assert opt_second.state[second[0]]["step"].item() == 3 + STEPS


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    start = make_params([300, 11], dtype=torch.bfloat16)
    resumed, straight = clone_params(start), clone_params(start)
    opt = fusedopt.AdamW(resumed, lr=1e-2)
    run_lockstep([opt], [resumed], 3)
    torch.save(
        {"params": [p.detach() for p in resumed], "opt": opt.state_dict()}, tmp_path / "ckpt.pt"
    )
    checkpoint = torch.load(tmp_path / "ckpt.pt")
    restored = [p.clone().requires_grad_() for p in checkpoint["params"]]
    opt2 = fusedopt.AdamW(restored, lr=1e-2)
    opt2.load_state_dict(checkpoint["opt"])
    uninterrupted = fusedopt.AdamW(straight, lr=1e-2)
    run_lockstep([uninterrupted], [straight], 3)
    for k in range(3, 3 + STEPS):
        set_grads([restored, straight], k)
        opt2.step()
        uninterrupted.step()
    for p, q in zip(restored, straight):
        assert torch.equal(p, q)
        # Note [fp32 states of low-precision params]: they survive the reload.
        assert opt2.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(opt2.state[p]["exp_avg_sq"], uninterrupted.state[q]["exp_avg_sq"])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"eps": -1e-8}, "Invalid epsilon value"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
        ({"differentiable": True}, "not differentiable"),
        ({"foreach": True}, "foreach=True"),
        ({"fused": False}, "always fused"),
        ({"backend": "gpu"}, "unknown backend"),
    ],
)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_invalid_arguments_raise_value_error(name, kwargs, message):
    torch_only = {"differentiable", "foreach", "fused", "backend"}
    if not torch_only & kwargs.keys():
        with pytest.raises(ValueError, match=message):
            getattr(torch.optim, name)(make_params([3]), **kwargs)
    with pytest.raises(ValueError, match=message):
        getattr(fusedopt, name)(make_params([3]), **kwargs)


def test_sparse_grad_raises_and_changes_nothing():
    params = make_params([4])
    opt = fusedopt.AdamW(params)
    params[0].grad = torch.ones(4).to_sparse()
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(params[0], before) and len(opt.state[params[0]]) == 0


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_complex_params_raise_clearly(backend):
    p = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.randn(4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        fusedopt.AdamW([p], backend=backend).step()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("first_step", [True, False])
def test_failed_step_leaves_params_and_state_unchanged(backend, first_step):
    """A grad of the wrong dtype in the last group fails the step: the groups
    before it must not have moved, and no state may be left half-made."""
    good, bad = make_params([64]), make_params([8])
    opt = fusedopt.AdamW([{"params": good}, {"params": bad, "lr": 0.1}], backend=backend)
    if not first_step:
        run_lockstep([opt], [good + bad], 2)
    snapshot = ([p.detach().clone() for p in good + bad], copy.deepcopy(opt.state_dict()))
    set_grads([good + bad], 7)
    bad[0].grad_dtype = None  # torch refuses a grad of another dtype unless told
    bad[0].grad = bad[0].grad.double()
    with pytest.raises(RuntimeError, match="grad must match its param's dtype"):
        opt.step()
    for p, q in zip(good + bad, snapshot[0]):
        assert torch.equal(p, q)
    after = opt.state_dict()
    assert after["state"].keys() == snapshot[1]["state"].keys()
    for i, state in snapshot[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][i][key], value)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_state_in_a_later_group_leaves_earlier_groups_unchanged(backend):
    """Each backend checks its own bucket; with several buckets the optimizer
    checks them all before the first write, so a corrupted state tensor in the
    second group stops the first group from stepping too."""
    first, second = make_params([64]), make_params([8])
    opt = fusedopt.AdamW([{"params": first}, {"params": second}], backend=backend)
    run_lockstep([opt], [first + second], 1)
    opt.state[second[0]]["exp_avg_sq"] = opt.state[second[0]]["exp_avg_sq"][:4]
    before = first[0].detach().clone()
    set_grads([first + second], 5)
    with pytest.raises(RuntimeError, match="exp_avg_sq 0 must be"):
        opt.step()
    assert torch.equal(first[0], before)
    assert opt.state[first[0]]["step"].item() == 1


def test_kernel_check_failure_leaves_state_unchanged():
    """The C++ op checks everything before writing: a state tensor of the wrong
    dtype (a corrupted checkpoint, say) fails the step with no write at all."""
    params = make_params([64, 32])
    opt = fusedopt.AdamW(params, backend="cpu")
    run_lockstep([opt], [params], 1)
    opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].double()
    before = [p.detach().clone() for p in params]
    steps = [opt.state[p]["step"].item() for p in params]
    set_grads([params], 3)
    with pytest.raises(RuntimeError, match="exp_avg 1 must be Float"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert [opt.state[p]["step"].item() for p in params] == steps


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_grad_scaler_contract(backend):
    """GradScaler hands `grad_scale` and `found_inf` to step() (our
    _step_supports_amp_scaling): grads are unscaled in the pass and stored back
    unscaled; with found_inf set nothing moves, step counts included."""
    scaled, plain = make_params([129]), make_params([129])
    opt = fusedopt.AdamW(scaled, lr=1e-2, backend=backend)
    ref = torch.optim.AdamW(plain, lr=1e-2, foreach=False)
    assert opt._step_supports_amp_scaling
    for k in range(STEPS):
        set_grads([plain], k)
        scaled[0].grad = plain[0].grad * 1024.0
        opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
        opt.step()
        ref.step()
        assert_normwise_close(scaled[0].grad, plain[0].grad)
    assert_normwise_close(scaled[0], plain[0])
    before = scaled[0].detach().clone()
    scaled[0].grad = torch.full((129,), float("inf"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(scaled[0], before)
    assert opt.state[scaled[0]]["step"].item() == STEPS


def test_grad_scaler_step_end_to_end_on_cpu():
    """torch.amp.GradScaler("cpu").step(opt) with our optimizer: the same as
    torch's AdamW stepped on the unscaled grads."""
    model = torch.nn.Linear(16, 4)
    ref_model = copy.deepcopy(model)
    opt = fusedopt.AdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        ref_model(x).square().mean().backward()
        ref.step()
        ref.zero_grad()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_normwise_close(p, q)


def test_training_loop_swap_is_one_import():
    """The whole point: replace torch.optim.AdamW by fusedopt.AdamW, change
    nothing else, get torch's training curve."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    twin = copy.deepcopy(model)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = {}
    for label, net, cls in [("ours", model, fusedopt.AdamW), ("torch", twin, torch.optim.AdamW)]:
        opt = cls(net.parameters(), lr=3e-3, weight_decay=0.05)
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


def test_step_under_torch_compile_equals_eager():
    """torch.compile traces step() into one graph holding our op (its schema and
    fake implementation make that possible) and gives eager's results bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = copy.deepcopy(model)
    x = torch.randn(16, 8)
    compiled_opt = fusedopt.AdamW(model.parameters(), lr=1e-2)
    eager_opt = fusedopt.AdamW(twin.parameters(), lr=1e-2)
    compiled_step = torch.compile(compiled_opt.step)
    for _ in range(3):
        for net in (model, twin):
            net.zero_grad()
            net(x).sum().backward()
        compiled_step()
        eager_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert compiled_opt.state[next(model.parameters())]["step"].item() == 3
    explained = torch._dynamo.explain(compiled_opt.step)()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
