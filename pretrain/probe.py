"""A cross-encoder probe of a pretraining output: `python -m pretrain.probe --model DIR [--config FILE] [key=value]`.

The pretrained encoder is fine-tuned GLUE-style on MNLI — both sentences in one input, `[CLS] premise [SEP]
hypothesis [SEP]`, a classifier on the pooled `[CLS]` (`AutoModelForSequenceClassification`: BERT, NomicBERT and
ModernBERT alike) — for a fixed number of steps, then scored once on MNLI dev matched and mismatched. Nothing is
chosen on the dev sets (no checkpoint, no early stop). Its accuracy sits beside published cross-encoder figures
(BERT-Medium, Turc et al. 2019) and tells the quality of the pretraining apart from the ceiling of the Siamese
bi-encoder, which never lets the two sentences attend to each other.

NLI rows come through siamese/nli_data.py, the project's one NLI reader; training runs on transformers' `Trainer`
with the TrainingArguments both stages build (stagekit/stage_config.py). Writes `<output_dir>/<run_name>/probe.json`
(accuracies, confusion matrices, the run's counters) and `resolved_config.yaml` — the random-weights control
(`model.random_init=true`) `probe-random-init.json` and `resolved_config-random-init.yaml` beside them, so the
two sit side by side; the fine-tuned weights are not kept.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stagekit.config import RunConfig, key, require, save_config, to_dict
from stagekit.sources import SourceConfig
from stagekit.stage_config import SharedImplConfig, SharedTrainConfig, WandbConfig
from stagekit.variables import portable

log = logging.getLogger(__name__)
# Turc et al. 2019, "Well-Read Students Learn Better" (arXiv:1908.08962), the BERT miniatures' GLUE table (test
# set; best of batch 8-128 × learning rate 3e-5-3e-4, 4 epochs on the full 392,702 MNLI pairs).
PUBLISHED = {"BERT-Medium (L8/H512)": (0.800, 0.791), "BERT-Tiny (L2/H128)": (0.702, 0.703)}


def _train() -> SourceConfig:
    return SourceConfig(path="nyu-mll/glue", config_name="mnli")


def _matched() -> SourceConfig:
    return SourceConfig(path="nyu-mll/glue", config_name="mnli", split="validation_matched")


def _mismatched() -> SourceConfig:
    return SourceConfig(path="nyu-mll/glue", config_name="mnli", split="validation_mismatched")


@dataclass
class ProbeModelConfig:
    base_model: str = key("outputs/pretrain-cpu-small/model", "the pretraining output to probe (--model sets it)")
    max_seq_length: int = key(128, "tokens of premise and hypothesis together, [CLS] and both [SEP] included")
    classifier_dropout: float | None = key(0.1, "dropout on the pooled [CLS] before the classifier; null: the model's")
    random_init: bool = key(
        False, "the control: the same architecture, size and tokenizer with random weights (what pretraining adds)"
    )

    def check(self) -> None:
        require(bool(self.base_model.strip()), "base_model", "must name a pretraining output folder")
        require(16 <= self.max_seq_length <= 512, "max_seq_length", "must be between 16 and 512")
        require(self.classifier_dropout is None or 0 <= self.classifier_dropout < 1, "classifier_dropout", "in [0, 1)")


@dataclass
class ProbeDataConfig:
    train_source: SourceConfig = key(help="MNLI training pairs, streamed and shuffled", factory=_train)
    matched: SourceConfig = key(help="MNLI dev matched: scored once, after training", factory=_matched)
    mismatched: SourceConfig = key(help="MNLI dev mismatched: scored once, after training", factory=_mismatched)
    shuffle_buffer: int = key(10_000, "pairs in the streaming shuffle buffer (1: no shuffling)")
    eval_limit: int | None = key(None, "score only the first N pairs of each dev set (quick looks, tests); null: all")

    def check(self) -> None:
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
        require(self.eval_limit is None or self.eval_limit >= 1, "eval_limit", "must be >= 1 or null")


@dataclass
class ProbeTrainConfig(SharedTrainConfig):
    """The shared optimisation keys with BERT's GLUE recipe as defaults (linear decay after 10 % warmup)."""

    learning_rate: float = 1.0e-4
    warmup_steps: float = 0.1
    per_device_train_batch_size: int = 32
    max_steps: int | None = key(2000, "optimizer steps: fixed, so nothing is chosen on the dev sets")
    eval_steps: int = 1000
    save_steps: int = 1000

    def check(self) -> None:
        super().check()
        require(self.max_steps is not None, "max_steps", "must be set (a stream has no length, so steps bound the run)")
        require(
            not self.plateau, "lr_scheduler_type", "reduce_lr_on_plateau needs evaluations, which the probe never runs"
        )


