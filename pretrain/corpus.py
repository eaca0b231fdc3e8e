"""Raw documents in, clean documents out: read a Hub or local source in bounded batches, clean, split.

Nothing here holds more than one batch of documents. The source is streamed (local JSON Lines line by
line; anything else through datasets, or with data.streaming=false from datasets' memory-mapped Arrow cache
of it) and cut into chunks that `pretrain.packing` cleans and tokenizes in worker processes, a document
longer than PIECE_CHARS in pieces. The train/validation split is a seeded hash of each cleaned document,
so it needs no shuffle of the whole corpus and no document positions.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

from pretrain.config import LOCAL_CORPUS_HINT, DataConfig
from stagekit.errors import DataError
from stagekit.sources import check_readable, file_type, load_source, local_files, reading
from stagekit.text import has_visible_content, hashed_below

_TAG = re.compile(r"<\s*/?\s*(?:br|p|i|b|em|strong|hr|div|span|a)\b[^>]*>", re.IGNORECASE)
# A chunk also ends at this many characters (~200 IMDB reviews, ~16 Wikipedia articles), so the memory
# of the chunks in flight does not depend on document length: 12k IMDB reviews + 800 articles peaked
# 8% above the reviews alone with 1M-character chunks, 6% with these (Pss_Anon, bench/process_memory.py).
CHUNK_CHARS = 1 << 18
# Documents per read from the source. Reading whole chunks of 1,000 documents held ~20M characters of
# Wikipedia at once and raised the main process's peak by 30 % over IMDB alone (docs/benchmarks.md).
READ_BATCH = 64
SPLITS = ("train", "validation")


# Documents longer than this (characters) are cleaned, tokenized and fed to the tokenizer trainer in pieces of
# at most this size: a whole document's word list (cleaning) or tokenizers Encoding (~100 bytes per token)
# would grow with its length. The pieces are cut at whitespace, so their words are the document's.
PIECE_CHARS = 1 << 16


def clean_text(text: str | None, piece_chars: int = PIECE_CHARS) -> str:
    """Strip HTML leftovers such as `<br />` and entities, then collapse all whitespace to single spaces.

    A text longer than `piece_chars` is cleaned in `raw_pieces`, which join into the same result."""
    if not text:
        return ""
    if len(text) > piece_chars:
        return " ".join(filter(None, map(_clean, raw_pieces(text, piece_chars))))
    return _clean(text)


def _clean(text: str) -> str:
    if "<" in text:
        text = _TAG.sub(" ", text)
    text = html.unescape(text)
    # str.split() splits on exactly the characters re's \s matches (str.isspace), 3.5x faster than
    # re.sub(r"\s+", " ", text).strip(), which was most of the cleaning time (docs/benchmarks.md).
    return " ".join(text.split())


def raw_pieces(text: str, limit: int) -> Iterator[str]:
    """`text` in consecutive pieces of at most `limit` characters, each cut just before a whitespace character
    that no HTML tag spans, so that `clean_text` of each piece, joined by spaces, is `clean_text` of the whole.

    Where `limit` characters hold no such place (a `<` opened early and never closed, then a tag), the cut is
    at the last whitespace; where they hold no whitespace at all, at `limit`: only such pathological text is
    cleaned differently from the whole (a space inside a tag or a word of `limit` characters).
    """
    start = 0
    while len(text) - start > limit:
        cut = _cut_before_space(text, start, start + limit)
        yield text[start:cut]
        start = cut
    yield text[start:]


def _cut_before_space(text: str, start: int, end: int) -> int:
    last = candidate = _last_space(text, start, end)
    while candidate > start:
        opening = text.rfind("<", start, candidate)
        if opening <= text.rfind(">", start, candidate):  # no tag open here: _TAG's matches end at a ">"
            return candidate
        candidate = _last_space(text, start, opening)
    return last if last > start else end


def _last_space(text: str, start: int, end: int) -> int:
    """The last whitespace position in text[start + 1:end], or -1."""
    for position in range(end - 1, start, -1):
        if text[position].isspace():
            return position
    return -1


def text_pieces(text: str, limit: int) -> Iterator[str]:
    """A cleaned document in consecutive pieces of at most `limit` characters, each cut before a space.

    WordPiece tokenizers split words at spaces, so the pieces' tokens, concatenated, are the document's. A
    stretch of `limit` characters without a space (unspaced scripts) is cut where it ends: between two CJK
    characters that changes nothing either (BERT's tokenizer splits them), elsewhere it splits one word.
    """
    start = 0
    while len(text) - start > limit:
        cut = text.rfind(" ", start + 1, start + limit + 1)
        cut = cut if cut > start else start + limit
        yield text[start:cut]
        start = cut
    yield text[start:]


def in_validation(text: str, fraction: float, seed: int) -> bool:
    """Whether a cleaned document goes to validation: a seeded hash of its text is below `fraction`.

    A stream can be split this way without knowing its length; the split does not depend on chunking
    or worker count; exact duplicates (1,533 in the IMDB stand-in) land in the same split.
    """
    return hashed_below(text, fraction, key=str(seed).encode())


@dataclass
class SplitDocuments:
    """One batch of documents cleaned and split; `read` raw documents, `dropped` too short after cleaning."""

    read: int = 0
    dropped: int = 0
    texts: dict[str, list[str]] = field(default_factory=lambda: {split: [] for split in SPLITS})


def split_documents(raw: list[str | None], min_chars: int, validation_fraction: float, seed: int) -> SplitDocuments:
    """Clean `raw`, drop documents shorter than `min_chars` characters or with nothing visible in them
    (`stagekit.text.has_visible_content`: zero-width and control characters alone), split the rest by
    `in_validation`."""
    out = SplitDocuments(read=len(raw))
    for text in raw:
        text = clean_text(text)
        if len(text) < min_chars or not has_visible_content(text):
            out.dropped += 1
        else:
            out.texts["validation" if in_validation(text, validation_fraction, seed) else "train"].append(text)
    return out


def _missing_column(source: str, column: str, columns: list[str]) -> str:
    return f"{source}: no text column '{column}' (columns: {', '.join(columns)}); set data.text_column to one of them"


def raw_batches(cfg: DataConfig, batch_size: int) -> Iterator[list[str | None]]:
    """The raw texts of the source's first `max_documents` documents, in source order, `batch_size` at a time.

    Several local files (a folder or glob) are read one after another, so they may have different
    other columns (the Wikipedia stand-in has id and title, IMDB only text). Local JSON Lines files are
    read line by line (`json_lines_texts`), so their other columns never matter. Raises DataError (one
    line) for a missing file, a missing or non-text column, or a malformed / non-UTF-8 file.
    """
    files = local_files(cfg.source.path)
    remaining = cfg.max_documents
    for name in files if files else [cfg.source.path]:
        for texts in _texts_of(cfg, name, batch_size):
            if remaining is not None:
                texts, remaining = texts[:remaining], remaining - min(remaining, len(texts))
            yield texts
            if remaining == 0:
                return


def _texts_of(cfg: DataConfig, name: str, batch_size: int) -> Iterator[list[str | None]]:
    """The text column of one file (or Hub dataset), `batch_size` values at a time."""
    if is_json_lines(name):
        yield from json_lines_texts(name, cfg.text_column, batch_size)
        return
    with reading(name):  # a malformed or non-UTF-8 line met while streaming: one line, no traceback
        source = load_source(
            name,
            split=cfg.source.split,
            config_name=cfg.source.config_name,
            revision=cfg.source.revision,
            streaming=cfg.streaming,
            local_hint=LOCAL_CORPUS_HINT,
        )
        columns = source.column_names  # None for a stream whose features are not known yet
        if columns is not None:
            if cfg.text_column not in columns:
                raise DataError(_missing_column(name, cfg.text_column, list(columns)))
            source = source.select_columns([cfg.text_column])
        for batch in source.iter(batch_size=batch_size):
            if cfg.text_column not in batch:
                raise DataError(_missing_column(name, cfg.text_column, list(batch)))
            texts = batch[cfg.text_column]
            wrong = next((t for t in texts if t is not None and not isinstance(t, str)), None)
            if wrong is not None:
                raise DataError(f"{name}: column '{cfg.text_column}' holds {type(wrong).__name__}, not text")
            yield texts


def is_json_lines(path: str) -> bool:
    """A local .jsonl / .json file (compressed or not) of one JSON object per line, not a JSON array."""
    if not os.path.isfile(path) or file_type(path) not in (".jsonl", ".json"):
        return False
    check_readable(path)  # missing, empty or truncated: one line
    with fsspec.open(path, "rb", compression="infer") as fh:
        start = fh.read(4096).lstrip()
    return not start.startswith(b"[")


def json_lines_texts(path: str, column: str, batch_size: int) -> Iterator[list[str | None]]:
    """`column` of every line of a local JSON Lines file, `batch_size` values at a time, None where a line lacks it.

    Only that one value is looked at: datasets' JSON reader fixes every column's type from the first 10 MB
    and then fails on a later line where another column changes type or first appears. Raises DataError
    (one line naming the file and line) for a line that is not a JSON object, a value that is not text,
    or a first line without the column.
    """
    batch: list[str | None] = []
    first = True
    with fsspec.open(path, "rb", compression="infer") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:  # UnicodeDecodeError included
                raise DataError(f"{path}: could not be read: line {number}: {err}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: could not be read: line {number} is not a JSON object")
            if first and column not in row:
                raise DataError(_missing_column(path, column, list(row)))
            first = False
            text = row.get(column)
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}: line {number}: column '{column}' holds {type(text).__name__}, not text")
            batch.append(text)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def document_chunks(cfg: DataConfig) -> Iterator[list[str | None]]:
    """Raw documents in source order, in chunks of at most `data.chunk_documents` documents that end at the
    first document reaching CHUNK_CHARS characters. The source is read READ_BATCH documents at a time, so the
    main process holds one chunk and one small read batch, whatever the documents' lengths."""
    chunk: list[str | None] = []
    chars = 0
    for batch in raw_batches(cfg, min(cfg.chunk_documents, READ_BATCH)):
        for text in batch:
            chunk.append(text)
            chars += len(text or "")
            if len(chunk) >= cfg.chunk_documents or chars >= CHUNK_CHARS:
                yield chunk
                chunk, chars = [], 0
    if chunk:
        yield chunk


def training_sample(cfg: DataConfig, limit: int) -> Iterator[list[str]]:
    """The first `limit` cleaned training documents, in batches: what the tokenizer learns its vocabulary from.

    Raises DataError (one line) if the source holds no document, or no training document long enough.
    """
    taken = read = 0
    for raw in document_chunks(cfg):
        read += len(raw)
        texts = split_documents(raw, cfg.min_chars, cfg.validation_fraction, cfg.split_seed).texts["train"]
        texts = texts[: limit - taken]
        taken += len(texts)
        if texts:
            yield texts
        if taken == limit:
            return
    if read == 0:
        raise DataError(f"{cfg.source.path}: no documents found")
    if taken == 0:
        raise DataError(
            f"{cfg.source.path}: none of the {read} documents gives a training document of at least "
            f"data.min_chars={cfg.min_chars} characters after cleaning"
        )
