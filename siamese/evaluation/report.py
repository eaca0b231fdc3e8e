"""What an evaluation writes and shows: the confusion-matrix and cosine-distribution PNGs, `report.md`, the
`base` section of `report.json` with the warning line when fine-tuning lowered the base's STS-B Spearman, and
the W&B run. The numbers come from `siamese/evaluation/scores.py`; `siamese/evaluation/evaluate.py` decides what goes where.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siamese.inference.labels import LABELS
from stagekit.wandb_tracking import describe, log_files, run_wandb_config, start_tracking, use_model


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


def plot_cosines(
    cosine: np.ndarray, gold: Sequence[int], title: str, path: Path, random: np.ndarray | None = None
) -> None:
    """Histograms of the pairs' cosines by gold class, and of `random` (random sentence pairs) as an outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gold = np.asarray(gold)
    fig, ax = plt.subplots(figsize=(6, 4))
    low = min(-0.2, float(cosine.min()), float(random.min()) if random is not None else 0.0)
    bins = np.linspace(low, 1.0, 41)
    for i, name in enumerate(LABELS):
        if (gold == i).any():
            ax.hist(cosine[gold == i], bins=bins, alpha=0.5, density=True, label=f"{name} (n={(gold == i).sum()})")
    if random is not None:
        ax.hist(random, bins=bins, density=True, histtype="step", color="black", linewidth=1.5,
                label=f"random pairs (n={len(random)})")  # fmt: skip
    ax.set_xlabel("cosine(premise, hypothesis)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def base_section(model: str, path: str, stsb: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """report.json's `base`: the base model's STS-B metrics and the change fine-tuning made (after − before)."""
    return {
        "model": model,
        "path": path,
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


def format_metric(value: Any) -> str:
    """A metric as report.md and the log show it: four decimals for a float, – for none."""
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    models = [("model", report)] + ([("baseline", report["baseline"])] if report.get("baseline") else [])
    lines = [f"# Evaluation of `{report['model']}`", ""]
    lines += [line for warning in report.get("warnings") or [] for line in (f"**Warning: {warning}.**", "")]
    if report.get("backend", "torch") != "torch":  # an ONNX export (siamese/inference/export.py) run by ONNX Runtime
        lines += [f"Backend: {report['backend']} (the model's ONNX export, run by ONNX Runtime).", ""]
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
        lines.append(f"| {title} | " + " | ".join(format_metric(r[section].get(key)) for _, r in models) + " |")
    lines.append("| pairs (m / mm / STS-B) | " + " | ".join(
        f"{r['mnli_validation_matched']['n']} / {r['mnli_validation_mismatched']['n']} / {r['stsb_test']['n']}"
        for _, r in models) + " |")  # fmt: skip
    lines += _base_lines(report)
    lines += _width_lines(models)
    lines += _postprocessing_lines(report)
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
            lines.append(f"| {name} | " + " | ".join(_mean_std(c) for c in cells) + " |")
        cells = [r[split].get("random_pair_cosine", {}) for _, r in models]
        lines.append("| random pairs | " + " | ".join(_mean_std(c) for c in cells) + " |")
        if "classification_report" in report[split]:
            cr = report[split]["classification_report"]
            lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
            lines += [f"| {n} | {cr[n]['precision']:.3f} | {cr[n]['recall']:.3f} | {cr[n]['f1-score']:.3f} | "
                      f"{int(cr[n]['support'])} |" for n in LABELS]  # fmt: skip
            lines += ["", f"![confusion](model_{split}_confusion.png) ![cosines](model_{split}_cosine.png)"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# report.md's retrieval columns: (title, key in report.json's retrieval.by_width)
RETRIEVAL_COLUMNS = [("MRR@10", "mrr@10"), ("NDCG@10", "ndcg@10"), ("MAP@100", "map@100"), ("Recall@1", "recall@1"),
                     ("Recall@5", "recall@5"), ("Recall@10", "recall@10")]  # fmt: skip


def _width_lines(models: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """report.md: retrieval and STS-B of each encoder at each width it was scored at (its first k dimensions)."""
    retrieval = models[0][1].get("retrieval")
    if not retrieval:
        return []
    lines = [
        "",
        f"## Retrieval and STS-B by embedding width: {retrieval['name']}",
        "",
        f"{retrieval['queries']:,} {'query' if retrieval['queries'] == 1 else 'queries'}, {retrieval['corpus']:,} "
        f"document{'' if retrieval['corpus'] == 1 else 's'}; a width of k is the embedding's first k "
        "dimensions (sentence-transformers' `truncate_dim`).",
        "",
        "| encoder | width | STS-B test Spearman | " + " | ".join(t for t, _ in RETRIEVAL_COLUMNS) + " |",
        "|---" * (len(RETRIEVAL_COLUMNS) + 3) + "|",
    ]
    for name, r in models:
        by_width = r["retrieval"]["by_width"]
        for width, metrics in by_width.items():
            stsb = r.get("stsb_test_by_width", {}).get(width, {}).get("spearman")
            cells = [format_metric(stsb)] + [format_metric(metrics[key]) for _, key in RETRIEVAL_COLUMNS]
            lines.append(f"| {name} | {width} | " + " | ".join(cells) + " |")
    return lines


def _mean_std(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats else "–"


def _postprocessing_lines(report: dict[str, Any]) -> list[str]:
    """report.md: what post-processing the model ships, how it was chosen, and the model before / after it."""
    decision = report.get("postprocessing")
    if not decision:
        return []
    truncated = decision.get("truncate_dim")  # siamese/inference/export.py --truncate-dim
    cut = [f"Embeddings are the first {truncated} dimensions (exported with --truncate-dim {truncated})."]
    if "chosen" not in decision:  # a truncation alone, on a model without fitted post-processing
        return ["", "## Post-processing", "", *cut] if truncated else []
    chosen = decision["chosen"]
    name = chosen["method"] if chosen.get("dims") is None else f"{chosen['method']}-{chosen['dims']}"
    scored = [c for c in decision["candidates"] if c.get("spearman") is not None]
    how = f"selected on {decision['selected_on']}" if decision.get("selected_on") else "fixed by the config"
    lines = ["", "## Post-processing", "", f"`{name}` ({how}; fitted on {decision['fit_sentences']:,} "
             f"{decision['fit_source']})."] + (["", *cut] if truncated else [])  # fmt: skip
    if scored:
        lines += ["", "| candidate | STS-B validation Spearman |", "|---|---|"]
        for c in scored:
            label = c["method"] if c.get("dims") is None else f"{c['method']}-{c['dims']}"
            lines.append(f"| {label}{' (chosen)' if label == name else ''} | {c['spearman']:.4f} |")
    before = report.get("stsb_test_before_postprocessing")
    split = report.get("mnli_validation_matched", {}).get("before_postprocessing")
    if before and split:
        after = report["mnli_validation_matched"]
        lines += ["", "| | before post-processing | after |", "|---|---|---|",
                  f"| STS-B test Spearman | {before['spearman']:.4f} | {report['stsb_test']['spearman']:.4f} |"]  # fmt: skip
        for label in LABELS:
            lines.append(f"| mean cosine, {label} (MNLI dev matched) | {_mean_std(split['cosine_by_class'].get(label, {}))}"
                         f" | {_mean_std(after['cosine_by_class'].get(label, {}))} |")  # fmt: skip
        lines.append(f"| mean cosine, random pairs | {_mean_std(split['random_pair_cosine'])} | "
                     f"{_mean_std(after['random_pair_cosine'])} |")  # fmt: skip
    return lines


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


def log_to_wandb(report: dict[str, Any], samples: list[dict[str, Any]], out_dir: Path) -> None:
    """Metrics, plots and sample predictions into W&B, with the settings of the run that trained the model (its
    project, mode and group); the model's artifact as the run's input, and report.json, report.md and the plots as
    an artifact of type evaluation (stagekit/wandb_tracking.py)."""
    flat = {f"{split}/{key}": value for split, section in report.items() if isinstance(section, dict)
            for key, value in section.items() if isinstance(value, (int, float)) and value is not None}  # fmt: skip
    for width, metrics in (report.get("retrieval") or {}).get("by_width", {}).items():
        flat |= {f"retrieval_{width}/{key}": value for key, value in metrics.items()}
    cfg = run_wandb_config(report["model"])
    name = f"{cfg.run_name or Path(report['model']).parent.name}-eval"
    config = {"model": report["model"], "limit": report["limit"]}
    tracker = start_tracking(cfg, out_dir, config, "evaluate", name=name)
    if not tracker.active:
        return
    import wandb

    use_model(report["model"])  # lineage: the fine-tuned model's artifact is the evaluation's input
    tracker.log(flat)
    images = {p.stem: wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}
    columns = list(samples[0]) if samples else ["split"]
    table = wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])
    tracker.log(images | {"sample_predictions": table})
    if tracker.active:
        files = ["report.json", "report.md", *sorted(p.name for p in out_dir.glob("*.png"))]
        log_files(out_dir, name, "evaluation", describe(flat), [f"run-{tracker.run.id}"], files)
    tracker.finish(flat)
