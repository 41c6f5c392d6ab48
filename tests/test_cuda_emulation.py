"""The CUDA op's host side and its kernels' traversal, run on the CPU.

fusedopt::_cuda_emulate_adam_step_ fills the kernel arguments exactly as the
CUDA op does (csrc/ops.cpp, prepare_cuda_adam) and runs the kernels' body
(csrc/include/fusedopt/adam_cuda_traversal.h: adam_thread, then
increment_step_thread) for every (block, thread) of the planned grid, one
after another. The traversal has no shared memory and no barriers, so this is
the same computation as on a GPU up to floating-point contraction.

What it covers: the launch split and block -> (tensor, chunk) map, the chunk
and element index math, the choice between the 16-byte vector path and the
scalar path, the GradScaler unscale and skip, the scalars computed on the host
and in the kernel (capturable), the step-count increments, and the fp32 /
bf16 / fp16 conversions as the host compiler builds them.
What it does not cover: the device compiler's code (FMA contraction, the
device conversions intrinsics, 64-bit address arithmetic in SASS), the
launch itself and the stream, concurrency between blocks. Those are
compiled-only here (tests/test_cuda_sass.py reads the SASS).
"""

import fusedopt  # noqa: F401  (registers the ops)
import pytest
import torch
from fusedopt import reference

CHUNK = 65536
HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-8, lr_max=1.0)
LR = 2.0**-10  # exact in float32: the emulation reads lr from a float32 tensor
STATS = (
    "launches",
    "blocks",
    "vector",
    "scalar",
    "misaligned",
    "out_of_range",
    "never",
    "more_than_once",
)


def make_case(numels, dtype, amsgrad, seed=0, steps=None):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in numels]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in numels]
    exp_avgs = [torch.randn(n, generator=gen) * 0.1 for n in numels]
    exp_avg_sqs = [torch.rand(n, generator=gen) * 0.01 for n in numels]
    max_sqs = [v + torch.rand(v.numel(), generator=gen) * 0.01 for v in exp_avg_sqs]
    state_steps = [torch.tensor(float(s)) for s in (steps or [3] * len(numels))]
    return [params, grads, exp_avgs, exp_avg_sqs, max_sqs if amsgrad else [], state_steps]


def clone(case):
    return [[t.clone() for t in lst] for lst in case]


def emulate(
    case,
    *,
    wd_mode=1,
    weight_decay=0.01,
    amsgrad=False,
    maximize=False,
    grad_scale=None,
    found_inf=None,
    steps_in_kernel=False,
    lr_in_kernel=False,
    threads=512,
):
    stats = torch.ops.fusedopt._cuda_emulate_adam_step_(
        *case,
        lr=torch.tensor(LR),
        weight_decay=weight_decay,
        weight_decay_mode=wd_mode,
        amsgrad=amsgrad,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
        steps_in_kernel=steps_in_kernel,
        lr_in_kernel=lr_in_kernel,
        threads_per_block=threads,
        **HYPER,
    )
    return dict(zip(STATS, stats, strict=True))


def cpu_backend(
    case,
    *,
    wd_mode=1,
    weight_decay=0.01,
    amsgrad=False,
    maximize=False,
    grad_scale=None,
    found_inf=None,
):
    torch.ops.fusedopt.adam_step_(
        *case,
        lr=LR,
        weight_decay=weight_decay,
        weight_decay_mode=wd_mode,
        amsgrad=amsgrad,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
        **HYPER,
    )


def reference_step(
    case, *, wd_mode=1, weight_decay=0.01, amsgrad=False, maximize=False, grad_scale=None
):
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = case
    for i in range(len(params)):
        reference.adam_step_(
            params[i],
            grads[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            max_sqs[i] if amsgrad else None,
            steps[i],
            lr=LR,
            weight_decay=weight_decay,
            weight_decay_mode=reference.WeightDecayMode(wd_mode),
            amsgrad=amsgrad,
            maximize=maximize,
            grad_scale=None if grad_scale is None else grad_scale.item(),
            **HYPER,
        )


def expected_accesses(numels, amsgrad, unscale):
    """(vector, scalar) accesses of the traversal: per group of 4 elements (a
    chunk's whole groups) or per tail element, one access per stream: loads
    p, g, m, v (+v_max), stores p, m, v (+v_max) (+g when unscaling)."""
    per = 7 + 2 * amsgrad + unscale
    groups = tails = 0
    for n in numels:
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            groups += size // 4
            tails += size % 4
    return groups * per, tails * per


def assert_clean(stats, numels):
    assert stats["misaligned"] == 0
    assert stats["out_of_range"] == 0
    assert stats["more_than_once"] == 0
    assert stats["never"] == 0, f"{stats['never']} of {sum(numels)} elements not updated"


def assert_same(a, b):
    for lst_a, lst_b in zip(a, b, strict=True):
        for x, y in zip(lst_a, lst_b, strict=True):
            assert torch.equal(x, y), (x - y).abs().max() if x.numel() else "size"


# Error budget against the fp32 reference, per param dtype: fp32 within a few
# ulps (the reference forms 1 - beta^t in a different order); bf16 / fp16
# within one ulp of the stored value (one rounding at the store, either side).
TOLERANCE = {
    torch.float32: dict(rtol=1e-6, atol=1e-7),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-6),
}

