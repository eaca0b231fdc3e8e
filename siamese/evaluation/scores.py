"""The numbers of an evaluation: NLI accuracy, confusion matrix and classification report, cosine statistics by
gold class and of random sentence pairs, and STS-B Spearman / Pearson of cosine similarity (read at a declared score scale, scored by
sentence-transformers' evaluator). `siamese/evaluation/evaluate.py` decides what is scored; this file only computes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix

from siamese.inference.encoder import LABELS, NLIEncoder
from siamese.inference.postprocess import cosine_rows, random_pair_cosines
from siamese.nli_data import class_counts
from stagekit.errors import DataError
from stagekit.sources import SourceConfig, load_source, reading
from stagekit.text import has_visible_content

HUB_STSB = "sentence-transformers/stsb"
STSB_HINT = (
    "${BERT_DATA_DIR}/stsb/test.jsonl.gz"  # the shared copy, as `siamese/evaluation/evaluate.py`'s EVAL_SETS names it
)


def stsb_scale(path: str, declared: float | None = None) -> float:
    """The largest score `path` can hold, as declared: `declared` if given, 1.0 for the Hub's normalised
    sentence-transformers/stsb, else 5.0 (STS-B's own 0-5 scale, which the shared copy keeps)."""
    if declared is not None:
        return declared
    return 1.0 if path == HUB_STSB else 5.0


def nli_metrics(gold: Sequence[int], predicted: Sequence[int]) -> dict[str, Any]:
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    ids = list(range(len(LABELS)))
    return {
        "accuracy": float((gold == predicted).mean()),
        "n": int(len(gold)),
        "confusion_matrix": confusion_matrix(gold, predicted, labels=ids).tolist(),  # rows gold, columns predicted
        "classification_report": classification_report(
            gold, predicted, labels=ids, target_names=list(LABELS), output_dict=True, zero_division=0
        ),
    }


def one_class_warning(where: str, gold: Sequence[int]) -> str | None:
    """One line when every pair of an NLI set has the same gold class: its accuracy is then that of one class (a
    model that always answers it scores 1.0), else None."""
    counts = class_counts(gold)
    if len(counts) != 1:
        return None
    ((name, n),) = counts.items()
    return f"{where}: all {n:,} pair{'' if n == 1 else 's'} are {name}, so its accuracy measures that one class only"


def cosine_by_class(cosine: np.ndarray, gold: Sequence[int]) -> dict[str, dict[str, float]]:
    gold = np.asarray(gold)
    return {
        name: {
            "mean": float(cosine[gold == i].mean()),
            "std": float(cosine[gold == i].std()),
            "n": int((gold == i).sum()),
        }
        for i, name in enumerate(LABELS)
        if (gold == i).any()
    }


def cosine_summary(cosine: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(cosine)), "std": float(np.std(cosine)), "n": int(len(cosine))}


