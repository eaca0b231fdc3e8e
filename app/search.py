"""Semantic search for the app: a list of sentences encoded once, then the top k by cosine for each query.

Sentences come from pasted text (one per line), an uploaded .txt (one per line) or .csv (one column), or by
default a few thousand MNLI dev premises. Exact search by one matrix product over unit-length float32 rows:
at 100k sentences × 384 dimensions that is ~40 MFLOP a query, a few milliseconds on a laptop CPU
(`python -m bench.search_latency`), so no approximate index is needed at this size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from app.examples import example_sources, load_examples
from app.predict import MAX_CHARS_ENV, max_text_chars, too_long_message, unknown_message
from siamese.inference.encoder import MOSTLY_UNKNOWN, NLIEncoder
from stagekit.errors import DataError, UserError
from stagekit.text import has_visible_content

MAX_SENTENCES_ENV = "APP_SEARCH_MAX_SENTENCES"
SENTENCES_ENV = "APP_SEARCH_SENTENCES"  # a .txt file, one sentence per line, searched by default (a Space's own set)
DEFAULT_MAX_SENTENCES = 100_000
MAX_UPLOAD_MB = 50
DEFAULT_CORPUS_SIZE = 3_000  # MNLI dev matched premises, each once
ENCODE_CHUNK = 1_024  # sentences per encode call: the progress bar moves once per chunk


def max_sentences(env: Mapping[str, str] = os.environ) -> int:
    value = env.get(MAX_SENTENCES_ENV, str(DEFAULT_MAX_SENTENCES))
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{MAX_SENTENCES_ENV} must be a positive integer, got {value!r}")
    return int(value)


def clean_sentences(
    lines: list[str], where: str, limit: int, max_chars: int | None = None, unit: str = "line"
) -> list[str]:
    """Stripped lines with visible text, each once, in order. Raises DataError when none is left, when there are
    more than `limit`, or when one is longer than `max_chars` characters (default: max_text_chars()), naming its
    `unit` ("line", "row") and number: nothing of such a list is encoded."""
    longest = max_text_chars() if max_chars is None else max_chars
    for number, line in enumerate(lines, 1):
        if len(line) > longest:
            raise DataError(
                f"{where}, {unit} {number:,}: {len(line):,} characters, over this app's limit of {longest:,} characters "
                f"a text ({MAX_CHARS_ENV}); nothing was encoded"
            )
    kept = list(dict.fromkeys(line.strip() for line in lines if has_visible_content(line)))
    if not kept:
        raise DataError(f"{where}: no sentences (one per line, with visible text)")
    if len(kept) > limit:
        raise DataError(f"{where}: {len(kept):,} sentences, more than the limit of {limit:,} ({MAX_SENTENCES_ENV})")
    return kept


def sentences_from_upload(
    data: bytes, name: str, limit: int, column: str | None = None, max_chars: int | None = None
) -> list[str]:
    """A .txt (one sentence per line) or a .csv's `column` (default: its first column). DataError on bad input,
    including a sentence longer than `max_chars` (clean_sentences)."""
    if len(data) > MAX_UPLOAD_MB * 1_000_000:
        raise DataError(f"{name}: {len(data) / 1e6:.1f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: not UTF-8 text (bad byte at offset {err.start})") from None
    if not name.lower().endswith(".csv"):
        return clean_sentences(text.splitlines(), name, limit, max_chars)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{name}: not a valid CSV: {str(err).strip().splitlines()[-1]}") from None
    if column is None:
        column = str(table.columns[0])
    if column not in table.columns:
        raise DataError(f"{name}: no column {column!r} (columns: {', '.join(map(str, table.columns))})")
    return clean_sentences(table[column].tolist(), f"{name}, column {column!r}", limit, max_chars, unit="row")


def csv_columns(data: bytes) -> list[str]:
    """The header of an uploaded CSV (empty when it cannot be read: `sentences_from_upload` says why)."""
    try:
        return [str(c) for c in pd.read_csv(io.BytesIO(data), dtype=str, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError, UnicodeDecodeError):
        return []


def default_corpus(source: str, size: int = DEFAULT_CORPUS_SIZE) -> list[str]:
    """The first `size` distinct premises of the MNLI dev source the example picker reads."""
    examples = load_examples(source, limit=4 * size)  # premises repeat: ~3 hypotheses each
    return list(dict.fromkeys(e.premise for e in examples))[:size]


def default_sentences(env: Mapping[str, str] = os.environ) -> list[str]:
    """The search tab's default sentences: the file `APP_SEARCH_SENTENCES` names (one per line; a Space folder
    carries one, app/space.py), else `default_corpus` of the local MNLI dev file. Raises a one-line UserError when
    neither can be read, DataError for a file with no sentences or more than `max_sentences`."""
    path = env.get(SENTENCES_ENV)
    if not path:
        return default_corpus(example_sources(env)[-1])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{SENTENCES_ENV}={path}: cannot be read ({type(err).__name__})") from None
    return clean_sentences(text.splitlines(), path, max_sentences(env))


@dataclass
class SearchIndex:
    """Sentences and their unit-length embeddings (n, d) float32, as the model outputs them (its first d
    dimensions after `truncate`); `left_out` counts the sentences not indexed because they are mostly [UNK] to the
    model (siamese.inference.encoder.MOSTLY_UNKNOWN)."""

    sentences: list[str]
    embeddings: np.ndarray
    left_out: int = 0

    @classmethod
    def build(
        cls, encoder: NLIEncoder, sentences: list[str], progress: Callable[[float], None] | None = None
    ) -> SearchIndex:
        """DataError when every sentence is mostly [UNK]: such a sentence's embedding is close to every other such
        sentence's whatever it says, so it would crowd the results of any query."""
        kept, parts = [], []
        for start in range(0, len(sentences), ENCODE_CHUNK):
            chunk = sentences[start : start + ENCODE_CHUNK]
            unknown = encoder.token_stats(chunk)[1]
            chunk = [text for text, share in zip(chunk, unknown, strict=True) if share <= MOSTLY_UNKNOWN]
            if chunk:
                kept += chunk
                parts.append(encoder.embed(chunk).float().cpu().numpy())
            if progress is not None:
                progress(min(start + ENCODE_CHUNK, len(sentences)) / len(sentences))
        if not kept:
            raise DataError(
                f"none of the {len(sentences):,} sentences can be searched: each is mostly [UNK] tokens to this model "
                "(a script, emoji or symbols its vocabulary lacks)"
            )
        return cls(kept, unit_rows(np.concatenate(parts)), len(sentences) - len(kept))

    @property
    def dims(self) -> int:
        return int(self.embeddings.shape[1])

    def truncate(self, dims: int) -> SearchIndex:
        """The same sentences searched by their embeddings' first `dims` dimensions (a Matryoshka-trained model,
        loss.matryoshka_dims, is trained for it): no encoding, as a unit row's first dims, made unit length again,
        are the embedding's own. Raises UserError for a width outside 1..dims."""
        if not 1 <= dims <= self.dims:
            raise UserError(f"cannot search by {dims} dimensions: the index holds {self.dims}")
        if dims == self.dims:
            return self
        return SearchIndex(self.sentences, unit_rows(self.embeddings[:, :dims]), self.left_out)

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The `k` rows most cosine-similar to `query` (d,) or its first `dims` dimensions, best first, as (row,
        cosine)."""
        scores = self.embeddings @ unit_rows(query[None, : self.dims])[0]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top]


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def search_table(
    index: SearchIndex, encoder: NLIEncoder, query: str, k: int, max_chars: int | None = None
) -> pd.DataFrame:
    """rank, cosine, sentence for the top `k` sentences of `index` for `query`. UserError for an empty query, one
    longer than `max_chars` (default: max_text_chars(); checked before it is tokenized) or one that is mostly [UNK]
    to the model."""
    if not has_visible_content(query):
        raise UserError("Please enter a query (empty text, or only spaces or invisible characters, finds nothing).")
    limit = max_text_chars() if max_chars is None else max_chars
    if len(query) > limit:
        raise UserError(too_long_message({"query": len(query)}, limit, "searched", encoder.max_seq_length))
    unknown = float(encoder.token_stats([query])[1][0])
    if unknown > MOSTLY_UNKNOWN:
        raise UserError(unknown_message({"query": unknown}, "no results are shown"))
    embedding = encoder.embed([query]).float().cpu().numpy()[0]
    hits = index.search(embedding, k)
    # cosine before the sentence: side by side with the baseline, a long sentence would push it out of view
    return pd.DataFrame(
        {
            "rank": range(1, len(hits) + 1),
            "cosine": [score for _, score in hits],
            "sentence": [index.sentences[i] for i, _ in hits],
        }
    )
