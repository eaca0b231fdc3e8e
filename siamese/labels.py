"""The NLI label ids every part of the siamese stage agrees on: GLUE's / the Hub's for MNLI and SNLI."""

LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
