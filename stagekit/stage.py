"""One training stage's lifecycle, the same for pretraining and fine-tuning: `run_stage(stage, resume)`, and the
command around it (`stage_command`: `python -m pretrain`, `python -m siamese`).

    process group → run-folder lock → what the folder asks for (start, continue its newest complete checkpoint,
    or nothing: its model is finished) → data (one process per machine first) → resume checks → W&B →
    trainer + the shared callbacks → train → metrics (every rank) → the model folder (main process, in one
    rename) → wait for every rank

A stage supplies only what is its own (`Stage`: data, Trainer, metrics, model files). Everything in between —
which checkpoint a run continues and whether its settings allow it, the number of processes, the lock, the
out-of-memory message, the counters every run reports and every file beside the weights (resolved_config.yaml,
metrics.json, run_info.json) — is written here once.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import transformers
from transformers import Trainer

from stagekit.batch_fit import BatchFit, MiniBatches, advise_on_out_of_memory, fit_trainer_batch
from stagekit.callbacks import add_stage_callbacks, stop_reason
from stagekit.cli import config_parser, parse_config, run_cli
from stagekit.config import renamed_keys, resumable_keys, save_config, to_dict
from stagekit.device import resolve_device, run_precision
from stagekit.distributed import setup_process
from stagekit.folders import atomic_dir, claim_run_folder
from stagekit.model_card import describe_hardware
from stagekit.push import pushed_when_done
from stagekit.resume import (
    BASE_MODEL,
    STATE,
    FinishedModel,
    check_resume_settings,
    check_world_size,
    choose_checkpoint,
    finished_model,
    keep_previous_model,
    model_identity,
    recorded_wandb_id,
    resumes_after_restart,
    set_aside_checkpoints,
    stale_checkpoint,
)
from stagekit.variables import portable
from stagekit.wandb_tracking import add_checkpoint_artifacts, describe, finish_run, log_model, trainer_report_to

log = logging.getLogger(__name__)

MODEL = "model"  # the final model folder inside the run folder
METRICS, RUN_INFO, RESOLVED_CONFIG = "metrics.json", "run_info.json", "resolved_config.yaml"


class StageTrainer(Protocol):
    """What `run_stage` needs of the Trainer a stage builds, beyond transformers' `Trainer` it is: how much one
    optimizer step trains on, and the batch `impl.fit_batch` tries memory on (stagekit/batch_fit.py). Both stages'
    trainers get the first two from stagekit/callbacks.py `ThroughputMixin`."""

    units_per_step: float  # `throughput_unit`s per optimizer step over all ranks (tokens, pairs)
    throughput_unit: str  # what `<unit>_seen` and `<unit>_per_s` count

    def worst_case_batch(self, n: int) -> dict[str, Any]:
        """`n` training examples as long as the run can see, collated: the most memory a batch of `n` takes."""
        ...


class Stage(ABC):
    """The parts of one training stage. `cfg` is the stage's config (a RunConfig with `train`, `impl` and
    `wandb` sections: stagekit/stage_config.py). The Trainer it builds is a `StageTrainer`."""

    name: ClassVar[str]  # the W&B job type, the log prefix and the metrics' prefix in W&B
    example: ClassVar[str]  # what one per-device batch holds ("blocks", "pairs"): the out-of-memory message
    config_class: ClassVar[type]  # the stage's config schema, read by its command (`stage_main`)
    prog: ClassVar[str]  # the command as --help shows it ("python -m pretrain")
    description: ClassVar[str]  # what --help says the command does, in whole sentences

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def prepare(self, world_size: int) -> dict[str, Any]:
        """Read or build the data (the main process of each machine first, then the others: one cache build).
        Returns what each checkpoint records about the data beyond the config (e.g. a cache key), checked on
        resume like a config key."""

    @abstractmethod
    def build_trainer(self, report_to: list[str], checkpoint: str | None) -> Trainer:
        """The Trainer (a `StageTrainer`), ready to train; `checkpoint` is the one it will continue (None: a fresh
        run). Raises a one-line UserError for a checkpoint this stage cannot continue."""

    @abstractmethod
    def metrics(self, trainer: Trainer) -> dict[str, Any]:
        """The stage's own final metrics, computed on every rank (evaluations are collective)."""

    @abstractmethod
    def save_model(self, trainer: Trainer, folder: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write the model's own files into `folder` (a temporary folder renamed into place afterwards; main
        process only). It may add to `metrics`; returns what run_info.json holds for this stage."""

    def base_model(self) -> str | None:
        """The model this stage starts from (a folder or Hub id), or None when it starts from random weights. A
        base that changed since a checkpoint or the model was trained from it is trained from again
        (stagekit/resume.py `model_identity`)."""
        return None

    def mini_batches(self, trainer: Trainer) -> MiniBatches | None:
        """For a loss that ranks within the batch: how it embeds the batch in mini-batches, so that `impl.fit_batch`
        fits the loss's mini-batch instead of cutting the batch's negatives (and the out-of-memory line names its
        key). None (the default): the loss is a mean over independent examples."""
        return None

    def model_card(self, folder: Path, final: Path) -> None:  # noqa: B027 (optional: a folder may go without)
        """Write the model card (README.md) into `folder` from the files there, run_stage's included; `final` is
        where the folder will live."""

    def summary(self, result: StageResult) -> str | None:
        """What the command prints once a model is trained (main process), or None: nothing."""
        return None


@dataclass
class StageResult:
    """What both stages' `main` returns: the model folder, its metrics, the Trainer (None when the model was
    finished already and nothing trained) and whether this process is the main one (it alone writes)."""

    model_dir: Path
    metrics: dict[str, Any]
    trainer: Trainer | None
    is_main: bool

    @property
    def trained(self) -> bool:
        return self.trainer is not None


def run_stage(stage: Stage, resume: bool = False) -> StageResult:
    """Train `stage` on this process's rank and write its model folder from the main process.

    Without `resume`, a run folder that holds a run already is refused. With it, the run continues from its
    newest complete checkpoint; a finished model (one whose recorded config asks for no fewer steps or minutes
    than this one: stagekit/resume.py) is left as it is and returned without training. A model or checkpoint
    trained from another base model than the stage's now (`Stage.base_model`) is neither: the checkpoints move
    aside and training starts at step 0. A model that is trained on is replaced; the previous one moves aside
    with whatever was added to it (an evaluation).

    Raises UserError (one line) for a run folder in use or not writable, a refused resume (changed settings,
    another number of processes, a folder holding a run without `resume`) and CUDA out of memory.
    """
    cfg, started = stage.cfg, time.perf_counter()
    device = resolve_device(cfg.impl.device)
    state = setup_process(device, cfg.impl.num_threads, cfg.train.seed)
    precision = run_precision(device, cfg.impl.precision)  # a precision the device lacks: refused before any data
    model_dir = cfg.run_dir / MODEL
    # Writable and not in use by another run, or refused before any data are read; held until the model is out.
    with claim_run_folder(cfg.run_dir, is_main=state.is_main_process, device=state.device):
        resume = resume or resumes_after_restart(cfg.run_dir)  # torchrun re-ran the command line as it was
        base = model_identity(stage.base_model(), cfg.run_dir)  # recorded in checkpoints and run_info.json
        finished = finished_model(model_dir, cfg, base) if resume else None
        if finished is not None:
            log.info("%s: %s", stage.name, finished.line)
            return StageResult(model_dir, finished.metrics, None, state.is_main_process)
        checkpoint = checkpoint_to_continue(stage, state, resume, base)
        record = prepared_record(stage, state, checkpoint, base)
        trainer = ready_trainer(stage, state, checkpoint, record)
        metrics, fitted = train(stage, trainer, checkpoint)
        metrics |= precision.as_metrics() | fitted.as_metrics()
        metrics["wall_time_s"] = time.perf_counter() - started
        if trainer.is_world_process_zero():
            write_outputs(stage, trainer, model_dir, metrics, base)
            log.info("%s: model written to %s (%.1f min)", stage.name, model_dir, (time.perf_counter() - started) / 60)
        state.wait_for_everyone()
    return StageResult(model_dir, metrics, trainer, state.is_main_process)


def checkpoint_to_continue(stage: Stage, state: Any, resume: bool, base: dict[str, Any] | None) -> str | None:
    """The checkpoint this run continues (None: step 0), agreed by every rank (`state`: accelerate's
    PartialState): the newest complete one with `resume`, unless it was trained from another base model than
    `base` (then the checkpoints move aside); refused on another number of processes than it was trained on."""
    checkpoint = choose_checkpoint(stage.cfg.run_dir, resume, is_main=state.is_main_process)
    stale = stale_checkpoint(checkpoint, base)  # read by every rank before the main process moves it
    state.wait_for_everyone()  # the main process may have removed a half-written checkpoint
    if stale:  # trained from another base model: never continued
        log.warning("%s: %s", stage.name, stale)
        if state.is_main_process:
            set_aside_checkpoints(checkpoint)
        checkpoint = None
        state.wait_for_everyone()
    if checkpoint:
        check_world_size(checkpoint, state.num_processes)  # before the data: a cache may take minutes
    return checkpoint


def prepared_record(stage: Stage, state: Any, checkpoint: str | None, base: dict[str, Any] | None) -> dict[str, Any]:
    """`Stage.prepare` (the main process of each machine first), then what every checkpoint records: the config,
    the data's own record and the base model; checked against `checkpoint`'s (a refused resume: ConfigError)."""
    cfg = stage.cfg
    # One process per machine builds a cache, the others then read it; on storage the machines share, the
    # cache's build lock lets one build and the others find it (pretrain/blocks.py).
    with state.local_main_process_first():
        record = to_dict(cfg) | stage.prepare(state.num_processes) | ({BASE_MODEL: base} if base else {})
    schema = type(cfg)
    if checkpoint:
        check_resume_settings(
            checkpoint,
            record,
            resumable_keys(schema),
            renamed_keys(schema),
            schema.implied_by_old_checkpoints,
            expanded=to_dict(cfg, expanded=True),
        )
    return record


def ready_trainer(stage: Stage, state: Any, checkpoint: str | None, record: dict[str, Any]) -> Trainer:
    """W&B (or nothing), then the stage's Trainer with the callbacks every stage trains with: `record` written
    into each checkpoint, the stops, the schedule's step, checkpoints as W&B artifacts."""
    cfg = stage.cfg
    report_to = trainer_report_to(
        cfg.wandb,
        cfg.run_dir,
        to_dict(cfg),
        stage.name,
        is_main=state.is_main_process,
        resume_id=recorded_wandb_id(checkpoint),
    )
    log.info("%s: %s", stage.name, starting_point(checkpoint, cfg.train.max_steps or 0))
    trainer = stage.build_trainer(report_to, checkpoint)
    add_stage_callbacks(trainer, cfg.train, record)
    add_checkpoint_artifacts(trainer, cfg.wandb.log_model, cfg.run_dir.name, stage.name)
    return trainer


