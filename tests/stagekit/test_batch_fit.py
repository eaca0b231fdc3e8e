"""impl.fit_batch: the largest per-device batch that fits under a (fake) memory limit, the batch per step kept."""

from __future__ import annotations

import pytest
import torch

from stagekit.batch_fit import BatchFit, candidates, fit_batch
from stagekit.errors import UserError

MiB = 2**20


def probe_under(limit_items: int, calls: list[int]):
    """A device on which a batch of more than `limit_items` runs out of memory; 100 MiB + 10 MiB per row."""

    def probe(batch: int) -> int:
        calls.append(batch)
        if batch > limit_items:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 100 * MiB + batch * 10 * MiB

    return probe


def test_candidates_are_the_divisors_of_the_step_batch_up_to_the_configured_one():
    assert candidates(256, 1) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert candidates(64, 3) == [64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    assert all(64 * 3 % b == 0 for b in candidates(64, 3))


def test_out_of_memory_halves_the_batch_and_raises_accumulation():
    calls: list[int] = []
    fit = fit_batch(256, 1, probe_under(100, calls))
    assert (fit.per_device, fit.accumulation) == (64, 4) and calls == [256, 128, 64]
    assert fit.per_device * fit.accumulation == 256
    assert [outcome for _, outcome in fit.tried] == ["out of memory", "out of memory", "fits, 0.7 GiB"]


def test_the_memory_limit_counts_the_optimizer_state_too():
    calls: list[int] = []
    # 32 rows: 420 MiB peak + 200 MiB of AdamW moments = 620 > 600; 16 rows: 260 + 200 = 460 fits.
    fit = fit_batch(32, 2, probe_under(10_000, calls), limit_bytes=600 * MiB, reserve_bytes=200 * MiB)
    assert (fit.per_device, fit.accumulation) == (16, 4) and calls == [64 // 2, 16]
    assert "with optimizer state > 0.6 GiB" in fit.tried[0][1]
    assert fit.as_metrics()["fit_batch_tried"][0].startswith("32: 0.6 GiB")


def test_a_batch_that_fits_is_kept_as_configured():
    fit = fit_batch(8, 2, probe_under(1000, []), limit_bytes=10**12)
    assert (fit.per_device, fit.accumulation) == (8, 2)
    assert "per-device batch 8 × accumulation 2" in fit.line


def test_when_nothing_fits_the_error_is_one_line():
    with pytest.raises(UserError) as err:
        fit_batch(4, 1, probe_under(0, []))
    message = str(err.value)
    assert message.startswith("impl.fit_batch: not even a per-device batch of 1 fits") and "\n" not in message
    assert "4: out of memory; 2: out of memory; 1: out of memory" in message


def test_an_unfitted_run_records_nothing():
    assert BatchFit(16, 1, fitted=False).as_metrics() == {}
