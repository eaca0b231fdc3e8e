"""`impl.fit_batch`: the largest per-device batch that fits, with the batch per optimizer step kept.

Before training, one forward and backward pass at the configured per-device batch is tried on the longest
inputs the run can see (full blocks; pairs at `model.max_seq_length`). If it runs out of memory, or its peak
plus AdamW's two moment buffers would pass MEMORY_FRACTION of the device, the next smaller divisor of
per-device batch × accumulation is tried, and `gradient_accumulation_steps` rises by the same factor: the
batch per optimizer step, and so the recipe, stay as configured (e.g. 256 × 1 → 128 × 2 → 64 × 4). Random
states are restored after the trials and gradients dropped, so a fitted run learns what an unfitted one would.
The choice is logged and kept in the run's metrics (`fit_batch_*`).

A loss with in-batch negatives (a ranking loss) is not a mean over independent examples: a smaller per-device
batch would give each example fewer negatives, a different objective that accumulation does not restore. For
such a loss the stage offers `MiniBatches` (its loss embedding the batch in mini-batches with cached gradients,
GradCache), and the per-device batch stays as configured while the mini-batch is fitted instead.

Where torch reports no memory figures (CPU, MPS) only an out-of-memory error rules a size out.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stagekit.distributed import all_ranks
from stagekit.errors import UserError

log = logging.getLogger(__name__)
# Share of the device's memory a trial may reach: the caching allocator reserves more than it hands out, and
# batches of other lengths fragment it. A margin, chosen, not measured.
MEMORY_FRACTION = 0.9
KEY = "impl.fit_batch"


@dataclass(frozen=True)
class BatchFit:
    """The per-device batch and accumulation a run trains with; `tried` lists (batch, outcome) in order."""

    per_device: int
    accumulation: int
    tried: tuple[tuple[int | str, str], ...] = field(default=())
    fitted: bool = True
    mini_batch: int | None = None  # a loss with in-batch negatives embeds the batch in mini-batches of this size

    def as_metrics(self) -> dict[str, Any]:
        if not self.fitted:
            return {}
        mini = {"fit_batch_mini_batch": self.mini_batch} if self.mini_batch is not None else {}
        return {
            "fit_batch_per_device": self.per_device,
            "fit_batch_accumulation": self.accumulation,
            "fit_batch_tried": [f"{b}: {outcome}" for b, outcome in self.tried],
        } | mini

    @property
    def line(self) -> str:
        tried = "; ".join(f"{b}: {outcome}" for b, outcome in self.tried)
        if self.mini_batch is None:
            return f"{KEY}: per-device batch {self.per_device} × accumulation {self.accumulation} ({tried})"
        return (
            f"{KEY}: per-device batch {self.per_device} × accumulation {self.accumulation} kept, as the loss ranks "
            f"against the whole batch; it embeds in mini-batches of {self.mini_batch} ({tried})"
        )


@dataclass(frozen=True)
class MiniBatches:
    """A loss with in-batch negatives that can embed its batch in mini-batches (GradCache): `size` is the
    mini-batch it is configured with (None: the whole batch in one pass) under config key `key`, `use(n)` switches
    the trainer's loss to mini-batches of n examples."""

    size: int | None
    use: Callable[[int], None]
    key: str


def candidates(per_device: int, accumulation: int) -> list[int]:
    """Per-device batches to try, largest first: the divisors of per_device × accumulation up to per_device
    (so accumulation stays a whole number and the product stays the same)."""
    total = per_device * accumulation
    return [b for b in range(per_device, 0, -1) if total % b == 0]


