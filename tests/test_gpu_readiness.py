"""What a GPU needs of the Python side, checked on the CPU (issue 8): where
step counts live (Note [counts on the device] in fusedopt/optim/base.py), the
CUDA-graph refusal (Note [CUDA graphs]), the Triton tables kept per optimizer
call and uploaded into new tensors (Note [table uploads] in kernels/mta.py),
and counts that advance only after a launch succeeded. tests/test_gpu.py runs
the same behaviour on a GPU."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from fusedopt import ASGD, SGD, Adam, AdamW, NAdam, backends
from fusedopt.kernels import mta, rules
from fusedopt.registry import RULES
from test_triton_frame import BLOCK, adam_hyper, full_hyper, make_lists

META = torch.device("meta")


def _group(opt):
    return opt.param_groups[0]


@pytest.mark.parametrize(
    ("cls", "kwargs", "backend", "expected"),
    [
        (AdamW, {}, "cuda", META),  # torch's fused layout: no host read per step
        (AdamW, {}, "triton", META),
        (AdamW, {}, "reference", torch.device("cpu")),  # reads values on the host anyway
        (AdamW, {"capturable": True}, "reference", META),  # capturable: torch's rule
        # Scalar states (Note [scalar states]) live and advance beside the counts.
        (NAdam, {}, "cuda", META),
        (ASGD, {}, "triton", META),
        (NAdam, {}, "cpu", torch.device("cpu")),
    ],
)
def test_counts_live_where_the_backend_reads_them(cls, kwargs, backend, expected):
    p = torch.zeros(4, device=META)
    opt = cls([p], **kwargs)
    assert opt._counts_device(_group(opt), p, backends.get(backend)) == expected


def test_counts_from_a_checkpoint_move_once_to_the_backend_device():
    p = torch.zeros(4, device=META)
    opt = AdamW([p])
    opt.state[p]["step"] = torch.tensor(7.0)  # as a CPU checkpoint loads it
    opt._new_state(_group(opt), p, ("exp_avg", "exp_avg_sq"), META)
    assert opt.state[p]["step"].device == META
    assert opt.state[p]["exp_avg"].device == META


@pytest.mark.parametrize("cls", [NAdam, ASGD], ids=lambda c: c.__name__)
def test_scalar_states_from_a_torch_checkpoint_move_with_the_counts(cls):
    """torch's NAdam keeps step and mu_product on the CPU unless capturable
    (its ASGD keeps step, eta and mu on the param's device): after
    load_state_dict they are float32 beside the count, and move with it, in
    torch's capturable layout (every key on the param's device, float32)."""
    twin = getattr(torch.optim, cls.__name__)
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    torch_opt = twin([p], lr=1e-2)
    torch_opt.step()
    saved = torch_opt.state_dict()
    opt = cls([torch.nn.Parameter(torch.zeros(4, device=META))], lr=1e-2)
    opt.load_state_dict(saved)
    (q,) = opt.param_groups[0]["params"]
    keys = RULES[cls.__name__.lower()].scalar_keys
    assert set(opt.state[q]) == set(saved["state"][0])
    assert all(opt.state[q][k].dtype == torch.float32 for k in keys)
    used = RULES[cls.__name__.lower()].states
    opt._new_state(_group(opt), q, used, META)
    for key in keys:
        assert opt.state[q][key].device == META and opt.state[q][key].dtype == torch.float32, key


@pytest.fixture
def capturing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def test_capture_of_a_non_capturable_step_is_refused(capturing):
    p = torch.zeros(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="param_groups' capturable is False"):
        Adam([p])._check_capture()
    Adam([p], capturable=True)._check_capture()
    # torch's SGD has no capturable flag and no count: its capture is the user's call.
    SGD([p], lr=0.1, momentum=0.9)._check_capture()
    # Scalar states advance on the device (Note [scalar states]): capturable like the rest.
    NAdam([p], capturable=True)._check_capture()
    ASGD([p], capturable=True)._check_capture()
    with pytest.raises(RuntimeError, match="param_groups' capturable is False"):
        NAdam([p])._check_capture()


def test_a_refused_capture_writes_nothing(capturing, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    p = torch.ones(4, requires_grad=True)
    p.grad = torch.ones(4)
    opt = Adam([p], lr=0.1)
    with pytest.raises(RuntimeError, match="capturable is False"):
        opt.step()
    assert torch.equal(p, torch.ones(4)) and not opt.state


def test_no_capture_no_refusal(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    Adam([torch.zeros(4, requires_grad=True)])._check_capture()


def test_scaler_tensors_stay_when_already_on_the_device():
    """GradScaler's tensors are copied only for params on another device; a
    CPU lr stays (the backends read it as a host value)."""
    from fusedopt.optim.base import _on_device

    copies = {}
    scale = torch.tensor(2.0, device=META)
    assert _on_device(scale, META, copies) is scale
    lr = torch.tensor(1e-3)
    assert _on_device(lr, META, copies) is lr
    assert _on_device(1e-3, META, copies) == 1e-3
    assert _on_device(None, META, copies) is None
    assert copies == {}


@pytest.mark.skipif(not backends.triton_interpreter_on(), reason="needs the Triton interpreter")
def test_each_optimizer_call_keeps_its_own_tables(monkeypatch):
    """More groups than the launcher's LRU holds (layer-wise lr decay) still
    build their tables once: the optimizer keeps them per call."""
    monkeypatch.setattr(mta, "MAX_PLANS", 1)
    # An empty LRU: other tests' direct backend calls leave plans in the shared launcher.
    monkeypatch.setattr(backends.get("triton").launcher, "_plans", OrderedDict())
    built = []
    init = mta._Plan.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(mta._Plan, "__init__", counting_init)
    params = [torch.randn(33, requires_grad=True) for _ in range(5)]
    opt = AdamW(
        [{"params": [p], "lr": 1e-3 * (i + 1)} for i, p in enumerate(params)], backend="triton"
    )
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert len(built) == len(params)
    assert not backends.get("triton").launcher._plans


@pytest.mark.skipif(not backends.triton_interpreter_on(), reason="needs the Triton interpreter")
def test_table_uploads_go_into_new_tensors():
    """Note [table uploads]: a moved grad gives a new tensor table (never a
    rewrite of one a queued kernel may read); unchanged grads upload nothing."""
    hyper = adam_hyper()
    params, grads, states, counts = make_lists(RULES["adam"], [5, 40], torch.float32, hyper)
    launcher, plans = mta.Launcher(), {}

    def step():
        launcher.step(
            rules.get("adam"),
            params,
            grads,
            states,
            counts,
            lr=1e-3,
            hyper=hyper,
            block=BLOCK,
            plans=plans,
        )
        (plan,) = plans.values()
        return plan, plan.tensor_table

    plan, table = step()
    assert step() == (plan, table)
    grads[1] = grads[1].clone()
    again, moved = step()
    assert again is plan and moved is not table
    assert moved[1, mta.COL_GRAD.value] == grads[1].data_ptr()


class _FailingLaunch:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError("launch failed")

        return launch


@pytest.mark.skipif(not backends.triton_interpreter_on(), reason="needs the Triton interpreter")
@pytest.mark.parametrize("counts_on_device", [False, True], ids=["host-counts", "device-counts"])
@pytest.mark.parametrize("name", ["adam", "nadam", "asgd"])
def test_a_failed_launch_leaves_every_count(monkeypatch, name, counts_on_device):
    """Note [step-count protocol]: counts, and NAdam's and ASGD's scalar
    states (Note [scalar states]), advance after the element launch."""
    hyper = full_hyper(name)
    lists = make_lists(RULES[name], [5, 40], torch.float32, hyper)
    before = [[t.clone() for t in ts] for ts in lists]
    monkeypatch.setattr(mta, "_element_kernel", _FailingLaunch())
    with pytest.raises(RuntimeError, match="launch failed"):
        mta.Launcher().step(
            rules.get(name),
            *lists,
            lr=torch.tensor(1e-3) if counts_on_device else 1e-3,
            hyper=hyper,
            block=BLOCK,
            counts_on_device=counts_on_device,
        )
    for ts, old in zip(lists, before):
        assert all(torch.equal(t, o) for t, o in zip(ts, old))


def test_table_uploads_are_non_blocking_copies_from_pinned_memory(monkeypatch):
    """The GPU path of every table upload, on CPU tensors made to look like
    CUDA ones: each copy to the device is non_blocking from a pinned buffer
    (no host sync, Note [table uploads]), and nothing reads a value back."""
    hyper = adam_hyper()
    params, grads, states, counts = make_lists(RULES["adam"], [5, 40], torch.float32, hyper)
    addresses = [t.data_ptr() for t in params + states + counts]
    plan = mta._Plan(addresses, [5, 40], 2, 0b11, False, torch.device("cpu"))
    pinned, copies = set(), []
    copy = torch.Tensor.copy_

    def pin_memory(self):
        out = self.clone()
        pinned.add(out.data_ptr())
        return out

    def recording_copy(self, src, non_blocking=False):
        copies.append((src.data_ptr() in pinned, non_blocking))
        return copy(self, src, non_blocking)

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "copy_", recording_copy)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    for name in ("item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    plan.refresh(grads, BLOCK)
    mta._to_device(torch.zeros(2, mta.PER_TENSOR_COLS.value), plan.per_tensor_table)
    monkeypatch.undo()
    # The block table, the tensor table, the per-tensor rows: (pinned source, non_blocking).
    assert copies == [(True, True)] * 3
