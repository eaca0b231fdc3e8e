"""The numbers of an evaluation: NLI accuracy, confusion matrix and classification report, cosine statistics by
gold class and of random sentence pairs, and STS-B Spearman / Pearson of cosine similarity (read at a declared score scale, scored by
sentence-transformers' evaluator). `siamese/evaluate.py` decides what is scored; this file only computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from siamese.encoder import LABELS, NLIEncoder
from siamese.postprocess import cosine_rows, random_pair_cosines
from stagekit.errors import DataError
from stagekit.sources import SourceConfig, load_source, reading
from stagekit.text import has_visible_content

HUB_STSB = "sentence-transformers/stsb"
STSB_HINT = "${BERT_DATA_DIR}/stsb/test.jsonl.gz"  # the shared copy, as `siamese/evaluate.py`'s EVAL_SETS names it


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
    its sentences (premises and hypotheses mixed; `siamese.postprocess.random_pair_cosines`, seeded).

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

    Raises DataError (one line) for a score outside 0..score_scale, naming the row, or when no pair is left.
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
    return s1, s2, scores


def stsb_metrics(encoder: NLIEncoder, s1: list[str], s2: list[str], scores: list[float]) -> dict[str, Any]:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    evaluator = EmbeddingSimilarityEvaluator(
        s1, s2, scores, batch_size=64, similarity_fn_names=["cosine"], name="stsb", write_csv=False
    )
    result = evaluator(encoder.model)
    return {"spearman": result["stsb_spearman_cosine"], "pearson": result["stsb_pearson_cosine"], "n": len(scores)}
