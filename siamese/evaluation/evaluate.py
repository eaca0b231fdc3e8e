"""Evaluate a trained encoder honestly: `python -m siamese.evaluation --model <dir> [key=value ...]`.

The command: which sets are evaluated from where (the shared local copies under ${BERT_DATA_DIR}, else the Hub),
the encoders to evaluate, and the order of the work; its settings are `siamese.config.EvalConfig` (the
pipeline's `eval.key=value`). MNLI dev matched / mismatched through the shared `NLIEncoder` (the app's path) and
STS-B test, scored by `siamese/evaluation/scores.py`; `report.json`, `report.md` and the plots, written by
`siamese/evaluation/report.py` (into the model folder unless `out=` says otherwise), with the baseline (all-MiniLM-L6-v2 by
default) side by side, and the STS-B Spearman of the base model the fine-tuning started from (named in
run_info.json) beside the fine-tuned model's, with one warning line when fine-tuning lowered it.
Retrieval (`siamese/evaluation/retrieval.py`: MRR@10, NDCG@10, Recall@k on a set built from MNLI dev matched, another NLI
file, or NanoBEIR) and STS-B are also scored at narrower embedding widths (Matryoshka truncation).

Sets too small to score are found before any scoring: STS-B with fewer than 2 pairs (or one score value) is
refused in one line; a retrieval set without a query is skipped with one warning line. An NLI set of one class,
and figures resting on fewer than FEW_EXAMPLES pairs or queries, are named in report.json's `warnings`, at the top
of report.md and in the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from siamese.config import EvalConfig, ImplConfig, ModelConfig
from siamese.evaluation.baseline import load_baseline
from siamese.evaluation.report import (
    base_section,
    format_metric,
    log_to_wandb,
    plot_confusion,
    plot_cosines,
    stsb_drop_warning,
    write_markdown,
)
from siamese.evaluation.retrieval import (
    RetrievalSet,
    check_retrieval,
    read_retrieval_set,
    retrieval_section,
    widths_to_score,
)
from siamese.evaluation.scores import (
    HUB_STSB,
    cosine_sections,
    nli_metrics,
    one_class_warning,
    read_stsb,
    stsb_by_width,
    stsb_metrics,
    stsb_scale,
)
from siamese.inference.card import refresh_model_card
from siamese.inference.encoder import LABELS, NLIEncoder
from siamese.inference.postprocess import read_postprocessing
from siamese.model import build_model
from siamese.nli_data import read_pairs
from stagekit.cli import config_parser, doc_summary, parse_config, run_cli
from stagekit.config import to_dict
from stagekit.errors import DataError, UserError
from stagekit.folders import require_writable
from stagekit.resume import weights_sha256
from stagekit.sources import SourceConfig, local_files, looks_local, require_hub
from stagekit.variables import OUTSIDE, expand, portable

log = logging.getLogger(__name__)
DATA = os.environ.get("BERT_DATA_DIR", "")


@dataclass(frozen=True)
class EvalSet:
    key: str  # the EvalConfig key that names its source
    local: str  # the shared copy, relative to ${BERT_DATA_DIR}
    hub: str  # the Hub dataset it was taken from, read at `config_name` / `split`
    config_name: str | None
    split: str


EVAL_SETS = {
    "mnli_validation_matched": EvalSet("mnli_matched", "mnli/validation_matched.jsonl.gz", "nyu-mll/glue", "mnli",
                                       "validation_matched"),
    "mnli_validation_mismatched": EvalSet("mnli_mismatched", "mnli/validation_mismatched.jsonl.gz", "nyu-mll/glue",
                                          "mnli", "validation_mismatched"),
    "stsb_test": EvalSet("stsb", "stsb/test.jsonl.gz", HUB_STSB, None, "test"),
}  # fmt: skip


def eval_source(key: str, given: str | None = None) -> SourceConfig:
    """The source of evaluation set `key`: `given` if any, else the shared local copy when it is there, else
    the Hub dataset it was taken from. That Hub id, given or not, is read at the set's config and split."""
    spec = EVAL_SETS[key]
    if given is None:
        path = Path(DATA) / spec.local
        if path.is_file():
            return SourceConfig(path=str(path), config_name=None, split="train")
        given = spec.hub
    if given == spec.hub:
        return SourceConfig(path=spec.hub, config_name=spec.config_name, split=spec.split)
    return SourceConfig(path=given, config_name=None, split="train")


def local_hint(key: str) -> str:
    return "${BERT_DATA_DIR}/" + EVAL_SETS[key].local


