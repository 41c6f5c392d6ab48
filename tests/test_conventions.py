"""The Adam conventions (Note [Adam conventions] in csrc/include/fusedopt/rules/
adam.h), HF's legacy AdamW and the fully decoupled weight decay, each against
a plain re-implementation of its source's formula, on every backend.

tests/cases.py runs eps_mode="hat", correct_bias=False and the fully decoupled
mode through the whole harness against torch by exact identities; here each
is compared with the formula of the source it claims to reproduce."""

from __future__ import annotations

import copy
import logging
import math
import pickle

import fusedopt
import pytest
import torch
from fusedopt.optim.base import decay_defaults
from helpers import backend_params, clone_params, make_params, run_lockstep
from tolerances import assert_normwise_close

STEPS = 20
BETAS = (0.8, 0.95)  # bc2 = 1 - 0.95^t stays far from 1 over the steps: eps's place shows


class _Source(torch.optim.Optimizer):
    """A plain re-implementation of one source's Adam: fp32, one tensor at a
    time, moments as the source forms them (mul_/add_, not torch's lerp), an
    int step count. Subclasses write `update`."""

    def __init__(self, params, lr, betas=BETAS, eps=1e-8, weight_decay=0.0, **extra):
        super().__init__(
            params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **extra)
        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(
                        step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p)
                    )
                state["step"] += 1
                self.update(p, p.grad, state, group, float(group["lr"]), *group["betas"])


def _moments(state, g, beta1, beta2):
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    return m, v


class KerasAdam(_Source):
    """tf.keras.optimizers.Adam (TF's ApplyAdam): lr_t = lr * sqrt(1 - beta2^t) /
    (1 - beta1^t), var -= lr_t * m / (sqrt(v) + epsilon_hat); decoupled decay
    first, as torch's AdamW (Keras' own weight_decay does the same)."""

    def update(self, p, g, state, group, lr, beta1, beta2):
        t = state["step"]
        p.mul_(1 - lr * group["weight_decay"])
        m, v = _moments(state, g, beta1, beta2)
        lr_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        p.sub_(lr_t * m / (v.sqrt() + group["eps"]))


class OptaxAdamEpsRoot(_Source):
    """optax.adam(lr, b1, b2, eps=0, eps_root): mu_hat = mu / (1 - b1^t), nu_hat =
    nu / (1 - b2^t), update = mu_hat / (sqrt(nu_hat + eps_root) + eps), p += -lr *
    update (optax.scale_by_adam then scale_by_learning_rate); decay first."""

    def update(self, p, g, state, group, lr, beta1, beta2):
        t = state["step"]
        p.mul_(1 - lr * group["weight_decay"])
        mu, nu = _moments(state, g, beta1, beta2)
        mu_hat, nu_hat = mu / (1 - beta1**t), nu / (1 - beta2**t)
        p.add_(-lr * (mu_hat / ((nu_hat + group["eps"]).sqrt() + 0.0)))


class BertAdamWeightDecay(_Source):
    """BERT's AdamWeightDecayOptimizer (google-research/bert, optimization.py),
    no bias correction: update = m / (sqrt(v) + eps) + wd * param; param -= lr *
    update. The decay reads the param before the update: torch's AdamW order."""

    def update(self, p, g, state, group, lr, beta1, beta2):
        m, v = _moments(state, g, beta1, beta2)
        update = m / (v.sqrt() + group["eps"]) + group["weight_decay"] * p
        p.sub_(lr * update)


class HFLegacyAdamW(_Source):
    """transformers.AdamW's step (transformers v4.x, optimization.py), line for line."""

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True
    ):
        super().__init__(params, lr, betas, eps, weight_decay, correct_bias=correct_bias)

    def update(self, p, grad, state, group, lr, beta1, beta2):
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=(1.0 - beta1))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"]
        if group["correct_bias"]:
            bias_correction1 = 1.0 - beta1 ** state["step"]
            bias_correction2 = 1.0 - beta2 ** state["step"]
            step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
        p.addcdiv_(exp_avg, denom, value=-step_size)
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=(-group["lr"] * group["weight_decay"]))


