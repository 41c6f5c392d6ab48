"""fusedopt.clip_grad_norm_, the grad_norm reduction on every backend, and the
optimizers' max_grad_norm, against torch.nn.utils.clip_grad_norm_ and an fp64
oracle.

Backends: cpu (C++ loops), reference, triton (under the interpreter here),
cuda (on a GPU; here compiled and SASS-checked, and its kernel body emulated
on the CPU by fusedopt._testing's grad_norm_emulate: every (block, thread) of
the grid, then the shared-memory tree level by level, then the finishing
block). The emulation does not run nvcc's code: contraction, the device's
loads, the barriers themselves and concurrency between blocks are read in the
SASS only (test_norm_kernels_sass).

Tolerances (NORM_RTOL, UNIT_ROUNDOFF), with their reasons:
  - the fused norm accumulates in fp32 in a tree of depth <= 32 rows per lane
    + 2 + 9 levels + the finishing rows + 9 levels (Note [norm summation
    order]), so its relative error is <= depth * 2^-24 / 2 for the square
    root plus one rounding: ~1.7e-6 for these sizes; NORM_RTOL = 2e-6;
  - the returned norm is rounded once to the grads' dtype (torch's returned
    dtype): + 1 unit roundoff u of that dtype (2^-24, 2^-8, 2^-11);
  - a clipped grad is g * c: c from the fp32 norm (NORM_RTOL), rounded to the
    grads' dtype by torch._foreach_mul_ (u), and the product rounded (u):
    2u + 2 NORM_RTOL relative, plus the dtype's smallest subnormal where the
    product underflows (fp16 grads of 1e-4 clipped by 1/1500);
  - torch's own bf16/fp16 clip rounds each tensor's norm, the total, the
    sum with 1e-6, the quotient and the product to the dtype: 5u. Ours and
    torch's are compared within the sum of both budgets.
"""

from __future__ import annotations

import math

import fusedopt
import fusedopt._C as _C
import pytest
import torch
from fusedopt import clip
from helpers import EDGE_SIZES, INTERPRETER_SIZES, BackendCase, backend_params

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SMALLEST_SUBNORMAL = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
NORM_RTOL = 2e-6
# The reference is torch's vector_norm, fp32 in torch's own summation order:
# measured up to 5.6e-6 off the fp64 norm on EDGE_SIZES' bf16 grads.
REFERENCE_NORM_RTOL = 1e-5
# torch's clip in a 16-bit dtype: five roundings in that dtype (see the module docstring).
TORCH_ROUNDINGS = 5

NORM_BACKENDS = (
    BackendCase("cpu", "cpu"),
    BackendCase("reference", "cpu"),
    BackendCase("triton", "cpu"),
    BackendCase("cuda", "cuda"),
    BackendCase("triton", "cuda"),
)

try:
    import fusedopt._testing  # noqa: F401  (registers fusedopt_testing::grad_norm_emulate)

    TESTING_REASON = None
except ImportError:
    TESTING_REASON = "fusedopt._testing is built only with FUSEDOPT_TESTING=1"
needs_emulation = pytest.mark.skipif(TESTING_REASON is not None, reason=str(TESTING_REASON))


