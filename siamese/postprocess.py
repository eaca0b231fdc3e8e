"""Post-processing saved as part of the model: centring or whitening of the sentence embeddings, chosen per
model on STS-B *validation*, and the reference distribution of random-pair cosines the app reads a cosine by.

Whitening is Su et al. 2021, "Whitening Sentence Representations for Better Semantics and Faster Retrieval"
(arXiv:2103.15316): y = (x − μ) W with W = U Λ^(-1/2) from the SVD Σ = U Λ Uᵀ of the embeddings' covariance,
optionally keeping the first k columns of W. Both μ and Σ are fitted on training sentences only. It spreads an
anisotropic space (every cosine ~0.9) but can hurt an encoder that is already isotropic (all-MiniLM-L6-v2), so
`method: auto` keeps whichever of none / centring / whitening scores the best STS-B validation Spearman, and
"none" wins a tie. The transform is a sentence-transformers `Dense` module (identity activation) appended to the
model, so `SentenceTransformer(path).encode` returns the post-processed embedding with no code of ours.

The NLI head keeps reading the embedding *before* post-processing (the one it was trained on), so its
probabilities are exactly those of training; `postprocessing.json` says how many trailing modules to skip for it.

A model trained to be truncated (`loss.matryoshka_dims`) is whitened in its own order instead (`nested`): with
Σ = L Lᵀ (Cholesky), W = L^(-T) is upper triangular, so the first k outputs depend on the first k inputs only and
are the whitening of that prefix; truncating the whitened embedding then keeps the widths the model was trained
for, where PCA's order would keep the k directions of largest variance instead. Any two whitenings differ by a
rotation, so at the full width both give the same cosines.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense

log = logging.getLogger(__name__)

POSTPROCESS_FILE = "postprocessing.json"
REFERENCE_FILE = "similarity_reference.json"
# Eigenvalues below this fraction of the largest are floored, so a direction the training sentences never
# vary in (a rank-deficient covariance) is not blown up by 1/sqrt(0).
EIGEN_FLOOR = 1e-6


@dataclass
class Candidate:
    """One post-processing tried during selection: `method` at `dims` output dimensions (None: all)."""

    method: str  # none | centre | whiten
    dims: int | None = None
    spearman: float | None = None  # STS-B validation Spearman of cosine (None when not selected on STS-B)

    @property
    def name(self) -> str:
        return self.method if self.dims is None else f"{self.method}-{self.dims}"


@dataclass
class Decision:
    """What `postprocessing.json` holds: the chosen candidate, every candidate's score and the data used."""

    chosen: Candidate
    candidates: list[Candidate]
    selected_on: str | None  # e.g. "STS-B validation (1,500 pairs)"; None for a method fixed by the config
    fit_sentences: int
    fit_source: str
    modules: int  # trailing modules the post-processing added to the SentenceTransformer (0 or 1)
    nested: bool = False  # whitened in the model's own order (a Matryoshka-trained model), not PCA's

    def as_dict(self) -> dict:
        return asdict(self)


def fit_transform(
    embeddings: np.ndarray, method: str, dims: int | None = None, nested: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), matrix (d, k)) such that y = (x − mean) @ matrix; `method` is "centre" or "whiten".

    Args:
        embeddings: (n, d) float embeddings of training sentences, n > d for a full-rank whitening.
        dims: keep the k = `dims` directions of largest variance (whitening only); None keeps all d.
        nested: whiten in the embeddings' own order (Cholesky, see the module docstring): output j depends on
            inputs 1..j only, and `dims` keeps the first k of them.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    mean = x.mean(axis=0)
    d = x.shape[1]
    if method == "centre":
        return mean, np.eye(d)
    if method != "whiten":
        raise ValueError(f"unknown post-processing method {method!r}")
    cov = np.cov(x - mean, rowvar=False)
    k = d if dims is None else min(dims, d)
    if nested:
        # Lifted to the floor below when its smallest eigenvalue is under it: a direction the sentences never
        # vary in stays finite, and a well-conditioned covariance is whitened exactly.
        eigenvalues = np.linalg.eigvalsh(cov)
        ridge = max(0.0, EIGEN_FLOOR * eigenvalues[-1] - eigenvalues[0])
        lower = np.linalg.cholesky(cov + ridge * np.eye(d))
        return mean, np.linalg.inv(lower).T[:, :k]
    u, s, _ = np.linalg.svd(cov)  # Σ symmetric positive semi-definite: its SVD is its eigendecomposition
    s = np.maximum(s, EIGEN_FLOOR * s[0])
    return mean, u[:, :k] / np.sqrt(s[:k])


def apply_transform(x: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - mean) @ matrix


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays, (n,)."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def dense_module(mean: np.ndarray, matrix: np.ndarray) -> Dense:
    """The transform as a sentence-transformers Dense layer: weight = matrixᵀ (k, d), bias = −mean @ matrix."""
    d, k = matrix.shape
    weight = torch.tensor(matrix.T, dtype=torch.float32)
    bias = torch.tensor(-mean @ matrix, dtype=torch.float32)
    return Dense(d, k, bias=True, activation_function=None, init_weight=weight, init_bias=bias)


