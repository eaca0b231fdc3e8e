"""Linear warmup, then ReduceLROnPlateau on the validation loss: one schedule object for both stages.

It is the only writer of the optimizer's learning rates. The rate at optimizer step k is a function of
the configuration and k (nanoGPT's `get_lr(it)` habit) times one stored plateau scale:

    lr_g(k) = base_g · min(1, (k + 1) / warmup_steps)            while warming up
    lr_g(k) = max(min_lr, base_g · scale)                          after it

where `base_g` is each parameter group's rate from the current config and `scale` starts at 1 and is
multiplied by `factor` whenever the validation loss has not improved (relative `threshold`, as
`torch.optim.lr_scheduler.ReduceLROnPlateau` in "rel" mode) for more than `patience` evaluations.
A checkpoint stores the plateau state only (scale, best loss, evaluations without improvement), never
a rate: resuming with a new `learning_rate`, `min_lr` or plateau setting applies it at once.
transformers' own "reduce_lr_on_plateau" has no warmup (transformers' get_scheduler builds ReduceLROnPlateau without one); this combines the two.

A stage's Trainer gets it through `ScheduleMixin` (its settings from the `train` keys: `plateau_settings`),
which also keeps this run's configured rates on resume for transformers' own schedules.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer, TrainerCallback

from stagekit.stage_config import SharedTrainConfig

log = logging.getLogger(__name__)


class WarmupPlateauSchedule(LRScheduler):
    """See the module docstring. `observe(val_loss)` is called after each evaluation (by `PlateauStep`).

    Args:
        optimizer: its param groups' current `lr` are the base rates (read once, at construction).
        warmup_steps: optimizer steps of linear warmup; plateaus are judged only after them.
        factor: the scale's multiplier on a plateau, in (0, 1).
        patience: evaluations without improvement that are tolerated before the scale drops.
        threshold: relative improvement that counts (1e-3: the loss must fall below best·(1 − 1e-3)).
        min_lr: the floor after warmup, in the optimizer's units.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_steps: int,
        factor: float,
        patience: int,
        threshold: float,
        min_lr: float,
    ) -> None:
        self.configured = [float(group["lr"]) for group in optimizer.param_groups]
        self.warmup_steps, self.factor, self.patience = warmup_steps, factor, patience
        self.threshold, self.min_lr = threshold, min_lr
        self.scale, self.best, self.bad_evals = 1.0, math.inf, 0
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = max(self.last_epoch, 0)
        if step < self.warmup_steps:
            return [base * (step + 1) / self.warmup_steps for base in self.configured]
        return [max(self.min_lr, base * self.scale) for base in self.configured]

    def _apply(self) -> None:
        rates = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = lr
        self._last_lr = rates

    def observe(self, val_loss: float) -> bool:
        """Judge one evaluation; returns True when the rate was lowered. Ignored during warmup."""
        if self.last_epoch < self.warmup_steps or not math.isfinite(val_loss):
            return False
        if val_loss < self.best * (1 - self.threshold):
            self.best, self.bad_evals = val_loss, 0
            return False
        self.bad_evals += 1
        if self.bad_evals <= self.patience:
            return False
        self.bad_evals = 0
        if all(base * self.scale <= self.min_lr for base in self.configured):
            return False  # every group already sits at the floor
        self.scale *= self.factor
        self._apply()
        return True

    def state_dict(self) -> dict[str, Any]:
        # Plain numbers only: the Trainer reads scheduler.pt back with torch.load(weights_only=True).
        return {"last_epoch": self.last_epoch, "scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the plateau state and re-write every group's rate from the current config.

        The optimizer's state, loaded just before, carries the old run's rates; writing them here means
        the first resumed step already uses the rates this config asks for.
        """
        self.last_epoch = int(state_dict["last_epoch"])
        self.scale, self.best = float(state_dict["scale"]), float(state_dict["best"])
        self.bad_evals = int(state_dict["bad_evals"])
        self._apply()


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