def _run_against(opt_fn, source_fn, backend, steps=STEPS, lr_values=None):
    start = make_params(backend.sizes((3, 1031, 0, 4097)))
    ours = clone_params(start, device=backend.device)
    theirs = clone_params(start)
    opt, source = opt_fn(ours), source_fn(theirs)
    schedule = None
    if lr_values is not None:

        def schedule(k):
            for o in (opt, source):
                for group in o.param_groups:
                    group["lr"] = lr_values(k)

    run_lockstep([opt, source], [ours, theirs], steps, before_step=schedule)
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q)
        assert_normwise_close(opt.state[p]["exp_avg_sq"], source.state[q]["exp_avg_sq"])
    return ours, theirs


# --- eps_mode and correct_bias (task: each convention against its source) --------


CONVENTIONS = [
    # (fusedopt class and kwargs, the source's optimizer and kwargs)
    pytest.param(fusedopt.Adam, dict(eps_mode="hat", eps=1e-3), KerasAdam, {}, id="hat"),
    pytest.param(
        fusedopt.AdamW,
        dict(eps_mode="hat", eps=1e-3, weight_decay=0.1),
        KerasAdam,
        {"weight_decay": 0.1},
        id="hat-decoupled",
    ),
    pytest.param(fusedopt.Adam, dict(eps_mode="root", eps=1e-3), OptaxAdamEpsRoot, {}, id="root"),
    pytest.param(
        fusedopt.AdamW,
        dict(eps_mode="root", eps=1e-3, weight_decay=0.1, amsgrad=False),
        OptaxAdamEpsRoot,
        {"weight_decay": 0.1},
        id="root-decoupled",
    ),
    pytest.param(
        fusedopt.AdamW,
        dict(correct_bias=False, eps=1e-3, weight_decay=0.1),
        BertAdamWeightDecay,
        {"weight_decay": 0.1},
        id="no-correction",
    ),
    pytest.param(
        fusedopt.AdamW,
        dict(correct_bias=False, eps_mode="hat", eps=1e-3, weight_decay=0.1),
        BertAdamWeightDecay,
        {"weight_decay": 0.1},
        id="no-correction-hat",
    ),
]


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cls,kwargs,source,source_kwargs", CONVENTIONS)
def test_convention_matches_its_source(cls, kwargs, source, source_kwargs, backend, tensor_lr):
    """fp32, 20 steps, normwise within 1e-6 of the source's formula, with a float
    lr (host scalars) and a tensor lr (the per-tensor scalars computed on the
    device: Triton's prologue, CUDA's capturable path)."""
    lr = torch.tensor(1e-2) if tensor_lr else 1e-2
    _run_against(
        lambda ps: cls(ps, lr=lr, betas=BETAS, **kwargs, backend=backend.name),
        lambda ps: source(ps, lr=1e-2, eps=kwargs["eps"], **source_kwargs),
        backend,
    )


@pytest.mark.parametrize(
    "kwargs", [dict(eps_mode="hat"), dict(eps_mode="root"), dict(correct_bias=False)]
)
def test_each_convention_differs_from_torchs(kwargs):
    """Guards the source tests against a switch both sides ignore."""
    a, b = make_params([1000]), make_params([1000])
    run_lockstep(
        [
            fusedopt.Adam(a, lr=1e-2, betas=BETAS, eps=1e-3, **kwargs),
            fusedopt.Adam(b, lr=1e-2, betas=BETAS, eps=1e-3),
        ],
        [a, b],
        3,
    )
    assert (a[0] - b[0]).abs().max() > 1e-5