def make_grads(sizes, dtype, device="cpu", seed=0, scale=3.0):
    """Params (zeros) whose grads are scale * N(0, 1), in `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in sizes:
        p = torch.zeros(s, dtype=dtype, device=device, requires_grad=True)
        p.grad = (torch.randn(s, generator=gen) * scale).to(dtype=dtype, device=device)
        params.append(p)
    return params


def twin(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        q.grad = p.grad.clone()
        out.append(q)
    return out


def exact_norm(tensors, norm_type=2.0) -> float:
    values = torch.cat([t.detach().double().flatten().cpu() for t in tensors])
    return torch.linalg.vector_norm(values, norm_type).item()


# --- the reduction -----------------------------------------------------------------


@pytest.mark.parametrize("case", backend_params(NORM_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_grad_norm_against_fp64(case, dtype, norm_type):
    params = make_grads(case.sizes(), dtype, case.device)
    grads = [p.grad for p in params]
    got = fusedopt.grad_norm(grads, norm_type, backend=case.name)
    assert got.dtype == torch.float32 and got.shape == () and got.device.type == case.device
    exact = exact_norm(grads, norm_type)
    rtol = REFERENCE_NORM_RTOL if case.name == "reference" else NORM_RTOL
    assert abs(got.item() - exact) <= rtol * exact, (got.item(), exact)


@needs_emulation
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_every_fused_backend_gives_the_same_bits(norm_type):
    """Note [norm summation order]: cpu = triton (interpreter) = the CUDA
    kernel body (emulated, one block per chunk and a persistent grid), on a
    list mixing dtypes, with views at odd offsets (the scalar path) and sizes
    over several chunks and launches' worth of edges."""
    base = torch.randn(3 * 65536 + 9)
    tensors = [
        torch.randn(70001),
        torch.randn(5).bfloat16(),
        torch.zeros(0),
        (torch.randn(3, 7) * 100).half(),
        base[1:],  # 4 bytes off 16-byte alignment: the scalar path
        torch.randn(2 * 65536 + 4).bfloat16()[2:],
    ]
    cpu = torch.ops.fusedopt.grad_norm(tensors, norm_type)
    emulated, _ = _emulate()(tensors, norm_type)
    persistent, stats = _emulate()(tensors, norm_type, 2)
    assert stats[2] == 2, stats
    assert cpu.item() == emulated.item() == persistent.item()
    reason = BackendCase("triton", "cpu").skip_reason()
    if reason is None:
        from fusedopt.kernels.norm import grad_norm as triton_norm

        interpreter_sized = [t[:1031] for t in tensors]
        assert (
            triton_norm(interpreter_sized, norm_type).item()
            == torch.ops.fusedopt.grad_norm(interpreter_sized, norm_type).item()
        )
    exact = exact_norm(tensors, norm_type)
    assert abs(cpu.item() - exact) <= NORM_RTOL * exact


def _emulate():
    return torch.ops.fusedopt_testing.grad_norm_emulate


def test_cpu_result_does_not_depend_on_the_thread_count():
    tensors = [torch.randn(5 * 65536 + 3), torch.randn(40000).bfloat16()]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fusedopt.grad_norm(tensors, 2.0)
    finally:
        torch.set_num_threads(threads)
    assert one.item() == torch.ops.fusedopt.grad_norm(tensors, 2.0).item()


