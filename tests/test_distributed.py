"""fusedopt under torch.distributed, on the CPU with gloo and 2 processes:
FSDP2 (`fully_shard`, DTensor params: Note [sharded params] in
fusedopt/optim/base.py), torch.distributed.checkpoint's optimizer state and
its resharding, DDP and ZeroRedundancyOptimizer.

Each test spawns its processes once (~8 s of start-up and imports on this
machine) and checks everything it can in them."""

from __future__ import annotations

import copy

import fusedopt
import pytest
import torch
import torch.distributed as dist
from cases import CASES
from helpers import spawn_gloo

if not dist.is_available():
    pytest.skip("this torch is built without torch.distributed", allow_module_level=True)

STEPS = 3
# The checkpoint test: steps before the save, and in all.
SAVE_AT, TOTAL = 2, 4
ADAMW = {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 0.1}
# fusedopt against torch's class on the same model: one rounding of each
# fused update against torch's op-by-op roundings, over STEPS steps on params
# of magnitude ~0.5 (an fp32 ulp there: 6e-8). Measured: at most 6.0e-8
# (RMSprop), 3.0e-8 (the Adam family), 0 (Adagrad, Rprop, Lion) over every
# case's stateful options, and 1.5e-8 for AdamW under DDP and ZeRO; the
# bound is about 10 such ulps.
VS_TORCH = {"rtol": 1e-6, "atol": 1e-7}


def _model() -> torch.nn.Sequential:
    """Shapes that shard unevenly over 2 ranks: 7 rows (4 + 3), 3 rows
    (2 + 1) and a single element (1 + 0: rank 1's local shard is empty)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7),
        torch.nn.Tanh(),
        torch.nn.Linear(7, 3),
        torch.nn.Tanh(),
        torch.nn.Linear(3, 1),
    )


def _loss(model: torch.nn.Module, step: int, rank: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * rank + step)
    return model(torch.randn(8, 5, generator=gen)).pow(2).mean()


def _train(model, opt, first: int, last: int, rank: int = 0) -> None:
    for step in range(first, last):
        opt.zero_grad()
        _loss(model, step, rank).backward()
        opt.step()


def _fully_shard(model: torch.nn.Sequential, world_size: int) -> torch.nn.Sequential:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


class _RowColumnStatistics(fusedopt.AdamW):
    """A class whose step is not elementwise, as Adafactor's is not."""

    def whole_tensor_reason(self, group):
        return "it keeps row and column statistics of each param"


# --- FSDP2 --------------------------------------------------------------------------


def _fsdp2_worker(rank: int, world_size: int) -> None:
    from torch.distributed.tensor import DTensor

    for case in CASES:
        kwargs = case.stateful
        # Every rank feeds the same batch: FSDP2's averaged grad (g + g) / 2
        # is then exactly the unsharded model's g, and so is every step.
        sharded = _fully_shard(_model(), world_size)
        plain, twin = _model(), _model()
        opts = [
            case.make(sharded.parameters(), kwargs),
            case.make(plain.parameters(), kwargs),
            case.make_torch(twin.parameters(), kwargs),
        ]
        for model, opt in zip((sharded, plain, twin), opts):
            _train(model, opt, 0, STEPS)
        for p, q, r in zip(sharded.parameters(), plain.parameters(), twin.parameters()):
            assert isinstance(p, DTensor)
            full = p.full_tensor()
            assert torch.equal(full, q), f"{case.name}: a shard stepped unlike its unsharded param"
            torch.testing.assert_close(full, r, **VS_TORCH, msg=lambda m, n=case.name: f"{n}: {m}")
        opt = opts[0]
        for p in sharded.parameters():
            for key, value in opt.state[p].items():
                if key in case.fused_cls.rule.scalar_keys:
                    assert type(value) is torch.Tensor, f"{case.name}: {key} is {type(value)}"
                else:
                    assert isinstance(value, DTensor), f"{case.name}: {key} is {type(value)}"
                    assert value.placements == p.placements, f"{case.name}: {key}"

    model = _fully_shard(_model(), world_size)
    before = [p.full_tensor() for p in model.parameters()]
    opt = _RowColumnStatistics(model.parameters(), **ADAMW)
    _loss(model, 0).backward()
    with pytest.raises(RuntimeError, match="needs an elementwise update, but it keeps row and"):
        opt.step()
    assert not opt.state
    assert all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before))

    # An unsharded optimizer's state_dict loaded as it is: plain states for
    # DTensor params, refused by name (torch.distributed.checkpoint loads them).
    plain = _model()
    plain_opt = fusedopt.AdamW(plain.parameters(), **ADAMW)
    _train(plain, plain_opt, 0, 1)
    opt = fusedopt.AdamW(model.parameters(), **ADAMW)
    opt.load_state_dict(plain_opt.state_dict())
    with pytest.raises(RuntimeError, match="must be a DTensor with its param's placements"):
        opt.step()
    assert all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before))
    # report() sees the local shards' buckets.
    assert "group 0: 6 torch.float32 params on cpu -> cpu" in fusedopt.report(opt)


