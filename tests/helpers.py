"""Shared test machinery: seeded params and grads, stepping optimizers in
lockstep, and the backends the harness runs (each skipped, with the reason,
where it cannot run here)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
from fusedopt import backends

# Sizes that exercise the chunk and vector edges: zero-size first, between and
# last, one element, less than one SIMD vector, one past a power of two,
# primes, and a size spanning several 64K-element CPU chunks with a ragged end.
EDGE_SIZES = (0, 1, 3, 0, 16, 4097, 7919, 65537, 3 * 65536 + 5, 0)
# The Triton interpreter costs 1-2 ms per program: a few small tensors that
# still give a zero-size first and last tensor, a tail, and two blocks.
INTERPRETER_SIZES = (0, 1, 3, 17, 1031, 0)


@dataclass(frozen=True)
class BackendCase:
    """A fusedopt backend and the device of the params it steps."""

    name: str
    device: str

    @property
    def id(self) -> str:
        return self.name if self.device == "cpu" or self.name == "cuda" else f"{self.name}-cuda"

    @property
    def interpreted(self) -> bool:
        """The Triton interpreter (CPU tensors): slow, so the tests keep it small."""
        return self.name == "triton" and self.device == "cpu"

    def sizes(self, sizes: Sequence[int] = EDGE_SIZES) -> Sequence[int]:
        return INTERPRETER_SIZES if self.interpreted else sizes

    def skip_reason(self) -> str | None:
        """None when this backend can step float32 params on its device here."""
        if self.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
        try:
            backend = backends.get(self.name)
            reason = backend.unavailable_reason()
            if reason is None:
                bucket = backends.Bucket(torch.device(self.device), torch.float32, True)
                reason = backend.unsupported_reason(bucket)
        except ImportError as error:
            reason = f"the {self.name} backend does not import: {error}"
        return None if reason is None else f"{self.id}: {reason}"


# Every backend, on each device it serves: one parametrisation, so that a
# machine with a GPU runs the CUDA rows of the same tests.
ALL_BACKENDS = (
    BackendCase("cpu", "cpu"),
    BackendCase("reference", "cpu"),
    BackendCase("triton", "cpu"),
    BackendCase("cuda", "cuda"),
    BackendCase("triton", "cuda"),
)
KERNEL_BACKENDS = tuple(b for b in ALL_BACKENDS if b.name != "reference")
CUDA_BACKENDS = tuple(b for b in ALL_BACKENDS if b.device == "cuda")


def backend_params(cases: Sequence[BackendCase] = ALL_BACKENDS) -> list:
    """pytest params for these backends, each skipped with its reason where it
    cannot run here."""
    out = []
    for case in cases:
        reason = case.skip_reason()
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def make_params(
    sizes: Sequence[int | tuple[int, ...]], dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(s,) if isinstance(s, int) else s for s in sizes]
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def clone_params(
    params: Sequence[torch.Tensor],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    return [
        p.detach().clone().to(device=device or p.device, dtype=dtype or p.dtype).requires_grad_()
        for p in params
    ]


def draw_grads(params: Sequence[torch.Tensor], step: int, seed: int = 1) -> list[torch.Tensor]:
    """The grads set_grads gives at this step, on the CPU, in the params' dtype."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def set_grads(param_lists: Sequence[Sequence[torch.Tensor]], step: int, seed: int = 1) -> None:
    """Gives each list the same grads (drawn in the first list's dtype, then cast
    exactly to wider dtypes) for this step."""
    grads = draw_grads(param_lists[0], step, seed)
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = torch.empty_like(p).copy_(g)  # the param's layout, as autograd makes it


def run_lockstep(
    optimizers: Sequence[torch.optim.Optimizer],
    param_lists: Sequence[Sequence[torch.Tensor]],
    steps: int,
    before_step: Callable[[int], None] | None = None,
    first: int = 0,
) -> None:
    """Steps k = first .. first + steps - 1 with set_grads(k) on every list."""
    for k in range(first, first + steps):
        set_grads(param_lists, k)
        if before_step is not None:
            before_step(k)
        for opt in optimizers:
            opt.step()


def snapshot(params: Sequence[torch.Tensor], opt: torch.optim.Optimizer) -> tuple:
    """Copies of the params and of the optimizer's state_dict, to compare after a
    step that must change nothing."""
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(params: Sequence[torch.Tensor], opt: torch.optim.Optimizer, before) -> None:
    old_params, old_state = before
    for p, q in zip(params, old_params):
        assert torch.equal(p, q)
    state = opt.state_dict()["state"]
    assert state.keys() == old_state["state"].keys()
    for i, saved in old_state["state"].items():
        assert state[i].keys() == saved.keys()
        for key, value in saved.items():
            assert torch.equal(state[i][key], value), f"state {i} {key} changed"


def free_port() -> int:
    """A TCP port nobody listens on now, for a process group's rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_entry(rank: int, worker: Callable, world_size: int, port: int, args: tuple) -> None:
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
        # Every rank done before any tears the group down: a rank that
        # destroyed its group while the other's gloo threads still talked to
        # it aborted the other ("terminate called without an active
        # exception", 1 run in 3-5 of test_distributed's DDP test).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_gloo(worker: Callable, world_size: int, *args) -> None:
    """Runs worker(rank, world_size, *args) in `world_size` new processes
    joined in a gloo process group; an exception in any of them fails the
    caller with its traceback. `worker` must be a module-level function."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_entry, args=(worker, world_size, free_port(), args), nprocs=world_size)


def train_tiny_gpt2(steps: int = 300, dtype: torch.dtype = torch.float32, **group) -> list[float]:
    """Issue 10's quality run: a tiny random GPT-2 (2 layers, width 64, 8,192
    token embedding rows, so most matrices are 8-bit under state_dtype="int8")
    with params of `dtype` on generated tokens (a fixed random bigram chain),
    fusedopt.AdamW lr 3e-3 with the group keys `group`; the loss curve."""
    import fusedopt

    transformers = pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=8192,
            n_positions=64,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(config).to(dtype)
        gen = torch.Generator().manual_seed(1)
        successor = torch.randint(0, 8192, (8192, 4), generator=gen)
        opt = fusedopt.AdamW([{"params": list(model.parameters()), **group}], lr=3e-3)
        losses = []
        for k in range(steps):
            g = torch.Generator().manual_seed(100 + k)
            tokens = [torch.randint(0, 8192, (16,), generator=g)]
            for _ in range(31):
                pick = torch.randint(0, 4, (16,), generator=g)
                tokens.append(successor[tokens[-1], pick])
            batch = torch.stack(tokens, dim=1)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses
    finally:
        torch.set_num_threads(threads)