@needs_emulation
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0, 1])
def test_emulated_kernel_reads_every_element_once(dtype, offset):
    """Per chunk of m elements an aligned tensor takes m // 4 vector loads and
    m % 4 scalar ones (a group of 4 lanes is one pack); a view one element off
    its allocation's alignment takes m scalar loads; none misaligned."""
    sizes = [0, 1, 3, 4097, 65536 + 6, 0]
    tensors = [torch.randn(n + offset).to(dtype)[offset:] for n in sizes]
    _, stats = _emulate()(tensors, 2.0)
    launches, chunks, blocks, vector, scalar, misaligned = stats
    pieces = [min(65536, n - s) for n in sizes for s in range(0, n, 65536)]
    assert (launches, chunks, blocks) == (1, len(pieces), len(pieces))
    if offset == 0:
        assert vector == sum(m // 4 for m in pieces) and scalar == sum(m % 4 for m in pieces)
    else:
        assert vector == 0 and scalar == sum(pieces)
    assert misaligned == 0


@needs_emulation
def test_more_tensors_than_one_launch_holds():
    """300 tensors: two reduction launches (256 slots each), partials in call order."""
    tensors = [torch.randn(n) for n in range(1, 301)]
    value, stats = _emulate()(tensors, 2.0)
    assert stats[0] == 2
    assert value.item() == torch.ops.fusedopt.grad_norm(tensors, 2.0).item()


@pytest.mark.parametrize("norm_type", [1.0, 3.0, 0.0, -math.inf, 0.5])
def test_other_p_takes_the_reference(norm_type):
    params = make_grads([7, 300, 65537], torch.float32)
    ours, theirs = twin(params), twin(params)
    got = fusedopt.clip_grad_norm_(ours, 1.0, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0)


def test_op_schema_and_fake():
    tensors = [torch.randn(5), torch.randn(3, 4).bfloat16(), torch.zeros(0)]
    torch.library.opcheck(torch.ops.fusedopt.grad_norm.default, (tensors, 2.0))
    torch.library.opcheck(torch.ops.fusedopt.grad_norm.default, (tensors, math.inf))


def test_op_refuses_what_it_cannot_read():
    with pytest.raises(RuntimeError, match="norm_type 2 or inf"):
        torch.ops.fusedopt.grad_norm([torch.randn(3)], 1.0)
    with pytest.raises(RuntimeError, match="must be dense"):
        torch.ops.fusedopt.grad_norm([torch.randn(4, 4)[:, ::2]], 2.0)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        torch.ops.fusedopt.grad_norm([torch.randn(4).double()], 2.0)


def test_non_dense_and_fp64_grads_go_to_the_reference():
    params = make_grads([16, 9], torch.float64) + make_grads([(4, 4)], torch.float32)
    params[-1].grad = torch.randn(4, 8)[:, ::2]
    ours, theirs = twin(params), twin(params)
    for p, q in zip(params, ours):
        q.grad = p.grad.clone() if p.grad.is_contiguous() else p.grad
    got = fusedopt.clip_grad_norm_(ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_compiles_as_one_graph():
    grads = [torch.randn(100), torch.randn(7, 3).bfloat16()]

    def norm(gs):
        return fusedopt.grad_norm(gs, backend="cpu") * 2

    compiled = torch.compile(norm, backend="aot_eager", fullgraph=True)
    assert compiled(grads).item() == norm(grads).item()


# --- clip_grad_norm_ ----------------------------------------------------------------


@pytest.mark.parametrize("case", backend_params(NORM_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_norm", [1.0, 1e6])
def test_clip_against_torch_and_fp64(case, dtype, max_norm):
    sizes = case.sizes(EDGE_SIZES + ((5, 7, 3), (64, 1, 3)))
    params = make_grads(sizes, dtype, case.device)
    exact_grads = [p.grad.double() for p in params]
    ours, theirs = twin(params), twin(params)
    got = fusedopt.clip_grad_norm_(ours, max_norm, backend=case.name)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    # torch's return value: the grads' dtype, on their device.
    assert got.dtype == want.dtype and got.device == want.device and got.shape == ()
    u = UNIT_ROUNDOFF[dtype]
    rtol = REFERENCE_NORM_RTOL if case.name == "reference" else NORM_RTOL
    exact = exact_norm(exact_grads)
    assert abs(got.item() - exact) <= (u + rtol) * exact
    assert abs(got.item() - want.item()) <= (3 * u + 2 * rtol) * exact
    coefficient = min(max_norm / (exact + 1e-6), 1.0)
    floor = SMALLEST_SUBNORMAL[dtype]
    for p, q, e in zip(ours, theirs, exact_grads):
        target = (e * coefficient).abs()
        error = (p.grad.double() - e * coefficient).abs()
        assert (error <= (2 * u + 2 * rtol) * target + floor).all()
        budget = (2 * u + TORCH_ROUNDINGS * u + 2 * rtol) * target + floor
        assert ((p.grad.double() - q.grad.double()).abs() <= budget).all()
        if coefficient == 1.0:
            assert torch.equal(p.grad, q.grad)  # never amplified, never touched


def test_nothing_to_clip():
    assert torch.equal(fusedopt.clip_grad_norm_([], 1.0), torch.tensor(0.0))
    p = torch.zeros(3, requires_grad=True)
    assert torch.equal(fusedopt.clip_grad_norm_(p, 1.0), torch.tensor(0.0))  # no grad
    params = make_grads([0, 0], torch.float32)
    ours, theirs = twin(params), twin(params)
    got = fusedopt.clip_grad_norm_(ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch.equal(got, want)


def test_max_norm_of_zero_size_grads():
    """torch's inf norm raises on a zero-size grad (_foreach_norm: "no
    identity"); fusedopt's gives it no part, as the 2-norm does."""
    params = make_grads([3, 0, 5], torch.float32)
    with pytest.raises(RuntimeError, match="empty tensor"):
        torch.nn.utils.clip_grad_norm_(twin(params), 1.0, math.inf)
    for backend in ("cpu", "reference"):
        ours = twin(params)
        got = fusedopt.clip_grad_norm_(ours, 1.0, math.inf, backend=backend)
        want = torch.nn.utils.clip_grad_norm_(twin([params[0], params[2]]), 1.0, math.inf)
        assert torch.equal(got, want)


@pytest.mark.parametrize("case", backend_params(NORM_BACKENDS))
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_finite_grads_propagate_as_in_torch(case, bad, norm_type, dtype):
    # No zero-size grad: torch's inf norm refuses one (test_max_norm_of_zero_size_grads).
    params = make_grads([1, 3, 17, 1031], dtype, case.device)
    params[-2].grad[5] = bad
    ours, theirs = twin(params), twin(params)
    got = fusedopt.clip_grad_norm_(ours, 1.0, norm_type, backend=case.name)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert not math.isfinite(got.item())
    for p, q in zip(ours, theirs):
        # 0 for the finite elements (coefficient 0) and NaN for the bad one, or all NaN.
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_error_if_nonfinite(bad):
    params = make_grads([10, 3], torch.float32)
    params[0].grad[2] = bad
    before = [p.grad.clone() for p in params]
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        fusedopt.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        torch.nn.utils.clip_grad_norm_(twin(params), 1.0, error_if_nonfinite=True)
    for p, b in zip(params, before):
        torch.testing.assert_close(p.grad, b, equal_nan=True, rtol=0, atol=0)
    finite = make_grads([10, 3], torch.float32)
    fusedopt.clip_grad_norm_(finite, 1.0, error_if_nonfinite=True)


def test_sharded_grads_are_refused(monkeypatch):
    """DTensor grads (FSDP2) need an all-reduce for their global norm: refused,
    naming the constraint."""
    monkeypatch.setattr(clip, "_sharded", lambda tensors: True)
    with pytest.raises(NotImplementedError, match="all-reduce across ranks"):
        fusedopt.clip_grad_norm_(make_grads([3], torch.float32), 1.0)


def _refuse_host_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value (a sync on a GPU)")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize(
    "case", backend_params([c for c in NORM_BACKENDS if c.name != "reference"])
)
def test_clip_reads_nothing_back(case, monkeypatch):
    """No .item(), no data-dependent Python branch (as tests/test_gpu_readiness.py
    checks the element pass): the clip can be captured in a CUDA graph."""
    params = make_grads(case.sizes(INTERPRETER_SIZES), torch.float32, case.device)
    ours = twin(params)
    _refuse_host_reads(monkeypatch)
    total = fusedopt.clip_grad_norm_(ours, 1.0, backend=case.name)
    monkeypatch.undo()
    assert total.item() > 1.0 and torch.isfinite(total)


# --- max_grad_norm ------------------------------------------------------------------


def _model_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen).to(dtype).requires_grad_()
        for s in [(33, 17), (17,), (0,), (5, 4097), (3,)]
    ]


def _lockstep(opt_ours, ours, opt_theirs, theirs, max_norm, steps=3, scale=3.0, before=None):
    for k in range(steps):
        gen = torch.Generator().manual_seed(100 + k)
        for p, q in zip(ours, theirs):
            g = (torch.randn(p.shape, generator=gen) * scale).to(p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        if before is not None:
            before(k)
        torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        opt_ours.step()
        opt_theirs.step()


OPTIMIZERS = {
    "AdamW": (fusedopt.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "SGD": (fusedopt.SGD, torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9}),
    "Adagrad": (fusedopt.Adagrad, torch.optim.Adagrad, {"lr": 1e-2}),
    "RMSprop": (fusedopt.RMSprop, torch.optim.RMSprop, {"lr": 1e-3, "momentum": 0.5}),
    "NAdam": (fusedopt.NAdam, torch.optim.NAdam, {"lr": 1e-2}),
}


@pytest.mark.parametrize("case", backend_params(NORM_BACKENDS[:3]))
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_max_grad_norm_equals_clip_then_step(case, name):
    """fp32: fusedopt's step with max_grad_norm against torch's clip_grad_norm_
    then torch's step. The folded coefficient divides the grad by 1 / c where
    torch multiplies by c: 2 fp32 roundings apart, ~1e-7 of each update."""
    fused_cls, torch_cls, kwargs = OPTIMIZERS[name]
    ours = _model_params(torch.float32)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = fused_cls(ours, max_grad_norm=0.5, backend=case.name, **kwargs)
    ref = torch_cls(theirs, foreach=False, **kwargs)
    _lockstep(opt, ours, ref, theirs, 0.5)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_max_grad_norm_16_bit_params(dtype):
    """bf16/fp16 params against an fp32 twin (the same values, exactly) that
    torch's clip_grad_norm_ then fusedopt's fp32 step update: the 16-bit
    params differ only by their store's rounding, at most half an ulp (u |p|)
    per step. (Clipping in the 16-bit dtype first, as clip then step does,
    rounds g c there: fp16 grads of 1e-6 lose most of their bits to subnormals,
    which the folded coefficient never produces.) A param's magnitude at an
    earlier step is at most its last one plus the updates since, each under
    2 lr in Adam's normalised form at these step counts."""
    steps, lr = 3, 1e-2
    ours = _model_params(dtype)
    twin32 = [p.detach().float().requires_grad_() for p in ours]
    opt = fusedopt.AdamW(ours, lr=lr, max_grad_norm=0.5)
    ref = fusedopt.AdamW(twin32, lr=lr)
    for k in range(steps):
        gen = torch.Generator().manual_seed(100 + k)
        for p, q in zip(ours, twin32):
            g = (torch.randn(p.shape, generator=gen) * 3).to(dtype)
            p.grad, q.grad = g.clone(), g.float()
        torch.nn.utils.clip_grad_norm_(twin32, 0.5)
        opt.step()
        ref.step()
    u = UNIT_ROUNDOFF[dtype]
    for p, q in zip(ours, twin32):
        largest = q.abs() + 2 * steps * lr
        assert ((p.float() - q).abs() <= steps * u * largest).all()


def test_norm_is_over_all_groups_that_set_it():
    """Two groups with max_grad_norm: one norm over both (torch's clip of all
    the params), each group's own max; a third group without it is neither
    clipped nor part of the norm."""
    ours = _model_params(torch.float32)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = fusedopt.SGD(
        [
            {"params": ours[:2], "max_grad_norm": 0.5},
            {"params": ours[2:4], "max_grad_norm": 0.5},
            {"params": ours[4:]},
        ],
        lr=0.1,
    )
    ref = torch.optim.SGD(theirs, lr=0.1)
    for k in range(2):
        gen = torch.Generator().manual_seed(7 + k)
        for p, q in zip(ours, theirs):
            g = torch.randn(p.shape, generator=gen) * 3
            p.grad, q.grad = g.clone(), g.clone()
        torch.nn.utils.clip_grad_norm_(theirs[:4], 0.5)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", backend_params(NORM_BACKENDS[:3]))
def test_max_grad_norm_with_grad_scaler(case):
    """GradScaler: ours folds unscale, clip and step into one pass; torch's
    recipe unscales, clips, steps. A step with an inf grad is skipped in both,
    and the scale backs off in both."""
    ours = _model_params(torch.float32)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = fusedopt.AdamW(ours, lr=1e-2, max_grad_norm=0.5, backend=case.name)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    scalers = (
        torch.amp.GradScaler("cpu", init_scale=2.0**10),
        torch.amp.GradScaler("cpu", init_scale=2.0**10),
    )
    for k in range(4):
        gen = torch.Generator().manual_seed(300 + k)
        grads = [torch.randn(p.shape, generator=gen) * 3 for p in ours]
        if k == 2 and grads[0].numel():
            grads[0][0, 0] = math.inf
        for s in scalers:
            s.scale(torch.ones(()))  # what scaler.scale(loss) does first: sets its scale
        for p, q, g in zip(ours, theirs, grads):
            p.grad = g * scalers[0].get_scale()
            q.grad = g * scalers[1].get_scale()
        scalers[0].step(opt)
        scalers[1].unscale_(ref)
        torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        scalers[1].step(ref)
        for s in scalers:
            s.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", backend_params(NORM_BACKENDS[:3]))
def test_max_grad_norm_non_finite_without_scaler(case):
    """No scaler, an inf grad: the coefficient is 0, grads become 0 and NaN,
    and the step writes what torch's clip then step writes (NaN where it does)."""
    ours = _model_params(torch.float32)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = fusedopt.SGD(ours, lr=0.1, max_grad_norm=0.5, backend=case.name)
    ref = torch.optim.SGD(theirs, lr=0.1)

    def poison(k):
        ours[0].grad[1, 2] = math.inf
        theirs[0].grad[1, 2] = math.inf

    _lockstep(opt, ours, ref, theirs, 0.5, steps=1, before=poison)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, equal_nan=True)
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


def test_max_grad_norm_keys_and_checks():
    params = _model_params(torch.float32)
    plain = fusedopt.AdamW(params)
    assert "max_grad_norm" not in plain.param_groups[0]  # torch's group keys, unless given
    clipped = fusedopt.AdamW(params, max_grad_norm=1.0)
    assert clipped.param_groups[0]["max_grad_norm"] == 1.0
    assert clipped.state_dict()["param_groups"][0]["max_grad_norm"] == 1.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="Invalid max_grad_norm value"):
            fusedopt.SGD(params, lr=0.1, max_grad_norm=bad)
        with pytest.raises(ValueError, match="Invalid max_grad_norm value"):
            fusedopt.SGD([{"params": params, "max_grad_norm": bad}], lr=0.1)
    clipped.param_groups[0]["max_grad_norm"] = -2.0
    with pytest.raises(ValueError, match="Invalid max_grad_norm value"):
        clipped.step()


@pytest.mark.parametrize(
    "case", backend_params([c for c in NORM_BACKENDS if c.name != "reference"])
)
def test_max_grad_norm_reads_nothing_back(case, monkeypatch):
    """What max_grad_norm adds to a step (the norm over the groups, the
    coefficient, GradScaler's scale divided by it) reads no value on the host;
    the element pass's own no-sync checks are tests/test_gpu_readiness.py's
    and tests/test_gpu.py's."""
    ours = [p.detach().to(case.device).requires_grad_() for p in _model_params(torch.float32)]
    opt = fusedopt.AdamW(
        [{"params": ours[:2], "max_grad_norm": 0.5}, {"params": ours[2:]}], backend=case.name
    )
    for p in ours:
        p.grad = torch.randn(p.shape, device=case.device) * 3
    grad_scale = torch.full((), 1024.0, device=case.device)
    _refuse_host_reads(monkeypatch)
    scales = opt._clipped_grad_scales(grad_scale)
    monkeypatch.undo()
    norm = exact_norm([p.grad for p in ours[:2]]) / 1024.0
    want = 1024.0 / min(0.5 / (norm + 1e-6), 1.0)
    assert abs(scales[0].item() - want) <= 1e-5 * want
    assert scales[1] is grad_scale


# --- the CUDA kernels, compiled ------------------------------------------------------


@pytest.mark.skipif(
    not _C.cuda_built, reason="fusedopt._C was built without CUDA kernels: no SASS to read"
)
def test_norm_kernels_sass():
    """For every arch of the build: the partials kernels read fp32 chunks by
    128-bit loads and 16-bit ones by 64-bit loads, use no atomics (partials in
    their own slots) and barriers between the tree's levels; no contracted FMA
    and no FP64 in their loops; no spills, <= 64 registers."""
    import re

    from _cuda_tools import contracted_fmas, is_fp64, run_cuobjdump, sass_functions, sass_loops
    from fusedopt._C import cuda_archs

    archs = [int(a.split("-")[0]) for a in cuda_archs.split(",") if a]
    usage = run_cuobjdump("-res-usage")
    for arch in archs:
        code_of = sass_functions(run_cuobjdump("-sass", "-arch", f"sm_{arch}"))
        for kind in ("norm2", "norminf"):
            for part in ("partials", "finish"):
                kernel = f"fusedopt_{kind}_{part}"
                code = code_of[kernel]
                ops = [i.opcode for i in code]
                where = f"{kernel} sm_{arch}"
                assert not [o for o in ops if o.startswith(("ATOM", "RED"))], where
                assert any(o.startswith("BAR.SYNC") for o in ops), where
                assert not any(is_fp64(o) for o in ops), where
                for body in sass_loops(code):
                    assert contracted_fmas(body) == 0, where
                if part == "partials":
                    assert any(o.startswith("LDG.E.128") for o in ops), where
                    assert any(o.startswith("LDG.E.64") for o in ops), where
    for kernel, regs, stack, local in re.findall(
        r"Function (fusedopt_norm\w+):\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage
    ):
        assert int(regs) <= 64 and int(stack) == 0 and int(local) == 0, kernel


# Compiles the Triton norm kernels for every arch of the build's list, in a
# process without TRITON_INTERPRET (tests/triton_aot.py's way), and prints
# what their PTX holds.
_TRITON_AOT = """
import json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from _cuda_tools import ptx_facts
from fusedopt.kernels import mta, norm

def facts(fn, signature, constexprs, target):
    source = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constexprs, "constexpr")},
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    options = {"num_warps": 4, "enable_fp_fusion": mta.FP_FUSION}
    ptx = triton.compile(source, target=target, options=options).asm["ptx"]
    atomics = len(re.findall(r"\\b(?:atom|red)\\.", ptx))
    loads = len(re.findall(r"ld\\.global", ptx))
    return {"atomics": atomics, "loads": loads, "f64": ptx.count(".f64"), **ptx_facts(ptx)}

out = {}
for arch in (80, 90, 100, 120):
    target = GPUTarget("cuda", arch, 32)
    for kind in (0, 1):
        for name, dtype in (("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16)):
            out[f"sm{arch}/partials_{kind}_{name}"] = facts(norm._partials_kernel,
                {"tensor_table": "*i64", "block_table": "*i64", "partials": "*fp32"},
                {"DTYPE": dtype, "KIND": kind, "CHUNK_SIZE": norm.CHUNK, "N_LANES": norm.LANES},
                target)
        out[f"sm{arch}/finish_{kind}"] = facts(norm._finish_kernel,
            {"partials": "*fp32", "n_partials": "i32", "out": "*fp32"},
            {"KIND": kind, "N_THREADS": norm.THREADS}, target)
json.dump(out, sys.stdout)
"""


def test_triton_norm_kernels_compile_for_every_arch():
    """Compiled only (no GPU runs them here): for sm_80, sm_90, sm_100 and
    sm_120, the partials and finishing kernels have global loads, no atomics,
    no FP64, no fma.rn.f32 and no fp32 mul/add without .rn (nothing ptxas may
    contract), no approximate division or square root."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    result = subprocess.run(
        [sys.executable, "-c", _TRITON_AOT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout)
    assert len(facts) == 4 * 2 * 4
    for name, f in facts.items():
        assert f["loads"] > 0 and f["atomics"] == 0 and f["f64"] == 0, (name, f)
        assert f["fma_f32"] == f["free_f32"] == f["inexact"] == 0, (name, f)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_cpu_fold_vectorizes(isa):
    """gcc vectorizes the lane fold of csrc/cpu/norm.cpp (a full row of
    kLanes lanes) for every norm x dtype (6 instantiations) and the tree's
    levels, with the flags CMakeLists.txt gives the CPU loops: the order of
    Note [norm summation order] costs no scalar loop."""
    import shutil
    import subprocess

    from _cuda_tools import REPO
    from test_cpu_vectorized import isa_flags, loop_flags

    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile the CPU loops")
    source = REPO / "csrc/cpu/norm.cpp"
    lines = source.read_text().splitlines()
    fold = 1 + next(i for i, line in enumerate(lines) if "lane < norm::kLanes; ++lane" in line)
    tree = 1 + next(i for i, line in enumerate(lines) if "scratch[i] = N::combine" in line) - 1
    result = subprocess.run(
        ["g++", "-std=c++20", *loop_flags(), *isa_flags(isa), f"-DFUSEDOPT_ISA={isa}"]
        + [f"-I{REPO / 'csrc/include'}", f"-I{REPO / 'csrc/cpu'}", "-fopt-info-vec-optimized"]
        + ["-c", str(source), "-o", "/dev/null"],
        capture_output=True,
        text=True,
        check=True,
    )
    vectorized = result.stderr.count(f"norm.cpp:{fold}:")
    assert vectorized >= 6, f"{isa}: the fold loop (line {fold}) vectorized {vectorized} times"
    assert result.stderr.count(f"norm.cpp:{tree}:") >= 2, f"{isa}: tree levels not vectorized"
