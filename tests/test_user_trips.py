"""What users trip over (issue 11, section 4), each against torch's behaviour:
a param's memory format changing after its states exist, checkpoints whose
`step` is a Python number, betas given as tensors, deepcopy and pickle,
load_state_dict pre-hooks with low-precision params, report() after
zero_grad, the ops' hyperparameter checks on every backend, and
torch.optim.swa_utils."""

from __future__ import annotations

import copy
import inspect
import pickle

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

STEPS = 3


def stateful() -> list:
    """(case, kwargs): every case with the options under which it uses every state."""
    return [pytest.param(case, case.stateful, id=case.name) for case in CASES]


def assert_close_to_torch(opt, ref, ours, theirs) -> None:
    """Params and every state torch keeps normwise close to torch's (the fp32
    parity bound of tests/tolerances.py), step counts equal."""
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q)
        assert opt.state[p].keys() == ref.state[q].keys()
        for key, value in ref.state[q].items():
            if key == "step":
                assert opt.state[p][key].item() == value.item()
            else:
                assert_normwise_close(opt.state[p][key], value)


def resume_beside_torch(case, kwargs, backend, checkpoint, ours, theirs):
    """fusedopt's optimizer of `case` on `ours` and torch's on `theirs`, both
    loaded from `checkpoint`, stepped STEPS more in lockstep and compared;
    returns fusedopt's."""
    opt = case.make(ours, kwargs, backend.name)
    ref = case.make_torch(theirs, kwargs)
    opt.load_state_dict(copy.deepcopy(checkpoint))
    ref.load_state_dict(copy.deepcopy(checkpoint))
    run_lockstep([opt, ref], [ours, theirs], STEPS, first=STEPS)
    assert_close_to_torch(opt, ref, ours, theirs)
    return opt


def conv_model(device: str) -> torch.nn.Module:
    """A conv layer: a 4-d weight (which channels_last lays out anew) and a bias."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 8, 3).to(device)


# --- a param's memory format changes after its states exist ----------------------------


def assert_states_in_param_layout(opt, params, backend) -> None:
    """The kernels' flat loop needs it; the reference steps any layout, so
    its states keep theirs."""
    if backend.name == "reference":
        return
    for p in params:
        for key, value in opt.state[p].items():
            if key in opt.rule.states:
                assert value.stride() == p.stride(), f"{key} is not in its param's layout"


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case,kwargs", stateful())
def test_model_to_channels_last_after_steps_steps_on_as_torch(case, kwargs, backend):
    """`model.to(memory_format=torch.channels_last)` after some steps: torch
    steps on with its contiguous states; fusedopt re-lays them out (Note
    [state layouts] in fusedopt/optim/base.py) and lands where torch does."""
    model, twin = conv_model(backend.device), conv_model("cpu")
    ours, theirs = list(model.parameters()), list(twin.parameters())
    opt = case.make(ours, kwargs, backend.name)
    ref = case.make_torch(theirs, kwargs)
    run_lockstep([opt, ref], [ours, theirs], STEPS)
    model.to(memory_format=torch.channels_last)
    twin.to(memory_format=torch.channels_last)
    assert not ours[0].is_contiguous()
    run_lockstep([opt, ref], [ours, theirs], STEPS, first=STEPS)
    assert_close_to_torch(opt, ref, ours, theirs)
    assert_states_in_param_layout(opt, ours, backend)
    assert f"-> {backend.name}" in fusedopt.report(opt)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case,kwargs", stateful())
def test_checkpoint_of_a_contiguous_model_loads_into_a_channels_last_one(case, kwargs, backend):
    trained = conv_model("cpu")
    params = list(trained.parameters())
    source = case.make_torch(params, kwargs)
    run_lockstep([source], [params], STEPS)
    checkpoint = source.state_dict()
    model = copy.deepcopy(trained).to(backend.device, memory_format=torch.channels_last)
    twin = copy.deepcopy(trained).to(memory_format=torch.channels_last)
    ours, theirs = list(model.parameters()), list(twin.parameters())
    opt = resume_beside_torch(case, kwargs, backend, checkpoint, ours, theirs)
    assert_states_in_param_layout(opt, ours, backend)


# --- checkpoints whose step is a Python number --------------------------------------


def with_step_cases() -> list:
    return [param for param in stateful() if param.values[0].fused_cls.rule.has_step]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case,kwargs", with_step_cases())
def test_step_stored_as_a_python_number_loads_as_in_torch(case, kwargs, backend):
    """Older torch saved `step` (and NAdam's mu_product, ASGD's eta and mu) as
    Python numbers; torch's __setstate__, which its load_state_dict calls,
    turns them into tensors, and so must fusedopt's."""
    start = make_params([5, (3, 4)])
    source_params = clone_params(start)
    source = case.make_torch(source_params, kwargs)
    run_lockstep([source], [source_params], STEPS)
    old = source.state_dict()
    for param_state in old["state"].values():
        for key in case.fused_cls.rule.scalar_keys:
            value = param_state[key].item()
            param_state[key] = int(value) if key == "step" else value
    ours = clone_params(source_params, device=backend.device)
    theirs = clone_params(source_params)
    opt = resume_beside_torch(case, kwargs, backend, old, ours, theirs)
    assert opt.state[ours[0]]["step"].item() == 2 * STEPS