def fit_batch(
    per_device: int,
    accumulation: int,
    trial: Callable[[int], int | None],
    limit_bytes: int | None = None,
    reserve_bytes: int = 0,
) -> BatchFit:
    """The largest candidate batch whose `trial` (one training pass at that batch; returns its peak memory in
    bytes, or None where unknown) neither runs out of memory nor, with `reserve_bytes` added, passes
    `limit_bytes`. Raises UserError (one line) when not even a batch of 1 fits."""
    total, tried = per_device * accumulation, []
    for batch in candidates(per_device, accumulation):
        if _fits(batch, lambda batch=batch: trial(batch), limit_bytes, reserve_bytes, tried):
            return BatchFit(batch, total // batch, tuple(tried))
    raise UserError(
        f"{KEY}: not even a per-device batch of 1 fits ({'; '.join(f'{b}: {o}' for b, o in tried)}); use a smaller "
        "model or shorter sequences"
    )


def fit_mini_batch(
    per_device: int,
    accumulation: int,
    trial: Callable[[int], int | None],
    mini_batches: MiniBatches,
    limit_bytes: int | None = None,
    reserve_bytes: int = 0,
) -> BatchFit:
    """For a loss with in-batch negatives: the per-device batch and accumulation stay, and the loss embeds the
    batch in the largest mini-batch that fits — as configured first, then the divisors of the batch below it
    (each set through `mini_batches.use`, tried at the full per-device batch). Raises UserError (one line) when
    not even mini-batches of 1 fit."""
    tried: list[tuple[int | str, str]] = []
    configured = mini_batches.size
    sizes = [configured] + [b for b in candidates(per_device, 1) if b < (configured or per_device)]
    for size in sizes:
        if size != configured:
            mini_batches.use(size)
        label = per_device if size is None else f"mini-batch {size}"
        if _fits(label, lambda: trial(per_device), limit_bytes, reserve_bytes, tried):
            return BatchFit(per_device, accumulation, tuple(tried), mini_batch=size)
    raise UserError(
        f"{KEY}: not even mini-batches of 1 fit a per-device batch of {per_device} "
        f"({'; '.join(f'{b}: {o}' for b, o in tried)}); lower train.per_device_train_batch_size"
    )


def _fits(
    label: int | str,
    run: Callable[[], int | None],
    limit_bytes: int | None,
    reserve_bytes: int,
    tried: list[tuple[int | str, str]],
) -> bool:
    """Run one trial; record its outcome under `label` in `tried` and say whether it fits."""
    try:
        peak = run()
    except torch.OutOfMemoryError:
        tried.append((label, "out of memory"))
        return False
    if limit_bytes is not None and peak is not None and peak + reserve_bytes > limit_bytes:
        tried.append((label, f"{gib(peak + reserve_bytes)} GiB with optimizer state > {gib(limit_bytes)} GiB"))
        return False
    tried.append((label, "fits" if peak is None else f"fits, {gib(peak + reserve_bytes)} GiB"))
    return True


def gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


@contextlib.contextmanager
def advise_on_out_of_memory(
    batch_key: str, batch_size: int, accumulation: int, unit: str, mini_batch_key: str | None = None
) -> Iterator[None]:
    """CUDA out of memory → one line: a smaller batch with more accumulation keeps the same `unit`s per step; for a
    loss that ranks within the batch that would cut its negatives, so the line names `mini_batch_key` instead."""
    try:
        yield
    except torch.OutOfMemoryError:
        if mini_batch_key is not None:
            raise UserError(
                f"CUDA out of memory at {batch_key}={batch_size}: the loss ranks each example against the whole "
                f"batch, so set {mini_batch_key} (e.g. {max(1, batch_size // 4)}) to embed it in mini-batches with "
                "cached gradients, or set impl.fit_batch=true to find one that fits"
            ) from None
        raise UserError(
            f"CUDA out of memory at {batch_key}={batch_size}: lower it and raise train.gradient_accumulation_steps "
            f"(now {accumulation}) to keep {batch_size * accumulation} {unit} per step and device, or set impl.fit_batch=true"
        ) from None


def memory_trial(trainer: Any, make_inputs: Callable[[int], dict[str, Any]]) -> Callable[[int], int | None]:
    """A trial for `fit_batch`: one forward and backward pass of `trainer`'s loss on `make_inputs(batch)` under
    the run's autocast; the peak memory allocated on CUDA (None elsewhere). Gradients are dropped after."""
    model, device = trainer.model, trainer.args.device

    def trial(batch: int) -> int | None:
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model.train()
        try:
            inputs = trainer._prepare_inputs(make_inputs(batch))
            with trainer.accelerator.autocast():
                loss = trainer.compute_loss(model, inputs)
            loss.backward()
            return int(torch.cuda.max_memory_allocated(device)) if cuda else None
        finally:
            model.zero_grad(set_to_none=True)
            inputs = loss = None
            if cuda:
                torch.cuda.empty_cache()

    return trial


def _rng_states() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _restore(states: tuple[Any, ...]) -> None:
    python, numpy_state, cpu, cuda = states
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def fit_trainer_batch(trainer: Any, enabled: bool, mini_batches: MiniBatches | None = None) -> BatchFit:
    """With `enabled` (impl.fit_batch), fit the per-device batch of `trainer` (a stagekit/stage.py `StageTrainer`,
    tried on its `worst_case_batch`; see `fit_batch`) and set it and the raised accumulation on the trainer; with
    `mini_batches` (a loss with in-batch negatives) fit its mini-batch instead (see `fit_mini_batch`). Without
    `enabled`, return the configured ones, marked not fitted."""
    args = trainer.args
    configured = BatchFit(args.per_device_train_batch_size, args.gradient_accumulation_steps, fitted=False)
    if not enabled:
        return configured
    device = args.device
    limit = reserve = None
    if device.type == "cuda":
        limit = int(MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory)
        # AdamW keeps two moments per trainable parameter, in the parameter's dtype; created at the first step.
        reserve = 2 * sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    states = _rng_states()
    trial = memory_trial(trainer, trainer.worst_case_batch)
    try:
        if mini_batches is not None:
            fit = fit_mini_batch(
                configured.per_device, configured.accumulation, trial, mini_batches, limit, reserve or 0
            )
        else:
            fit = fit_batch(configured.per_device, configured.accumulation, trial, limit, reserve or 0)
    finally:
        _restore(states)
    if mini_batches is not None:
        return _agree_on_mini_batch(fit, mini_batches, device)
    agreed = all_ranks(fit.per_device, "min", device)  # each rank fits its own device; all train alike
    if agreed != fit.per_device:
        total = configured.per_device * configured.accumulation
        fit = BatchFit(agreed, total // agreed, (*fit.tried, (agreed, "the smallest fit over all ranks")))
    args.per_device_train_batch_size, args.gradient_accumulation_steps = fit.per_device, fit.accumulation
    trainer._train_batch_size = args.train_batch_size  # the Trainer read it in __init__
    log.info("%s", fit.line)
    return fit


def _agree_on_mini_batch(fit: BatchFit, mini_batches: MiniBatches, device: torch.device) -> BatchFit:
    """Every rank embeds in the smallest mini-batch any rank fitted (one pass counts as the whole batch)."""
    mine = fit.mini_batch or fit.per_device
    agreed = all_ranks(mine, "min", device)
    if agreed != mine:
        mini_batches.use(agreed)
        fit = BatchFit(
            fit.per_device, fit.accumulation, (*fit.tried, (f"mini-batch {agreed}", "the smallest fit over all ranks")),
            mini_batch=agreed,
        )  # fmt: skip
    log.info("%s", fit.line)
    return fit
