"""Fine-tune a pretrained BERT as a Siamese sentence encoder on NLI: `python -m siamese --config ...`.

Reads top to bottom: config → model + loss → streamed data → trainer → final folder. The final folder
(`outputs/<run_name>/model/`) is written atomically and holds the SentenceTransformer, the NLI head,
`resolved_config.yaml`, `run_info.json` and `metrics.json`, so evaluation and the app need nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from sentence_transformers import SentenceTransformerTrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from common.atomic import atomic_dir
from common.cli import config_parser, parse_config
from common.config import REPO_ROOT, save_config, to_dict
from common.device import resolve_device
from common.errors import UserError
from common.tracking import resolve_mode, start_tracking
from siamese import model as siamese_model
from siamese.config import SiameseConfig
from siamese.encoder import save_head
from siamese.nli_data import RowCounts, _Triplets, preview_row, read_pairs, reading, source_name, train_stream
from siamese.trainer import (
    NLIAccuracyEvaluator,
    PlateauWarmup,
    SiameseTrainer,
    TimeBudget,
    refusing_unsafe_pickles,
    resumable_checkpoint,
)

log = logging.getLogger(__name__)
DEFAULT_CONFIG = REPO_ROOT / "configs" / "siamese" / "cpu-small.yaml"


def training_arguments(cfg: SiameseConfig, checkpoints: Path, device: str, report_to: list[str]) -> Any:
    t, impl = cfg.train, cfg.impl
    plateau = t.lr_scheduler == "reduce_lr_on_plateau"
    evaluate = cfg.data.eval_pairs > 0
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
        # The built-in plateau scheduler ignores warmup; PlateauWarmup supplies it instead.
        warmup_steps=0 if plateau else t.warmup_step_count(),
        lr_scheduler_type=t.lr_scheduler,
        lr_scheduler_kwargs={"factor": t.plateau_factor, "patience": t.plateau_patience} if plateau else {},
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        seed=t.seed,
        bf16=impl.bf16 and device == "cuda",
        use_cpu=device == "cpu",
        dataloader_num_workers=impl.dataloader_num_workers,
        dataloader_pin_memory=impl.dataloader_pin_memory and device == "cuda",
        report_to=report_to,
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
    """Train and write `outputs/<run_name>/model/`; `pairs` replaces the configured sources (tests)."""
    started = time.time()
    run_dir = cfg.run_dir
    checkpoints = run_dir / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last and not resume:
        raise UserError(
            f"{checkpoints} already holds {Path(last).name}: pass --resume to continue it, "
            f"or remove {run_dir} (or pick another run_name) to start over"
        )
    if resume and last:
        last = resumable_checkpoint(checkpoints)  # skips (and removes) one a kill left half-written
    if resume and not last:
        log.warning("--resume: no checkpoint under %s yet; starting from the beginning", checkpoints)

    # Data first: an unreachable or malformed source fails before any time goes into loading a model.
    counts = RowCounts()
    train = train_stream(
        cfg.data,
        cfg.train.batch_size,
        cfg.impl.length_bucket_batches,
        cfg.train.seed,
        counts,
        triplets=cfg.loss.name == "mnrl",
        pairs=pairs,
    )
    eval_pairs, eval_set = eval_data(cfg, counts)
    device = resolve_device(cfg.impl.device)
    if cfg.impl.num_threads is not None:
        torch.set_num_threads(cfg.impl.num_threads)
    torch.manual_seed(cfg.train.seed)  # the head's initialisation must be the same for resumed runs
    model = siamese_model.build_model(cfg.model, cfg.impl)
    loss = siamese_model.build_loss(model, cfg.loss, cfg.impl.merge_pair_forward)
    classifier = siamese_model.loss_classifier(loss)
    log.info("model: %s; loss: %s", siamese_model.describe(model), cfg.loss.name)

    where = "training data (" + ", ".join(source_name(s) for s in cfg.data.train_sources) + ")"
    log.info("first training row: %s", preview_row(train, counts, where))  # not counted: training reads it again
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    log.info(
        "%d steps × %d pairs = %d pairs (the stream cycles if shorter)",
        cfg.train.max_steps,
        per_step,
        cfg.train.max_steps * per_step,
    )

    tracking = resolve_mode(cfg.wandb.mode) != "disabled"
    tracker = start_tracking(cfg.wandb, run_dir, to_dict(cfg), job_type="siamese") if tracking else None
    args = training_arguments(cfg, checkpoints, device, ["wandb"] if tracker and tracker.active else [])
    callbacks = []
    if cfg.train.lr_scheduler == "reduce_lr_on_plateau":
        callbacks.append(PlateauWarmup(cfg.train.warmup_step_count(), cfg.train.learning_rate))
    if cfg.train.max_train_minutes is not None:
        callbacks.append(TimeBudget(cfg.train.max_train_minutes))
    evaluator = None
    if classifier is not None and eval_pairs is not None:
        evaluator = NLIAccuracyEvaluator(eval_pairs, classifier, "mnli-dev", batch_size=cfg.train.batch_size * 2)
    trainer = SiameseTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_set,
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
        classifier=classifier,
        stop_on_nonfinite=cfg.impl.stop_on_nonfinite_loss,
    )
    checkpoint = last if resume else None
    with reading(where), advise_on_out_of_memory(cfg), refusing_unsafe_pickles(checkpoint):
        result = trainer.train(resume_from_checkpoint=checkpoint)

    wall = time.time() - started
    metrics = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "pairs_seen": trainer.state.global_step * per_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_pairs_per_s": trainer.state.global_step * per_step / max(result.metrics.get("train_runtime", 0), 1e-9),
        "wall_time_s": wall,
    }
    if evaluator is not None:
        evals = [e for e in trainer.state.log_history if "eval_mnli-dev_accuracy" in e]
        if evals and evals[-1].get("step") == trainer.state.global_step:
            last_eval = evals[-1]
        else:
            with advise_on_out_of_memory(cfg):
                last_eval = trainer.evaluate()
        metrics |= {k: v for k, v in last_eval.items() if k.startswith("eval_")}
    metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    model_dir = save_final(cfg, model, classifier, metrics, counts, run_dir)
    if tracker is not None:
        tracker.summary({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracker.finish()
    log.info("done in %.0f s: %s", time.time() - started, model_dir)
    return model_dir


@contextlib.contextmanager
def advise_on_out_of_memory(cfg: SiameseConfig) -> Iterator[None]:
    """CUDA out of memory → one line: a smaller batch with more accumulation keeps the pairs per step."""
    t = cfg.train
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(
            f"CUDA out of memory at train.batch_size={t.batch_size}: lower it and raise "
            f"train.gradient_accumulation_steps (now {t.gradient_accumulation_steps}) to keep "
            f"{t.batch_size * t.gradient_accumulation_steps} pairs per step"
        ) from None


def save_final(cfg: SiameseConfig, model, classifier, metrics: dict, counts: RowCounts, run_dir: Path) -> Path:
    """Write the final, self-describing model folder in one rename: never half-written."""
    target = run_dir / "model"
    with atomic_dir(target) as tmp:
        model.save(str(tmp))
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