SIZES = [0, 1, 3, 4097, 65537, 2 * CHUNK + 5, 0]  # zero-size first and last, a prime, 2 chunks+


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("wd_mode", [0, 1])
def test_matches_cpu_backend_and_reference(dtype, amsgrad, wd_mode):
    case = make_case(SIZES, dtype, amsgrad)
    on_cpu, ref = clone(case), clone(case)
    stats = emulate(case, wd_mode=wd_mode, amsgrad=amsgrad)
    assert_clean(stats, SIZES)
    assert (stats["vector"], stats["scalar"]) == expected_accesses(SIZES, amsgrad, False)
    cpu_backend(on_cpu, wd_mode=wd_mode, amsgrad=amsgrad)
    # The same rule on the same scalars, compiled by the same host compiler.
    assert_same(case, on_cpu)
    reference_step(ref, wd_mode=wd_mode, amsgrad=amsgrad)
    for got, want in zip(case[0] + case[2] + case[3], ref[0] + ref[2] + ref[3], strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE[got.dtype])
    assert [s.item() for s in case[5]] == [4.0] * len(SIZES)


@pytest.mark.parametrize("threads", [1, 37, 128])
def test_any_block_size_updates_each_element_once(threads):
    numels = [5, 4097, CHUNK + 3]
    case = make_case(numels, torch.float32, amsgrad=False)
    on_cpu = clone(case)
    assert_clean(emulate(case, threads=threads), numels)
    cpu_backend(on_cpu)
    assert_same(case, on_cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_view_takes_the_scalar_path(dtype):
    n = 4099
    case = make_case([n + 1], dtype, amsgrad=False)
    # A param that is a view one element into its storage: 4 or 2 bytes off
    # the 16-byte boundary, so its chunks must not use the vector path.
    case[0] = [case[0][0][1:]]
    case[1] = [case[1][0][1:].clone()]
    case[2] = [case[2][0][1:].clone()]
    case[3] = [case[3][0][1:].clone()]
    assert case[0][0].data_ptr() % 16 != 0
    on_cpu = clone(case)
    on_cpu[0] = [case[0][0].clone()]
    stats = emulate(case)
    assert_clean(stats, [n])
    assert stats["vector"] == 0 and stats["scalar"] == 7 * n
    cpu_backend(on_cpu)
    assert_same(case, on_cpu)


@pytest.mark.parametrize(
    "steps_in_kernel,lr_in_kernel", [(True, False), (False, True), (True, True)]
)
def test_scalars_computed_in_kernel_match_host(steps_in_kernel, lr_in_kernel):
    numels = [3, 4097, CHUNK + 1]
    steps = [0, 7, 1000]  # per-tensor counts, as after a partial state load
    case = make_case(numels, torch.float32, amsgrad=True, steps=steps)
    host = clone(case)
    assert_clean(
        emulate(case, amsgrad=True, steps_in_kernel=steps_in_kernel, lr_in_kernel=lr_in_kernel),
        numels,
    )
    emulate(host, amsgrad=True)
    assert_same(case, host)
    assert [s.item() for s in case[5]] == [s + 1.0 for s in steps]


@pytest.mark.parametrize("steps_in_kernel", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grad_scaler_unscales_and_stores_grads(steps_in_kernel, dtype):
    numels = [7, 4097]
    case = make_case(numels, dtype, amsgrad=False)
    on_cpu = clone(case)
    scale = torch.tensor(1024.0)
    stats = emulate(
        case, grad_scale=scale, found_inf=torch.tensor(0.0), steps_in_kernel=steps_in_kernel
    )
    assert_clean(stats, numels)
    assert (stats["vector"], stats["scalar"]) == expected_accesses(numels, False, True)
    cpu_backend(on_cpu, grad_scale=scale, found_inf=torch.tensor(0.0))
    assert_same(case, on_cpu)


@pytest.mark.parametrize("steps_in_kernel", [False, True])
def test_found_inf_changes_nothing(steps_in_kernel):
    numels = [7, 4097]
    case = make_case(numels, torch.float32, amsgrad=True)
    before = clone(case)
    stats = emulate(
        case,
        amsgrad=True,
        grad_scale=torch.tensor(8.0),
        found_inf=torch.tensor(1.0),
        steps_in_kernel=steps_in_kernel,
    )
    assert stats["never"] == sum(numels)
    assert_same(case, before)


def test_more_tensors_than_one_launch_and_one_step_launch_hold():
    # 600 tensors: 19 Adam launches of <= 32 slots and 2 step launches of <= 500.
    numels = [1 + i % 5 for i in range(600)]
    case = make_case(numels, torch.float32, amsgrad=False, steps=list(range(600)))
    on_cpu = clone(case)
    stats = emulate(case, steps_in_kernel=True)
    assert stats["launches"] == 19
    assert_clean(stats, numels)
    cpu_backend(on_cpu)
    assert_same(case, on_cpu)


def test_maximize():
    numels = [4097]
    case = make_case(numels, torch.float32, amsgrad=False)
    ref = clone(case)
    assert_clean(emulate(case, maximize=True), numels)
    reference_step(ref, maximize=True)
    torch.testing.assert_close(case[0][0], ref[0][0], **TOLERANCE[torch.float32])
