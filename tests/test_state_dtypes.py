"""Per-state storage dtypes (Note [state dtypes] in
csrc/include/fusedopt/core/storage.h; Note [state dtypes of a group] in
fusedopt/optim/base.py): a group's `state_dtype` "bf16" or "int8" (8-bit
blockwise, fusedopt.reference.codecs), the math in fp32 either way.

  - the dynamic maps: their defining properties, the C++ tables equal to the
    Python definition bit for bit (and bitsandbytes' maps, where it is
    importable: it is not installed here);
  - bf16 states: every optimizer with states, on cpu, triton (interpreter)
    and reference, against the reference (cpu = triton bit for bit; the
    op-level three-backend bit identity is tests/test_bit_identity.py);
  - 8-bit states: the CPU loop's decode and encode equal the plain-PyTorch
    codec bit for bit, for every rule, and the Triton kernel (interpreter)
    equals the CPU loop bit for bit (the CUDA kernels' body:
    tests/test_cuda_emulation.py); AdamW8bit against an independent
    plain-PyTorch re-implementation of bitsandbytes' blockwise scheme;
    tensors under the 8-bit threshold; triton accepts 8-bit CUDA buckets;
  - state_dict: torch's layout by default (loadable by torch.optim.AdamW),
    the compact form (codes and absmax), bf16 states saved as bf16, fp32
    states loaded into a bf16 or 8-bit group converted; a bad state_dtype;
  - quality: short training runs with bf16 and 8-bit states end within a
    stated distance of fp32's loss.
"""

from __future__ import annotations

import copy
import importlib.util
import re

import fusedopt
import pytest
import torch
from _cuda_tools import REPO
from _op_hyper import OP_HYPER
from cases import CASES
from fusedopt.reference import codecs
from fusedopt.registry import RULES
from helpers import draw_grads, make_params, train_tiny_gpt2

BNB = importlib.util.find_spec("bitsandbytes") is not None
TRITON = importlib.util.find_spec("triton") is not None

# --- the dynamic maps -----------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_dynamic_map_properties(signed):
    """Dettmers' dynamic map: 256 sorted codes in [-1, 1] ([0, 1] unsigned)
    with 0 and 1; decade i (10^(i-7), 10^(i-6)] holds 2^i positive codes (2^(i+1)
    unsigned), the midpoints of an even grid from 0.1 to 1 times 10^(i-6);
    signed: the negative codes mirror the positive ones but 1."""
    table = codecs.dynamic_map(signed)
    assert table.dtype == torch.float32 and table.shape == (256,)
    assert bool((table[1:] > table[:-1]).all()), "strictly increasing"
    assert 0.0 in table.tolist() and table[-1].item() == 1.0
    positive = table[table > 0]
    for i in range(codecs.MAX_EXPONENT_BITS):
        scale = 10.0 ** (i - 6)
        decade = positive[(positive > scale / 10) & (positive <= scale)]
        if i == codecs.MAX_EXPONENT_BITS - 1:
            decade = decade[decade < 1.0]
        n = 2 ** (i if signed else i + 1)
        assert decade.numel() == n, f"decade {i}"
        width = 0.9 * scale / n
        expected = scale * 0.1 + width * (torch.arange(n, dtype=torch.float64) + 0.5)
        torch.testing.assert_close(decade.double(), expected, rtol=1e-6, atol=0)
    if signed:
        negative = table[table < 0]
        assert negative.numel() == 127
        assert torch.equal((-negative).sort().values, positive[:-1])
    else:
        assert bool((table >= 0).all())
    midpoints = codecs.dynamic_midpoints(signed)
    assert bool((midpoints > table[:-1]).all() and (midpoints < table[1:]).all())


def _header_table(name: str) -> torch.Tensor:
    header = (REPO / "csrc/include/fusedopt/core/blockwise8.h").read_text()
    m = re.search(rf"float {name}\[\d+\] = \{{([^}}]*)\}};", header)
    assert m, f"blockwise8.h has no table {name}"
    values = [float.fromhex(v.strip().rstrip("f")) for v in m.group(1).split(",") if v.strip()]
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_cpp_tables_are_the_python_definition(signed):
    prefix = "kSigned" if signed else "kUnsigned"
    assert torch.equal(_header_table(f"{prefix}Map"), codecs.dynamic_map(signed))
    assert torch.equal(_header_table(f"{prefix}Midpoints"), codecs.dynamic_midpoints(signed))


