"""Fine-tune a pretrained BERT as a Siamese sentence encoder on NLI, as a stage (stagekit/stage.py):
`python -m siamese --config ...`.

Reads top to bottom: streamed data → model + loss → trainer → metrics → post-processing fit → model files. The folder
(`outputs/<run_name>/model/`) holds the SentenceTransformer, the NLI head and the post-processing, plus what
`run_stage` writes for both stages (`resolved_config.yaml`, `run_info.json`, `metrics.json`), so evaluation
and the app need nothing else.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset
from sentence_transformers import SentenceTransformerTrainingArguments

from siamese.config import SiameseConfig
from siamese.fit_postprocessing import fit_postprocessing, save_postprocessing
from siamese.inference.card import BEST_NLI_METRIC, EVAL_NAME, write_model_card
from siamese.inference.encoder import save_head
from siamese.losses import build_loss, head_parameter_pattern, loss_classifier
from siamese.model import base_model_info, build_model, describe
from siamese.nli_data import (
    CLASS_CHECK_PAIRS,
    VALIDATION_HINT,
    RowCounts,
    class_counts,
    describe_classes,
    first_pairs,
    held_out_pairs,
    mixed_pairs,
    preview_row,
    read_pairs,
    require_several_classes,
    source_name,
    train_stream,
    triplets_of,
)
from siamese.trainer import NLIAccuracyEvaluator, SiameseTrainer
from siamese.warm_start import WarmStart, warm_start_head
from stagekit.batch_fit import MiniBatches
from stagekit.device import resolve_device
from stagekit.errors import ConfigError, DataError, UserError
from stagekit.resume import read_run_config
from stagekit.schedule import plateau_settings
from stagekit.sources import reading
from stagekit.stage import Stage
from stagekit.stage_config import training_arguments
from stagekit.wandb_tracking import use_model

log = logging.getLogger(__name__)
WARM_START_BATCH = 64  # pairs per forward pass while the NLI head's warm-start features are computed


def siamese_arguments(
    cfg: SiameseConfig,
    device: str,
    report_to: list[str],
    head_pattern: str | None = None,
    best_metric: str | None = None,
) -> SentenceTransformerTrainingArguments:
    """SentenceTransformerTrainingArguments from the config (stagekit/stage_config.py `training_arguments`).
    `head_pattern` (the NLI head's parameter names, `siamese.losses.head_parameter_pattern`) gets
    `train.head_learning_rate` in its own parameter groups; `best_metric` is the eval metric
    `train.select_best` keeps the best checkpoint by (an accuracy is maximised, a loss minimised)."""
    t = cfg.train
    evaluate = cfg.data.eval_pairs > 0
    head_rate = {head_pattern: t.head_learning_rate} if head_pattern and t.head_learning_rate is not None else {}
    select = t.select_best and evaluate and best_metric is not None
    return training_arguments(
        SentenceTransformerTrainingArguments,
        cfg,
        device,
        report_to,
        eval_strategy="steps" if evaluate else "no",
        learning_rate_mapping=head_rate,
        load_best_model_at_end=select,
        metric_for_best_model=best_metric if select else None,
        greater_is_better=not best_metric.endswith("loss") if select and best_metric else None,
    )


def eval_data(cfg: SiameseConfig, counts: RowCounts) -> tuple[dict[str, list] | None, Dataset | None]:
    """Validation pairs as lists for the accuracy evaluator and as the eval-loss set: the slice held out of the
    training sources (data.validation_fraction), else the first eval source."""
    if cfg.data.eval_pairs == 0 or not (cfg.data.validation_fraction or cfg.data.eval_sources):
        return None, None
    if cfg.data.validation_fraction:
        pairs, where = held_out_pairs(cfg.data, cfg.data.eval_pairs), "the held-out training pairs"
    else:
        pairs = read_pairs(cfg.data.eval_sources[0], cfg.data.eval_pairs, counts, local_hint=VALIDATION_HINT)
        where = source_name(cfg.data.eval_sources[0])
    if cfg.loss.name == "mnrl":
        triplets = triplets_of(pairs, cfg.data.triplet_window)
        if not triplets["anchor"]:
            raise UserError(
                f"{where}: no premise with both an entailment and a contradiction among the eval pairs; raise "
                "data.eval_pairs"
            )
        return pairs, Dataset.from_dict(triplets)
    return pairs, Dataset.from_dict(pairs)


def siamese_trainer(
    cfg: SiameseConfig,
    train: IterableDataset,
    eval_pairs: dict[str, list] | None,
    eval_set: Dataset | None,
    report_to: list[str],
) -> SiameseTrainer:
    """Model, objective, evaluator and the shared stops on SentenceTransformerTrainer."""
    device = resolve_device(cfg.impl.device)
    model = build_model(cfg.model, cfg.impl)
    loss = build_loss(model, cfg.loss, cfg.impl.merge_pair_forward, cfg.impl.mini_batch_size)
    classifier = loss_classifier(loss)
    log.info("model: %s; loss: %s", describe(model), cfg.loss.name)
    t = cfg.train
    evaluator = None
    if classifier is not None and eval_pairs is not None:
        evaluator = NLIAccuracyEvaluator(eval_pairs, classifier, EVAL_NAME, batch_size=t.eval_batch_size() * 2)
    best_metric = "eval_loss"  # never an STS score; the ranking loss's when there is no NLI head
    if evaluator is not None:
        best_metric = BEST_NLI_METRIC if t.select_metric == "accuracy" else f"eval_{EVAL_NAME}_loss"
    head_pattern = head_parameter_pattern(loss)
    args = siamese_arguments(cfg, device, report_to, head_pattern, best_metric)
    return SiameseTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_set,
        loss=loss,
        evaluator=evaluator,
        classifier=classifier,
        data_name=training_data_name(cfg),
        plateau=plateau_settings(t),
        units_per_step=t.per_device_train_batch_size * t.gradient_accumulation_steps * args.world_size,
        throughput_unit="pairs",
    )


def training_data_name(cfg: SiameseConfig) -> str:
    """How one-line data errors name the training sources."""
    return "training data (" + ", ".join(source_name(s) for s in cfg.data.train_sources) + ")"


def check_classes(cfg: SiameseConfig) -> dict[str, int]:
    """The classes among the first CLASS_CHECK_PAIRS training pairs (logged), read before any model is loaded.

    Raises DataError (one line, naming the classes seen) for data without a labelled pair, and for what the loss
    cannot learn from: one class for `softmax` and `both` (the classifier would answer it for every pair), no
    entailment pair for `both`'s ranking part, no entailment or no contradiction pair for `mnrl`'s (premise,
    entailment, contradiction) triplets.
    """
    where, loss = training_data_name(cfg), cfg.loss.name
    with reading(where):  # counted apart: the training pass reads these pairs again
        labels = [row["label"] for row in mixed_pairs(cfg.data, cfg.train.seed, RowCounts()).take(CLASS_CHECK_PAIRS)]
    if not labels:
        raise DataError(f"{where}: no labelled pairs with text to train on")
    counts = class_counts(labels)
    log.info("%s: classes in its first %s pairs: %s", where, f"{len(labels):,}", describe_classes(counts))
    if loss != "mnrl":
        require_several_classes(where, counts, f"loss.name={loss}")
    needed = ("entailment", "contradiction") if loss == "mnrl" else ("entailment",) if loss == "both" else ()
    if missing := [name for name in needed if name not in counts]:
        raise DataError(
            f"{where}: no {' and no '.join(missing)} pair in its first {len(labels):,} pairs "
            f"({describe_classes(counts)}); loss.name={loss} ranks each premise's entailed hypothesis above the "
            "others" + (" and its contradicting one" if loss == "mnrl" else "")
        )
    return counts


class SiameseStage(Stage):
    """`python -m siamese`: the NLI stream read once in order, SentenceTransformerTrainer with the NLI loss,
    held-out NLI accuracy, then post-processing fitted and a SentenceTransformer folder written.

    Under several processes each rank reads the same seeded stream and accelerate keeps every N-th
    batch-sized slice of it for that rank (no batch dispatch, so per-batch padding stays per rank).
    """

    name, example = "siamese", "pairs"
    config_class, prog, description = SiameseConfig, "python -m siamese", "Fine-tune a sentence encoder on NLI."

    def __init__(self, cfg: SiameseConfig) -> None:
        super().__init__(cfg)
        self.counts = RowCounts()
        self.validation_counts = RowCounts()  # apart: the card's training counts are the training sources' alone
        self.warm_start: WarmStart | None = None

    def base_model(self) -> str:
        return self.cfg.model.base_model

    def prepare(self, world_size: int) -> dict[str, Any]:
        # Data first: an unreachable or malformed source fails before any time goes into loading a model.
        cfg = self.cfg
        check_classes(cfg)
        t = cfg.train
        # Length buckets of the global batch (one optimizer step's pairs, all ranks), split into micro-batches in
        # order: any per-device batch × accumulation × processes (impl.fit_batch's too) trains the same pairs.
        self.train = train_stream(
            cfg.data,
            t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size,
            cfg.impl.length_bucket_batches,
            t.seed,
            self.counts,
            triplets=cfg.loss.name == "mnrl",
        )
        self.eval_pairs, self.eval_set = eval_data(cfg, self.validation_counts)
        # Not counted: training reads it again.
        empty = (
            f"no premise with both an entailment and a contradiction hypothesis within data.triplet_window="
            f"{cfg.data.triplet_window} premises: loss.name=mnrl trains on (premise, entailment, contradiction) triplets"
            if cfg.loss.name == "mnrl"
            else "no labelled pairs with text to train on"
        )
        log.info("first training row: %s", preview_row(self.train, self.counts, training_data_name(cfg), empty))
        return {}

    def build_trainer(self, report_to: list[str], checkpoint: str | None) -> SiameseTrainer:
        cfg = self.cfg
        if checkpoint:
            check_head_groups(checkpoint, cfg.train.head_learning_rate)
        use_model(cfg.model.base_model)  # W&B lineage: the pretraining artifact (or Hub model) is this run's input
        trainer = siamese_trainer(cfg, self.train, self.eval_pairs, self.eval_set, report_to)
        self.warm_start = maybe_warm_start(cfg, trainer, checkpoint, self.eval_pairs)
        per_step, steps = trainer.units_per_step, cfg.train.max_steps
        log.info("%d steps × %d pairs (all ranks) = %d pairs", steps, per_step, steps * per_step)
        return trainer

    def mini_batches(self, trainer: SiameseTrainer) -> MiniBatches | None:
        """`mnrl` and `both` rank within the batch: `impl.fit_batch` fits their mini-batch (siamese/losses.py)
        instead of lowering the per-device batch, which would cut the in-batch negatives. None for `softmax`."""
        cfg = self.cfg
        if cfg.loss.name == "softmax":
            return None

        def use(size: int) -> None:
            loss = build_loss(trainer.model, cfg.loss, cfg.impl.merge_pair_forward, size, trainer.classifier)
            trainer.loss = trainer.prepare_loss(loss, trainer.model)

        return MiniBatches(cfg.impl.mini_batch_size, use, "impl.mini_batch_size")

    def metrics(self, trainer: SiameseTrainer) -> dict[str, Any]:
        metrics = final_metrics(trainer, trainer.evaluator)
        if self.warm_start is not None:
            metrics["head_init"] = self.warm_start.as_dict()  # the key named after train.head_init_pairs
        return metrics

    def save_model(self, trainer: SiameseTrainer, folder: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """Post-processing fitted (siamese/fit_postprocessing.py), then the SentenceTransformer, the NLI head and the
        post-processing files; run_info.json gets the base model, the loss and the rows read per training source (data_counts) and
        of the held-out validation pairs (validation_counts)."""
        cfg, started = self.cfg, time.time()
        # whitening that keeps the trained widths (siamese/fit_postprocessing.py)
        nested = bool(cfg.loss.matryoshka_dims)
        model, decision, reference = fit_postprocessing(
            trainer.model, cfg.postprocess, cfg.data, cfg.train.seed, nested=nested
        )
        metrics |= {"postprocessing": decision.chosen.name, "calibration_s": time.time() - started}
        model.save(str(folder))
        save_postprocessing(decision, reference, folder)
        if trainer.classifier is not None:
            save_head(trainer.classifier, folder)
        return base_model_info(cfg.model.base_model) | {
            "loss": cfg.loss.name,
            "pairs_seen": metrics["pairs_seen"],
            "data_counts": self.counts.as_dict(),
            "validation_counts": self.validation_counts.as_dict(),
            "validation_pairs": len(self.eval_pairs["label"]) if self.eval_pairs else 0,
        }

    def model_card(self, folder: Path, final: Path) -> None:
        write_model_card(folder, final)  # in place of sentence-transformers' generic README.md


def maybe_warm_start(
    cfg: SiameseConfig, trainer: SiameseTrainer, checkpoint: str | None, eval_pairs: dict[str, list] | None
) -> WarmStart | None:
    """`train.head_init_pairs` > 0: fit the NLI head on the frozen encoder before training (siamese/warm_start.py).
    On resume the checkpoint's head wins, so nothing is fitted."""
    if not cfg.train.head_init_pairs or trainer.classifier is None:
        return None
    if checkpoint:
        log.info("resuming: the NLI head comes from %s, no warm start", checkpoint)
        return None
    fit_pairs = first_pairs(cfg.data, cfg.train.head_init_pairs, cfg.train.seed, shuffled=True)
    # A fixed batch for the features: padding changes their float rounding, which the fit amplifies, so a batch
    # following the per-device one would fit another head on 2 processes × 8 than on 1 × 16.
    return warm_start_head(trainer.model, trainer.classifier, fit_pairs, eval_pairs, WARM_START_BATCH)


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


def final_metrics(trainer: SiameseTrainer, evaluator) -> dict[str, Any]:
    """The Trainer's runtime and the held-out NLI accuracy of the final model: the last step's, or with
    `train.select_best` the best checkpoint's (then also `best_step`, `best_metric_name`, `best_metric`).
    Steps, pairs seen and pairs/s are stagekit/stage.py `run_metrics`."""
    runtime = next((h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), None)
    metrics: dict[str, Any] = {"train_runtime_s": runtime}
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
