"""One training stage's lifecycle, the same for pretraining and fine-tuning: `run_stage(stage)`.

    process group → run-folder lock → checkpoint to resume → data (main process first) → resume checks →
    W&B → trainer → train → metrics (every rank) → export (main process) → wait for every rank

A stage supplies only what is its own (`Stage`): its data, its Trainer, its metrics and how its model folder
is written. Everything in between — which checkpoint a run continues and whether its settings allow it, the
number of processes, the out-of-memory message, the counters every run reports — is written here once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from transformers import Trainer

from stagekit.batch_fit import fit_trainer_batch
from stagekit.checkpoints import (
    STATE,
    check_resume_settings,
    check_world_size,
    choose_checkpoint,
    recorded_wandb_id,
)
from stagekit.config import renamed_keys, resumable_keys, to_dict
from stagekit.device import resolve_device
from stagekit.precision import run_precision
from stagekit.runlock import claim_run_folder
from stagekit.tracking import finish_run, trainer_report_to
from stagekit.training import advise_on_out_of_memory, setup_process, stop_reason

log = logging.getLogger(__name__)


class Stage(ABC):
    """The parts of one training stage. `cfg` is the stage's config (a RunConfig with `train`, `impl` and
    `wandb` sections: stagekit/stage_config.py)."""

    name: ClassVar[str]  # the W&B job type and the metrics' prefix in W&B
    unit: ClassVar[str]  # what a step consumes, counted over all ranks: "tokens" or "pairs"
    example: ClassVar[str]  # what one per-device batch holds: "blocks" or "pairs"
    implied_by_old_checkpoints: ClassVar[dict[str, Any]] = {}  # see stagekit/checkpoints.py check_resume_settings

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def prepare(self, world_size: int) -> None:
        """Read or build the data (the main process first, then the others: one cache build)."""

    def record(self) -> dict[str, Any]:
        """What each checkpoint records for a resume to be checked against (default: the config)."""
        return to_dict(self.cfg)

    def check_resume(self, checkpoint: str) -> None:  # noqa: B027 (optional: most stages need none)
        """Stage-specific refusals of a resume, after the shared ones."""

    @abstractmethod
    def build_trainer(self, report_to: list[str], fresh: bool) -> Trainer:
        """The Trainer; `fresh` is False when it will continue a checkpoint."""

    def before_training(self, trainer: Trainer, checkpoint: str | None) -> None:  # noqa: B027 (optional)
        """Work between building the trainer and training (e.g. the NLI head's warm start)."""

    @abstractmethod
    def probe_inputs(self, trainer: Trainer) -> Callable[[int], dict[str, Any]]:
        """n → a training batch of n examples as large as the data hold, for `impl.fit_batch`'s memory probe."""

    def training_context(self, checkpoint: str | None) -> contextlib.AbstractContextManager:
        """Around training and metrics: turns the stage's known failures into one-line errors."""
        return contextlib.nullcontext()

    @abstractmethod
    def stage_metrics(self, trainer: Trainer) -> dict[str, Any]:
        """The stage's own final metrics, computed on every rank (evaluations are collective)."""

    @abstractmethod
    def export(self, trainer: Trainer, metrics: dict[str, Any]) -> Path:
        """Write the final model folder (main process only, atomically); returns it."""


@dataclass
class StageResult:
    model_dir: Path
    metrics: dict[str, Any]
    trainer: Trainer


def run_stage(stage: Stage, resume: bool = False) -> StageResult:
    """Train `stage` on this process's rank and write its model folder from the main process.

    Raises UserError (one line) for a run folder in use or not writable, a refused resume (changed settings,
    another number of processes, a folder holding a run without `--resume`) and CUDA out of memory.
    """
    cfg, started = stage.cfg, time.perf_counter()
    device = resolve_device(cfg.impl.device)
    state = setup_process(device, cfg.impl.num_threads, cfg.train.seed)
    precision = run_precision(device, cfg.impl.precision)  # a precision the device lacks: refused before any data
    # Writable and not in use by another run, or refused before any data are read; held until the model is out.
    with claim_run_folder(cfg.run_dir, is_main=state.is_main_process, device=state.device):
        checkpoint = choose_checkpoint(cfg.run_dir, resume, is_main=state.is_main_process)
        state.wait_for_everyone()  # the main process may have removed a half-written checkpoint
        if checkpoint:
            check_world_size(checkpoint, state.num_processes)  # before the data: a cache may take minutes
        # One process per machine builds a cache, the others then read it; on storage the machines share, the
        # cache's build lock lets one build and the others find it (pretrain/blocks.py).
        with state.local_main_process_first():
            stage.prepare(state.num_processes)
        if checkpoint:
            schema = type(cfg)
            check_resume_settings(
                checkpoint,
                stage.record(),
                resumable_keys(schema),
                renamed_keys(schema),
                stage.implied_by_old_checkpoints,
                expanded=to_dict(cfg, expanded=True),
            )
            stage.check_resume(checkpoint)
        report_to = trainer_report_to(
            cfg.wandb,
            cfg.run_dir,
            to_dict(cfg),
            stage.name,
            is_main=state.is_main_process,
            resume_id=recorded_wandb_id(checkpoint),
        )
        trainer = stage.build_trainer(report_to, fresh=checkpoint is None)
        log.info("%s: %s", stage.name, starting_point(checkpoint, trainer.args.max_steps))
        stage.before_training(trainer, checkpoint)
        fitted = fit_trainer_batch(trainer, stage.probe_inputs(trainer), cfg.impl.fit_batch)
        batch = "train.per_device_train_batch_size"
        with (
            advise_on_out_of_memory(batch, fitted.per_device, fitted.accumulation, stage.example),
            stage.training_context(checkpoint),
        ):
            result = trainer.train(resume_from_checkpoint=checkpoint)
            metrics = run_metrics(trainer, stage.unit, result.training_loss) | stage.stage_metrics(trainer)
        metrics |= precision.as_metrics() | fitted.as_metrics()
        metrics["wall_time_s"] = time.perf_counter() - started
        model_dir = cfg.run_dir / "model"
        if trainer.is_world_process_zero():
            stage.export(trainer, metrics)
            finish_run({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            log.info("%s: model written to %s (%.1f min)", stage.name, model_dir, (time.perf_counter() - started) / 60)
        state.wait_for_everyone()
    return StageResult(model_dir, metrics, trainer)


def starting_point(checkpoint: str | Path | None, max_steps: int) -> str:
    """ "continuing from outputs/x/checkpoints/checkpoint-300 (step 300 of 2000)" or "starting at step 0 of
    2000"; without " of N" when `max_steps` is not positive (an epoch-bound run)."""
    of = f" of {max_steps}" if max_steps > 0 else ""
    if checkpoint is None:
        return f"starting at step 0{of}"
    return f"continuing from {checkpoint} (step {checkpoint_step(checkpoint)}{of})"


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a complete checkpoint was written at (its trainer_state.json)."""
    return int(json.loads((Path(checkpoint) / STATE).read_text())["global_step"])


def run_metrics(trainer: Trainer, unit: str, train_loss: float) -> dict[str, Any]:
    """What every stage reports under one name: steps, units seen and per second (the median logging
    window, over all ranks), processes, why it stopped, the mean training loss."""
    state = trainer.state
    rates = sorted(h[f"{unit}_per_s"] for h in state.log_history if f"{unit}_per_s" in h)
    return {
        "step": state.global_step,
        f"{unit}_seen": state.global_step * trainer.units_per_step,  # type: ignore[attr-defined]
        f"{unit}_per_s": rates[len(rates) // 2] if rates else math.nan,
        "processes": trainer.args.world_size,
        "stop_reason": stop_reason(trainer),
        "train_loss": train_loss,
    }