@dataclass
class ProbeConfig(RunConfig):
    run_name: str = "probe"
    model: ProbeModelConfig = field(default_factory=ProbeModelConfig)
    data: ProbeDataConfig = field(default_factory=ProbeDataConfig)
    train: ProbeTrainConfig = field(default_factory=ProbeTrainConfig)
    impl: SharedImplConfig = field(default_factory=SharedImplConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    examples: ClassVar[tuple[str, ...]] = ("train.max_steps=500 impl.num_threads=1",)
    stage: ClassVar[str] = "probe"


def parser() -> argparse.ArgumentParser:
    from stagekit.cli import config_parser, doc_summary

    built = config_parser("python -m pretrain.probe", doc_summary(__doc__), ProbeConfig, resume=False, push=False)
    built.add_argument("--model", help="the pretraining output to probe (sets model.base_model)")
    return built


def load(argv: Sequence[str] | None) -> ProbeConfig:
    """The config from `argv`: one-line ConfigError before any work for an unknown key or a bad value."""
    from stagekit.cli import parse_args
    from stagekit.config import load_config

    args = parse_args(parser(), argv)
    overrides = list(args.overrides) + ([f"model.base_model={args.model}"] if args.model else [])
    return load_config(ProbeConfig, args.config, overrides)


def tokenized(rows, tokenizer, max_length: int, keep: Sequence[str]):
    """NLI rows (premise, hypothesis, label) → one `[CLS] p [SEP] h [SEP]` input each, cut to `max_length`."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out = tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)
        return {k: v for k, v in out.items() if k in keep} | {"labels": batch["label"]}

    return rows.map(encode, batched=True, remove_columns=["premise", "hypothesis", "label"])


class FreshHeadReport(logging.Filter):
    """transformers' LOAD REPORT of an MLM checkpoint loaded as a classifier, when it says only what is expected —
    the MLM head unused, the classifier and pooler new — becomes one INFO line (stagekit/load_report.py's rule)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from stagekit.load_report import report_statuses

        rows = report_statuses(record.getMessage()) if "LOAD REPORT" in record.getMessage() else []
        expected = all(
            (status == "UNEXPECTED" and name.startswith("cls."))
            or (
                status == "MISSING"
                and (name.startswith("classifier.") or ".pooler." in name or name.startswith("head."))
            )
            for name, status in rows
        )
        if not rows or not expected:
            return True
        log.info("the MLM head is left out and a new classifier is initialised (%d weights), as expected", len(rows))
        return False


def build_model(cfg: ProbeConfig):
    """The pretraining output with a fresh 3-way classifier (and, for BERT and NomicBERT, a fresh pooler: MLM
    training never trains one); with `model.random_init` its architecture alone, all weights random. Raises
    UserError (one line) for a folder that is not a model, a weights file that cannot be opened (named) and a
    model that is not an encoder (siamese/model.py `check_encoder`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from siamese.inference.labels import LABELS
    from siamese.model import check_encoder
    from stagekit.errors import UserError
    from stagekit.load_report import REPORTING_LOGGER, quiet_unused_weight_reports
    from stagekit.weights import check_weights

    path = Path(cfg.model.base_model).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a pretraining output (no config.json); train one with python -m pretrain")
    check_weights(path)
    quiet_unused_weight_reports()  # the MLM head is left out by design
    reports, fresh_head = logging.getLogger(REPORTING_LOGGER), FreshHeadReport()
    reports.addFilter(fresh_head)
    extra = {"classifier_dropout": cfg.model.classifier_dropout} if cfg.model.classifier_dropout is not None else {}
    labels = {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {n: i for i, n in enumerate(LABELS)},
    }
    try:
        config = AutoConfig.from_pretrained(str(path), **labels, **extra)
        check_encoder(config.model_type, path)
        if cfg.model.random_init:  # seeded by setup_process (train.seed)
            model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), config=config, attn_implementation="sdpa"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} could not be loaded as a classifier: {str(err).splitlines()[0]}") from None
    finally:
        reports.removeFilter(fresh_head)
    return model, tokenizer


def check_classes(source: SourceConfig) -> None:
    """The classes among the first CLASS_CHECK_PAIRS training pairs (logged), read before the model is loaded.
    Raises DataError (one line) for one class: the classifier would learn to answer it for every pair."""
    from siamese.nli_data import (
        CLASS_CHECK_PAIRS,
        RowCounts,
        class_counts,
        describe_classes,
        open_pairs,
        require_several_classes,
        source_name,
    )
    from stagekit.sources import reading

    where = f"training data ({source_name(source)})"
    with reading(where):
        counts = class_counts(row["label"] for row in open_pairs(source, RowCounts()).take(CLASS_CHECK_PAIRS))
    log.info("%s: classes in its first %s pairs: %s", where, f"{sum(counts.values()):,}", describe_classes(counts))
    require_several_classes(where, counts, "the probe's classifier")


def accuracy_on(trainer, name: str, source: SourceConfig, cfg: ProbeConfig, tokenizer, keep) -> dict[str, Any]:
    """Accuracy, confusion matrix and per-class scores (siamese/evaluation/scores.py) on the first `data.eval_limit` pairs of
    set `name`; with "warning" (also logged) when they are all of one class."""
    from datasets import Dataset

    from siamese.evaluation.scores import nli_metrics, one_class_warning
    from siamese.nli_data import read_pairs

    pairs = read_pairs(source, cfg.data.eval_limit, local_hint="${BERT_DATA_DIR}/mnli/" + source.split + ".jsonl.gz")
    data = tokenized(Dataset.from_dict(pairs), tokenizer, cfg.model.max_seq_length, keep)
    logits = trainer.predict(data).predictions
    metrics = nli_metrics(pairs["label"], logits.argmax(axis=-1))
    if warning := one_class_warning(name, pairs["label"]):
        log.warning(warning)
        metrics["warning"] = warning
    return metrics


def run(cfg: ProbeConfig) -> dict[str, Any]:
    """Fine-tune, score, write probe.json; returns what it holds."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from siamese.nli_data import RowCounts, open_pairs, source_name
    from stagekit.callbacks import add_stage_callbacks
    from stagekit.device import resolve_device
    from stagekit.distributed import setup_process
    from stagekit.folders import require_writable
    from stagekit.model_card import describe_hardware
    from stagekit.stage_config import training_arguments
    from stagekit.wandb_tracking import finish_run, trainer_report_to

    started = time.perf_counter()
    require_writable(cfg.run_dir, "set output_dir= to a writable folder")
    check_classes(cfg.data.train_source)  # data first: no time goes into loading a model for data it cannot use
    device = resolve_device(cfg.impl.device)
    setup_process(device, cfg.impl.num_threads, cfg.train.seed)
    model, tokenizer = build_model(cfg)
    keep = [
        n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inspect.signature(model.forward).parameters
    ]
    counts = RowCounts()
    rows = open_pairs(cfg.data.train_source, counts)
    if cfg.data.shuffle_buffer > 1:
        rows = rows.shuffle(seed=cfg.train.seed, buffer_size=cfg.data.shuffle_buffer)
    t = cfg.train
    report_to = trainer_report_to(cfg.wandb, cfg.run_dir, to_dict(cfg), "probe", is_main=True)
    args = training_arguments(
        TrainingArguments, cfg, device, report_to, eval_strategy="no", save_strategy="no", remove_unused_columns=False
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized(rows, tokenizer, cfg.model.max_seq_length, keep),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    add_stage_callbacks(trainer, t, to_dict(cfg))  # the NaN stop and the time budget both stages train with
    log.info(
        "probe: %s as a cross-encoder, %d steps × %d pairs",
        cfg.model.base_model,
        t.max_steps,
        t.per_device_train_batch_size,
    )
    result = trainer.train()
    scores = {name: accuracy_on(trainer, name, source, cfg, tokenizer, keep)
              for name, source in (("mnli_validation_matched", cfg.data.matched),
                                   ("mnli_validation_mismatched", cfg.data.mismatched))}  # fmt: skip
    report = {
        "model": cfg.model.base_model,
        "random_init": cfg.model.random_init,
        **scores,
        "steps": trainer.state.global_step,
        "pairs_seen": trainer.state.global_step * t.per_device_train_batch_size * t.gradient_accumulation_steps,
        "train_loss": result.training_loss,
        "train_source": source_name(cfg.data.train_source),
        "data_counts": counts.as_dict(),
        "wall_time_s": time.perf_counter() - started,
        "hardware": describe_hardware(device),
        "published": {name: {"matched": m, "mismatched": mm} for name, (m, mm) in PUBLISHED.items()},
        "warnings": [section.pop("warning") for section in scores.values() if "warning" in section],
    }
    finish_run({f"final/{k}/accuracy": v["accuracy"] for k, v in scores.items()})
    report = portable(report, cfg.run_dir)  # names no path outside the data and output folders
    config_file, report_file = written_files(cfg)
    save_config(cfg, config_file, cfg.run_dir)
    report_file.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def written_files(cfg: ProbeConfig) -> tuple[Path, Path]:
    """Where the probe writes its resolved config and its report: `resolved_config.yaml` and `probe.json` in the
    run folder, the random-weights control `resolved_config-random-init.yaml` and `probe-random-init.json`."""
    suffix = "-random-init" if cfg.model.random_init else ""
    return cfg.run_dir / f"resolved_config{suffix}.yaml", cfg.run_dir / f"probe{suffix}.json"


def summary(report: dict[str, Any], path: Path) -> str:
    m, mm = report["mnli_validation_matched"], report["mnli_validation_mismatched"]
    published = "; ".join(f"{name} {a:.1%} / {b:.1%}" for name, (a, b) in PUBLISHED.items())
    what = report["model"] + (" (random weights)" if report["random_init"] else "")
    return (
        f"cross-encoder probe of {what}: MNLI dev matched {m['accuracy']:.1%} (n={m['n']}), mismatched "
        f"{mm['accuracy']:.1%} (n={mm['n']}) after {report['steps']} steps ({report['pairs_seen']:,} pairs, "
        f"{report['wall_time_s'] / 60:.1f} min)\npublished, GLUE test, Turc et al. 2019: {published}\nreport: {path}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = load(argv)
    report = run(cfg)
    print(summary(report, written_files(cfg)[1]))
    return report | {"config": to_dict(cfg)}


if __name__ == "__main__":
    import sys

    from stagekit.cli import run_cli

    sys.exit(run_cli(main))
