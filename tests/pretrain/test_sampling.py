"""The block order: a permutation per epoch, fixed by (seed, epoch), with nothing proportional to n in memory."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
import torch

from pretrain.blocks import BlockOrder


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4099])
def test_every_block_once_per_epoch(n):
    order = BlockOrder(n, seed=0)
    first = list(order)
    assert sorted(first) == list(range(n))
    order.set_epoch(1)
    second = list(order)
    assert sorted(second) == list(range(n))
    if n > 8:
        assert first != second  # a new order every epoch


def test_the_order_depends_on_seed_and_epoch_only():
    a, b = BlockOrder(5000, seed=3), BlockOrder(5000, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(BlockOrder(5000, seed=4)) != list(BlockOrder(5000, seed=3))
    # shuffled, not a rotation or a stride: neighbours in the order are far apart on average
    order = list(BlockOrder(5000, seed=3))
    gaps = [abs(x - y) for x, y in zip(order, order[1:], strict=False)]
    assert 1000 < sum(gaps) / len(gaps) < 2300  # a random permutation of 5,000 averages ~1,667


def peak_bytes_of(make_and_read) -> int:
    """Peak bytes Python allocated while `make_and_read()` ran (tracemalloc: every object, values included —
    `sys.getsizeof(obj.__dict__)` measured only the dict's table)."""
    tracemalloc.start()
    try:
        make_and_read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_blocks():
    def first_thousand(n: int):
        def run() -> list[int]:
            order = BlockOrder(n, seed=0)
            order.set_epoch(1)
            return list(itertools.islice(iter(order), 1000))

        return run

    small, huge = peak_bytes_of(first_thousand(1000)), peak_bytes_of(first_thousand(70_000_000))  # ~9 B tokens
    assert huge < 2 * small + 64_000, (small, huge)  # a permutation of 70M indices would take gigabytes
    # The measurement sees a materialised order: torch's RandomSampler's randperm(n).tolist() for 1M blocks.
    assert peak_bytes_of(lambda: torch.randperm(1_000_000).tolist()) > 100 * huge
    huge = BlockOrder(70_000_000, seed=0)
    assert len(huge) == 70_000_000 and 0 <= huge.position(123_456_789 % 70_000_000) < 70_000_000
