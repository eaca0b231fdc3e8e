"""Post-processing as a model folder holds it: the `Dense` module appended to the SentenceTransformer (centring
or whitening, fitted by siamese/fit_postprocessing.py), `postprocessing.json` saying how many trailing modules it
added (`read_postprocessing`, the one reader of that file), and the random-pair cosines the app reads a cosine by.

`SentenceTransformer(path).encode` returns the post-processed embedding with no code of ours; the NLI head keeps
reading the embedding *before* post-processing (the one it was trained on), so its probabilities are exactly those
of training (`without_postprocessing`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer

from stagekit.errors import UserError

log = logging.getLogger(__name__)

POSTPROCESS_FILE = "postprocessing.json"
REFERENCE_FILE = "similarity_reference.json"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays, (n,)."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


@dataclass
class SimilarityReference:
    """Where a cosine falls among cosines of random sentence pairs: `quantiles[i]` is the i-th percentile."""

    quantiles: list[float]  # 101 values: percentiles 0, 1, ..., 100 of the random-pair cosines
    pairs: int
    source: str
    mean: float
    std: float

    def percentile(self, cosine: float) -> float:
        """The share of random pairs (0-100) whose cosine is below `cosine`, interpolated between percentiles."""
        q = np.asarray(self.quantiles)
        if cosine <= q[0]:
            return 0.0
        if cosine >= q[-1]:
            return 100.0
        # Percentiles of a sample can repeat (ties): interpolate over the distinct values only.
        values, first = np.unique(q, return_index=True)
        return float(np.interp(cosine, values, first.astype(float)))

    @classmethod
    def from_cosines(cls, cosines: np.ndarray, source: str) -> SimilarityReference:
        cosines = np.asarray(cosines, dtype=np.float64)
        return cls(
            quantiles=[float(v) for v in np.percentile(cosines, np.arange(101))],
            pairs=int(len(cosines)),
            source=source,
            mean=float(cosines.mean()),
            std=float(cosines.std()),
        )

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / REFERENCE_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, model_dir: Path) -> SimilarityReference | None:
        """The model folder's reference, or None when it has none (or an unreadable one: logged)."""
        path = Path(model_dir) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            reference = cls(**data)
            if len(reference.quantiles) != 101:
                raise ValueError(f"{len(reference.quantiles)} quantiles, expected 101")
            return reference
        except (OSError, ValueError, TypeError) as err:
            log.warning("%s could not be read (%s): no random-pair reference", path, str(err).splitlines()[0])
            return None


def random_pair_cosines(embeddings: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """Cosines of `n_pairs` random pairs of distinct rows of (n, d) `embeddings`, (n_pairs,); seeded."""
    rng = np.random.default_rng(seed)
    n = len(embeddings)
    if n < 2:
        raise ValueError("random pairs need at least two sentences")
    first = rng.integers(0, n, size=n_pairs)
    second = (first + rng.integers(1, n, size=n_pairs)) % n  # never the same row
    return cosine_rows(embeddings[first], embeddings[second])


def read_postprocessing(model_dir: str | Path) -> dict[str, Any] | None:
    """The model folder's postprocessing.json (what was chosen, on what, with every candidate's score, and
    `modules`: how many trailing modules are post-processing), or None when the folder has none.

    Raises UserError (one line) when the file is there but not a JSON object: which modules to skip for the NLI
    head cannot be known then.
    """
    path = Path(model_dir) / POSTPROCESS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(
            f"{path} could not be read ({str(err).splitlines()[0]}); fit it again (python -m siamese.fit_postprocessing)"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; fit it again (python -m siamese.fit_postprocessing)")
    return data


def postprocessing_modules(model_dir: Path) -> int:
    """How many trailing modules of the model folder are post-processing (0 for a folder without it)."""
    return int((read_postprocessing(model_dir) or {}).get("modules", 0))


def without_postprocessing(model: SentenceTransformer, modules: int) -> SentenceTransformer:
    """A view of `model` without its last `modules` modules (the same module objects, no copy)."""
    if modules == 0:
        return model
    if modules >= len(model):
        raise ValueError(f"cannot drop {modules} of the model's {len(model)} modules")
    return SentenceTransformer(modules=[model[i] for i in range(len(model) - modules)], device=str(model.device))
