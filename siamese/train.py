"""Fine-tune a pretrained BERT as a Siamese sentence encoder on NLI: `python -m siamese --config ...`.

Reads top to bottom: config → model + loss → streamed data → trainer → final folder. The final folder
(`outputs/<run_name>/model/`) is written atomically and holds the SentenceTransformer, the NLI head,
`resolved_config.yaml`, `run_info.json` and `metrics.json`, so evaluation and the app need nothing else.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from sentence_transformers import SentenceTransformerTrainingArguments

from common.atomic import atomic_dir
from common.batch_fit import fit_trainer_batch, longest_pairs
from common.checkpoints import (
    SaveRunConfig,
    check_resume_settings,
    check_world_size,
    choose_checkpoint,
    read_run_config,
    recorded_wandb_id,
)
from common.cli import config_parser, parse_config
from common.config import REPO_ROOT, save_config, to_dict
from common.device import resolve_device
from common.errors import ConfigError, UserError
from common.precision import run_precision
from common.runlock import claim_run_folder
from common.tracking import finish_run, trainer_report_to
from common.training import (
    PlateauStep,
    StopOnNonFiniteLoss,
    TimeBudget,
    advise_on_out_of_memory,
    setup_process,
    shared_arguments,
)
from siamese import model as siamese_model
from siamese.calibrate import calibrate
from siamese.config import RESUMABLE_KEYS, SiameseConfig
from siamese.encoder import save_head
from siamese.head_init import WarmStart, warm_start_head
from siamese.nli_data import (
    RowCounts,
    _Triplets,
    first_pairs,
    preview_row,
    read_pairs,
    reading,
    source_name,
    train_stream,
)
from siamese.postprocess import Decision, SimilarityReference, save_postprocessing
from siamese.trainer import BEST_NLI_METRIC, EVAL_NAME, NLIAccuracyEvaluator, SiameseTrainer, refusing_unsafe_pickles

log = logging.getLogger(__name__)
DEFAULT_CONFIG = REPO_ROOT / "configs" / "siamese" / "cpu-small.yaml"


def training_arguments(
    cfg: SiameseConfig,
    checkpoints: Path,
    device: str,
    report_to: list[str],
    head_pattern: str | None = None,
    best_metric: str | None = None,
) -> Any:
    """SentenceTransformerTrainingArguments from the config. `head_pattern` (the NLI head's parameter names,
    `siamese.model.head_parameter_pattern`) gets `train.head_learning_rate` in its own parameter groups;
    `best_metric` is the eval metric `train.select_best` keeps the best checkpoint by (an accuracy is
    maximised, a loss minimised)."""
    t, impl = cfg.train, cfg.impl
    plateau = t.lr_scheduler == "reduce_lr_on_plateau"  # then common.schedule's warmup → plateau replaces it
    evaluate = cfg.data.eval_pairs > 0
    head_rate = {head_pattern: t.head_learning_rate} if head_pattern and t.head_learning_rate is not None else {}
    select = t.select_best and evaluate and best_metric is not None
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        run_name=cfg.wandb.run_name or cfg.run_name,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm,
        warmup_steps=0 if plateau else t.warmup_step_count(),
        lr_scheduler_type="constant" if plateau else t.lr_scheduler,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        learning_rate_mapping=head_rate,
        load_best_model_at_end=select,
        metric_for_best_model=best_metric if select else None,
        greater_is_better=not best_metric.endswith("loss") if select else None,
        dataloader_num_workers=impl.dataloader_num_workers,
        dataloader_pin_memory=impl.dataloader_pin_memory and device == "cuda",
        **shared_arguments(device=device, seed=t.seed, report_to=report_to, precision=impl.precision),
    )


def eval_data(cfg: SiameseConfig, counts: RowCounts) -> tuple[dict[str, list] | None, Dataset | None]:
    """Held-out pairs (first eval source) as lists for the accuracy evaluator and as the eval-loss set."""
    if cfg.data.eval_pairs == 0 or not cfg.data.eval_sources:
        return None, None
    pairs = read_pairs(cfg.data.eval_sources[0], cfg.data.eval_pairs, counts)
    if cfg.loss.name == "mnrl":
        triplets = _Triplets(cfg.data.triplet_window, RowCounts().array("eval"))(pairs)
        if not triplets["anchor"]:
            raise UserError(
                f"{source_name(cfg.data.eval_sources[0])}: no premise with both an entailment "
                "and a contradiction among the eval pairs; raise data.eval_pairs"
            )
        return pairs, Dataset.from_dict(triplets)
    return pairs, Dataset.from_dict(pairs)


def fit(cfg: SiameseConfig, *, resume: bool = False, pairs: list[IterableDataset] | None = None) -> Path:
    """Train on every rank and write `outputs/<run_name>/model/` (main process); `pairs` replaces the
    configured sources (tests)."""
    started = time.time()
    state = setup_process(resolve_device(cfg.impl.device), cfg.impl.num_threads, cfg.train.seed)
    # Writable and not in use by another run, or refused before any data are read; held until the model is out.
    with claim_run_folder(cfg.run_dir, is_main=state.is_main_process, device=state.device):
        trainer, counts, metrics = run(cfg, resume=resume, pairs=pairs)
        metrics["wall_time_s"] = time.time() - started
        model_dir = cfg.run_dir / "model"
        if trainer.is_world_process_zero():
            calibrated = time.time()
            model, decision, reference = calibrate(trainer.model, cfg.postprocess, cfg.data, cfg.train.seed, pairs)
            metrics |= {"postprocessing": decision.chosen.name, "calibration_s": time.time() - calibrated}
            save_final(cfg, model, trainer.classifier, metrics, counts, cfg.run_dir, decision, reference)
            finish_run({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            log.info("done in %.0f s: %s", time.time() - started, model_dir)
        trainer.accelerator.wait_for_everyone()
    return model_dir


def build_trainer(
    cfg: SiameseConfig,
    train: IterableDataset,
    eval_pairs: dict[str, list] | None,
    eval_set: Dataset | None,
    report_to: list[str],
) -> SiameseTrainer:
    """Model, objective, evaluator and the shared stops on SentenceTransformerTrainer."""
    device = resolve_device(cfg.impl.device)
    model = siamese_model.build_model(cfg.model, cfg.impl)
    loss = siamese_model.build_loss(model, cfg.loss, cfg.impl.merge_pair_forward)
    classifier = siamese_model.loss_classifier(loss)
    log.info("model: %s; loss: %s", siamese_model.describe(model), cfg.loss.name)
    plateau = cfg.train.lr_scheduler == "reduce_lr_on_plateau"
    callbacks: list = [StopOnNonFiniteLoss(), SaveRunConfig(to_dict(cfg))]
    if plateau:
        callbacks.append(PlateauStep())
    if cfg.train.max_train_minutes is not None:
        callbacks.append(TimeBudget(cfg.train.max_train_minutes))
    evaluator = None
    if classifier is not None and eval_pairs is not None:
        evaluator = NLIAccuracyEvaluator(eval_pairs, classifier, EVAL_NAME, batch_size=cfg.train.batch_size * 2)
    best_metric = BEST_NLI_METRIC if evaluator is not None else "eval_loss"  # never an STS score
    head_pattern = siamese_model.head_parameter_pattern(loss)
    args = training_arguments(cfg, cfg.run_dir / "checkpoints", device, report_to, head_pattern, best_metric)
    trainer = SiameseTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_set,
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
        classifier=classifier,
    )
    if plateau:
        trainer.plateau = {
            "warmup_steps": cfg.train.warmup_step_count(),
            "factor": cfg.train.plateau_factor,
            "patience": cfg.train.plateau_patience,
            "threshold": 1.0e-3,
            "min_lr": 0.0,
        }
    trainer.units_per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps * args.world_size
    trainer.throughput_unit = "pairs"
    return trainer


def run(
    cfg: SiameseConfig, *, resume: bool = False, pairs: list[IterableDataset] | None = None
) -> tuple[SiameseTrainer, RowCounts, dict[str, Any]]:
    """Fine-tune on every rank; returns the trainer, the row counts and the final metrics.

    Under several processes each rank reads the same seeded stream and accelerate keeps every N-th
    batch-sized slice of it for that rank (no batch dispatch, so per-batch padding stays per rank).
    """
    # The seed makes the head's initialisation the same on every rank.
    state = setup_process(resolve_device(cfg.impl.device), cfg.impl.num_threads, cfg.train.seed)
    precision = run_precision(resolve_device(cfg.impl.device), cfg.impl.precision)  # refused before any data
    checkpoint = choose_checkpoint(cfg.run_dir, resume, is_main=state.is_main_process)
    state.wait_for_everyone()  # the main process may have removed a half-written checkpoint
    if checkpoint:
        check_world_size(checkpoint, state.num_processes)
        check_resume_settings(checkpoint, to_dict(cfg), RESUMABLE_KEYS)
        check_head_groups(checkpoint, cfg.train.head_learning_rate)

    # Data first: an unreachable or malformed source fails before any time goes into loading a model.
    counts = RowCounts()
    train = train_stream(
        cfg.data,
        cfg.train.batch_size * state.num_processes,  # length buckets of the global batch, then split by rank
        cfg.impl.length_bucket_batches,
        cfg.train.seed,
        counts,
        triplets=cfg.loss.name == "mnrl",
        pairs=pairs,
    )
    eval_pairs, eval_set = eval_data(cfg, counts)
    where = "training data (" + ", ".join(source_name(s) for s in cfg.data.train_sources) + ")"
    log.info("first training row: %s", preview_row(train, counts, where))  # not counted: training reads it again
    report_to = trainer_report_to(
        cfg.wandb,
        cfg.run_dir,
        to_dict(cfg),
        "siamese",
        is_main=state.is_main_process,
        resume_id=recorded_wandb_id(checkpoint),
    )
    trainer = build_trainer(cfg, train, eval_pairs, eval_set, report_to)
    warm_start = maybe_warm_start(cfg, trainer, checkpoint, eval_pairs, pairs)
    fitted = fit_trainer_batch(trainer, longest_pairs(trainer, cfg.model.max_seq_length), cfg.impl.fit_batch)
    per_step, t = trainer.units_per_step, cfg.train
    log.info("%d steps × %d pairs (all ranks) = %d pairs", t.max_steps, per_step, t.max_steps * per_step)
    with (
        reading(where),
        advise_on_out_of_memory("train.batch_size", fitted.per_device, fitted.accumulation, "pairs"),
        refusing_unsafe_pickles(checkpoint),
    ):
        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = final_metrics(trainer, result, trainer.evaluator, per_step) | precision.as_metrics()
    metrics |= fitted.as_metrics()
    if warm_start is not None:
        metrics["head_init"] = warm_start.as_dict()
    return trainer, counts, metrics


def maybe_warm_start(
    cfg: SiameseConfig,
    trainer: SiameseTrainer,
    checkpoint: str | None,
    eval_pairs: dict[str, list] | None,
    pairs: list[IterableDataset] | None,
) -> WarmStart | None:
    """`train.head_init_pairs` > 0: fit the NLI head on the frozen encoder before training (siamese/head_init.py).
    On resume the checkpoint's head wins, so nothing is fitted."""
    if not cfg.train.head_init_pairs or trainer.classifier is None:
        return None
    if checkpoint:
        log.info("resuming: the NLI head comes from %s, no warm start", checkpoint)
        return None
    fit_pairs = first_pairs(cfg.data, cfg.train.head_init_pairs, cfg.train.seed, pairs)
    return warm_start_head(trainer.model, trainer.classifier, fit_pairs, eval_pairs, cfg.train.batch_size * 2)