def train(stage: Stage, trainer: Any, checkpoint: str | None) -> tuple[dict[str, Any], BatchFit]:
    """`impl.fit_batch`'s fit, then training from `checkpoint` (None: step 0); returns the metrics, computed on
    every rank (`run_metrics` and the stage's own), and the batch it trained with. CUDA out of memory is one line
    (UserError) saying which key to lower."""
    mini_batches = stage.mini_batches(trainer)
    fitted = fit_trainer_batch(trainer, stage.cfg.impl.fit_batch, mini_batches)
    with advise_on_out_of_memory(
        "train.per_device_train_batch_size",
        fitted.per_device,
        fitted.accumulation,
        stage.example,
        mini_batches.key if mini_batches else None,
    ):
        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = run_metrics(trainer, result.training_loss) | stage.metrics(trainer)
    return metrics, fitted


def write_outputs(
    stage: Stage, trainer: Trainer, model_dir: Path, metrics: dict[str, Any], base: dict[str, Any] | None
) -> None:
    """The main process's part at the end: the model folder, its W&B artifact, the run's final figures."""
    cfg = stage.cfg
    write_model_folder(stage, trainer, model_dir, metrics, base)
    log_model(model_dir, cfg.run_dir.name, cfg.wandb.log_model, {"stage": stage.name} | describe(metrics))
    finish_run({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})


