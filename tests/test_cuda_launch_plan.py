"""The CUDA kernels' launch plan (csrc/include/fusedopt/core/launch_plan.h),
with the slots and blocks per launch each rule derives from its slot size
(mta/args.h), driven on the CPU through the test-only op
fusedopt_testing::launch_plan with adversarial numel lists: every element of
every non-empty tensor is covered by exactly one entry of one launch's chunk
table, zero-size tensors take no slot, every launch fits its metadata limits,
and the workloads of the issue's targets take few launches. How a launch's
grid shares out its table is emulated in tests/test_cuda_emulation.py."""

import random

import fusedopt  # noqa: F401  (registers the ops)
import pytest
import torch
from fusedopt._C import kernel_arg_bytes
from fusedopt.bench.workloads import gpt2_small_shapes
from fusedopt.registry import RULES

pytest.importorskip(
    "fusedopt._testing", reason="fusedopt._testing is built only with FUSEDOPT_TESTING=1"
)

CHUNK = 65536
# A chunk table's entry: its uint8 slot and int32 chunk index (mta/args.h).
CHUNK_ENTRY_BYTES = 5


def plan(rule, numels):
    """(chunk size, slots and chunks per launch, [(tensor of each slot,
    [(slot, chunk index) of each table entry]) per launch])."""
    flat = torch.ops.fusedopt_testing.launch_plan(rule, numels)
    chunk, max_slots, max_chunks, n_launches = flat[:4]
    pos, launches = 4, []
    for _ in range(n_launches):
        n_slots = flat[pos]
        tensors = flat[pos + 1 : pos + 1 + n_slots]
        pos += 1 + n_slots
        n_chunks = flat[pos]
        entries = [(flat[pos + 1 + 2 * e], flat[pos + 2 + 2 * e]) for e in range(n_chunks)]
        pos += 1 + 2 * n_chunks
        launches.append((tensors, entries))
    assert pos == len(flat), "the encoding has no trailing data"
    return chunk, max_slots, max_chunks, launches


def check_plan(rule, numels):
    chunk, max_slots, max_chunks, launches = plan(rule, numels)
    assert chunk == CHUNK
    covered = {t: [] for t in range(len(numels))}
    for tensors, entries in launches:
        assert 1 <= len(tensors) <= max_slots
        assert 1 <= len(entries) <= max_chunks
        assert all(numels[t] > 0 for t in tensors), "zero-size tensors take no slot"
        assert len(set(tensors)) == len(tensors)
        used_slots = {slot for slot, _ in entries}
        assert used_slots == set(range(len(tensors))), "every slot has a chunk, no stray slot"
        for slot, index in entries:
            covered[tensors[slot]].append(index)
    for t, numel in enumerate(numels):
        n_chunks = -(-numel // chunk)
        assert sorted(covered[t]) == list(range(n_chunks)), f"tensor {t} ({numel} elements)"
    # Tensor order is kept, and a tensor split across launches continues in order.
    order = [(tensors[slot], index) for tensors, entries in launches for slot, index in entries]
    assert order == sorted(order)
    return launches


PRIMES = [2, 3, 5, 7, 65521, 65537, 131071]


@pytest.mark.parametrize("rule", RULES)
def test_header_fits_the_kernel_parameter_space(rule):
    chunk, max_slots, max_chunks, launches = plan(rule, [])
    assert chunk == CHUNK and launches == []
    assert 1 <= max_slots <= 256, "an entry's slot index is a uint8"
    assert max_chunks >= max_slots
    assert max_chunks * CHUNK_ENTRY_BYTES < kernel_arg_bytes


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "numels",
    [
        [],
        [0],
        [0, 0, 0],
        [1],
        [3],
        [4097],
        PRIMES,
        [1, 3, 4097, 0],  # zero-size last
        [0, 5, 0, 65536, 0],  # zero-size first, between and last
        [65536],
        [65535],
        [65537],  # exactly one chunk, one short, one over
    ],
)
def test_plan_covers_every_chunk_once(rule, numels):
    check_plan(rule, numels)


