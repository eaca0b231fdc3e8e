"""Semantic search at app scale: encode time of a sentence list and query latency, exact search by numpy
against the alternatives, in one run.

    python -m bench.search_latency --model outputs/siamese-cpu-small/model [--sentences 100000] [--queries 50]

Sentences: the distinct premises and hypotheses of the shared MNLI train / dev and SNLI dev files (about
100k), the first `--sentences` of them. Encoding uses the app's path (`app.search.SearchIndex.build`); a
query is one `encode` of the query plus the top-10 search. Search paths, each over the same unit-length
float32 rows: `numpy` (the app: one matrix-vector product + argpartition), `full sort` (the reference path:
the same product + a full argsort), `torch` (sentence-transformers' `util.semantic_search`) and `faiss`
(IndexFlatIP, only when faiss-cpu is installed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from app.search import SearchIndex
from bench.harness import machine
from siamese.inference.encoder import NLIEncoder
from stagekit.cli import doc_summary, run_cli

FILES = ("mnli/train.jsonl.gz", "mnli/validation_matched.jsonl.gz", "mnli/validation_mismatched.jsonl.gz",
         "snli/validation.jsonl.gz")  # fmt: skip


def corpus(data_dir: Path, n: int) -> list[str]:
    seen: dict[str, None] = {}
    for name in FILES:
        with gzip.open(data_dir / name, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                for text in (row["premise"], row["hypothesis"]):
                    if text.strip():
                        seen.setdefault(text.strip())
                if len(seen) >= n:
                    return list(seen)[:n]
    return list(seen)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def search_paths(rows: np.ndarray, k: int) -> dict[str, Callable[[np.ndarray], object]]:
    from sentence_transformers.util import semantic_search

    index = SearchIndex([], rows)
    tensor = torch.from_numpy(rows)
    paths: dict[str, Callable[[np.ndarray], object]] = {
        "numpy (app)": lambda q: index.search(q, k),
        "full sort (reference)": lambda q: np.argsort(-(rows @ q))[:k],
        "torch util.semantic_search": lambda q: semantic_search(torch.from_numpy(q[None, :]), tensor, top_k=k),
    }
    try:
        import faiss

        flat = faiss.IndexFlatIP(rows.shape[1])
        flat.add(rows)
        paths["faiss IndexFlatIP"] = lambda q: flat.search(q[None, :], k)
    except ImportError:
        pass
    return paths


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.search_latency", description=doc_summary(__doc__))
    parser.add_argument("--model", required=True, help="a model folder (or all-MiniLM-L6-v2)")
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the app's default is 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "all-MiniLM-L6-v2":
        from siamese.evaluation.baseline import load_baseline

        encoder = load_baseline(args.model)
    else:
        encoder = NLIEncoder.load(args.model, device="cpu")
    sentences = corpus(Path(os.environ["BERT_DATA_DIR"]), args.sentences)
    started = time.perf_counter()
    index = SearchIndex.build(encoder, sentences)
    encode_s = time.perf_counter() - started
    queries = sentences[:: max(1, len(sentences) // args.queries)][: args.queries]
    query_vectors = [encoder.embed([q]).float().cpu().numpy()[0] for q in queries]
    encode_query_ms = median_ms(lambda: encoder.embed([queries[0]]), args.queries)
    result = {
        "machine": machine(),
        "model": args.model,
        "sentences": len(sentences),
        "dims": int(index.embeddings.shape[1]),
        "encode_s": encode_s,
        "encode_sentences_per_s": len(sentences) / encode_s,
        "encode_query_ms": encode_query_ms,
        "search_ms": {},
    }
    print(f"{result['machine']}\n{args.model}: {len(sentences):,} sentences × {result['dims']} encoded in "
          f"{encode_s:.1f} s ({result['encode_sentences_per_s']:,.0f}/s); encoding one query {encode_query_ms:.1f} ms")  # fmt: skip
    paths = search_paths(index.embeddings, 10)
    for name, path in paths.items():
        it = iter(query_vectors * 3)
        result["search_ms"][name] = median_ms(lambda p=path, it=it: p(next(it)), len(query_vectors) * 2)
    reference = result["search_ms"]["full sort (reference)"]
    for name, ms in result["search_ms"].items():
        print(f"  top-10 search, {name:28s} {ms:8.2f} ms  ({reference / ms:.2f}× the reference)")
    return result


def cli() -> None:
    import sys

    sys.exit(run_cli(lambda argv: main(argv) and None))


if __name__ == "__main__":
    cli()
