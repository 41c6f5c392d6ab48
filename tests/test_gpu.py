"""What only a GPU can show (issue 8), run by `make gpu-test`: no host sync
in a step (torch's sync debug mode), CUDA graphs (the refusal of a
non-capturable capture, and a whole training step captured and replayed),
tables read on the stream that uploaded them, and params on a second GPU
(device guard, GradScaler's tensors copied per device). Each compares with
the CPU backend, the oracle every backend is held to. On a machine without a
GPU every test is skipped, and `make gpu-test` turns those skips into
failures (FUSEDOPT_REQUIRE_GPU=1)."""

from __future__ import annotations

import contextlib

import fusedopt
import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]
GPU_BACKENDS = ("cuda", "triton")
# Optimizers whose counts live on the GPU (Note [counts on the device] in
# fusedopt/optim/base.py), each with a configuration that uses every state.
DEVICE_COUNT_OPTIMIZERS = {
    "AdamW": lambda p, **kw: fusedopt.AdamW(p, lr=1e-3, weight_decay=0.1, **kw),
    "Adam-amsgrad": lambda p, **kw: fusedopt.Adam(p, lr=1e-3, amsgrad=True, **kw),
    "SGD": lambda p, **kw: fusedopt.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, **kw),
    "Adagrad": lambda p, **kw: fusedopt.Adagrad(p, lr=1e-2, **kw),
    "Adadelta": lambda p, **kw: fusedopt.Adadelta(p, **kw),
    "RMSprop": lambda p, **kw: fusedopt.RMSprop(p, lr=1e-3, momentum=0.9, centered=True, **kw),
    "RAdam": lambda p, **kw: fusedopt.RAdam(p, lr=1e-3, **kw),
    "Adamax": lambda p, **kw: fusedopt.Adamax(p, lr=1e-3, **kw),
    "Rprop": lambda p, **kw: fusedopt.Rprop(p, lr=1e-3, **kw),
    "Lion": lambda p, **kw: fusedopt.Lion(p, lr=1e-4, weight_decay=0.1, **kw),
    # Scalar states on the device too (Note [scalar states] in core/rule.h);
    # ASGD with t0 = 1 so that its averaging (mu < 1) starts within the test.
    "NAdam": lambda p, **kw: fusedopt.NAdam(p, lr=1e-3, weight_decay=0.1, **kw),
    "ASGD": lambda p, **kw: fusedopt.ASGD(p, lr=1e-2, t0=1.0, **kw),
}
# torch's twins with scalar states: fusedopt keeps their capturable layout.
SCALAR_STATE_OPTIMIZERS = {"NAdam": torch.optim.NAdam, "ASGD": torch.optim.ASGD}
SIZES = (0, 1, 3, 4097, 65536 * 2 + 5, (64, 33))
# fp32 after a few steps, a GPU backend against the CPU backend: the same
# operations in the same order with no contraction, so the params agree but
# for the per-tensor scalars computed on the device in double (a last-bit
# difference in rare steps, Note [bit-identical backends] in kernels/mta.py).
RTOL, ATOL = 1e-6, 1e-7


def _params(device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(s,) if isinstance(s, int) else s for s in SIZES]
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]


def _grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=gen).to(p.dtype).to(p.device) for p in params]


def _run(make, params, steps, backend, *, scaler_device=None, stream=None):
    """`steps` steps with fresh grads each time (the tables must follow them);
    with scaler_device, GradScaler's tensors as torch keeps them (scale 1024,
    grads scaled by it)."""
    opt = make(params, backend=backend)
    if scaler_device is not None:
        opt.grad_scale = torch.tensor(1024.0, device=scaler_device)
        opt.found_inf = torch.zeros((), device=scaler_device)
    for k in range(steps):
        scale = 1024.0 if scaler_device is not None else 1.0
        for p, g in zip(params, _grads(params, k)):
            p.grad = g * scale
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            opt.step()
    torch.cuda.synchronize()
    return opt


def _assert_like_cpu(make, params, steps, **kwargs):
    expected = [p.detach().cpu().clone() for p in params]
    _run(make, expected, steps, "cpu", scaler_device="cpu" if "scaler_device" in kwargs else None)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.cpu(), e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", list(DEVICE_COUNT_OPTIMIZERS))
def test_a_step_never_syncs(backend, name):
    """torch's sync debug mode raises at any host sync: none in a step with
    GradScaler's tensors, after the first (which builds the plan), also when
    every grad is a new tensor."""
    make = DEVICE_COUNT_OPTIMIZERS[name]
    params = _params("cuda")
    opt = _run(make, params, 1, backend, scaler_device="cuda")
    assert all(s["step"].is_cuda for s in opt.state.values() if "step" in s)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in (1, 2):
            for p, g in zip(params, _grads(params, k)):
                p.grad = g * 1024.0
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", list(DEVICE_COUNT_OPTIMIZERS))
def test_results_equal_the_cpu_backend_with_a_scaler(backend, name):
    make = DEVICE_COUNT_OPTIMIZERS[name]
    params = _params("cuda")
    _run(make, params, 3, backend, scaler_device="cuda")
    _assert_like_cpu(make, params, 3, scaler_device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_capture_without_capturable_is_refused(backend):
    params = _params("cuda")
    opt = _run(DEVICE_COUNT_OPTIMIZERS["AdamW"], params, 1, backend)
    before = [p.clone() for p in params]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        graph.capture_begin()
        try:
            with pytest.raises(RuntimeError, match="capturable is False"):
                opt.step()
        finally:
            graph.capture_end()
    torch.cuda.synchronize()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 10)).cuda()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", list(SCALAR_STATE_OPTIMIZERS))
