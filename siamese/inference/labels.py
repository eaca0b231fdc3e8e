"""The NLI label ids every part of the siamese stage agrees on: GLUE's / the Hub's for MNLI and SNLI."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