# --- betas given as tensors -------------------------------------------------------------


def betas_cases() -> list:
    return [
        pytest.param(case, id=case.name)
        for case in CASES
        if "betas" in inspect.signature(case.fused_cls).parameters
    ]


@pytest.mark.parametrize("case", betas_cases())
def test_tensor_betas_are_the_users_tensors_and_edits_take_effect(case):
    """torch keeps the user's 0-dim tensors in the group, so an in-place change
    (a schedule written as `betas[0].fill_(...)`) takes effect at the next step."""
    start = make_params([7, (2, 3)])
    ours, theirs = clone_params(start), clone_params(start)
    our_betas = (torch.tensor(0.9), torch.tensor(0.99))
    their_betas = (torch.tensor(0.9), torch.tensor(0.99))
    # Not case.make/make_torch: they deep-copy the kwargs.
    opt = case.fused_cls(ours, lr=1e-2, betas=our_betas)
    ref = case.torch_cls(theirs, lr=1e-2, betas=their_betas, foreach=False)
    for i in range(2):
        torch_keeps = ref.param_groups[0]["betas"][i] is their_betas[i]
        assert torch_keeps
        assert opt.param_groups[0]["betas"][i] is our_betas[i]
    run_lockstep([opt, ref], [ours, theirs], STEPS)
    our_betas[0].fill_(0.5)
    their_betas[0].fill_(0.5)
    run_lockstep([opt, ref], [ours, theirs], STEPS, first=STEPS)
    assert_close_to_torch(opt, ref, ours, theirs)


@pytest.mark.parametrize("case", betas_cases())
def test_mixed_float_and_tensor_betas_as_torch(case):
    """torch's Adam and AdamW refuse them with a ValueError; its RAdam, NAdam
    and Adamax take them."""
    betas = (torch.tensor(0.9), 0.99)
    try:
        case.make_torch(make_params([3]), {"betas": betas})
    except Exception as error:  # noqa: BLE001 (whatever torch raises, fusedopt must)
        with pytest.raises(type(error), match=str(error)):
            case.fused_cls(make_params([3]), betas=betas)
    else:
        opt = case.fused_cls(make_params([3]), betas=betas)
        assert opt.param_groups[0]["betas"][0] is betas[0]


# --- deepcopy and pickle ------------------------------------------------------------------


def public_attrs(opt) -> set[str]:
    """torch's test_deepcopy_copies_all_public_attrs compares these names."""
    return {name for name in vars(opt) if not name.startswith("_")}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("case,kwargs", stateful())
def test_copies_keep_every_public_attribute(case, kwargs, how):
    params = make_params([6])
    opt = case.make(params, kwargs, "reference")
    run_lockstep([opt], [params], 1)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert public_attrs(twin) == public_attrs(opt)
    assert twin.backend == "reference"
    # (Not the defaults' keys: torch's Optimizer.__setstate__ adds
    # "differentiable" to them, for timm's RMSpropTF as for ours.)
    assert twin.param_groups[0].keys() == opt.param_groups[0].keys()
    copied = twin.param_groups[0]["params"]
    run_lockstep([twin], [copied], 1, first=1)
    assert "-> reference" in fusedopt.report(twin)


# --- load_state_dict pre-hooks and fp32 states of bf16/fp16 params --------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case,kwargs", stateful())
def test_pre_hook_result_is_what_loads_into_fp32_states(case, kwargs, dtype):
    """A load_state_dict pre-hook that returns a new dict: torch loads that
    dict, and so must fusedopt's float32 states of low-precision params (Note
    [fp32 states of low-precision params]), not the dict before the hook."""
    params = make_params([9], dtype=dtype)
    opt = case.make(params, kwargs, "cpu")
    run_lockstep([opt], [params], STEPS)
    state_names = case.fused_cls.rule.states
    hooked = {}

    def hook(optimizer, state_dict):
        new = copy.deepcopy(state_dict)
        for param_state in new["state"].values():
            for key in state_names:
                if key in param_state:
                    # Thirds are not bf16/fp16 numbers: a cast would show.
                    param_state[key] = param_state[key] * 3 + 1 / 3
        hooked.update(new)
        return new

    loaded = clone_params(params)
    target = case.make(loaded, kwargs, "cpu")
    target.register_load_state_dict_pre_hook(hook)
    target.load_state_dict(opt.state_dict())
    saved = hooked["state"][0]
    for key in state_names:
        if key in saved:
            assert target.state[loaded[0]][key].dtype == torch.float32
            assert torch.equal(target.state[loaded[0]][key], saved[key])
            assert not torch.equal(target.state[loaded[0]][key], opt.state[params[0]][key])