def test_fsdp2_steps_each_shard_as_the_unsharded_model():
    """Every class under fully_shard: bit for bit the same class on the
    unsharded model, close to torch's class there; states are DTensors of
    their param's placements, counts plain tensors (as torch keeps them). A
    class that says its step is not elementwise is refused, writing nothing."""
    spawn_gloo(_fsdp2_worker, 2)


# --- torch.distributed.checkpoint ------------------------------------------------------


def _save(model, opt, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)


def _load(model, opt, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict makes the optimizer's states (a step of lr 0) for load to fill.
    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _assert_resumed_as_uninterrupted(model, opt) -> None:
    """After SAVE_AT steps, a save, a load and the steps up to TOTAL: the
    params and states of a run that was never interrupted, bit for bit."""
    uninterrupted = _model()
    reference = fusedopt.AdamW(uninterrupted.parameters(), **ADAMW)
    _train(uninterrupted, reference, 0, TOTAL)
    for p, q in zip(model.parameters(), uninterrupted.parameters()):
        assert torch.equal(_full(p), q)
        assert opt.state[p].keys() == reference.state[q].keys()
        for key, value in reference.state[q].items():
            assert torch.equal(_full(opt.state[p][key]), value), key


def _dcp_worker(rank: int, world_size: int, one_rank: str, two_ranks: str) -> None:
    """1 -> 2: the unsharded run's checkpoint resumed under FSDP2; and the
    2-rank checkpoint that the test then resumes unsharded."""
    model = _fully_shard(_model(), world_size)
    opt = fusedopt.AdamW(model.parameters(), **ADAMW)
    _load(model, opt, one_rank)
    _train(model, opt, SAVE_AT, TOTAL)
    _assert_resumed_as_uninterrupted(model, opt)

    model = _fully_shard(_model(), world_size)
    opt = fusedopt.AdamW(model.parameters(), **ADAMW)
    _train(model, opt, 0, SAVE_AT)
    _save(model, opt, two_ranks)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_checkpoint_reshards_between_1_and_2_ranks(tmp_path):
    """get_optimizer_state_dict / set_optimizer_state_dict through
    torch.distributed.checkpoint, resharded both ways between one unsharded
    process (this one, without a process group) and 2 FSDP2 ranks: each
    resumed run equals the uninterrupted one bit for bit."""
    one_rank, two_ranks = str(tmp_path / "one_rank"), str(tmp_path / "two_ranks")
    model = _model()
    opt = fusedopt.AdamW(model.parameters(), **ADAMW)
    _train(model, opt, 0, SAVE_AT)
    _save(model, opt, one_rank)
    spawn_gloo(_dcp_worker, 2, one_rank, two_ranks)

    model = _model()
    opt = fusedopt.AdamW(model.parameters(), **ADAMW)
    _load(model, opt, two_ranks)
    assert opt.state[model[0].weight]["step"].item() == SAVE_AT
    _train(model, opt, SAVE_AT, TOTAL)
    _assert_resumed_as_uninterrupted(model, opt)


# --- DDP and ZeroRedundancyOptimizer ------------------------------------------------


def _ddp_zero_worker(rank: int, world_size: int) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    def ddp(classes):
        return [cls(model.parameters(), **ADAMW) for cls, model in zip(classes, models)]

    def zero(classes):
        return [
            ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **ADAMW)
            for cls, model in zip(classes, models)
        ]

    for wrap in (ddp, zero):
        models = [DDP(_model()), DDP(_model())]
        opts = wrap([fusedopt.AdamW, _torch_adamw])
        for model, opt in zip(models, opts):
            # Each rank its own batch: DDP averages the grads.
            _train(model, opt, 0, STEPS, rank)
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(p, q, **VS_TORCH, msg=lambda m, n=wrap.__name__: f"{n}: {m}")
            gathered = [torch.empty_like(p) for _ in range(world_size)]
            dist.all_gather(gathered, p.detach())
            assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks disagree"
    # ZeRO partitions the params: each rank's fusedopt.AdamW holds only its own.
    local = opts[0].optim
    assert isinstance(local, fusedopt.AdamW)
    assert 0 < len(local.state) < len(list(models[0].parameters()))


def _torch_adamw(params, **kwargs):
    """torch's single-tensor AdamW, its plainest path (as tests/cases.py uses)."""
    return torch.optim.AdamW(params, **copy.deepcopy(kwargs), foreach=False)


def test_ddp_and_zero_redundancy_optimizer_step_as_torch_adamw():
    """DDP, and ZeroRedundancyOptimizer(optimizer_class=fusedopt.AdamW), train
    as torch's AdamW does under the same wrapper, and every rank ends equal."""
    spawn_gloo(_ddp_zero_worker, 2)
