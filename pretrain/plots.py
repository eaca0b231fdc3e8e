"""Training curves as a PNG from the Trainer's log history: train/validation loss (with the unigram-entropy
baseline) and the learning rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in history if key in h and "step" in h]


def plot_curves(history: list[dict[str, Any]], path: Path, unigram_entropy: float | None = None) -> Path:
    """`history`: `trainer.state.log_history` (entries with "loss", "eval_loss", "learning_rate" by "step")."""
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    for key, label, style in (
        ("loss", "train loss", "-"),
        ("eval_loss", "validation loss (training masking)", "o-"),
        ("eval_bert15_loss", "validation loss (BERT's 15 % masking)", "s--"),
    ):
        points = _series(history, key)
        if points:
            ax_loss.plot(*zip(*points, strict=True), style, label=label, alpha=0.85, markersize=3)
    if unigram_entropy is not None:
        ax_loss.axhline(unigram_entropy, color="grey", ls="--", label=f"unigram entropy {unigram_entropy:.2f}")
    ax_loss.set_ylabel("MLM loss (nats)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    lr = _series(history, "learning_rate")
    if lr:
        ax_lr.plot(*zip(*lr, strict=True), color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