def write_model_folder(
    stage: Stage, trainer: Trainer, model_dir: Path, metrics: dict[str, Any], base: dict[str, Any] | None = None
) -> None:
    """The model folder in one rename: the stage's files, then resolved_config.yaml, metrics.json and
    run_info.json (with `base`, the base model's `model_identity`). A model already there (a finished run trained
    on) moves aside, with its evaluation, just before the new one takes its place. What may leave this machine
    names no path outside the data and output folders (stagekit/variables.py `portable`)."""
    run_dir = stage.cfg.run_dir
    with atomic_dir(model_dir) as tmp:
        info = stage.save_model(trainer, tmp, metrics) | ({BASE_MODEL: base} if base else {})
        save_config(stage.cfg, tmp / RESOLVED_CONFIG, run_dir)
        (tmp / METRICS).write_text(json.dumps(portable(metrics, run_dir), indent=2))
        (tmp / RUN_INFO).write_text(json.dumps(portable(run_info(stage, trainer, metrics) | info, run_dir), indent=2))
        stage.model_card(tmp, model_dir)
        keep_previous_model(model_dir)


def run_info(stage: Stage, trainer: Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """How the model was made, for the model card and the app: stage, software, device, processes, time."""
    device = trainer.args.device.type
    return {
        "stage": stage.name,
        "step": metrics.get("step"),
        "wall_time_s": metrics.get("wall_time_s"),
        "device": device,
        "hardware": describe_hardware(device, trainer.args.world_size),
        "processes": trainer.args.world_size,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


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


def run_metrics(trainer: Any, train_loss: float) -> dict[str, Any]:
    """What every stage reports under one name from its `StageTrainer`: steps, units seen and per second (the
    median logging window, over all ranks), processes, why it stopped, the mean training loss."""
    state, unit = trainer.state, trainer.throughput_unit
    rates = sorted(h[f"{unit}_per_s"] for h in state.log_history if f"{unit}_per_s" in h)
    return {
        "step": state.global_step,
        f"{unit}_seen": state.global_step * trainer.units_per_step,
        f"{unit}_per_s": rates[len(rates) // 2] if rates else math.nan,
        "processes": trainer.args.world_size,
        "stop_reason": stop_reason(trainer),
        "train_loss": train_loss,
    }


def stage_main(stage_class: type[Stage], argv: Sequence[str] | None = None) -> StageResult:
    """A stage's command: `--config FILE [--resume] [--push-to-hub REPO] [key=value ...]` read and checked before
    any work (stagekit/cli.py), `run_stage` (the model folder pushed after it when asked: stagekit/push.py), then
    the stage's summary when a model was trained. Raises UserError (one line) for what either refuses."""
    schema = stage_class.config_class
    parser = config_parser(stage_class.prog, stage_class.description, schema)
    cfg, args = parse_config(parser, schema, argv)  # fails in one line before any work
    stage = stage_class(cfg)
    with pushed_when_done(args.push_to_hub, cfg.run_dir / MODEL, args.hub_private):  # checked now, pushed after
        result = run_stage(stage, resume=args.resume)
    if result.trained and result.is_main and (text := stage.summary(result)):
        print(text)
    return result


def stage_command(
    stage_class: type[Stage],
) -> tuple[Callable[[Sequence[str] | None], StageResult], Callable[[], None]]:
    """`main(argv)` (`stage_main` of `stage_class`, what tests and the pipeline call) and `cli()` (the console
    script: `main` under `run_cli`, its one-line errors and exit status) of a stage's `python -m` command."""

    def main(argv: Sequence[str] | None = None) -> StageResult:
        return stage_main(stage_class, argv)

    def cli() -> None:
        sys.exit(run_cli(main))

    return main, cli


__all__ = [
    "FinishedModel",
    "Stage",
    "StageResult",
    "StageTrainer",
    "run_stage",
    "stage_command",
    "stage_main",
    "starting_point",
]