# --- report() after training ------------------------------------------------------------


@pytest.mark.parametrize("case,kwargs", stateful())
def test_report_after_zero_grad_shows_the_last_step(case, kwargs):
    fp32, bf16 = make_params([4]), make_params([4], dtype=torch.bfloat16)
    opt = case.fused_cls([{"params": fp32}, {"params": bf16}], **copy.deepcopy(kwargs))
    assert "no param has a grad yet" in fusedopt.report(opt)
    run_lockstep([opt], [fp32 + bf16], STEPS)
    opt.zero_grad()
    text = fusedopt.report(opt)
    assert "no param has a grad yet" not in text
    assert "no param has a grad now; the last step():" in text
    assert "group 0: 1 torch.float32 params on cpu -> cpu" in text
    assert "group 1: 1 torch.bfloat16 params on cpu -> cpu" in text


# --- the ops' hyperparameter checks, on every backend ----------------------------------


def bad_group_edits(case) -> list[tuple[str, object, str]]:
    """(group key, value torch's constructor would refuse or never sees, the
    message of the op's check) for this case: a non-finite lr on every rule,
    and one range of the rule's own R::check."""
    defaults = case.fused_cls(make_params([1])).defaults
    edits = [("lr", float("inf"), "lr must be finite and >= 0, got inf")]
    if "betas" in defaults:
        edits.append(("betas", (1.0, 0.5), r"beta1 must be in \[0, 1\), got 1"))
    elif "weight_decay" in defaults:
        edits.append(("weight_decay", -0.5, "weight_decay must be >= 0, got -0.5"))
    else:
        edits.append(("etas", (1.5, 1.2), r"etaminus must be in \(0, 1\), got 1.5"))
    return edits


def bad_edit_params() -> list:
    return [
        pytest.param(case, key, value, message, id=f"{case.name}-{key}")
        for case in CASES
        for key, value, message in bad_group_edits(case)
    ]


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
@pytest.mark.parametrize("case,key,value,message", bad_edit_params())
def test_every_backend_makes_the_ops_hyperparameter_checks(case, key, value, message, backend):
    """A value set in a group after the constructor (a scheduler, a user's
    edit) is checked by every backend as the CPU op checks it: the same
    RuntimeError and message, and nothing written. Without the check the
    Triton and reference backends turned every param NaN on lr=inf."""
    params = make_params([5, 3], seed=2)
    ours = clone_params(params, device=backend.device)
    opt = case.make(ours, case.stateful, backend.name)
    run_lockstep([opt], [ours], 1)
    opt.param_groups[0][key] = value
    set_grads([ours], 1)
    before = snapshot(ours, opt)
    with pytest.raises(RuntimeError, match=rf"fusedopt: {case.fused_cls.rule.name}: {message}"):
        opt.step()
    assert_unchanged(ours, opt, before)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", case_params())
def test_a_bad_lr_in_a_later_group_leaves_earlier_groups_unchanged(case, backend):
    """Every group's hyperparameters are checked before any group is stepped."""
    first, second = make_params([4], seed=3), make_params([4], seed=4)
    opt = case.fused_cls([{"params": first}, {"params": second}], **case.stateful, backend=backend)
    run_lockstep([opt], [first + second], 1)
    opt.param_groups[1]["lr"] = float("nan")
    set_grads([first + second], 1)
    before = snapshot(first + second, opt)
    with pytest.raises(RuntimeError, match="lr must be finite and >= 0, got nan"):
        opt.step()
    assert_unchanged(first + second, opt, before)


# --- torch.optim.swa_utils ---------------------------------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_swa_utils_drive_fusedopt_as_torch(case):
    """AveragedModel and SWALR (stochastic weight averaging) on every
    optimizer: the same learning rates, weights and averages as with torch's."""
    from torch.optim.swa_utils import SWALR, AveragedModel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 6), torch.randn(16, 2)
    runs = {}
    for name, net, make in (
        ("ours", model, lambda ps: case.make(ps, case.train_kwargs)),
        ("torch", twin, lambda ps: case.make_torch(ps, case.train_kwargs)),
    ):
        opt = make(list(net.parameters()))
        averaged = AveragedModel(net)
        scheduler = SWALR(opt, swa_lr=float(case.train_kwargs["lr"]) / 2, anneal_epochs=3)
        lrs = []
        for _ in range(6):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
            averaged.update_parameters(net)
            scheduler.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        runs[name] = (opt, averaged, lrs)
    (opt, averaged, lrs), (ref, ref_averaged, ref_lrs) = runs["ours"], runs["torch"]
    assert lrs == ref_lrs
    assert_close_to_torch(opt, ref, list(model.parameters()), list(twin.parameters()))
    for a, b in zip(averaged.parameters(), ref_averaged.parameters()):
        assert_normwise_close(a, b)
    assert averaged.n_averaged.item() == ref_averaged.n_averaged.item() == 6