def check_sources(sources: dict[str, SourceConfig]) -> None:
    """Fail before anything is evaluated: a local source that is missing, a Hub source while offline.

    Raises DataError naming the option to change and the local copy to use.
    """
    for key, source in sources.items():
        if local_files(source.path):
            continue
        if looks_local(source.path):
            raise DataError(f"{source.path}: no such file (given as {EVAL_SETS[key].key}=)")
        require_hub(source.path, local_hint(key), setting=EVAL_SETS[key].key)


NLI_SPLITS = ("mnli_validation_matched", "mnli_validation_mismatched")
# Fewer pairs or queries than this behind a figure, and the report and the log say so: at 100 pairs an accuracy's
# standard error is still about 5 points.
FEW_EXAMPLES = 100


@dataclass
class EvalData:
    """The evaluation sets, read once and scored for every encoder (model, base, baseline)."""

    nli: dict[str, dict[str, list]]  # split → {"premise", "hypothesis", "label"}
    stsb: tuple[list[str], list[str], list[float]]  # sentence1, sentence2, scores in 0-1
    retrieval: RetrievalSet | None = None  # None: NanoBEIR from the Hub
    warnings: list[str] = field(default_factory=list)  # `data_warnings`: what the figures rest on

    def score_retrieval(self) -> bool:
        """False for a local retrieval set without a query (no entailment pair): nothing to rank for."""
        return self.retrieval is None or bool(self.retrieval.queries)


def read_eval_data(
    sources: dict[str, SourceConfig], limit: int | None, stsb_score_scale: float, retrieval: str | None = None
) -> EvalData:
    """The first `limit` pairs (all with None) of each set, and the retrieval set (`retrieval`: an NLI file, None
    for the one of MNLI dev matched, "nanobeir"), with `data_warnings` logged and kept for the report: all known
    before any scoring. Raises DataError (one line) as the readers do, STS-B's for fewer than 2 pairs."""
    nli = {split: read_pairs(sources[split], limit, local_hint=local_hint(split)) for split in NLI_SPLITS}
    stsb = read_stsb(sources["stsb_test"], limit, stsb_score_scale, local_hint=local_hint("stsb_test"))
    rset = read_retrieval_set(retrieval, limit, nli["mnli_validation_matched"], "mnli_validation_matched")
    data = EvalData(nli, stsb, rset)
    data.warnings = data_warnings(data, limit)
    for line in data.warnings:
        log.warning(line)
    return data


def _count(n: int, unit: str) -> str:
    return f"{n:,} {unit}" if n == 1 else f"{n:,} {'queries' if unit == 'query' else unit + 's'}"


def data_warnings(data: EvalData, limit: int | None) -> list[str]:
    """One line for each thing about the sets that their figures depend on: a retrieval set without a query (not
    scored), an NLI set of one class (its accuracy is that of one class), and, in one line, every set with fewer
    than FEW_EXAMPLES pairs or queries. `(limit=N)` ends a line when the limit cut a set it names."""

    def cut(*sizes: int) -> str:
        return f" (limit={limit})" if limit is not None and any(n >= limit for n in sizes) else ""

    warnings = []
    rset = data.retrieval
    if not data.score_retrieval():
        warnings.append(f"retrieval on {rset.name}: not scored: no entailment pair among its "
                        f"{_count(rset.pairs, 'pair')}, so no query{cut(rset.pairs)}")  # fmt: skip
    warnings += [line for split, pairs in data.nli.items() if (line := one_class_warning(split, pairs["label"]))]
    sizes = {split: len(pairs["label"]) for split, pairs in data.nli.items()} | {"stsb_test": len(data.stsb[2])}
    few = {f"{name} {_count(n, 'pair')}": n for name, n in sizes.items() if n < FEW_EXAMPLES}  # line → pairs read
    if rset is not None and 0 < len(rset.queries) < FEW_EXAMPLES:
        few[f"retrieval on {rset.name} {_count(len(rset.queries), 'query')}"] = rset.pairs
    if few:
        warnings.append(f"few examples behind these figures (fewer than {FEW_EXAMPLES}, so read them as rough): "
                        f"{', '.join(few)}{cut(*few.values())}")  # fmt: skip
    return warnings


