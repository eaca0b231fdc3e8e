"""What any training run here is assembled from (both stages, and the cross-encoder probe): the process it
runs in, the TrainingArguments built from the shared `train` / `impl` keys, the Trainer mixins (warmup →
plateau scheduling, throughput logging: what a stage's trainer needs for stagekit/stage.py `StageTrainer`) and
the callbacks every stage adds (stagekit/callbacks.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from stagekit.callbacks import StopOnNonFiniteLoss, TimeBudget, TimeCappedProgress
from stagekit.checkpoints import SaveRunConfig
from stagekit.device import run_precision
from stagekit.schedule import PlateauStep, WarmupPlateauSchedule
from stagekit.stage_config import SharedTrainConfig
from stagekit.variables import as_written

log = logging.getLogger(__name__)


def setup_process(device: str, num_threads: int | None, seed: int):
    """Join the process group torchrun / accelerate launch set up (if any); set torch's CPU threads (null:
    torch's default) and the seed model initialisation draws from. Returns accelerate's PartialState.

    `cpu=True` matters: without it accelerate treats CPU processes as unrelated single runs, and every rank
    would think it is the main one (two cache builds, two final models). Under torchrun the group is joined on
    this attempt's own store keys first (stagekit/distributed.py `join_process_group`: a restarted group forms again).
    """
    from accelerate import PartialState
    from transformers import set_seed

    from stagekit.distributed import join_process_group

    join_process_group(device)
    state = PartialState(cpu=device == "cpu")
    if not state.is_main_process:  # logs come from global rank 0; warnings and errors from every rank
        logging.getLogger().setLevel(logging.WARNING)
    if num_threads:
        torch.set_num_threads(num_threads)
    set_seed(seed)
    return state


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