@pytest.mark.skipif(not BNB, reason="bitsandbytes is not installed (compared where it is)")
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_maps_equal_bitsandbytes(signed):
    import bitsandbytes.functional as bnbf

    assert torch.equal(bnbf.create_dynamic_map(signed=signed).float(), codecs.dynamic_map(signed))


def test_encoder_is_the_nearest_code():
    """encode_8bit's code is the number of fp32 midpoints below x: the
    nearest code, ties and values within an ulp of a midpoint going by the
    fp32 midpoint; every midpoint, its float neighbours and the codes probed."""
    for signed in (True, False):
        table = codecs.dynamic_map(signed)
        mids = codecs.dynamic_midpoints(signed)
        probes = torch.cat(
            [
                mids,
                torch.nextafter(mids, torch.tensor(2.0)),
                torch.nextafter(mids, torch.tensor(-2.0)),
                table,
                torch.rand(4096) * (2 if signed else 1) - (1 if signed else 0),
            ]
        )
        # Each block: 255 probes and a 1.0, so absmax is 1 and x / absmax = x.
        per_block = codecs.BLOCK - 1
        probes = torch.cat([probes, torch.zeros(-probes.numel() % per_block)])
        n = probes.numel()
        values = torch.cat([probes.view(-1, per_block), torch.ones(n // per_block, 1)], dim=1)
        codes = torch.empty(values.numel(), dtype=codecs.code_dtype(signed))
        absmax = torch.empty(n // per_block)
        codecs.encode_8bit(values.reshape(-1), codes, absmax)
        assert bool((absmax == 1.0).all())
        codes = codes.view(-1, codecs.BLOCK)[:, :per_block].reshape(-1)
        got = codes.view(torch.uint8).long()
        # The definition: how many fp32 midpoints lie strictly below x.
        assert torch.equal(got, (mids[None, :] < probes[:, None]).sum(dim=1))
        # The nearest code in exact arithmetic, but within an ulp of a
        # midpoint (there the fp32 midpoint's own rounding decides).
        distance = (probes.double()[:, None] - table.double()[None, :]).abs()
        best = distance.min(dim=1).values
        ulp = torch.nextafter(mids, torch.tensor(2.0)) - mids
        near_midpoint = ((probes[:, None] - mids[None, :]).abs() <= ulp).any(dim=1)
        nearest = distance[torch.arange(n), got] == best
        assert bool((nearest | near_midpoint).all())
        assert int(near_midpoint.sum()) < n // 2, "the probes away from midpoints count"


# --- bf16 states: every optimizer, every backend --------------------------------------

STATEFUL = [pytest.param(case, id=case.name) for case in CASES]
BACKENDS = ["cpu", "reference"] + (["triton"] if TRITON else [])
SIZES = (0, 5000, 70_000)  # empty, one chunk with a tail, two chunks
STEPS = 3
# The cases' stateful lr is 1e-2; a state one bf16 ulp (2^-7 relative at most)
# apart moves the param by about lr times that per step.
PARAM_ATOL = STEPS * 1e-2 * 2**-7


def _run(case, kwargs, backend: str, state_dtype: str, dtype=torch.float32, sizes=SIZES):
    params = make_params(sizes, dtype=dtype)
    opt = case.make(params, kwargs, backend)
    for group in opt.param_groups:
        group["state_dtype"] = state_dtype
    for k in range(STEPS):
        for p, g in zip(params, draw_grads(params, k)):
            p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", STATEFUL)
def test_bf16_states_every_optimizer(case, backend):
    """bf16 states against the reference with bf16 states (the same math,
    one rounding per state per step). cpu and triton compute the same fp32
    values as each other (tests/test_bit_identity.py) and within a few fp32
    ulps of the reference, whose bf16 store then rounds the same way but where
    a value sits at a rounding boundary: a state one bf16 ulp (2^-7 relative
    at most) apart, which moves its param by ~lr times that per step
    (PARAM_ATOL) and the states computed from it by up to another ulp: two
    ulps (2^-6) for the states. Measured: at most 1 element in 70,000 apart,
    by up to 1.4% (RMSprop, Adadelta), its param by 3.5e-5."""
    params, opt = _run(case, case.stateful, backend, "bf16")
    ref_params, ref = _run(case, case.stateful, "reference", "bf16")
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=PARAM_ATOL)
        for key, value in ref.state[q].items():
            got = opt.state[p][key]
            assert got.dtype == value.dtype, key
            if key in RULES[case.fused_cls.rule.name].states:
                assert got.dtype == torch.bfloat16, key
                torch.testing.assert_close(got.float(), value.float(), rtol=2**-6, atol=1e-6)


@pytest.mark.skipif(not TRITON, reason="needs triton")
@pytest.mark.parametrize("case", STATEFUL)
def test_bf16_states_triton_equals_cpu_bits(case):
    params, opt = _run(case, case.stateful, "triton", "bf16", dtype=torch.bfloat16)
    cpu_params, cpu = _run(case, case.stateful, "cpu", "bf16", dtype=torch.bfloat16)
    for p, q in zip(params, cpu_params):
        assert torch.equal(p, q)
        for key, value in cpu.state[q].items():
            assert torch.equal(opt.state[p][key], value), key


# --- 8-bit blockwise states -----------------------------------------------------------


def _op_case(name: str, numels, dtype, seed: int = 0):
    """Params, grads, 8-bit states (from random fp32 states) and counts of a
    call of rule `name` with every state used."""
    rule = RULES[name]
    hyper = OP_HYPER[name]
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in numels]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in numels]
    used = rule.used_states(hyper)
    codes, absmax = [], []
    for key in used:
        signed = key not in rule.nonnegative
        for n in numels:
            values = torch.randn(n, generator=gen)
            values = values if signed else values.abs()
            c, a = codecs.new_8bit(values, values, signed)
            codes.append(c)
            absmax.append(a)
    counts = [torch.tensor(3.0) for _ in range(len(numels) * rule.scalar_lists)]
    return rule, hyper, params, grads, codes, absmax, counts


EIGHT_BIT_SIZES = (300, 4096 + 17, 65536 + 300)  # a short block, a tail, two chunks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", [n for n in RULES if RULES[n].states])
def test_cpu_8bit_equals_the_codec_bit_for_bit(name, dtype):
    """The CPU loop's 8-bit step = decode with the Python codec, the CPU
    loop's fp32 step, encode with the Python codec: the same codes, absmax
    and params, bit for bit (every rule, every state used)."""
    rule, hyper, params, grads, codes, absmax, counts = _op_case(name, EIGHT_BIT_SIZES, dtype)
    lr = 1e-2
    fp32 = [codecs.decode_8bit(c, a) for c, a in zip(codes, absmax)]
    p32, g32 = [p.clone() for p in params], [g.clone() for g in grads]
    rule.op(p32, g32, fp32, [c.clone() for c in counts], lr=lr, **hyper)
    rule.op(params, grads, codes + absmax, counts, lr=lr, **hyper)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    for p, q in zip(params, p32):
        assert torch.equal(p.view(bits), q.view(bits))  # NaN's bits too (centered RMSprop)
    for c, a, values in zip(codes, absmax, fp32):
        want_c, want_a = torch.empty_like(c), torch.empty_like(a)
        codecs.encode_8bit(values, want_c, want_a)
        assert torch.equal(a.view(torch.int32), want_a.view(torch.int32))
        assert torch.equal(c, want_c)


def test_8bit_nan_and_zero_blocks():
    """A NaN in a block makes its absmax NaN (and the block decodes to NaN,
    as an fp32 state would stay NaN); an all-zero block encodes as zeros."""
    values = torch.zeros(3 * codecs.BLOCK)
    values[codecs.BLOCK + 7] = float("nan")
    values[2 * codecs.BLOCK :] = torch.linspace(-1, 1, codecs.BLOCK)
    codes, absmax = codecs.new_8bit(values, values, True)
    assert absmax[0] == 0 and absmax[1].isnan() and absmax[2] == 1
    decoded = codecs.decode_8bit(codes, absmax)
    assert bool((decoded[: codecs.BLOCK] == 0).all()) and bool(decoded[codecs.BLOCK].isnan())


def _bnb_like_adamw8bit(params, grads_per_step, lr, betas, eps, wd):
    """bitsandbytes' blockwise 8-bit AdamW, re-implemented in plain PyTorch
    and independent of fusedopt's codec: dequantize with its maps, torch's
    AdamW math in fp32, requantize each block to the nearest code of
    x / absmax (argmin of the distance)."""
    signed_map, unsigned_map = codecs.dynamic_map(True), codecs.dynamic_map(False)

    def quantize(x, table):
        blocks = x.reshape(-1, codecs.BLOCK)
        absmax = blocks.abs().amax(dim=1)
        normalized = blocks / torch.where(absmax == 0, 1.0, absmax)[:, None]
        index = (normalized[..., None] - table).abs().argmin(dim=-1)
        return index, absmax

    def dequantize(index, absmax, table):
        return (table[index] * absmax[:, None]).reshape(-1)

    state = [
        (quantize(torch.zeros_like(p), signed_map), quantize(torch.zeros_like(p), unsigned_map))
        for p in params
    ]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            (mi, ma), (vi, va) = state[i]
            m = dequantize(mi, ma, signed_map)
            v = dequantize(vi, va, unsigned_map)
            p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - betas[0])
            v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
            denom = v.sqrt() / (1 - betas[1] ** t) ** 0.5 + eps
            p.addcdiv_(m, denom, value=-lr / (1 - betas[0] ** t))
            state[i] = (quantize(m, signed_map), quantize(v, unsigned_map))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_adamw8bit_against_a_plain_blockwise_reimplementation(backend):
    """fusedopt.AdamW8bit (bitsandbytes' defaults but lr) against the plain
    re-implementation above, 10 steps on two 8-bit tensors. The two codecs
    agree but at ties and where fp32 rounding differs by an ulp before
    encoding, which moves a state by one code; measured: params within 2e-6
    of each other (lr 1e-3)."""
    numels = (4096, 3 * 4096 + 256)
    start = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in numels]
    grads = [
        [torch.randn(n, generator=torch.Generator().manual_seed(100 * k + n)) for n in numels]
        for k in range(10)
    ]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = fusedopt.AdamW8bit(params, lr=1e-3, backend=backend)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    twin = [p.clone() for p in start]
    _bnb_like_adamw8bit(twin, grads, 1e-3, (0.9, 0.999), 1e-8, 1e-2)
    for p, q, s in zip(params, twin, start):
        assert not torch.equal(p.detach(), s)
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=2e-6)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.int8
    assert opt.state[params[0]]["exp_avg_sq"].dtype == torch.uint8