def evaluate_encoder(
    encoder: NLIEncoder, tag: str, data: EvalData, out_dir: Path, widths: list[int] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All metrics for one encoder; returns the report section and a few sample predictions. STS-B and retrieval
    are also scored at each of `widths` (default: `widths_to_score` of the encoder's own widths).

    A model with post-processing (siamese/inference/postprocess.py) is also scored without it, from the same forward
    passes: `before_postprocessing` in each NLI split and `stsb_test_before_postprocessing`.
    """
    report: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for split, pairs in data.nli.items():
        prediction = encoder.predict(pairs["premise"], pairs["hypothesis"], keep_embeddings=True)
        section, cosine, random = cosine_sections(prediction.embeddings, pairs["label"])
        plot_cosines(cosine, pairs["label"], f"{tag}: {split}", out_dir / f"{tag}_{split}_cosine.png", random)
        if encoder.postprocessing:
            section["before_postprocessing"] = cosine_sections(prediction.core_embeddings, pairs["label"])[0]
        if prediction.probs is None:  # e.g. the baseline: an encoder without an NLI head
            section |= {"accuracy": None, "n": len(pairs["label"])}
        else:
            predicted = prediction.probs.argmax(axis=1)
            section |= nli_metrics(pairs["label"], predicted)
            plot_confusion(section["confusion_matrix"], f"{tag}: {split}", out_dir / f"{tag}_{split}_confusion.png")
            for i in range(min(20, len(predicted))):
                samples.append({
                    "split": split, "premise": pairs["premise"][i], "hypothesis": pairs["hypothesis"][i],
                    "gold": LABELS[pairs["label"][i]], "predicted": LABELS[predicted[i]],
                    "probability": float(prediction.probs[i].max()), "cosine": float(prediction.cosine[i]),
                })  # fmt: skip
        report[split] = section
    report["stsb_test"] = stsb_metrics(encoder, *data.stsb)
    widths = widths or widths_to_score(encoder.widths[0], encoder.widths[1:])
    report["stsb_test_by_width"] = stsb_by_width(encoder, *data.stsb, widths)
    report["retrieval"] = retrieval_section(encoder, data.retrieval, widths) if data.score_retrieval() else None
    if encoder.postprocessing:
        report["stsb_test_before_postprocessing"] = stsb_metrics(NLIEncoder(encoder.core), *data.stsb)
    return report, samples


@dataclass
class BaseEncoder:
    """The encoder a fine-tuned model started from, rebuilt as fine-tuning built it (no NLI head)."""

    name: str  # as the run's config gave it, e.g. all-MiniLM-L6-v2
    path: str  # as run_info.json records it (a resolved folder, or a Hub id)
    encoder: NLIEncoder


def load_base_encoder(model_dir: Path) -> BaseEncoder | None:
    """The base model named in `model_dir`'s run_info.json (`base_model`), built by `siamese.model.build_model`
    with the run's own `model.max_seq_length`, `model.pooling` and attention (resolved_config.yaml), i.e. the
    encoder fine-tuning started from. None (one info line) when run_info.json names no base.

    Raises UserError (one line, within seconds for a Hub id while offline) when the base cannot be loaded.
    """
    info_path = model_dir / "run_info.json"
    try:
        base = json.loads(info_path.read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError):
        base = None
    if not isinstance(base, str) or not base.strip():
        log.info("%s names no base_model: no STS-B before fine-tuning to compare with", info_path)
        return None
    if base.startswith(OUTSIDE):
        log.warning(
            "%s names the base model as %s (a folder outside the data and output folders, not recorded): no STS-B "
            "before fine-tuning to compare with", info_path, base,
        )  # fmt: skip
        return None
    # A base in the output folder is named relative to the run folder (stagekit/variables.py `portable`).
    local = model_dir.resolve().parent / expand(base)
    path = str(local) if base.startswith(".") and local.is_dir() else expand(base)
    resolved = _resolved_config(model_dir)
    model_section, impl_section = resolved.get("model", {}), resolved.get("impl", {})
    cfg = ModelConfig(
        base_model=path,
        max_seq_length=int(model_section.get("max_seq_length", ModelConfig.max_seq_length)),
        pooling=model_section.get("pooling", ModelConfig.pooling),
    )
    impl = ImplConfig(attn_implementation=impl_section.get("attn_implementation", ImplConfig.attn_implementation))
    try:
        model = build_model(cfg, impl)
    except UserError as err:
        raise UserError(
            f"{err} (the base model of {model_dir}, from run_info.json; base_stsb=false skips it)"
        ) from None
    return BaseEncoder(name=str(model_section.get("base_model") or base), path=base, encoder=NLIEncoder(model.eval()))


def _resolved_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((model_dir / "resolved_config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def parser() -> argparse.ArgumentParser:
    built = config_parser(
        "python -m siamese.evaluation", doc_summary(__doc__), EvalConfig, resume=False, leading="--model DIR"
    )
    built.add_argument("--model", required=True, help="a trained model folder (SentenceTransformer + NLI head)")
    return built


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_config(parser(), EvalConfig, argv)
    return evaluate(Path(args.model), cfg)


def evaluate(model_dir: Path, cfg: EvalConfig) -> dict[str, Any]:
    """Score `model_dir` (and cfg.baseline, and its base model on STS-B) on every evaluation set; write
    report.json, report.md and the plots; return the report. Everything that can fail fast does, before any
    scoring: sources, models, the report folder (one-line UserError / DataError)."""
    given = {"mnli_validation_matched": cfg.mnli_matched, "mnli_validation_mismatched": cfg.mnli_mismatched,
             "stsb_test": cfg.stsb}  # fmt: skip
    sources = {key: eval_source(key, given[key]) for key in EVAL_SETS}
    scale = stsb_scale(sources["stsb_test"].path, cfg.stsb_scale)

    check_sources(sources)
    check_retrieval(cfg.retrieval, local_hint("mnli_validation_matched"))
    encoder = NLIEncoder.load(model_dir, backend=cfg.backend)
    baseline_encoder = load_baseline(cfg.baseline) if cfg.baseline else None
    base = load_base_encoder(model_dir) if cfg.base_stsb else None
    out_dir = Path(cfg.out) if cfg.out else model_dir
    # Checked before minutes go into scoring: a model in a read-only folder is evaluated with out= elsewhere.
    require_writable(out_dir, "pick another out=" if cfg.out else "pass out=DIR to write the report elsewhere")
    if cfg.out:
        log.info("the report, plots and W&B files go to %s, not the model folder", out_dir)
    if encoder.head is None:
        log.warning("%s has no NLI head: accuracy is not available, only STS-B and cosine statistics", model_dir)
    data = read_eval_data(sources, cfg.limit, scale, cfg.retrieval)
    report, samples = evaluate_encoder(encoder, "model", data, out_dir)
    report = (
        {"model": str(model_dir), "backend": cfg.backend}
        | report
        | {"base": None, "baseline": None, "limit": cfg.limit, "warnings": data.warnings}
    )
    report["postprocessing"] = read_postprocessing(model_dir)
    report[EVALUATED] = evaluated_with(model_dir, cfg)
    if base is not None:
        stsb = stsb_metrics(base.encoder, *data.stsb)
        report["base"] = base_section(base.name, base.path, stsb, report["stsb_test"])
    if baseline_encoder is not None:  # at its own width and the model's narrower ones, side by side
        full = baseline_encoder.widths[0]
        widths = [full, *(w for w in widths_to_score(encoder.widths[0], encoder.widths[1:]) if w < full)]
        baseline, _ = evaluate_encoder(baseline_encoder, "baseline", data, out_dir, widths)
        report["baseline"] = {"model": cfg.baseline} | baseline
    # What may leave this machine (the model folder is pushed) names no path outside the data and output folders.
    published = portable(report, model_dir.resolve().parent)
    (out_dir / REPORT).write_text(json.dumps(published, indent=2), encoding="utf-8")
    write_markdown(published, out_dir / "report.md")
    refresh_model_card(model_dir, out_dir)  # README.md with these figures, when the report is the model folder's
    log_to_wandb(report, samples, out_dir)  # reads the run's W&B settings from the model folder's path
    for split in NLI_SPLITS:
        log.info("%s accuracy: %s (n=%d)", split, format_metric(report[split]["accuracy"]), report[split]["n"])
    log.info("STS-B test spearman %.4f pearson %.4f; report in %s", report["stsb_test"]["spearman"],
             report["stsb_test"]["pearson"], out_dir / "report.md")  # fmt: skip
    if report["base"] is not None:
        log.info("STS-B test spearman of the base before fine-tuning: %.4f", report["base"]["stsb_test"]["spearman"])
    if warning := stsb_drop_warning(published):
        log.warning(warning)
    return published


REPORT, EVALUATED = "report.json", "evaluated_with"


def evaluated_with(model_dir: Path, cfg: EvalConfig) -> dict[str, Any]:
    """What a report is a report of: the model's weights (stagekit/resume.py `weights_sha256`) and the
    evaluation settings as written (`${VAR}` kept)."""
    return {"model_sha256": weights_sha256(model_dir), "settings": to_dict(cfg)}


def current_report(model_dir: Path, cfg: EvalConfig) -> Path | None:
    """The report.json that evaluating `model_dir` with `cfg` would write (in `out=` when given), when one is
    there already and was made of the same weights with the same settings; None otherwise (none there, an
    unreadable one, one written before reports recorded this, or another model or settings)."""
    path = (Path(cfg.out) if cfg.out else model_dir) / REPORT
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get(EVALUATED)
    except (OSError, ValueError, AttributeError):
        return None
    now = json.loads(json.dumps(portable(evaluated_with(model_dir, cfg), model_dir.resolve().parent)))  # as written
    return path if recorded == now and now["model_sha256"] else None


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