def test_root_with_amsgrad_and_groups_of_other_conventions_match_the_reference():
    """Groups of different conventions in one optimizer, amsgrad under the root,
    and a group's eps_mode edited between steps: the CPU loops as the reference
    (to rounding: the compiler may contract a * b + c into an FMA)."""
    start = make_params([257, 33, 5])
    ours, theirs = clone_params(start), clone_params(start)

    def groups(ps):
        return [
            {"params": [ps[0]], "eps_mode": "root", "amsgrad": True, "eps": 1e-4},
            {"params": [ps[1]], "correct_bias": False},
            {"params": [ps[2]], "eps_mode": "hat", "eps": 1e-2},
        ]

    opt = fusedopt.AdamW(groups(ours), lr=1e-2, backend="cpu")
    ref = fusedopt.AdamW(groups(theirs), lr=1e-2, backend="reference")

    def edit(k):
        if k == 3:
            for o in (opt, ref):
                o.param_groups[2]["eps_mode"] = "torch"

    run_lockstep([opt, ref], [ours, theirs], 6, before_step=edit)
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q)
        for key, value in ref.state[q].items():
            assert_normwise_close(opt.state[p][key], value)


def test_convention_keywords_are_checked_and_keep_torchs_group_keys():
    with pytest.raises(ValueError, match="Invalid eps_mode 'paper'"):
        fusedopt.Adam(make_params([3]), eps_mode="paper")
    plain = fusedopt.AdamW(make_params([3]), correct_bias=True, eps_mode="torch")
    assert "eps_mode" not in plain.param_groups[0] and "correct_bias" not in plain.param_groups[0]
    other = fusedopt.AdamW(make_params([3]), correct_bias=False, eps_mode="root")
    assert other.param_groups[0]["eps_mode"] == "root"
    assert other.param_groups[0]["correct_bias"] is False
    hyper = other.hyper(other.param_groups[0])
    assert (hyper["eps_mode"], hyper["correct_bias"], hyper["decay_after"]) == (2, False, False)


# --- HF's legacy AdamW -----------------------------------------------------------


HF_CASES = [
    pytest.param(dict(lr=1e-2, weight_decay=0.1), id="decay"),
    pytest.param(dict(lr=1e-2, weight_decay=0.1, correct_bias=False), id="no-correction"),
    pytest.param(dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.3), id="large-eps"),
    pytest.param(dict(lr=1e-2), id="no-decay"),
]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kwargs", HF_CASES)
def test_hf_adamw_reproduces_transformers_formula(kwargs, backend):
    """fusedopt.HFAdamW against a line-for-line copy of transformers.AdamW's step
    under a linear warmup-then-decay schedule (get_linear_schedule_with_warmup's
    shape), normwise within 1e-6 after 20 steps."""

    def lr_at(k):
        return kwargs["lr"] * min((k + 1) / 5, (STEPS - k) / (STEPS - 5))

    _run_against(
        lambda ps: fusedopt.HFAdamW(ps, **kwargs, backend=backend.name),
        lambda ps: HFLegacyAdamW(ps, **kwargs),
        backend,
        lr_values=lr_at,
    )


def test_hf_adamw_decays_after_the_update_unlike_torch():
    """The decay order is visible: with a large lr * wd, HF's p - lr*wd*p' (the
    updated p') is not torch's (1 - lr*wd)p - step; both sides as their sources."""
    start = make_params([4097])
    hf, torch_order, source = clone_params(start), clone_params(start), clone_params(start)
    kwargs = dict(lr=0.1, weight_decay=0.5, eps=1e-6)
    opts = [
        fusedopt.HFAdamW(hf, **kwargs),
        fusedopt.AdamW(torch_order, **kwargs, eps_mode="hat"),
        HFLegacyAdamW(source, **kwargs),
    ]
    run_lockstep(opts, [hf, torch_order, source], 3)
    assert_normwise_close(hf[0], source[0])
    assert not torch.allclose(hf[0], torch_order[0], rtol=1e-4, atol=0)


