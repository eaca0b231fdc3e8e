"""Build one packed-blocks cache folder: a tokenizer from a bounded sample, then the whole source in chunks.

Memory stays flat: the sample is streamed into the tokenizer trainer (word counts only), at most
2 × data.num_proc chunks are in flight, the main process keeps one partial block per split and a
vocabulary-sized count array, and everything else goes straight to the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from pretrain.config import PretrainConfig
from pretrain.corpus import SPLITS, document_chunks, training_sample
from pretrain.packing import BlockWriter, ChunkEncoder, encode_in_order, worker_pool
from pretrain.tokenizer import token_dtype, train_tokenizer
from stagekit.errors import DataError
from stagekit.folders import atomic_dir

log = logging.getLogger(__name__)
T = TypeVar("T")


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of the distribution `counts` (per token id, specials already 0): the loss of
    guessing by frequency alone. An MLM that learnt anything from context has a validation loss well below."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def raise_few_blocks(cfg: PretrainConfig, split: str) -> None:
    raise DataError(
        f"{cfg.data.source.path}: the {split} split gives no block of data.block_size={cfg.data.block_size} tokens; "
        "use more documents (data.max_documents) or a larger data.validation_fraction"
    )


@contextlib.contextmanager
def _stopwatch(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] += time.perf_counter() - start


def _timed(items: Iterable[T], seconds: dict[str, float], stage: str) -> Iterator[T]:
    """`items`, adding the time spent producing each one to seconds[stage]."""
    iterator, end = iter(items), object()
    while True:
        with _stopwatch(seconds, stage):
            item = next(iterator, end)
        if item is end:
            return
        yield item


def _counted(batches: Iterable[list[str]], bar: tqdm) -> Iterator[list[str]]:
    for batch in batches:
        bar.update(len(batch))
        yield batch


def build_cache(cfg: PretrainConfig, target: Path) -> dict[str, float]:
    """Write the cache folder `target` (see pretrain.blocks) from the source of `cfg`, atomically.

    Returns seconds per stage (worker stages summed over workers), also written to build_seconds.json.
    Raises DataError (one line) for unreadable data, a missing text column, too few documents, or a
    split with no whole block.
    """
    data, seconds = cfg.data, defaultdict(float)
    start = time.perf_counter()
    # The pool first: its workers fork from a process the tokenizer trainer has not made multi-threaded.
    with worker_pool(data.num_proc) as pool, atomic_dir(target) as tmp:
        tokenizer, sampled = sample_tokenizer(cfg, tmp, seconds)
        dtype = token_dtype(len(tokenizer))
        encoder = ChunkEncoder(
            str(tmp / "tokenizer" / "tokenizer.json"),
            data.min_chars,
            data.validation_fraction,
            data.split_seed,
            dtype.str,
        )
        files = contextlib.ExitStack()
        writers = {
            split: files.enter_context(
                BlockWriter(
                    tmp / f"{split}.bin",
                    data.block_size,
                    tokenizer.cls_token_id,
                    tokenizer.sep_token_id,
                    dtype,
                    cfg.model.vocab_size,
                )
            )
            for split in SPLITS
        }
        with files:
            counts = pack_documents(cfg, pool, encoder, writers, seconds)
        check_enough_kept(cfg, counts, writers)
        token_counts = writers["train"].counts.astype(np.float64)
        token_counts[tokenizer.all_special_ids] = 0
        np.save(tmp / "token_counts.npy", token_counts)
        stats = {
            "cache_key": target.name,
            "documents_read": counts["read"],
            "documents_dropped": counts["dropped"],
            "train_documents": counts["train"],
            "validation_documents": counts["validation"],
            "tokenizer_documents": sampled,
            "train_blocks": writers["train"].blocks,
            "validation_blocks": writers["validation"].blocks,
            "train_tokens": writers["train"].blocks * data.block_size,
            "validation_tokens": writers["validation"].blocks * data.block_size,
            "tokenizer_size": len(tokenizer),
            "unigram_entropy": unigram_entropy(token_counts),
            "dtype": dtype.name,
            "block_size": data.block_size,
        }
        seconds["total"] = time.perf_counter() - start
        (tmp / "build_seconds.json").write_text(json.dumps(seconds, indent=2))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))  # last: a folder with it is complete
    log.info(
        "documents: %d read, %d dropped (empty or < %d chars after cleaning), %d train, %d validation",
        counts["read"],
        counts["dropped"],
        data.min_chars,
        counts["train"],
        counts["validation"],
    )
    log.info("preparation seconds: %s", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return dict(seconds)


def sample_tokenizer(cfg: PretrainConfig, tmp: Path, seconds: dict[str, float]) -> tuple[Any, int]:
    """WordPiece trained on the first `tokenizer.max_training_documents` cleaned documents, saved to
    `tmp`/tokenizer; returns it and how many documents it was trained on."""
    limit = cfg.tokenizer.max_training_documents
    sample_bar = tqdm(total=limit, desc="tokenizer sample", unit="doc")
    with sample_bar, _stopwatch(seconds, "tokenizer: read + clean + train on the sample"):
        tokenizer = train_tokenizer(
            _counted(training_sample(cfg.data, limit), sample_bar),
            cfg.tokenizer,
            cfg.model.vocab_size,
            model_max_length=cfg.data.block_size,
        )
        tokenizer.save_pretrained(tmp / "tokenizer")
    return tokenizer, sample_bar.n


def pack_documents(
    cfg: PretrainConfig, pool: Any, encoder: ChunkEncoder, writers: dict[str, BlockWriter], seconds: dict[str, float]
) -> dict[str, int]:
    """Every chunk of the source, cleaned, split and tokenized by `pool`'s workers (in this process without one),
    appended in order to the split's `writers`; returns documents read, dropped and per split. `seconds` gains
    each stage's time and the main process's wait for the workers."""
    data = cfg.data
    chunks = _timed(document_chunks(data), seconds, "read source (main process)")
    counts: dict[str, int] = defaultdict(int)
    bar = tqdm(total=data.max_documents, desc="tokenizing + packing", unit="doc", dynamic_ncols=True)
    loop_start = time.perf_counter()
    with bar:
        for chunk in encode_in_order(pool, encoder, chunks, in_flight=2 * data.num_proc):
            with _stopwatch(seconds, "pack + write (main process)"):
                counts["read"] += chunk.read
                counts["dropped"] += chunk.dropped
                for split in SPLITS:
                    counts[split] += chunk.documents[split]
                    writers[split].add(chunk.tokens[split])
                for stage, s in chunk.seconds.items():
                    seconds[f"{stage} (workers)"] += s
            tokens = sum(w.blocks for w in writers.values()) * data.block_size
            bar.update(chunk.read)
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - loop_start) / 1e3:,.0f}k tokens/s", refresh=False)
        for writer in writers.values():
            writer.finish()
    main_work = seconds["read source (main process)"] + seconds["pack + write (main process)"]
    if pool is None:  # the chunks were encoded in this process, inside the loop
        main_work += seconds["clean + split (workers)"] + seconds["tokenize (workers)"]
    seconds["main process waiting for workers"] = time.perf_counter() - loop_start - main_work
    return counts


def check_enough_kept(cfg: PretrainConfig, counts: dict[str, int], writers: dict[str, BlockWriter]) -> None:
    """Refuse (DataError, one line) fewer than 2 documents kept, or a split without one whole block."""
    kept = counts["train"] + counts["validation"]
    if kept < 2:
        raise DataError(
            f"{cfg.data.source.path}: only {kept} of {counts['read']} documents have at least data.min_chars="
            f"{cfg.data.min_chars} characters after cleaning; need at least 2 (one for validation)"
        )
    for split, writer in writers.items():
        if writer.blocks == 0:
            raise_few_blocks(cfg, split)
