"""The block order: a permutation per epoch, fixed by (seed, epoch), with nothing proportional to n in memory."""

from __future__ import annotations

import sys

import pytest

from pretrain.sampling import BlockOrder


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


def test_memory_does_not_grow_with_the_number_of_blocks():
    small, huge = BlockOrder(1000, seed=0), BlockOrder(70_000_000, seed=0)  # OpenWebText's ~9 B tokens
    assert sys.getsizeof(huge.__dict__) == sys.getsizeof(small.__dict__)
    assert len(huge) == 70_000_000 and 0 <= huge.position(123_456_789 % 70_000_000) < 70_000_000