def test_hf_adamw_interface():
    import inspect

    params = list(inspect.signature(fusedopt.HFAdamW).parameters.values())
    assert [(p.name, p.default) for p in params[1:7]] == [
        ("lr", 1e-3),
        ("betas", (0.9, 0.999)),
        ("eps", 1e-6),
        ("weight_decay", 0.0),
        ("correct_bias", True),
        ("no_deprecation_warning", False),
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[7:])
    opt = fusedopt.HFAdamW(make_params([3]), no_deprecation_warning=True)
    assert set(opt.param_groups[0]) == {
        "params",
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "correct_bias",
    }
    for kwargs, message in [
        (dict(lr=-1.0), r"Invalid learning rate: -1.0 - should be >= 0.0"),
        (dict(betas=(1.0, 0.9)), r"Invalid beta parameter: 1.0 - should be in \[0.0, 1.0\)"),
        (dict(betas=(0.9, 1.0)), r"Invalid beta parameter: 1.0 - should be in \[0.0, 1.0\)"),
        (dict(eps=-1.0), r"Invalid epsilon value: -1.0 - should be >= 0.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            fusedopt.HFAdamW(make_params([3]), **kwargs)


def test_hf_adamw_resumes_from_a_transformers_checkpoint_and_survives_copies():
    """transformers' state_dict (int steps, its states) loads and continues as
    the uninterrupted source; deepcopy and pickle keep HF's decay order."""
    start = make_params([300, 7])
    resumed, straight = clone_params(start), clone_params(start)
    kwargs = dict(lr=1e-2, weight_decay=0.2)
    first, source = HFLegacyAdamW(resumed, **kwargs), HFLegacyAdamW(straight, **kwargs)
    run_lockstep([first, source], [resumed, straight], 3)
    opt = fusedopt.HFAdamW(resumed, **kwargs)
    opt.load_state_dict(first.state_dict())
    assert opt.state[resumed[0]]["step"].dtype == torch.float32
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    unpickled = pickle.loads(pickle.dumps(opt))
    assert unpickled.param_groups[0].keys() == opt.param_groups[0].keys()
    run_lockstep([opt, source], [resumed, straight], 5, first=3)
    run_lockstep([twin], [twin_params], 5, first=3)
    for p, q, r in zip(resumed, straight, twin_params):
        assert_normwise_close(p, q)
        assert torch.equal(p, r)
    assert twin.hyper(twin.param_groups[0])["decay_after"] is True
    assert twin.hyper(twin.param_groups[0])["weight_decay_mode"] == 1


# --- fully decoupled weight decay ------------------------------------------------


SCHEDULERS = {
    # OneCycleLR sets initial_lr = max_lr / div_factor: not the peak.
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1e-2, total_steps=STEPS + 1, cycle_momentum=False
    ),
    # CyclicLR sets initial_lr = base_lr.
    "cyclic": lambda opt: torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-3, max_lr=1e-2, step_size_up=4, cycle_momentum=False
    ),
    "warm-restarts": lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=6),
}


def _sgd_twin(params, lr, weight_decay, momentum):
    """torch.optim.SGD with the fully decoupled decay as a step pre-hook:
    p *= 1 - (wd / lr_max) * lr, then torch's step without decay."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=False)

    @torch.no_grad()
    def decay(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * weight_decay)

    opt.register_step_pre_hook(decay)
    return opt


FULLY_DECOUPLED = {
    # name: (fusedopt optimizer, torch twin with wd / lr_max), lr_max = the lr at construction
    "Adam": (
        lambda ps, lr, wd: fusedopt.Adam(
            ps, lr=lr, weight_decay=wd, weight_decay_mode="fully_decoupled"
        ),
        lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=False),
    ),
    "AdamW": (
        lambda ps, lr, wd: fusedopt.AdamW(
            ps, lr=lr, weight_decay=wd, weight_decay_mode="fully_decoupled"
        ),
        lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=False),
    ),
    "SGD": (
        lambda ps, lr, wd: fusedopt.SGD(
            ps, lr=lr, momentum=0.9, weight_decay=wd, weight_decay_mode="fully_decoupled"
        ),
        lambda ps, lr, wd: _sgd_twin(ps, lr, wd, momentum=0.9),
    ),
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("name", FULLY_DECOUPLED)
def test_fully_decoupled_equals_torch_with_wd_over_lr_max_under_schedulers(name, scheduler):
    """p *= 1 - wd * lr / lr_max is torch's decoupled decay with wd / lr_max, at
    every lr a scheduler sets, because lr_max is the lr at construction and
    not the scheduler's initial_lr."""
    make, twin = FULLY_DECOUPLED[name]
    lr, wd = 1e-2, 1e-3
    start = make_params([1000, 7])
    ours, theirs = clone_params(start), clone_params(start)
    opt, ref = make(ours, lr, wd), twin(theirs, lr, wd / lr)
    schedulers = [SCHEDULERS[scheduler](o) for o in (opt, ref)]
    assert opt.param_groups[0]["lr_max"] == lr
    if scheduler == "onecycle":
        assert opt.param_groups[0]["initial_lr"] != lr  # 4e-4: max_lr / div_factor
    run_lockstep(
        [opt, ref],
        [ours, theirs],
        STEPS,
        before_step=lambda k: [s.step() for s in schedulers] if k else None,
    )
    assert float(opt.param_groups[0]["lr"]) != lr
    for p, q in zip(ours, theirs):
        assert_normwise_close(p, q)
    assert opt.param_groups[0]["lr_max"] == lr  # the scheduler never moved it


