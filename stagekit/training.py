"""What both stages add to transformers' Trainer, written once: the TrainingArguments built from the shared
`train` / `impl` keys, the stop decisions (NaN/inf, time budget), warmup → plateau scheduling, a progress
bar that knows the time budget, throughput logging and the out-of-memory message.

Every stop decision is the same on all ranks, so no process leaves the others waiting in an
all-reduce: the NaN check reads the loss the Trainer has already averaged over all processes at a
logging step, and the time budget is agreed with one all-reduce at logging steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from stagekit.checkpoints import SaveRunConfig, newest_checkpoint
from stagekit.distributed import any_rank
from stagekit.errors import UserError
from stagekit.precision import run_precision, skipped_by_loss_scaler
from stagekit.schedule import WarmupPlateauSchedule
from stagekit.stage_config import SharedTrainConfig
from stagekit.variables import as_written

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


def on_eval_grid(args, state) -> bool:
    """True for the evaluations every `eval_steps` steps, False for extra ones (at the end of a run, on a
    time-budget stop, on request). Only the grid's evaluations move the schedule and early stopping, so a
    run stopped and resumed takes the same decisions as one that never stopped."""
    return args.eval_steps is not None and state.global_step % int(args.eval_steps) == 0


class PlateauStep(TrainerCallback):
    """Feed each scheduled evaluation's loss to the warmup → plateau schedule (the Trainer only does this
    for torch's own ReduceLROnPlateau). The loss is gathered over all ranks, so every rank lowers alike."""

    def __init__(self, metric: str = "eval_loss") -> None:
        self.metric = metric

    def on_evaluate(self, args, state, control, metrics=None, lr_scheduler=None, **kwargs):
        if not on_eval_grid(args, state):
            return
        if isinstance(lr_scheduler, WarmupPlateauSchedule) and metrics and self.metric in metrics:
            if lr_scheduler.observe(float(metrics[self.metric])):
                log.info("validation loss stalled: learning rate lowered to %.2e", lr_scheduler.get_last_lr()[0])


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


class ScheduleMixin:
    """The learning-rate schedule both stages share. Mix in before the Trainer class.

    - With `plateau` set (WarmupPlateauSchedule's keyword arguments), that schedule replaces the Trainer's.
    - On resume, the rates come from this run's config, not the checkpoint: the Trainer restores the
      optimizer's and scheduler's saved rates, and a changed `learning_rate` would silently lose. The
      warmup → plateau schedule re-derives its rates itself; transformers' own schedules (LambdaLR) get
      their base rates put back here.
    """

    def __init__(self, *args: Any, plateau: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.plateau = plateau
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None and self.plateau is not None:
            self.lr_scheduler = WarmupPlateauSchedule(optimizer or self.optimizer, **self.plateau)
            self._created_lr_scheduler = True
        return Trainer.create_scheduler(self, num_training_steps, optimizer)  # type: ignore[arg-type]

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        schedule = self.lr_scheduler
        configured = list(getattr(schedule, "base_lrs", []))
        Trainer._load_optimizer_and_scheduler(self, checkpoint)  # type: ignore[arg-type]
        if checkpoint and isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            schedule.base_lrs = configured
            rates = [base * f(schedule.last_epoch) for f, base in zip(schedule.lr_lambdas, configured, strict=True)]
            for group, lr in zip(schedule.optimizer.param_groups, rates, strict=True):
                group["lr"] = lr
            schedule._last_lr = rates


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


def training_arguments(
    arguments_class: type, cfg: Any, device: str, report_to: list[str], **stage_arguments: Any
) -> Any:
    """`arguments_class` (TrainingArguments or SentenceTransformerTrainingArguments) from a stage config's
    shared `train` / `impl` keys (stagekit/stage_config.py); `stage_arguments` add or replace the stage's own.

    With train.lr_scheduler_type=reduce_lr_on_plateau the Trainer runs a constant schedule that
    `ScheduleMixin` replaces by stagekit/schedule.py's warmup → plateau (`plateau_settings`).
    """
    t, impl = cfg.train, cfg.impl
    arguments: dict[str, Any] = {
        "output_dir": str(cfg.run_dir / "checkpoints"),
        "run_name": as_written(cfg.wandb.run_name or cfg.run_name),  # W&B's config logs it: `${VAR}`s as written
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.eval_batch_size(),
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,  # the Trainer exempts biases and LayerNorm weights
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "max_grad_norm": t.max_grad_norm,
        "optim": "adamw_torch_fused" if device == "cuda" else "adamw_torch",
        "warmup_steps": 0 if t.plateau else t.warmup_step_count(),
        "lr_scheduler_type": "constant" if t.plateau else t.lr_scheduler_type,
        "logging_steps": t.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": t.eval_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "dataloader_num_workers": impl.dataloader_num_workers,
        "dataloader_pin_memory": impl.dataloader_pin_memory and device == "cuda",
        "seed": t.seed,
        "use_cpu": device == "cpu",
        **run_precision(device, impl.precision).trainer_flags(),
        "report_to": report_to,
        "logging_nan_inf_filter": False,  # StopOnNonFiniteLoss must see a NaN, not the running mean
        "logging_first_step": True,
        "ddp_find_unused_parameters": False,
        "log_on_each_node": False,  # on several machines, the Trainer's logs too come from global rank 0 only
        # Each rank reads its own rows; dispatching would concatenate batches padded to different lengths.
        "accelerator_config": {"dispatch_batches": False},
        "disable_tqdm": False,
    }
    return arguments_class(**(arguments | stage_arguments))


def plateau_settings(t: SharedTrainConfig) -> dict[str, Any] | None:
    """WarmupPlateauSchedule's keyword arguments for train.lr_scheduler_type=reduce_lr_on_plateau, else None."""
    if not t.plateau:
        return None
    return {
        "warmup_steps": t.warmup_step_count(),
        "factor": t.plateau_factor,
        "patience": t.plateau_patience,
        "threshold": t.plateau_threshold,
        "min_lr": t.min_lr,
    }


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


def stop_reason(trainer: Trainer) -> str:
    """Why training ended: max_steps, the time budget, or early stopping."""
    if trainer.state.global_step >= trainer.state.max_steps:
        return "max_steps"
    budget = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TimeBudget)), None)
    if budget is not None and budget.stopped_training:
        return f"time budget train.max_train_minutes={budget.minutes:g}"
    return "early stop: validation loss stopped improving"


def setup_process(device: str, num_threads: int | None, seed: int):
    """Join the process group torchrun / accelerate launch set up (if any); set torch's CPU threads (null:
    torch's default) and the seed model initialisation draws from. Returns accelerate's PartialState.

    `cpu=True` matters: without it accelerate treats CPU processes as unrelated single runs, and every rank
    would think it is the main one (two cache builds, two final models). Under torchrun the group is joined on
    this attempt's own store keys first (`stagekit.elastic.join_process_group`: a restarted group forms again).
    """
    from accelerate import PartialState
    from transformers import set_seed

    from stagekit.elastic import join_process_group

    join_process_group(device)
    state = PartialState(cpu=device == "cpu")
    if not state.is_main_process:  # logs come from global rank 0; warnings and errors from every rank
        logging.getLogger().setLevel(logging.WARNING)
    if num_threads:
        torch.set_num_threads(num_threads)
    set_seed(seed)
    return state
