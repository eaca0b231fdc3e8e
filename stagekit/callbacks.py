"""The callbacks every stage trains with, written once and added by `add_stage_callbacks`: the NaN/inf stop,
the time budget and a progress bar that counts to where it ends, early stopping on the evaluation grid, why a
run stopped, and the step clock behind `ThroughputMixin`'s tokens/s or pairs/s.

Every stop decision is the same on all ranks, so no process leaves the others waiting in an all-reduce: the
NaN check reads the loss the Trainer has already averaged over all processes at a logging step, and the time
budget is agreed with one all-reduce at logging steps (stagekit/distributed.py).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from stagekit.device import skipped_by_loss_scaler
from stagekit.distributed import any_rank
from stagekit.errors import UserError
from stagekit.resume import SaveRunConfig, newest_checkpoint
from stagekit.schedule import PlateauStep, on_eval_grid
from stagekit.stage_config import SharedTrainConfig

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The training loss or the gradient norm became NaN or infinite."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Raise `TrainingDiverged` at the first logging step whose loss or gradient norm is NaN/inf.

    Needs `logging_nan_inf_filter=False` (else the Trainer hides a NaN behind the running mean). A step
    that saves or evaluates also logs, so no checkpoint is written after a NaN went unnoticed: the newest
    checkpoint is the last good one. One NaN step poisons the weights, so the last step's gradient norm is
    NaN too, whichever step of the window went wrong.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_evaluate:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        bad = [k for k in ("loss", "grad_norm") if k in logs and not math.isfinite(float(logs[k]))]
        bad = [k for k in bad if not skipped_by_loss_scaler(k, kwargs.get("optimizer"))]  # fp16's skipped steps
        if bad:
            last = newest_checkpoint(args.output_dir)
            raise TrainingDiverged(
                f"training diverged: {bad[0]} became {logs[bad[0]]} by step {state.global_step}; the last good "
                f"checkpoint is {last or '(none saved yet)'}. Lower train.learning_rate (or raise train.warmup_steps), "
                "then rerun with --resume: the new learning rate applies from that checkpoint on"
            )


class TimeBudget(TrainerCallback, ExportableState):
    """Stop, evaluate and save once `minutes` of training have passed (a cap for slow or busy machines).

    The time spent is kept in the checkpoint (an ExportableState), so a resumed run spends only what is
    left. Checked at logging steps, where the ranks agree with one all-reduce: a rank stopping alone
    would leave the others waiting forever.
    """

    def __init__(self, minutes: float, spent_seconds: float = 0.0) -> None:
        self.minutes, self.spent_seconds = minutes, spent_seconds
        self._since = time.monotonic()
        self.stopped_training = False  # this budget ended the run (not max_steps or early stopping)

    def _elapsed(self) -> float:
        return self.spent_seconds + time.monotonic() - self._since

    def remaining_seconds(self) -> float:
        return max(0.0, 60 * self.minutes - self._elapsed())

    def on_train_begin(self, args, state, control, **kwargs):
        self._since = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.logging_steps != 0 or control.should_training_stop:
            return control
        if any_rank(self._elapsed() > 60 * self.minutes, args.device):
            log.warning("time budget of %g min spent at step %d: stopping", self.minutes, state.global_step)
            self.stopped_training = True
            control.should_training_stop = True
            control.should_save = control.should_log = True
            control.should_evaluate = args.eval_strategy != "no"
        return control

    def state(self) -> dict[str, Any]:
        return {"args": {"minutes": self.minutes}, "attributes": {"spent_seconds": self._elapsed()}}


class GridEarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping, counting only the scheduled evaluations (see `on_eval_grid`)."""

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if on_eval_grid(args, state):
            super().on_evaluate(args, state, control, metrics, **kwargs)


class TimeCappedProgress(ProgressCallback):
    """transformers' progress bar, with the steps a time budget leaves as its total: a 3,000-step run that
    the budget ends near step 1,100 shows ~1,100 and the time left to the cap, not 3,000 and "33:00".

    The total is re-estimated from this process's seconds per step (evaluation and saving included, as they
    spend the same budget), so it settles within a few logging intervals.
    """

    def __init__(self, budget: TimeBudget) -> None:
        super().__init__()
        self.budget = budget

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self._start_step, self._start = state.global_step, time.monotonic()
        if self.training_bar is not None:
            self.training_bar.set_description(f"time budget {self.budget.minutes:g} min")

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        done = state.global_step - self._start_step
        if self.training_bar is None or done < 1:
            return
        per_step = (time.monotonic() - self._start) / done
        projected = state.global_step + int(self.budget.remaining_seconds() / per_step)
        # The budget is checked at logging steps only, so training goes on to the next one after it is spent.
        every = max(1, int(getattr(args, "logging_steps", 1) or 1))
        projected = -(-max(projected, state.global_step) // every) * every
        total = max(state.global_step, min(state.max_steps, projected))
        if abs(total - (self.training_bar.total or 0)) > 0.01 * total:
            self.training_bar.total = total
            self.training_bar.refresh()


def stop_reason(trainer: Trainer) -> str:
    """Why training ended: max_steps, the time budget, or early stopping."""
    if trainer.state.global_step >= trainer.state.max_steps:
        return "max_steps"
    budget = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TimeBudget)), None)
    if budget is not None and budget.stopped_training:
        return f"time budget train.max_train_minutes={budget.minutes:g}"
    return "early stop: validation loss stopped improving"


class StepClock(TrainerCallback):
    """Seconds spent on training steps (fetching batches included; evaluation and saving not)."""

    def __init__(self) -> None:
        self.mark, self.seconds, self.steps = time.perf_counter(), 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds, self.steps, self.mark = self.seconds + now - self.mark, self.steps + 1, now

    def on_evaluate(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def take(self) -> tuple[int, float]:
        steps, seconds = self.steps, self.seconds
        self.steps, self.seconds = 0, 0.0
        return steps, seconds


class ThroughputMixin:
    """Add `<unit>_per_s`, counted over all ranks, to every training log (tokens for pretraining, pairs for
    fine-tuning): `units_per_step` is per optimizer step over all ranks."""

    def __init__(self, *args: Any, units_per_step: float = 0.0, throughput_unit: str = "tokens", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.units_per_step, self.throughput_unit = units_per_step, throughput_unit
        self.step_clock = StepClock()
        self.add_callback(self.step_clock)  # type: ignore[attr-defined]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.units_per_step:
            steps, seconds = self.step_clock.take()
            if steps and seconds > 0:
                logs = {**logs, f"{self.throughput_unit}_per_s": steps * self.units_per_step / seconds}
        return super().log(logs, start_time)  # type: ignore[misc]


def add_stage_callbacks(trainer: Trainer, t: SharedTrainConfig, record: dict[str, Any]) -> None:
    """What every stage trains with, added to `trainer` (stagekit/stage.py `run_stage`): `record` written into
    each checkpoint (`SaveRunConfig`), the NaN/inf stop, the plateau step, and the time budget with a progress
    bar that counts to where the budget ends."""
    trainer.add_callback(SaveRunConfig(record))
    trainer.add_callback(StopOnNonFiniteLoss())
    if t.plateau:
        trainer.add_callback(PlateauStep())
    if t.max_train_minutes:
        budget = TimeBudget(t.max_train_minutes)
        trainer.add_callback(budget)
        bars = [c for c in trainer.callback_handler.callbacks if type(c) is ProgressCallback]
        if bars:  # not in notebooks, whose bar is another class
            trainer.remove_callback(bars[0])
            trainer.add_callback(TimeCappedProgress(budget))