def cosine_sections(
    embeddings: tuple[np.ndarray, np.ndarray], gold: Sequence[int], seed: int = 0
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Cosine statistics of one embedding space on an NLI set: by gold class, and of as many random pairs of
    its sentences (premises and hypotheses mixed; `siamese.inference.postprocess.random_pair_cosines`, seeded).

    Returns the report section ({"cosine_by_class", "random_pair_cosine"}), the pairs' cosines and the random
    pairs' cosines, both (n,).
    """
    u, v = embeddings
    cosine = cosine_rows(u, v)
    random = random_pair_cosines(np.concatenate([u, v]), len(u), seed)
    section = {"cosine_by_class": cosine_by_class(cosine, gold), "random_pair_cosine": cosine_summary(random)}
    return section, cosine, random


def read_stsb(
    source: SourceConfig, limit: int | None, score_scale: float, *, local_hint: str = STSB_HINT
) -> tuple[list[str], list[str], list[float]]:
    """The first `limit` STS-B pairs with text, scores divided by the source's declared `score_scale` (to 0-1).

    Raises DataError (one line) for a score outside 0..score_scale, naming the row, or when fewer than 2 pairs
    or only one score value are left (Spearman and Pearson are undefined there).
    """
    ds = load_source(
        source.path, split=source.split, config_name=source.config_name, streaming=True, local_hint=local_hint
    )
    s1, s2, scores = [], [], []
    with reading(source.path):
        for row_number, row in enumerate(ds, start=1):
            if limit is not None and len(scores) >= limit:
                break
            a, b, score = row.get("sentence1"), row.get("sentence2"), row.get("score", row.get("label"))
            if not (has_visible_content(a) and has_visible_content(b)) or score is None:
                continue
            if not 0.0 <= float(score) <= score_scale:
                raise DataError(
                    f"{source.path}: row {row_number}: score {score} is outside 0-{score_scale:g}, the scale declared "
                    "for this source; set stsb_scale= to the scale of its scores"
                )
            s1.append(a)
            s2.append(b)
            scores.append(float(score) / score_scale)
    if not scores:
        raise DataError(f"{source.path}: no STS-B pairs (need sentence1, sentence2, score columns)")
    need = "Spearman and Pearson need at least 2 pairs with different scores"
    if len(scores) < 2:
        read = f" (limit={limit})" if limit is not None else ""
        raise DataError(f"{source.path}: 1 STS-B pair{read}: {need}")
    if len(set(scores)) < 2:
        raise DataError(f"{source.path}: all {len(scores)} STS-B scores are {scores[0] * score_scale:g}: {need}")
    return s1, s2, scores


@contextlib.contextmanager
def quiet_evaluators() -> Iterator[None]:
    """sentence-transformers' evaluators log every figure at INFO (some twenty lines a call, one call per width):
    the report holds them, so they are kept to warnings here."""
    logger = logging.getLogger("sentence_transformers.sentence_transformer.evaluation")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class FromEmbeddingTable:
    """Mixed into a sentence-transformers evaluator: `embed_inputs` reads rows of embeddings computed once
    (`table`: text → (d,) tensor) and truncates them to the evaluator's `truncate_dim`, so each width is scored
    without encoding again."""

    table: dict[str, torch.Tensor]
    truncate_dim: int | None

    def embed_inputs(self, model, sentences, *args, **kwargs) -> torch.Tensor:
        from sentence_transformers.util import truncate_embeddings

        return truncate_embeddings(torch.stack([self.table[s] for s in sentences]), self.truncate_dim)


def embedding_table(encoder: NLIEncoder, texts: Sequence[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """text → its embedding as the model outputs it (full width, float32 on the CPU); each distinct text once."""
    distinct = list(dict.fromkeys(texts))
    embeddings = encoder.embed(distinct, batch_size=batch_size).float().cpu()
    return dict(zip(distinct, embeddings, strict=True))


def stsb_by_width(
    encoder: NLIEncoder, s1: list[str], s2: list[str], scores: list[float], widths: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """STS-B Spearman / Pearson of cosine for each width k: the embeddings' first k dimensions (Matryoshka
    truncation), from one forward pass over the sentences, by the evaluator `stsb_metrics` uses."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    class TableEvaluator(FromEmbeddingTable, EmbeddingSimilarityEvaluator):
        pass

    evaluator = TableEvaluator(s1, s2, scores, similarity_fn_names=["cosine"], name="stsb", write_csv=False)
    evaluator.table = embedding_table(encoder, [*s1, *s2])
    by_width = {}
    for width in widths:
        evaluator.truncate_dim = width
        with quiet_evaluators():
            result = evaluator(encoder.model)
        by_width[int(width)] = {
            "spearman": float(result["stsb_spearman_cosine"]),
            "pearson": float(result["stsb_pearson_cosine"]),
            "n": len(scores),
        }
    return by_width


def stsb_metrics(encoder: NLIEncoder, s1: list[str], s2: list[str], scores: list[float]) -> dict[str, Any]:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    evaluator = EmbeddingSimilarityEvaluator(
        s1, s2, scores, batch_size=64, similarity_fn_names=["cosine"], name="stsb", write_csv=False,
        truncate_dim=encoder.truncate_dim,
    )  # fmt: skip
    result = evaluator(encoder.model)
    return {"spearman": result["stsb_spearman_cosine"], "pearson": result["stsb_pearson_cosine"], "n": len(scores)}
