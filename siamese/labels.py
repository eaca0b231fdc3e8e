"""The NLI label ids every part of the siamese stage agrees on: GLUE's / the Hub's for MNLI and SNLI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from stagekit.errors import DataError

LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
CLASS_CHECK_PAIRS = 1_000  # the first training pairs read to see which classes the data hold, before training


def class_counts(labels: Iterable[int]) -> dict[str, int]:
    """Pairs per class among `labels` (ids 0/1/2; -1, no gold label, is left out), in LABELS order, classes
    present only: e.g. {"entailment": 300}."""
    counts = Counter(labels)
    return {name: counts[i] for i, name in enumerate(LABELS) if counts[i]}


def describe_classes(counts: dict[str, int]) -> str:
    """`class_counts` as a log line reads it: "entailment 340, neutral 330, contradiction 330"."""
    return ", ".join(f"{name} {n:,}" for name, n in counts.items()) or "none"


def require_several_classes(where: str, counts: dict[str, int], trains: str) -> None:
    """Refuse training data whose first pairs (`counts`: their `class_counts`) hold one class: a classifier trained
    on them (`trains`, e.g. "loss.name=softmax") learns to answer that class for every pair.

    Raises DataError (one line) naming the class and the pairs read, or saying that no pair was read.
    """
    if len(counts) > 1:
        return
    if not counts:
        raise DataError(f"{where}: no labelled pairs with text to train on")
    read = sum(counts.values())
    only = next(iter(counts), "that class")
    raise DataError(
        f"{where}: one class in its first {read:,} pairs ({describe_classes(counts)}): {trains} would learn to answer "
        f"{only} for every pair; train on pairs of several classes (shuffle a file sorted by label)"
    )
