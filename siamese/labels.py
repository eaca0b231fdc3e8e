"""The NLI label ids every part of the siamese stage agrees on: GLUE's / the Hub's for MNLI and SNLI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")


def class_counts(labels: Iterable[int]) -> dict[str, int]:
    """Pairs per class among `labels` (ids 0/1/2; -1, no gold label, is left out), in LABELS order, classes
    present only: e.g. {"entailment": 300}."""
    counts = Counter(labels)
    return {name: counts[i] for i, name in enumerate(LABELS) if counts[i]}


def describe_classes(counts: dict[str, int]) -> str:
    """`class_counts` as a log line reads it: "entailment 340, neutral 330, contradiction 330"."""
    return ", ".join(f"{name} {n:,}" for name, n in counts.items()) or "none"
