"""Fit a sentence encoder's post-processing (siamese/inference/postprocess.py holds what is saved) and its
random-pair reference, on training sentences; `method: auto` selects on STS-B validation, never test.

Whitening is Su et al. 2021, "Whitening Sentence Representations for Better Semantics and Faster Retrieval"
(arXiv:2103.15316): y = (x − μ) W with W = U Λ^(-1/2) from the SVD Σ = U Λ Uᵀ of the embeddings' covariance,
optionally keeping the first k columns of W. Both μ and Σ are fitted on training sentences only (MNLI train). It
spreads an anisotropic space (every cosine ~0.9) but can hurt an encoder that is already isotropic
(all-MiniLM-L6-v2), so `method: auto` keeps whichever of none / centring / whitening scores the best STS-B
validation Spearman, and "none" wins a tie. The transform is a sentence-transformers `Dense` module (identity
activation) appended to the model.

A model trained to be truncated (`loss.matryoshka_dims`) is whitened in its own order instead (`nested`): with
Σ = L Lᵀ (Cholesky), W = L^(-T) is upper triangular, so the first k outputs depend on the first k inputs only and
are the whitening of that prefix; truncating the whitened embedding then keeps the widths the model was trained
for, where PCA's order would keep the k directions of largest variance instead. Any two whitenings differ by a
rotation, so at the full width both give the same cosines.

The siamese stage calls `fit_postprocessing` on the trained model before writing its folder, its last step; the
command does the same for any model folder — a pretraining output, a fine-tuned model, all-MiniLM-L6-v2 or a Hub id:

    python -m siamese.fit_postprocessing --model outputs/pretrain-cpu-small/model --out outputs/pretrain-cpu-small-whitened
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense

from siamese.config import DataConfig, ImplConfig, ModelConfig, PostprocessConfig, SiameseConfig
from siamese.evaluation.scores import read_stsb, stsb_scale
from siamese.inference.encoder import NLIEncoder, resolve_base, trained_dims
from siamese.inference.postprocess import (
    POSTPROCESS_FILE,
    REFERENCE_FILE,
    SimilarityReference,
    cosine_rows,
    random_pair_cosines,
)
from siamese.model import build_model
from siamese.nli_data import first_pairs, source_name
from stagekit.cli import doc_summary, run_cli
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import UserError
from stagekit.folders import atomic_dir, require_writable
from stagekit.sources import SourceConfig, looks_local

log = logging.getLogger(__name__)

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


def choose_postprocessing(
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
        # as it was (under several processes only the main process fits it, and the ranks must agree).
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


def fit_sentences(data: DataConfig, n: int, seed: int) -> list[str]:
    """Up to `n` distinct sentences (premises and hypotheses, in stream order) of the first training pairs."""
    rows = first_pairs(data, n, seed)
    seen: dict[str, None] = {}
    for premise, hypothesis in zip(rows["premise"], rows["hypothesis"], strict=True):
        seen.setdefault(premise)
        seen.setdefault(hypothesis)
        if len(seen) >= n:
            break
    return list(seen)[:n]


def short_name(source: SourceConfig) -> str:
    """A source as a person reads it: a local file by its last two path parts (mnli/train.jsonl.gz)."""
    name = source_name(source)
    return "/".join(Path(name).parts[-2:]) if looks_local(source.path) else name


def fit_postprocessing(
    model: SentenceTransformer,
    cfg: PostprocessConfig,
    data: DataConfig,
    seed: int,
    batch_size: int = 64,
    nested: bool = False,
) -> tuple[SentenceTransformer, Decision, SimilarityReference]:
    """Fit and attach the post-processing `cfg` asks for; see `choose_postprocessing` (`nested`:
    whitening that keeps the widths of a model trained with loss.matryoshka_dims).

    Raises DataError (one line) when the training or selection data cannot be read.
    """
    texts = fit_sentences(data, cfg.fit_sentences, seed)
    source = "training sentences of " + ", ".join(short_name(s) for s in data.train_sources)
    selection, name = None, None
    if cfg.method == "auto":
        where = cfg.selection_source
        selection = read_stsb(
            where, None, stsb_scale(where.path), local_hint="${BERT_DATA_DIR}/stsb/validation.jsonl.gz"
        )
        name = f"STS-B validation ({len(selection[2]):,} pairs of {short_name(where)})"
    log.info("fitting post-processing on %d %s", len(texts), source)
    return choose_postprocessing(
        model, texts, source, cfg.method, cfg.dims, selection, name, cfg.reference_pairs, seed, batch_size, nested
    )


# Files of a fine-tuned model folder that stay true after its post-processing is fitted again (report.json does not:
# it is re-made).
KEPT_FILES = ("nli_head.safetensors", "nli_labels.json", "run_info.json", "resolved_config.yaml", "metrics.json")


def load_core(name: str) -> tuple[SentenceTransformer, Path | None]:
    """The encoder without any post-processing, and its folder when it is one of ours (to keep its head)."""
    path = Path(resolve_base(name)).expanduser()
    if path.is_dir() and (path / "modules.json").is_file():
        return NLIEncoder.load(path).core, path
    return build_model(ModelConfig(base_model=name), ImplConfig()), None


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m siamese.fit_postprocessing", description=doc_summary(__doc__))
    parser.add_argument(
        "--model", required=True, help="a model folder (pretraining output, SentenceTransformer) or Hub id"
    )
    parser.add_argument("--out", required=True, help="the post-processed model folder to write (replaced atomically)")
    parser.add_argument(
        "--config",
        default=None,
        help="a siamese config whose `postprocess` and `data.train_sources` to use (default: configs/siamese/cpu-small.yaml)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides of that config, e.g. postprocess.method=whiten"
    )
    args = parser.parse_args(argv)
    cfg = load_config(
        SiameseConfig, args.config or REPO_ROOT / "configs" / "siamese" / "cpu-small.yaml", args.overrides
    )
    out = Path(args.out)
    if out.resolve() == Path(args.model).expanduser().resolve():
        raise UserError("--out must differ from --model: the post-processed model is a new folder")
    require_writable(out.parent, "pass --out in a writable folder")  # before minutes of encoding
    model, folder = load_core(args.model)
    nested = folder is not None and bool(trained_dims(folder))  # trained for truncation: keep its widths
    model, decision, reference = fit_postprocessing(model, cfg.postprocess, cfg.data, cfg.train.seed, nested=nested)
    with atomic_dir(out) as tmp:
        model.save(str(tmp))
        for name in KEPT_FILES if folder is not None else ():
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        save_postprocessing(decision, reference, tmp)
    log.info("post-processed model: %s (%s, %s; %s)", out, decision.chosen.name, POSTPROCESS_FILE, REFERENCE_FILE)
    print(out)
    return out


def cli() -> None:
    import sys

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
