"""Evaluation of a trained encoder: `python -m siamese.evaluation` (siamese/evaluation/evaluate.py)."""