def test_scalar_states_in_torchs_capturable_layout(backend, name):
    """NAdam's mu_product, ASGD's eta and mu: float32 0-dim tensors on the
    param's device beside `step`, the keys and dtypes of torch's
    capturable=True state; a CPU checkpoint's move there on the first step."""
    params = _params("cuda")
    opt = _run(DEVICE_COUNT_OPTIMIZERS[name], params, 2, backend)
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    twin = SCALAR_STATE_OPTIMIZERS[name](twin_params, capturable=True)
    for p in twin_params:
        p.grad = torch.ones_like(p)
    twin.step()
    for p, q in zip(params, twin_params):
        ours, theirs = opt.state[p], twin.state[q]
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            assert (ours[key].dtype, ours[key].device) == (value.dtype, value.device), key
    cpu = {k: v for k, v in opt.state_dict().items()}
    cpu["state"] = {
        i: {k: v.cpu() if v.dim() == 0 else v for k, v in s.items()}
        for i, s in cpu["state"].items()
    }
    again = DEVICE_COUNT_OPTIMIZERS[name](params, backend=backend)
    again.load_state_dict(cpu)
    for p, g in zip(params, _grads(params, 7)):
        p.grad = g
    again.step()
    assert all(t.is_cuda for s in again.state.values() for t in s.values())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", ["AdamW", *SCALAR_STATE_OPTIMIZERS])
def test_whole_training_step_in_one_cuda_graph(backend, name):
    """torch's "whole network capture" recipe (torch.cuda.graphs docs): forward,
    backward and step() captured once, replayed with new data and a new lr
    (a device tensor), equal to the same steps run eagerly; NAdam's and
    ASGD's scalar states advance inside the graph. The grads are
    allocated in the graph's pool during capture, so the Triton tables are
    built inside the capture (Note [table uploads])."""
    data = [
        (torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda"))
        for _ in range(8)
    ]
    lrs = [1e-3 * (1 + k % 3) for k in range(len(data))]
    loss_fn = nn.CrossEntropyLoss()

    def make(model):
        lr = torch.tensor(lrs[0], device="cuda")
        cls = getattr(fusedopt, name)
        return cls(model.parameters(), lr=lr, capturable=True, backend=backend), lr

    captured = _model(0)
    opt, lr = make(captured)
    static_x, static_y = (t.clone() for t in data[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in data[:3]:  # warm-up, as the recipe does, on a side stream
            opt.zero_grad(set_to_none=True)
            loss_fn(captured(x), y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_fn(captured(static_x), static_y).backward()
        opt.step()
    for k, (x, y) in enumerate(data[3:], start=3):
        static_x.copy_(x)
        static_y.copy_(y)
        lr.fill_(lrs[k])
        graph.replay()

    eager = _model(0)
    opt, lr = make(eager)
    for k, (x, y) in enumerate(data):
        lr.fill_(lrs[k])
        opt.zero_grad(set_to_none=True)
        loss_fn(eager(x), y).backward()
        opt.step()
    torch.cuda.synchronize()
    for a, b in zip(captured.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_steps_on_another_stream(backend):
    """Note [table uploads]: a step on a side stream, then on the default one,
    each with new grads, reads tables uploaded on its own stream."""
    make = DEVICE_COUNT_OPTIMIZERS["AdamW"]
    params = _params("cuda")
    opt = make(params, backend=backend)
    side = torch.cuda.Stream()
    for k in range(4):
        for p, g in zip(params, _grads(params, k)):
            p.grad = g
        stream = side if k % 2 else torch.cuda.current_stream()
        stream.wait_stream(torch.cuda.current_stream() if k % 2 else side)
        with torch.cuda.stream(stream):
            opt.step()
    torch.cuda.synchronize()
    _assert_like_cpu(make, params, 4)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


@two_gpus
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_params_on_the_second_gpu(backend):
    """Params on cuda:1 while cuda:0 is current, GradScaler's tensors on
    cuda:0 (where GradScaler keeps them for a model split over two GPUs): the
    step runs on cuda:1 and equals the CPU backend."""
    make = DEVICE_COUNT_OPTIMIZERS["AdamW"]
    params = _params("cuda:1")
    with torch.cuda.device(0):
        _run(make, params, 3, backend, scaler_device="cuda:0")
    _assert_like_cpu(make, params, 3, scaler_device="cuda:0")


@two_gpus
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_model_split_over_two_gpus(backend):
    make = DEVICE_COUNT_OPTIMIZERS["Adam-amsgrad"]
    params = _params("cuda:0")[:3] + _params("cuda:1", seed=1)[3:]
    _run(make, params, 3, backend, scaler_device="cuda:0")
    expected = [p.detach().cpu().clone() for p in _params("cpu")[:3] + _params("cpu", seed=1)[3:]]
    _run(make, expected, 3, "cpu", scaler_device="cpu")
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.cpu(), e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_tensor_over_2_31_elements(backend):
    """64-bit offsets end to end: a bf16 param of 2^31 + 5 elements (26 GB
    with its grad and fp32 states: an H100 holds it). The rule is elementwise,
    so its head and tail step like the same slices stepped alone on the CPU."""
    n = 2**31 + 5
    gen = torch.Generator(device="cuda").manual_seed(0)
    param = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    param.grad = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    ends = [slice(0, 4096), slice(n - 4099, n)]
    expected = [param[s].detach().cpu().clone() for s in ends]
    for e, s in zip(expected, ends):
        e.grad = param.grad[s].cpu()
    fusedopt.AdamW([param], lr=1e-3, backend=backend).step()
    fusedopt.AdamW(expected, lr=1e-3, backend="cpu").step()
    for e, s in zip(expected, ends):
        # bf16: the same fp32 math and one rounding (Note [bit-identical backends]).
        torch.testing.assert_close(param[s].cpu(), e, rtol=0, atol=0)