def test_lr_max_is_each_groups_own_lr_unless_given():
    params = make_params([3, 3, 3])
    opt = fusedopt.AdamW(
        [{"params": [params[0]]}, {"params": [params[1]], "lr": 5e-2}],
        lr=1e-2,
        weight_decay=1e-4,
        weight_decay_mode="fully_decoupled",
    )
    opt.add_param_group({"params": [params[2]], "lr": 2e-3})
    assert [g["lr_max"] for g in opt.param_groups] == [1e-2, 5e-2, 2e-3]
    given = fusedopt.SGD(
        params, lr=1e-2, weight_decay=1e-4, weight_decay_mode="fully_decoupled", lr_max=0.1
    )
    given.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": 3e-3})
    assert [g["lr_max"] for g in given.param_groups] == [0.1, 0.1]  # the given one wins


@pytest.mark.parametrize(
    "mode,lr_max,decoupled,message",
    [
        (None, 0.1, False, "lr_max applies to weight_decay_mode='fully_decoupled' only"),
        ("decoupled", 0.1, False, "lr_max applies to weight_decay_mode='fully_decoupled' only"),
        ("fully", None, False, "Invalid weight_decay_mode 'fully'"),
        ("l2", None, True, "decoupled_weight_decay=True contradicts weight_decay_mode='l2'"),
        ("fully_decoupled", 0.0, False, r"Invalid lr_max value: 0.0 \(must be > 0\)"),
        ("fully_decoupled", -1.0, False, r"Invalid lr_max value: -1.0"),
    ],
)
def test_decay_defaults_refuses_what_cannot_apply(mode, lr_max, decoupled, message):
    with pytest.raises(ValueError, match=message):
        decay_defaults(mode, lr_max, decoupled)
    if not decoupled:
        with pytest.raises(ValueError, match=message):
            fusedopt.SGD(make_params([3]), lr=1e-2, weight_decay_mode=mode, lr_max=lr_max)


@pytest.mark.parametrize("wd,warns", [(1e-3, True), (0.1, True), (1e-5, False)])
def test_report_warns_on_a_torch_scale_weight_decay_in_the_fully_decoupled_mode(wd, warns):
    opt = fusedopt.AdamW(make_params([3]), weight_decay=wd, weight_decay_mode="fully_decoupled")
    text = fusedopt.report(opt)
    assert ("warning: group 0" in text) is warns
    if warns:
        assert "wd_fully = wd_torch * lr_max" in text
    plain = fusedopt.AdamW(make_params([3]), weight_decay=0.1)
    assert "warning" not in fusedopt.report(plain)


# --- report()'s likely misconfigurations ---------------------------------------------