def test_small_tensors_keep_fp32_states():
    """bitsandbytes' min_8bit_size: under 4096 elements, fp32 states."""
    small, large = torch.nn.Parameter(torch.randn(4095)), torch.nn.Parameter(torch.randn(4096))
    opt = fusedopt.AdamW8bit([small, large])
    for p in (small, large):
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[small]["exp_avg"].dtype == torch.float32
    assert "exp_avg_absmax" not in opt.state[small]
    assert opt.state[large]["exp_avg"].dtype == torch.int8
    assert opt.state[large]["exp_avg_absmax"].shape == (16,)
    opt = fusedopt.AdamW8bit([large], min_8bit_size=10**6)
    opt.step()
    assert opt.state[large]["exp_avg"].dtype == torch.float32


def test_report_names_a_calls_state_dtype():
    """An 8-bit group's small tensors form an fp32 call of their own: report()
    tells the two calls apart."""
    small, large = torch.nn.Parameter(torch.randn(4095)), torch.nn.Parameter(torch.randn(4096))
    opt = fusedopt.AdamW8bit([small, large], backend="cpu")
    for p in (small, large):
        p.grad = torch.randn_like(p)
    opt.step()
    lines = [line for line in fusedopt.report(opt).splitlines() if "group 0:" in line]
    assert len(lines) == 2
    assert sum("int8 states" in line for line in lines) == 1


