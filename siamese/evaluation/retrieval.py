"""Retrieval, as the field scores sentence encoders: sentence-transformers' `InformationRetrievalEvaluator` on a
retrieval set built from NLI pairs, or `NanoBEIREvaluator` (13 small BEIR sets from the Hub) with internet.

The local set (Williams et al.'s MNLI dev matched by default, any NLI file with `retrieval=FILE`): the corpus is
every distinct premise, the queries the distinct hypotheses labelled entailment, and a query's relevant documents
the premise(s) that entail it. Each encoder embeds corpus and queries once; every width (`widths`) is scored from
those embeddings truncated to its first k dimensions, as `SentenceTransformer(truncate_dim=k)` would embed them.

Metrics (per width): MRR@10, NDCG@10, MAP@100, Recall@1/5/10 and Accuracy@1/5/10 (a relevant document in the
top k), each in [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, NanoBEIREvaluator
from sentence_transformers.util import cos_sim

from siamese.config import SourceConfig
from siamese.evaluation.scores import FromEmbeddingTable, embedding_table, quiet_evaluators
from siamese.inference.encoder import NLIEncoder
from siamese.nli_data import read_pairs
from stagekit.errors import DataError
from stagekit.sources import local_files, require_hub

log = logging.getLogger(__name__)

NANOBEIR = "nanobeir"  # the retrieval= value that asks for NanoBEIR instead of a local set
NANOBEIR_DATASET = "sentence-transformers/NanoBEIR-en"
AT_K = [1, 5, 10]
# report key → InformationRetrievalEvaluator's metric name (after its "<name>_cosine_" prefix)
METRICS = {
    "mrr@10": "mrr@10",
    "ndcg@10": "ndcg@10",
    "map@100": "map@100",
    **{f"recall@{k}": f"recall@{k}" for k in AT_K},
    **{f"accuracy@{k}": f"accuracy@{k}" for k in AT_K},
}


@dataclass
class RetrievalSet:
    """Queries and corpus (id → text) with each query's relevant corpus ids, as InformationRetrievalEvaluator
    takes them."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]] = field(default_factory=dict)
    pairs: int = 0  # the NLI pairs it was built from

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "queries": len(self.queries), "corpus": len(self.corpus)}


def nli_retrieval_set(pairs: dict[str, list], name: str) -> RetrievalSet:
    """The retrieval set of NLI `pairs` ({"premise", "hypothesis", "label"}, GLUE labels: 0 = entailment): every
    distinct premise is a document; every distinct entailed hypothesis a query, relevant to each premise that
    entails it."""
    corpus_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for premise, hypothesis, label in zip(pairs["premise"], pairs["hypothesis"], pairs["label"], strict=True):
        doc = corpus_ids.setdefault(premise, f"d{len(corpus_ids)}")
        if label != 0:
            continue
        query = query_ids.setdefault(hypothesis, f"q{len(query_ids)}")
        relevant.setdefault(query, set()).add(doc)
    return RetrievalSet(
        name=name,
        queries={qid: text for text, qid in query_ids.items()},
        corpus={cid: text for text, cid in corpus_ids.items()},
        relevant=relevant,
        pairs=len(pairs["label"]),
    )


class TableIREvaluator(FromEmbeddingTable, InformationRetrievalEvaluator):
    """InformationRetrievalEvaluator over embeddings from one forward pass (`table` set before calling it)."""


class _TableNanoBEIR(NanoBEIREvaluator):
    information_retrieval_class = TableIREvaluator


def _evaluator(rset: RetrievalSet, cls: type = TableIREvaluator) -> InformationRetrievalEvaluator:
    return cls(
        queries=rset.queries,
        corpus=rset.corpus,
        relevant_docs=rset.relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=AT_K,
        precision_recall_at_k=AT_K,
        map_at_k=[100],
        name=rset.name,
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
    )


def retrieval_metrics(encoder: NLIEncoder, rset: RetrievalSet, widths: Sequence[int]) -> dict[str, Any]:
    """The set's description and, for each width k in `widths`, the metrics of the embeddings' first k dimensions:
    {"name", "queries", "corpus", "by_width": {k: {metric: value}}}. Corpus and queries are embedded once.
    A set without a query cannot be scored: `siamese/evaluation/evaluate.py` skips it before any scoring."""
    evaluator = _evaluator(rset)
    evaluator.table = embedding_table(encoder, [*rset.corpus.values(), *rset.queries.values()])

    def set_width(width: int) -> None:
        evaluator.truncate_dim = width

    by_width = _by_width(evaluator, set_width, encoder, rset.name, rset.name, widths)
    return rset.describe() | {"by_width": by_width}