def small_net() -> torch.nn.Module:
    """Two weight matrices, two biases and a LayerNorm: three 1-dim params."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2, bias=False)
    )


L2_IN_ADAM = "use fusedopt.AdamW or weight_decay_mode='decoupled'"
DECAYED_LOW_DIM = "decays 3 params of fewer than 2 dims"
NO_DECAY_ANYWHERE = "weight_decay=0 in every group decays nothing"
FLAGS = (L2_IN_ADAM, DECAYED_LOW_DIM, NO_DECAY_ANYWHERE)
pg = fusedopt.param_groups


@pytest.mark.parametrize(
    "make,flags",
    [
        (lambda m: fusedopt.Adam(pg(m, 0.01), weight_decay=0.01), [L2_IN_ADAM]),
        (lambda m: fusedopt.NAdam(pg(m, 0.01)), [L2_IN_ADAM]),
        (lambda m: fusedopt.Adam(m.parameters(), weight_decay=0.01), [L2_IN_ADAM, DECAYED_LOW_DIM]),
        (lambda m: fusedopt.AdamW(m.parameters(), weight_decay=0.01), [DECAYED_LOW_DIM]),
        (lambda m: fusedopt.SGD(m.parameters(), lr=0.1, weight_decay=1e-4), [DECAYED_LOW_DIM]),
        (lambda m: fusedopt.AdamW(m.parameters(), weight_decay=0.0), [NO_DECAY_ANYWHERE]),
        # transformers' Trainer with its default TrainingArguments(weight_decay=0.0)
        (lambda m: fusedopt.AdamW(pg(m, 0.0)), [NO_DECAY_ANYWHERE]),
        (lambda m: fusedopt.HFAdamW(m.parameters()), [NO_DECAY_ANYWHERE]),
        # set up as meant: no flag
        (lambda m: fusedopt.AdamW(pg(m, 0.01)), []),
        (lambda m: fusedopt.Adam(m.parameters()), []),
        (lambda m: fusedopt.Adam(pg(m, 0.01), weight_decay_mode="decoupled"), []),
        (lambda m: fusedopt.SGD(pg(m, 1e-4), lr=0.1), []),
        (lambda m: fusedopt.Rprop(m.parameters()), []),
        # only 1-dim params: not a network, the decay is meant
        (lambda m: fusedopt.AdamW(make_params([3, 5])), []),
    ],
)
def test_report_flags_likely_misconfigurations_once_at_info_level(make, flags, caplog):
    opt = make(small_net())
    caplog.set_level(logging.INFO, logger="fusedopt")
    texts = [fusedopt.report(opt) for _ in range(2)]
    records = [r for r in caplog.records if "likely misconfiguration" in r.getMessage()]
    logged = [r.getMessage() for r in records]
    assert all(r.levelno == logging.INFO and r.name == "fusedopt" for r in records)
    for flag in FLAGS:
        assert all((flag in text) is (flag in flags) for text in texts), flag
        assert sum(flag in message for message in logged) == (flag in flags), flag
    assert len(logged) == len(flags)  # once each, though report() ran twice
    assert "warning" not in texts[0]
    if flags:  # a fresh optimizer says it again
        caplog.clear()
        fusedopt.report(make(small_net()))
        assert sum("likely misconfiguration" in r.getMessage() for r in caplog.records) == len(
            flags
        )


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_fully_decoupled_survives_state_dict_deepcopy_and_pickle(name):
    make = FULLY_DECOUPLED[name][0]
    start = make_params([50])
    a, b = clone_params(start), clone_params(start)
    opt = make(a, 1e-2, 1e-3)
    run_lockstep([opt], [a], 2)
    loaded = make(b, 5e-2, 0.0)  # other lr, so other lr_max, and no decay
    loaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    with torch.no_grad():
        b[0].copy_(a[0])
    for other in (loaded, copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        group = other.param_groups[0]
        assert (group["weight_decay_mode"], group["lr_max"], group["weight_decay"]) == (
            "fully_decoupled",
            1e-2,
            1e-3,
        )
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    run_lockstep([opt, loaded, twin], [a, b, twin_params], 3, first=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], twin_params[0])