@pytest.mark.skipif(not TRITON, reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", [n for n in RULES if RULES[n].states and not RULES[n].state_shape])
def test_triton_8bit_equals_cpu_bit_for_bit(name, dtype):
    """The Triton kernel's 8-bit step (interpreter; Note [8-bit blocks in a
    program] in kernels/mta.py) = the CPU op's: params, codes and absmax bit
    for bit, every rule with every state used, on a short block, a tail and
    programs that are full (vector path) and masked."""
    from fusedopt import backends

    rule, hyper, params, grads, codes, absmax, counts = _op_case(name, EIGHT_BIT_SIZES, dtype)
    lr = 1e-2
    cpu = [[t.clone() for t in ts] for ts in (params, grads, codes, absmax, counts)]
    rule.op(cpu[0], cpu[1], cpu[2] + cpu[3], cpu[4], lr=lr, **hyper)
    backends.get("triton").step(
        rule, params, grads, codes + absmax, counts, lr=lr, hyper=dict(hyper)
    )
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    for p, q in zip(params, cpu[0]):
        assert torch.equal(p.view(bits), q.view(bits))
    for got, want in zip(codes, cpu[2]):
        assert torch.equal(got, want)
    for got, want in zip(absmax, cpu[3]):
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.skipif(not TRITON, reason="needs triton")
def test_adamw8bit_triton_equals_cpu_over_steps():
    """AdamW8bit on the triton backend (interpreter) and on cpu: the same bits
    after 3 steps, an 8-bit tensor with a tail and a small fp32-state one."""
    runs = []
    for backend in ("triton", "cpu"):
        params = make_params((1000, 4096 + 300), dtype=torch.float32)
        opt = fusedopt.AdamW8bit(params, lr=1e-2, backend=backend)
        for k in range(STEPS):
            for p, g in zip(params, draw_grads(params, k)):
                p.grad = g
            opt.step()
        runs.append((params, opt))
    (params, opt), (cpu_params, cpu) = runs
    assert opt.state[params[1]]["exp_avg"].dtype == torch.int8
    for p, q in zip(params, cpu_params):
        assert torch.equal(p, q)
        for key, value in cpu.state[q].items():
            assert torch.equal(opt.state[p][key], value), key


@pytest.mark.skipif(not TRITON, reason="needs triton")
def test_gpu_backends_accept_8bit_buckets():
    """int8 states on CUDA tensors: triton serves them (and cuda, where built
    and a GPU is seen; "auto" tries cuda, then triton)."""
    from fusedopt import backends

    bucket = backends.Bucket(torch.device("cuda"), torch.float32, True, "int8")
    assert backends.get("triton").unsupported_reason(bucket) is None
    assert backends.AUTO_ORDER["cuda"][:2] == ("cuda", "triton")


def test_8bit_classes_refuse_what_they_do_not_do():
    p = [torch.nn.Parameter(torch.randn(3))]
    for kwargs in ({"percentile_clipping": 5}, {"block_wise": False}, {"is_paged": True}):
        with pytest.raises(ValueError, match="fusedopt"):
            fusedopt.AdamW8bit(p, **kwargs)
    adam = fusedopt.Adam8bit(p)
    assert adam.defaults["weight_decay"] == 0 and adam.defaults["state_dtype"] == "int8"
    assert fusedopt.AdamW8bit(p).defaults["weight_decay"] == 1e-2


def test_bad_state_dtype_is_refused():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match=r"state_dtype must be one of \('fp32', 'bf16', 'int8'\)"):
        fusedopt.AdamW(p, state_dtype="fp8")
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        fusedopt.RMSprop([{"params": p, "state_dtype": torch.bfloat16}])


