"""Training curves as a PNG: train/validation loss (with the unigram-entropy baseline) and learning rate."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict[str, float]], path: Path, unigram_entropy: float | None = None) -> Path:
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    lr = [(h["step"], h["lr"]) for h in history if "train_loss" in h]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss", alpha=0.8)
    if val:
        ax_loss.plot(*zip(*val, strict=True), "o-", label="validation loss")
    if unigram_entropy is not None:
        ax_loss.axhline(unigram_entropy, color="grey", ls="--", label=f"unigram entropy {unigram_entropy:.2f}")
    ax_loss.set_ylabel("MLM loss (nats)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if lr:
        ax_lr.plot(*zip(*lr, strict=True), color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