@pytest.mark.parametrize("rule", RULES)
def test_more_tensors_than_one_launch_holds(rule):
    _, max_slots, _, _ = plan(rule, [])
    numels = [3] * (max_slots * 2 + 1) + [0]
    launches = check_plan(rule, numels)
    assert [len(t) for t, _ in launches] == [max_slots, max_slots, 1]


@pytest.mark.parametrize("rule", RULES)
def test_more_chunks_than_one_launch_holds(rule):
    chunk, _, max_chunks, _ = plan(rule, [])
    launches = check_plan(rule, [chunk * (max_chunks + 3) - 1, 7])
    assert [len(e) for _, e in launches] == [max_chunks, 4]
    assert launches[1][0] == [0, 1], "the split tensor takes a slot again in the next launch"


@pytest.mark.parametrize("rule", RULES)
def test_tensor_over_2_pow_31_elements(rule):
    numel = 2**31 + 5
    launches = check_plan(rule, [1, numel, 2])
    last_chunk = max(
        index for tensors, entries in launches for slot, index in entries if tensors[slot] == 1
    )
    assert last_chunk == numel // CHUNK
    assert last_chunk * CHUNK > 2**31 - 1, "the last chunk starts past int32's range"


@pytest.mark.parametrize("rule", RULES)
def test_numel_beyond_the_chunk_index_range_is_refused(rule):
    with pytest.raises(RuntimeError, match="want 0 <= numel <"):
        plan(rule, [2**31 * CHUNK])
    with pytest.raises(RuntimeError, match="want 0 <= numel <"):
        plan(rule, [-1])


def test_unknown_rule_is_refused():
    with pytest.raises(RuntimeError, match="no rule named nadam_typo"):
        plan("nadam_typo", [1])


@pytest.mark.parametrize("rule", RULES)
def test_random_lists(rule):
    rng = random.Random(0)
    for _ in range(50):
        n_tensors = rng.randrange(1, 600)
        numels = [rng.choice([0, 1, 3, rng.randrange(1, 300_000)]) for _ in range(n_tensors)]
        check_plan(rule, numels)


def test_adam_2000_tensors_of_4096_in_at_most_9_launches():
    # The issue's target (torch's fused AdamW: ~8; the 4 KB tables took 63):
    # 8 until the master-weight store's pointer grew the slot from 80 to 88 B
    # (Slot in mta/args.h).
    launches = check_plan("adam", [4096] * 2000)
    assert len(launches) <= 9, len(launches)


def test_adam_gpt2_small_in_one_or_two_launches():
    numels = [torch.Size(s).numel() for s in gpt2_small_shapes()]
    assert len(numels) == 148
    launches = check_plan("adam", numels)
    assert 1 <= len(launches) <= 2, len(launches)


# An H100's resident blocks: 132 SMs x mta::kMinBlocksPerSm (2). A launch of
# more chunks runs a grid of this many blocks, each looping over its share.
H100_RESIDENT_BLOCKS = 132 * 2


def grid_rounds(n_chunks: int, resident: int = H100_RESIDENT_BLOCKS) -> tuple[int, int, int]:
    """(grid blocks, chunks of the busiest block, blocks busy in the last round)."""
    grid = min(n_chunks, resident)
    rounds = -(-n_chunks // grid)
    return grid, rounds, n_chunks - (rounds - 1) * grid


def test_persistent_grid_on_the_issue_workloads():
    """The table beside grid_blocks in mta/launches.h: fp32 Adam's chunks per
    launch and the grid each launch runs on an H100."""
    gpt2 = [torch.Size(s).numel() for s in gpt2_small_shapes()]
    rows = {
        name: [len(entries) for _, entries in check_plan("adam", numels)]
        for name, numels in {
            "2000 x 4096": [4096] * 2000,
            "gpt2": gpt2,
            "64M": [64 * 2**20],
            "320 chunks": [320 * CHUNK],
        }.items()
    }
    assert rows == {
        "2000 x 4096": [231] * 8 + [152],
        "gpt2": [1995],
        "64M": [1024],
        "320 chunks": [320],
    }
    assert {grid_rounds(n) for n in rows["2000 x 4096"]} == {(231, 1, 231), (152, 1, 152)}
    assert grid_rounds(1995) == (264, 8, 147)
    assert grid_rounds(1024) == (264, 4, 232)
    assert grid_rounds(320) == (264, 2, 56)