# --- state_dict -----------------------------------------------------------------------


def _trained(cls, state_dtype=None, steps=3, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.Linear(64, 8))
    if state_dtype is not None:
        kwargs["state_dtype"] = state_dtype
    opt = cls(model.parameters(), lr=1e-2, **kwargs)
    for k in range(steps):
        model(torch.randn(4, 96, generator=torch.Generator().manual_seed(k))).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _continue(model, opt, steps=2):
    for k in range(steps):
        model(torch.randn(4, 96, generator=torch.Generator().manual_seed(50 + k))).sum().backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_8bit_state_dict_is_torch_layout_and_loads_into_torch():
    model, opt = _trained(fusedopt.AdamW8bit)
    saved = opt.state_dict()
    weight = saved["state"][0]
    assert set(weight) == {"step", "exp_avg", "exp_avg_sq"}
    assert weight["exp_avg"].dtype == torch.float32 and weight["exp_avg"].shape == (64, 96)
    live = opt.state[model[0].weight]
    assert live["exp_avg"].dtype == torch.int8, "state_dict() must not touch the live states"
    torch.testing.assert_close(
        weight["exp_avg"], codecs.decode_8bit(live["exp_avg"], live["exp_avg_absmax"])
    )
    twin = torch.optim.AdamW(model.parameters(), lr=1e-2)
    twin.load_state_dict(saved)
    torch.testing.assert_close(twin.state[model[0].weight]["exp_avg_sq"], weight["exp_avg_sq"])