def check_head_groups(checkpoint: str, head_learning_rate: float | None) -> None:
    """`train.head_learning_rate` may change its value on resume, not switch between null and a rate: that
    adds or removes the head's optimizer groups, and the checkpoint's optimizer state would not fit."""
    old = read_run_config(checkpoint).get("train", {}).get("head_learning_rate")
    if (old is None) != (head_learning_rate is None):
        raise ConfigError(
            f"config key 'train.head_learning_rate': {old!r} in checkpoint {checkpoint} but {head_learning_rate!r} "
            "now; a resume can change the head's rate but not give it (or take away) its own optimizer group: "
            "keep null / a rate as the checkpoint has it, or start a new run (another run_name=)"
        )


def final_metrics(trainer: SiameseTrainer, result, evaluator, per_step: int) -> dict[str, Any]:
    """Loss, steps, pairs/s over all ranks, and the held-out NLI accuracy of the final model: the last
    step's, or with `train.select_best` the best checkpoint's (then also `best_step`, `best_metric_name`,
    `best_metric`)."""
    pairs_per_s = [h["pairs_per_s"] for h in trainer.state.log_history if "pairs_per_s" in h]
    metrics = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "pairs_seen": trainer.state.global_step * per_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_pairs_per_s": sorted(pairs_per_s)[len(pairs_per_s) // 2] if pairs_per_s else None,
        "processes": trainer.args.world_size,
    }
    # With select_best the final model is the best checkpoint's, and its evaluation is the one to report.
    step = trainer.state.global_step
    if trainer.args.load_best_model_at_end and trainer.state.best_global_step:
        step = metrics["best_step"] = trainer.state.best_global_step
        metrics["best_metric_name"] = trainer.args.metric_for_best_model
        metrics["best_metric"] = trainer.state.best_metric
    if evaluator is not None:
        evals = [e for e in trainer.state.log_history if BEST_NLI_METRIC in e and e.get("step") == step]
        chosen = evals[-1] if evals else trainer.evaluate()
        metrics |= {k: v for k, v in chosen.items() if k.startswith("eval_")}
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def save_final(
    cfg: SiameseConfig,
    model,
    classifier,
    metrics: dict,
    counts: RowCounts,
    run_dir: Path,
    decision: Decision,
    reference: SimilarityReference,
) -> Path:
    """Write the final, self-describing model folder in one rename: never half-written."""
    target = run_dir / "model"
    with atomic_dir(target) as tmp:
        model.save(str(tmp))
        save_postprocessing(decision, reference, tmp)
        if classifier is not None:
            save_head(classifier, tmp)
        save_config(cfg, tmp / "resolved_config.yaml")
        info = siamese_model.base_model_info(cfg.model.base_model) | {
            "loss": cfg.loss.name,
            "pairs_seen": metrics["pairs_seen"],
            "data_counts": counts.as_dict(),
            "wall_time_s": metrics["wall_time_s"],
            "torch": torch.__version__,
            "device": resolve_device(cfg.impl.device),
        }
        (tmp / "run_info.json").write_text(json.dumps(info, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return target


def main(argv: Sequence[str] | None = None) -> Path:
    parser = config_parser("python -m siamese", "Fine-tune a sentence encoder on NLI.", DEFAULT_CONFIG)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run")
    cfg, args = parse_config(parser, SiameseConfig, argv)
    return fit(cfg, resume=args.resume)
