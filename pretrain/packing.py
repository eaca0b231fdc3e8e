"""Chunks of raw documents → token streams (worker processes) → whole blocks appended to flat token files.

A worker takes one chunk: clean, split, tokenize, and return each split's token stream — every document
followed by [SEP] — as one numpy array. The main process takes the results in source order (a bounded
number in flight) and appends whole blocks `[CLS] + block_size-2 tokens + [SEP]` to the split's file,
carrying the partial block over to the next chunk: the files do not depend on chunk size or worker count.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from pretrain.corpus import split_documents, text_pieces

# Characters per encode_batch call: a tokenizers Encoding keeps tokens, offsets and masks beside the
# ids (~100 bytes per token), so a worker turns small batches into ids at once, not a whole chunk.
ENCODE_CHARS = 1 << 16
_TOKENIZERS: dict[str, Tokenizer] = {}  # per process: each worker loads the tokenizer file once


@dataclass
class EncodedChunk:
    """One chunk's result: `read` raw documents, `dropped` too short, per split the number of documents
    and their token stream (1-D, the cache's dtype, [SEP] after each document); `seconds` per stage."""

    read: int
    dropped: int
    documents: dict[str, int]
    tokens: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkEncoder:
    """Clean, split and tokenize one chunk; a small picklable task (the tokenizer travels as a file path)."""

    tokenizer_file: str
    min_chars: int
    validation_fraction: float
    split_seed: int
    dtype: str

    def __call__(self, raw: list[str | None]) -> EncodedChunk:
        start = time.perf_counter()
        docs = split_documents(raw, self.min_chars, self.validation_fraction, self.split_seed)
        cleaned = time.perf_counter()
        tokenizer = _TOKENIZERS.get(self.tokenizer_file)
        if tokenizer is None:
            tokenizer = _TOKENIZERS[self.tokenizer_file] = Tokenizer.from_file(self.tokenizer_file)
            tokenizer.no_truncation()
            tokenizer.no_padding()
        sep = tokenizer.token_to_id("[SEP]")
        tokens = {split: encode_documents(tokenizer, texts, sep, self.dtype) for split, texts in docs.texts.items()}
        return EncodedChunk(
            read=docs.read,
            dropped=docs.dropped,
            documents={split: len(texts) for split, texts in docs.texts.items()},
            tokens=tokens,
            seconds={"clean + split": cleaned - start, "tokenize": time.perf_counter() - cleaned},
        )


def encode_documents(tokenizer: Tokenizer, texts: list[str], sep: int, dtype: str | np.dtype) -> np.ndarray:
    """The token ids of `texts` without [CLS]/[SEP], each document followed by `sep`, as one 1-D array.

    Encoded about ENCODE_CHARS characters at a time; a longer document in pieces cut at spaces
    (`pretrain.corpus.text_pieces`), whose ids concatenated are the document's.
    """
    parts: list[np.ndarray] = []
    batch: list[str] = []
    ends: list[bool] = []  # whether batch[i] ends its document
    chars = 0
    for piece, last in _pieces(texts):
        if batch and chars + len(piece) > ENCODE_CHARS:
            parts.append(_encode(tokenizer, batch, ends, sep, dtype))
            batch, ends, chars = [], [], 0
        batch.append(piece)
        ends.append(last)
        chars += len(piece)
    if batch:
        parts.append(_encode(tokenizer, batch, ends, sep, dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _pieces(texts: list[str]) -> Iterator[tuple[str, bool]]:
    """(piece, whether it ends its document) for every piece of every text, in order."""
    for text in texts:
        pieces = text_pieces(text, ENCODE_CHARS)
        previous = next(pieces)
        for piece in pieces:
            yield previous, False
            previous = piece
        yield previous, True


def _encode(tokenizer: Tokenizer, batch: list[str], ends: list[bool], sep: int, dtype: str | np.dtype) -> np.ndarray:
    encodings = tokenizer.encode_batch_fast(batch, add_special_tokens=False)
    ids = itertools.chain.from_iterable(
        itertools.chain(e.ids, (sep,) if end else ()) for e, end in zip(encodings, ends, strict=True)
    )
    return np.fromiter(ids, dtype=dtype)


def _init_worker() -> None:
    # Ctrl+C reaches the whole process group: the main process stops the pool, workers must not print
    # tracebacks of their own. The workers are the parallelism, so the Rust tokenizer's threads are off.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@contextlib.contextmanager
def worker_pool(processes: int) -> Iterator[Pool | None]:
    """`processes` worker processes (None when 1: chunks are then encoded in this process).

    Open it before anything starts threads (the tokenizer trainer's): on Linux the workers are forked,
    which is safe only from a single-threaded process, and cheap (no re-import of torch/transformers).
    """
    if processes <= 1:
        yield None
        return
    method = "fork" if sys.platform == "linux" else "spawn"
    pool = multiprocessing.get_context(method).Pool(processes, initializer=_init_worker)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def encode_in_order(
    pool: Pool | None, encoder: ChunkEncoder, chunks: Iterable[list[str | None]], in_flight: int
) -> Iterator[EncodedChunk]:
    """`encoder(chunk)` for each chunk, in order; at most `in_flight` chunks are queued or being encoded.

    (multiprocessing's imap would read the whole source ahead into its task queue.)
    """
    if pool is None:
        yield from map(encoder, chunks)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(encoder, (chunk,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class BlockWriter:
    """Append whole blocks of a token stream to a flat file; the partial block waits for the next stream.

    Block layout (what `pretrain.blocks.TokenBlocks` reads): `[CLS]`, block_size-2 tokens of the stream,
    `[SEP]`. `counts` (int64, length `vocab_size`) counts every id written, specials included.
    """

    def __init__(self, path: Path, block_size: int, cls_id: int, sep_id: int, dtype: np.dtype, vocab_size: int):
        self.path, self.block_size, self.cls_id, self.sep_id, self.dtype = path, block_size, cls_id, sep_id, dtype
        self.blocks = 0
        self.counts = np.zeros(vocab_size, dtype=np.int64)
        self._tail = np.empty(0, dtype=dtype)
        self._file = open(path, "wb")  # closed by finish() or on leaving a `with` block

    def add(self, stream: np.ndarray) -> int:
        """Write as many whole blocks as the tail and `stream` make; return how many were written."""
        stream = np.concatenate([self._tail, stream]) if len(self._tail) else stream
        body = self.block_size - 2
        n = len(stream) // body
        if n:
            blocks = np.empty((n, self.block_size), dtype=self.dtype)
            blocks[:, 0], blocks[:, -1] = self.cls_id, self.sep_id
            blocks[:, 1:-1] = stream[: n * body].reshape(n, body)
            blocks.tofile(self._file)
            self.counts += np.bincount(blocks.ravel(), minlength=len(self.counts))
            self.blocks += n
        self._tail = stream[n * body :].copy()  # fewer than body tokens: dropped at the end, as in group_texts
        return n

    def finish(self) -> None:
        """Flush and fsync, so the file is on disk before the cache folder is renamed into place."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, *_exc) -> None:
        self._file.close()  # after finish() a no-op; on an error, the folder is deleted anyway