def test_8bit_compact_round_trip_is_exact():
    model, opt = _trained(fusedopt.AdamW8bit)
    saved = copy.deepcopy(opt.state_dict(compact=True))  # torch's holds the live tensors
    weight = saved["state"][0]
    assert weight["exp_avg"].dtype == torch.int8 and weight["exp_avg_sq"].dtype == torch.uint8
    assert weight["exp_avg_absmax"].shape == (24,)
    params = [p.detach().clone() for p in model.parameters()]
    uninterrupted = _continue(model, opt)
    for p, q in zip(model.parameters(), params):
        p.data.copy_(q)
    fresh = fusedopt.AdamW8bit(model.parameters(), lr=1e-2)
    fresh.load_state_dict(saved)
    for a, b in zip(_continue(model, fresh), uninterrupted):
        assert torch.equal(a, b)


def test_8bit_torch_layout_round_trip_is_close():
    """Loading the default (fp32) form re-encodes the decoded values: a
    block whose largest magnitude was negative re-encodes with an absmax
    0.7% smaller (the signed map's most negative code is -0.993, bnb's), so
    the continuation is close, not identical."""
    model, opt = _trained(fusedopt.AdamW8bit)
    saved = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    uninterrupted = _continue(model, opt)
    for p, q in zip(model.parameters(), params):
        p.data.copy_(q)
    fresh = fusedopt.AdamW8bit(model.parameters(), lr=1e-2)
    fresh.load_state_dict(saved)
    for a, b in zip(_continue(model, fresh), uninterrupted):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    assert fresh.state[model[0].weight]["exp_avg"].dtype == torch.int8


def test_bf16_states_saved_as_bf16_and_fp32_states_converted_on_load():
    model, opt = _trained(fusedopt.AdamW, "bf16")
    saved = opt.state_dict()
    assert saved["state"][0]["exp_avg"].dtype == torch.bfloat16
    _, fp32_opt = _trained(fusedopt.AdamW)
    fp32_saved = fp32_opt.state_dict()
    into = fusedopt.AdamW(model.parameters(), lr=1e-2, state_dtype="bf16")
    into.load_state_dict(fp32_saved)
    _continue(model, into, steps=1)
    got = into.state[model[0].weight]["exp_avg"]
    assert got.dtype == torch.bfloat16
    into8 = fusedopt.AdamW8bit(model.parameters(), lr=1e-2)
    into8.load_state_dict(fp32_saved)
    _continue(model, into8, steps=1)
    assert into8.state[model[0].weight]["exp_avg"].dtype == torch.int8


def test_bf16_state_dict_round_trip_is_exact():
    model, opt = _trained(fusedopt.AdamW, "bf16")
    saved = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    uninterrupted = _continue(model, opt)
    for p, q in zip(model.parameters(), params):
        p.data.copy_(q)
    fresh = fusedopt.AdamW(model.parameters(), lr=1e-2, state_dtype="bf16")
    fresh.load_state_dict(saved)
    for a, b in zip(_continue(model, fresh), uninterrupted):
        assert torch.equal(a, b)


# --- quality --------------------------------------------------------------------------