def _by_width(
    evaluator: Any, set_width: Callable[[int], None], encoder: NLIEncoder, name: str, label: str, widths: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Run `evaluator` (named `name`) once per width after `set_width(width)`; METRICS per width, logged as `label`."""
    by_width = {}
    for width in widths:
        set_width(width)
        with quiet_evaluators():
            scores = evaluator(encoder.model)
        by_width[int(width)] = {key: float(scores[f"{name}_cosine_{m}"]) for key, m in METRICS.items()}
        log.info("retrieval on %s, %d dimensions: %s", label, width, _summary(by_width[int(width)]))
    return by_width


def _summary(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {metrics[key]:.4f}" for key in ("mrr@10", "ndcg@10", "recall@1", "recall@10"))


def check_retrieval(retrieval: str | None, default_set: str) -> None:
    """Before any evaluation: `retrieval` (the key `retrieval`) is None (the set of `default_set`), a local NLI file, or
    NANOBEIR, which is read from the Hub. Raises DataError (one line; offline within seconds, naming the local
    set to use instead) for a missing file or an unreachable Hub."""
    if retrieval == NANOBEIR:
        require_hub(
            NANOBEIR_DATASET, f"set retrieval=null for the local set built from {default_set}", setting="retrieval"
        )
    elif retrieval is not None and not local_files(retrieval):
        raise DataError(f"retrieval={retrieval}: no such file (an NLI .jsonl(.gz) / .parquet / .csv, or {NANOBEIR})")


def read_retrieval_set(
    retrieval: str | None, limit: int | None, default_pairs: dict[str, list], default_name: str
) -> RetrievalSet | None:
    """The set `retrieval` names: None → built from `default_pairs`; a file → from its first `limit` pairs (all
    with None); NANOBEIR → None (scored by `nanobeir_metrics`). Raises DataError (one line) as read_pairs does."""
    if retrieval == NANOBEIR:
        return None
    if retrieval is None:
        return nli_retrieval_set(default_pairs, default_name)
    pairs = read_pairs(SourceConfig(path=retrieval, config_name=None, split="train"), limit, local_hint=retrieval)
    path = Path(retrieval)  # named by folder and file, e.g. snli/validation
    return nli_retrieval_set(pairs, "/".join([*path.parent.parts[-1:], path.name.split(".")[0]]))


def retrieval_section(encoder: NLIEncoder, rset: RetrievalSet | None, widths: Sequence[int]) -> dict[str, Any]:
    """report.json's `retrieval` for one encoder: `retrieval_metrics` of `rset`, or NanoBEIR's for None."""
    return nanobeir_metrics(encoder, widths) if rset is None else retrieval_metrics(encoder, rset, widths)


def nanobeir_metrics(encoder: NLIEncoder, widths: Sequence[int]) -> dict[str, Any]:
    """NanoBEIR's mean over its 13 sets, per width, with the same metrics as `retrieval_metrics`; the texts of all
    sets are embedded once."""
    nano = _TableNanoBEIR(
        dataset_id=NANOBEIR_DATASET,
        accuracy_at_k=AT_K,
        precision_recall_at_k=AT_K,
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
    )
    texts = [t for ev in nano.evaluators for t in (*ev.queries, *ev.corpus)]
    table = embedding_table(encoder, texts)

    def set_width(width: int) -> None:
        for ev in nano.evaluators:
            ev.table, ev.truncate_dim = table, width

    by_width = _by_width(nano, set_width, encoder, nano.name, "NanoBEIR", widths)
    queries = sum(len(ev.queries) for ev in nano.evaluators)
    corpus = sum(len(ev.corpus) for ev in nano.evaluators)
    return {"name": "NanoBEIR (mean of 13 sets)", "queries": queries, "corpus": corpus, "by_width": by_width}


def widths_to_score(full: int, trained: Sequence[int] = ()) -> list[int]:
    """The widths an evaluation scores: the full width, its halvings down to 32 dimensions, and every narrower
    width the model was trained at (loss.matryoshka_dims); widest first."""
    widths = {full, *(d for d in trained if d < full)}
    half = full // 2
    while half >= 32:
        widths.add(half)
        half //= 2
    return sorted(widths, reverse=True)
