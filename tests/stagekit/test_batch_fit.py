"""impl.fit_batch: the largest per-device batch that fits under a (fake) memory limit, the batch per step kept."""

from __future__ import annotations

import pytest
import torch

from stagekit.batch_fit import BatchFit, MiniBatches, candidates, fit_batch, fit_mini_batch
from stagekit.errors import UserError

MiB = 2**20


def trial_under(limit_items: int, calls: list[int]):
    """A device on which a batch of more than `limit_items` runs out of memory; 100 MiB + 10 MiB per row."""

    def trial(batch: int) -> int:
        calls.append(batch)
        if batch > limit_items:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 100 * MiB + batch * 10 * MiB

    return trial


def test_candidates_are_the_divisors_of_the_step_batch_up_to_the_configured_one():
    assert candidates(256, 1) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert candidates(64, 3) == [64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    assert all(64 * 3 % b == 0 for b in candidates(64, 3))


def test_out_of_memory_halves_the_batch_and_raises_accumulation():
    calls: list[int] = []
    fit = fit_batch(256, 1, trial_under(100, calls))
    assert (fit.per_device, fit.accumulation) == (64, 4) and calls == [256, 128, 64]
    assert fit.per_device * fit.accumulation == 256
    assert [outcome for _, outcome in fit.tried] == ["out of memory", "out of memory", "fits, 0.7 GiB"]


def test_the_memory_limit_counts_the_optimizer_state_too():
    calls: list[int] = []
    # 32 rows: 420 MiB peak + 200 MiB of AdamW moments = 620 > 600; 16 rows: 260 + 200 = 460 fits.
    fit = fit_batch(32, 2, trial_under(10_000, calls), limit_bytes=600 * MiB, reserve_bytes=200 * MiB)
    assert (fit.per_device, fit.accumulation) == (16, 4) and calls == [64 // 2, 16]
    assert "with optimizer state > 0.6 GiB" in fit.tried[0][1]
    assert fit.as_metrics()["fit_batch_tried"][0].startswith("32: 0.6 GiB")


def test_a_batch_that_fits_is_kept_as_configured():
    fit = fit_batch(8, 2, trial_under(1000, []), limit_bytes=10**12)
    assert (fit.per_device, fit.accumulation) == (8, 2)
    assert "per-device batch 8 × accumulation 2" in fit.line


def test_when_nothing_fits_the_error_is_one_line():
    with pytest.raises(UserError) as err:
        fit_batch(4, 1, trial_under(0, []))
    message = str(err.value)
    assert message.startswith("impl.fit_batch: not even a per-device batch of 1 fits") and "\n" not in message
    assert "4: out of memory; 2: out of memory; 1: out of memory" in message


def test_an_unfitted_run_records_nothing():
    assert BatchFit(16, 1, fitted=False).as_metrics() == {}


class GradCacheLoss:
    """A loss with in-batch negatives on a device where more than `limit_rows` rows of activations do not fit:
    in one pass the whole batch's, with mini-batches one mini-batch's."""

    def __init__(self, limit_rows: int, size: int | None = None) -> None:
        self.limit_rows, self.size, self.used = limit_rows, size, []

    def use(self, size: int) -> None:
        self.size = size
        self.used.append(size)

    def trial(self, batch: int) -> int:
        if (self.size or batch) > self.limit_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 100 * MiB


def test_a_loss_with_in_batch_negatives_keeps_its_batch_and_fits_its_mini_batch():
    loss = GradCacheLoss(limit_rows=40)
    fit = fit_mini_batch(256, 1, loss.trial, MiniBatches(None, loss.use, "impl.mini_batch_size"))
    assert (fit.per_device, fit.accumulation, fit.mini_batch) == (256, 1, 32) and loss.used == [128, 64, 32]
    assert [label for label, _ in fit.tried] == [256, "mini-batch 128", "mini-batch 64", "mini-batch 32"]
    assert fit.as_metrics()["fit_batch_mini_batch"] == 32
    assert "per-device batch 256 × accumulation 1 kept" in fit.line and "mini-batches of 32" in fit.line


def test_a_configured_mini_batch_that_fits_is_kept_and_one_that_does_not_is_lowered():
    loss = GradCacheLoss(limit_rows=40, size=16)
    fit = fit_mini_batch(64, 2, loss.trial, MiniBatches(16, loss.use, "impl.mini_batch_size"))
    assert (fit.per_device, fit.accumulation, fit.mini_batch) == (64, 2, 16) and loss.used == []
    loss = GradCacheLoss(limit_rows=10, size=16)
    fit = fit_mini_batch(64, 2, loss.trial, MiniBatches(16, loss.use, "impl.mini_batch_size"))
    assert fit.mini_batch == 8 and loss.used == [8]  # only sizes below the configured one


def test_when_not_even_mini_batches_of_one_fit_the_error_is_one_line():
    loss = GradCacheLoss(limit_rows=0)
    with pytest.raises(UserError) as err:
        fit_mini_batch(4, 1, loss.trial, MiniBatches(None, loss.use, "impl.mini_batch_size"))
    message = str(err.value)
    assert (
        message.startswith("impl.fit_batch: not even mini-batches of 1 fit a per-device batch of 4")
        and "\n" not in message
    )