def _train_mlp(state_dtype: str, steps: int = 100) -> float:
    """A 3-layer MLP on a fixed regression task (every weight over the 8-bit
    threshold), AdamW lr 1e-2; the mean loss of the last 10 steps. One
    thread: on this shared 2-core machine two threads' barriers took the run
    from 0.2 s to ~50 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_mlp_steps(state_dtype, steps)
    finally:
        torch.set_num_threads(threads)


def _train_mlp_steps(state_dtype: str, steps: int) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 8),
    )
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(1))
    y = torch.sin(x[:, :8] * 2) + x[:, 8:16] * x[:, 16:24]
    opt = fusedopt.AdamW(model.parameters(), lr=1e-2, state_dtype=state_dtype)
    losses = []
    for k in range(steps):
        batch = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(k))
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return sum(losses[-10:]) / 10


def test_short_training_ends_near_fp32():
    """100 steps: bf16 and 8-bit states end within 2% of fp32's loss.
    Measured: fp32 0.13133, bf16 0.13120 (-0.1%), 8-bit 0.13059 (-0.6%)."""
    fp32 = _train_mlp("fp32")
    for state_dtype in ("bf16", "int8"):
        got = _train_mlp(state_dtype)
        assert abs(got - fp32) <= 0.02 * fp32, (state_dtype, got, fp32)


@pytest.mark.slow
def test_tiny_gpt2_300_steps_within_1_percent():
    """Issue 10's criterion: 300 steps of a tiny GPT-2 with bf16 and 8-bit
    states end within 1% of fp32 AdamW's loss (mean of the last 20 steps).
    Measured (2026-11-23, ~40 s per run): fp32 6.1485, bf16 6.1698 (+0.35%),
    8-bit 6.1601 (+0.19%); the curves at steps 0/50/100/200/299: fp32 9.010,
    8.812, 8.427, 7.363, 5.886; bf16 9.010, 8.812, 8.429, 7.376, 5.907; 8-bit
    9.010, 8.815, 8.439, 7.372, 5.905."""
    curves = {sd: train_tiny_gpt2(state_dtype=sd) for sd in ("fp32", "bf16", "int8")}
    final = {sd: sum(c[-20:]) / 20 for sd, c in curves.items()}
    print({sd: [round(c[i], 4) for i in (0, 50, 100, 200, 299)] for sd, c in curves.items()})
    print(final)
    for sd in ("bf16", "int8"):
        assert abs(final[sd] - final["fp32"]) <= 0.01 * final["fp32"], final


# --- the fast encoder against the definition, in C++ ----------------------------------

ENCODER_CHECK = r"""
#include <cstdio>
#include <cstring>
#include "fusedopt/core/blockwise8.h"
using namespace fusedopt;
// Floats of [-1, 1] (and NaNs) every `stride`-th bit pattern, then each
// midpoint and its 8 neighbours either side: the fast encoder's code must be
// the binary search's.
template <bool S>
long check(const float* mids, unsigned long stride) {
  long bad = 0;
  auto one = [&](float x) {
    if (encode_code8(x, mids) != encode_code8_fast<S>(x, mids)) {
      if (bad++ < 5) std::printf("%s map: x=%a\n", S ? "signed" : "unsigned", x);
    }
  };
  for (unsigned long b = 0; b <= 0xFFFFFFFFul; b += stride) {
    unsigned bits = static_cast<unsigned>(b);
    float x;
    std::memcpy(&x, &bits, 4);
    if (x >= -1.0f && x <= 1.0f || x != x) one(x);
  }
  for (int i = 0; i < kCodes8 - 1; ++i) {
    unsigned bits;
    std::memcpy(&bits, &mids[i], 4);
    for (int d = -8; d <= 8; ++d) {
      unsigned near = bits + d;
      float x;
      std::memcpy(&x, &near, 4);
      one(x);
    }
  }
  return bad;
}
int main(int argc, char** argv) {
  const unsigned long stride = std::strtoul(argv[1], nullptr, 10);
  const long bad = check<true>(kSignedMidpoints, stride) + check<false>(kUnsignedMidpoints, stride);
  std::printf("%ld differ\n", bad);
  return bad != 0;
}
"""


def _run_encoder_check(tmp_path, stride: int, check: str = ENCODER_CHECK) -> None:
    import shutil
    import subprocess

    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile the encoder check")
    source = tmp_path / "check.cpp"
    source.write_text("#include <cstdlib>\n" + check)
    binary = tmp_path / "check"
    build = ["g++", "-std=c++20", "-O2", f"-I{REPO / 'csrc/include'}", str(source), "-o"]
    subprocess.run([*build, str(binary)], check=True)
    result = subprocess.run([str(binary), str(stride)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_fast_encoder_is_the_binary_search(tmp_path):
    """encode_code8_fast (the kernels') = encode_code8 (the definition) on
    every 97th float bit pattern (~44M floats of [-1, 1]) and every midpoint's
    neighbourhood, both maps."""
    _run_encoder_check(tmp_path, 97)


@pytest.mark.slow
def test_fast_encoder_is_the_binary_search_everywhere(tmp_path):
    """The same on every float of [-1, 1] (and every NaN): ~3 min."""
    _run_encoder_check(tmp_path, 1)


# --- the CPU encoders of every ISA at the codes' edges --------------------------------

KEYED_CHECK = ENCODER_CHECK.replace("encode_code8_fast<S>(x, mids)", "encode_code8_keyed<S>(x)")
assert KEYED_CHECK != ENCODER_CHECK, "ENCODER_CHECK no longer calls encode_code8_fast"


def test_keyed_encoder_is_the_binary_search(tmp_path):
    """encode_code8_keyed (Note [keyed encoder]: the AVX-512 loop's encoder,
    lane by lane) = encode_code8 (the definition) on every 97th float bit
    pattern of [-1, 1] and every midpoint's neighbourhood, both maps."""
    _run_encoder_check(tmp_path, 97, KEYED_CHECK)


@pytest.mark.slow
def test_keyed_encoder_is_the_binary_search_everywhere(tmp_path):
    """The same on every float of [-1, 1] (and every NaN): ~3 min."""
    _run_encoder_check(tmp_path, 1, KEYED_CHECK)


# Each CPU loop's codes at every midpoint, its 8 float neighbours either side
# and 1 / -1 (SGD's first-step buffer is the grad: signed map; Adagrad's sum
# from zero is g * g: unsigned), against the codec on the same fp32 values.
# Blocks of 255 probes and a 1.0, so x / absmax is the probe itself; short
# last block: the AVX-512 encoder's masked lanes.
EDGE_CODES_SCRIPT = r"""
import sys
import torch
import fusedopt
from fusedopt.reference import codecs
from fusedopt.registry import RULES

def probes(signed):
    mids = codecs.dynamic_midpoints(signed)
    bits = mids.view(torch.int32)
    near = torch.cat([(bits + d).view(torch.float32) for d in range(-8, 9)])
    x = torch.cat([near, torch.tensor([1.0, -1.0, 0.0, -0.0, float("nan")])])
    per_block = codecs.BLOCK - 1
    x = torch.cat([x, torch.zeros(-x.numel() % per_block)]).view(-1, per_block)
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).reshape(-1)
    return x[: x.numel() - 77]

for name, hyper, signed in [
    ("sgd", dict(momentum=0.9, dampening=0.0, weight_decay=0.0, weight_decay_mode=1,
                 lr_max=0.125, nesterov=False, maximize=False, first_step=True), True),
    ("adagrad", dict(lr_decay=0.0, eps=1e-10, weight_decay=0.0, weight_decay_mode=1,
                     lr_max=0.125, maximize=False), False),
]:
    rule = RULES[name]
    x = probes(signed)
    grad = x if signed else x.abs().sqrt()
    param = torch.zeros_like(x)
    codes, absmax = codecs.new_8bit(torch.zeros_like(x), x, signed)
    counts = [torch.tensor(0.0) for _ in range(rule.scalar_lists)]
    fp32 = [codecs.decode_8bit(codes, absmax)]
    rule.op([param.clone()], [grad.clone()], fp32, [c.clone() for c in counts], lr=1e-2, **hyper)
    rule.op([param], [grad.clone()], [codes, absmax], counts, lr=1e-2, **hyper)
    want_c, want_a = torch.empty_like(codes), torch.empty_like(absmax)
    codecs.encode_8bit(fp32[0], want_c, want_a)
    assert torch.equal(absmax.view(torch.int32), want_a.view(torch.int32)), name
    differ = (codes != want_c).nonzero().flatten()
    assert differ.numel() == 0, (name, fp32[0][differ[:5]].tolist())
print(fusedopt._extension.cpu_isa())
"""


@pytest.mark.parametrize("isa", ["default", "avx2", "baseline"])
def test_cpu_8bit_codes_at_every_midpoint_every_isa(isa):
    """The 8-bit encoders of the AVX-512 (keyed, intrinsics), AVX2 and
    baseline loops give the codec's codes on each midpoint's neighbourhood
    (FUSEDOPT_CPU_ISA lowers the ISA in a subprocess)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if isa != "default":
        env["FUSEDOPT_CPU_ISA"] = isa
    run = subprocess.run(
        [sys.executable, "-c", EDGE_CODES_SCRIPT], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert isa == "default" or run.stdout.strip() in (isa, "baseline")
