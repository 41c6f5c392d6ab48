"""The CUDA kernels' launch plan (csrc/include/fusedopt/launch_plan.h), driven
on the CPU through the test-only op fusedopt::_cuda_launch_plan with
adversarial numel lists: every element of every non-empty tensor is covered by
exactly one block's chunk, zero-size tensors take no slot, and every launch
fits its metadata limits."""

import random

import fusedopt  # noqa: F401  (registers the ops)
import pytest
import torch


def plan(numels):
    flat = torch.ops.fusedopt._cuda_launch_plan(numels)
    chunk, max_slots, max_blocks, n_launches = flat[:4]
    pos, launches = 4, []
    for _ in range(n_launches):
        n_slots = flat[pos]
        tensors = flat[pos + 1 : pos + 1 + n_slots]
        pos += 1 + n_slots
        n_blocks = flat[pos]
        blocks = [(flat[pos + 1 + 2 * b], flat[pos + 2 + 2 * b]) for b in range(n_blocks)]
        pos += 1 + 2 * n_blocks
        launches.append((tensors, blocks))
    assert pos == len(flat), "the encoding has no trailing data"
    return chunk, max_slots, max_blocks, launches


def check_plan(numels):
    chunk, max_slots, max_blocks, launches = plan(numels)
    assert chunk == 65536
    covered = {t: [] for t in range(len(numels))}
    for tensors, blocks in launches:
        assert 1 <= len(tensors) <= max_slots
        assert 1 <= len(blocks) <= max_blocks
        assert all(numels[t] > 0 for t in tensors), "zero-size tensors take no slot"
        assert len(set(tensors)) == len(tensors)
        used_slots = {slot for slot, _ in blocks}
        assert used_slots == set(range(len(tensors))), "every slot has a block, no stray slot"
        for slot, index in blocks:
            covered[tensors[slot]].append(index)
    for t, numel in enumerate(numels):
        n_chunks = -(-numel // chunk)
        assert sorted(covered[t]) == list(range(n_chunks)), f"tensor {t} ({numel} elements)"
    # Tensor order is kept, and a tensor split across launches continues in order.
    order = [(tensors[slot], index) for tensors, blocks in launches for slot, index in blocks]
    assert order == sorted(order)
    return launches


PRIMES = [2, 3, 5, 7, 65521, 65537, 131071]


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
def test_plan_covers_every_chunk_once(numels):
    check_plan(numels)


def test_more_tensors_than_one_launch_holds():
    _, max_slots, _, _ = plan([])
    numels = [3] * (max_slots * 2 + 1) + [0]
    launches = check_plan(numels)
    assert [len(t) for t, _ in launches] == [max_slots, max_slots, 1]


def test_more_blocks_than_one_launch_holds():
    chunk, max_slots, max_blocks, _ = plan([])
    launches = check_plan([chunk * (max_blocks + 3) - 1, 7])
    assert [len(b) for _, b in launches] == [max_blocks, 4]
    assert launches[1][0] == [0, 1], "the split tensor takes a slot again in the next launch"


def test_tensor_over_2_pow_31_elements():
    chunk, *_ = plan([])
    numel = 2**31 + 5
    launches = check_plan([1, numel, 2])
    last_chunk = max(
        index for tensors, blocks in launches for slot, index in blocks if tensors[slot] == 1
    )
    assert last_chunk == numel // chunk
    assert last_chunk * chunk > 2**31 - 1, "the last chunk starts past int32's range"


def test_numel_beyond_the_chunk_index_range_is_refused():
    with pytest.raises(RuntimeError, match="want 0 <= numel <"):
        plan([2**31 * 65536])
    with pytest.raises(RuntimeError, match="want 0 <= numel <"):
        plan([-1])


def test_random_lists():
    rng = random.Random(0)
    for _ in range(50):
        n_tensors = rng.randrange(1, 90)
        numels = [rng.choice([0, 1, 3, rng.randrange(1, 300_000)]) for _ in range(n_tensors)]
        check_plan(numels)