def candidates_for(method: str, dims: int | None) -> list[Candidate]:
    """`auto`: none, centring, whitening and (with `dims`) whitening to `dims`; otherwise the one method."""
    if method == "auto":
        found = [Candidate("none"), Candidate("centre"), Candidate("whiten")]
        return found + ([Candidate("whiten", dims)] if dims else [])
    return [Candidate(method, dims if method == "whiten" else None)]


def select(
    fit: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, list[float]] | None,
    candidates: list[Candidate],
    nested: bool = False,
) -> Candidate:
    """Score every candidate by STS-B validation Spearman of cosine (`pairs`: embeddings of both sides before
    post-processing and the gold scores) and return the best; the earlier candidate wins a tie, so "none"
    beats a transform that does not help. Without `pairs` there must be one candidate, which is returned."""
    if pairs is None:
        if len(candidates) != 1:
            raise ValueError("selecting among several post-processings needs STS-B validation pairs")
        return candidates[0]
    a, b, gold = pairs
    best = None
    for candidate in candidates:
        if candidate.method == "none":
            ta, tb = a, b
        else:
            mean, matrix = fit_transform(fit, candidate.method, candidate.dims, nested)
            ta, tb = apply_transform(a, mean, matrix), apply_transform(b, mean, matrix)
        candidate.spearman = float(spearmanr(cosine_rows(ta, tb), gold).statistic)
        if best is None or candidate.spearman > best.spearman:
            best = candidate
    return best


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


def postprocessing_modules(model_dir: Path) -> int:
    """How many trailing modules of the model folder are post-processing (0 for a folder without it)."""
    path = Path(model_dir) / POSTPROCESS_FILE
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text(encoding="utf-8")).get("modules", 0))


def without_postprocessing(model: SentenceTransformer, modules: int) -> SentenceTransformer:
    """A view of `model` without its last `modules` modules (the same module objects, no copy)."""
    if modules == 0:
        return model
    if modules >= len(model):
        raise ValueError(f"cannot drop {modules} of the model's {len(model)} modules")
    return SentenceTransformer(modules=[model[i] for i in range(len(model) - modules)], device=str(model.device))


def encode(model: SentenceTransformer, texts: list[str], batch_size: int, progress: bool = False) -> np.ndarray:
    """(n, d) float32 embeddings in eval mode without gradients; the model's training mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=progress)
    finally:
        model.train(was_training)
    return np.asarray(out, dtype=np.float32)


def fit_postprocessing(
    model: SentenceTransformer,
    fit_texts: list[str],
    fit_source: str,
    method: str,
    dims: int | None,
    selection: tuple[list[str], list[str], list[float]] | None,
    selection_name: str | None,
    reference_pairs: int,
    seed: int,
    batch_size: int = 64,
    nested: bool = False,
) -> tuple[SentenceTransformer, Decision, SimilarityReference]:
    """Choose and attach the post-processing; returns the model to save (the same modules, then the Dense module
    when a transform was chosen; `model` itself is not changed), the decision and the random-pair reference of the
    final embeddings.

    Args:
        model: the trained encoder, without post-processing.
        fit_texts: training sentences the transform and the reference are fitted on (never evaluation data).
        selection: STS-B validation (sentence1, sentence2, scores); needed for `method="auto"`.
        nested: whiten in the model's own order (a model trained for truncation; see the module docstring).
    Raises ValueError for fewer than two fit sentences, or `auto` without selection pairs.
    """
    fit = encode(model, fit_texts, batch_size)
    pairs = None
    if selection is not None:
        s1, s2, scores = selection
        both = encode(model, [*s1, *s2], batch_size)
        pairs = (both[: len(s1)], both[len(s1) :], scores)
    candidates = candidates_for(method, dims)
    chosen = select(fit, pairs, candidates, nested)
    final = fit
    modules = 0
    if chosen.method != "none":
        mean, matrix = fit_transform(fit, chosen.method, chosen.dims, nested)
        # A new SentenceTransformer over the same modules plus the transform: the trained model itself stays
        # as it was (under several processes only the main process calibrates, and the ranks must agree).
        dense = dense_module(mean, matrix).to(model.device)
        model = SentenceTransformer(modules=[*(model[i] for i in range(len(model))), dense], device=str(model.device))
        final = apply_transform(fit, mean, matrix)
        modules = 1
    decision = Decision(
        chosen=chosen,
        candidates=candidates,
        selected_on=selection_name if pairs is not None else None,
        fit_sentences=len(fit_texts),
        fit_source=fit_source,
        modules=modules,
        nested=nested and chosen.method == "whiten",
    )
    scores_text = ", ".join(f"{c.name} {c.spearman:.4f}" for c in candidates if c.spearman is not None)
    log.info(
        "post-processing: %s%s", chosen.name, f" (selected on {selection_name}: {scores_text})" if scores_text else ""
    )
    reference = SimilarityReference.from_cosines(
        random_pair_cosines(final, reference_pairs, seed), f"{reference_pairs:,} random pairs of {fit_source}"
    )
    return model, decision, reference


def save_postprocessing(decision: Decision, reference: SimilarityReference, model_dir: Path) -> None:
    (Path(model_dir) / POSTPROCESS_FILE).write_text(json.dumps(decision.as_dict(), indent=2), encoding="utf-8")
    reference.save(model_dir)
