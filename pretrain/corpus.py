"""Raw documents in, clean documents out: read a Hub or local source, clean, split by document."""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass

import datasets
from tqdm.auto import tqdm

from common.errors import DataError
from common.sources import load_source, reading
from pretrain.config import LOCAL_CORPUS_HINT, DataConfig

log = logging.getLogger(__name__)

_TAG = re.compile(r"<\s*/?\s*(?:br|p|i|b|em|strong|hr|div|span|a)\b[^>]*>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_text(text: str | None) -> str:
    """Strip HTML leftovers such as `<br />` and entities, then collapse all whitespace to single spaces."""
    if not text:
        return ""
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


@dataclass
class CorpusCounts:
    read: int
    dropped_short: int
    train_documents: int
    validation_documents: int


def read_documents(cfg: DataConfig) -> datasets.Dataset:
    """The first `max_documents` raw texts of the source as a one-column ("text") Dataset."""
    source = load_source(
        cfg.source,
        split=cfg.split,
        config_name=cfg.config_name,
        revision=cfg.revision,
        streaming=cfg.streaming,
        local_hint=LOCAL_CORPUS_HINT,
    )
    if isinstance(source, datasets.IterableDataset):
        rows = source.take(cfg.max_documents) if cfg.max_documents else source
        texts = []
        for i, row in enumerate(tqdm(rows, total=cfg.max_documents, desc="reading documents", unit="doc")):
            if cfg.text_column not in row:
                raise DataError(_missing_column(cfg, list(row)))
            texts.append(row[cfg.text_column])
            if i == 0 and not isinstance(texts[0], (str, type(None))):
                raise DataError(f"{cfg.source}: column '{cfg.text_column}' holds {type(texts[0]).__name__}, not text")
        return datasets.Dataset.from_dict(
            {"text": texts}, features=datasets.Features({"text": datasets.Value("string")})
        )
    if cfg.text_column not in source.column_names:
        raise DataError(_missing_column(cfg, source.column_names))
    if cfg.max_documents is not None and len(source) > cfg.max_documents:
        source = source.select(range(cfg.max_documents))
    source = source.select_columns([cfg.text_column])
    return source.rename_column(cfg.text_column, "text") if cfg.text_column != "text" else source


def _missing_column(cfg: DataConfig, columns: list[str]) -> str:
    return (
        f"{cfg.source}: no text column '{cfg.text_column}' (columns: {', '.join(columns)}); "
        f"set data.text_column to one of them"
    )


def load_corpus(cfg: DataConfig) -> tuple[datasets.DatasetDict, CorpusCounts]:
    """Read, clean, drop short documents and split train/validation by document, deterministically."""
    with reading(cfg.source):  # a malformed or non-UTF-8 line met while streaming: one line, no traceback
        raw = read_documents(cfg)
    if len(raw) == 0:
        raise DataError(f"{cfg.source}: no documents found")
    num_proc = _num_proc(cfg, len(raw))
    cleaned = raw.map(
        lambda batch: {"text": [clean_text(t) for t in batch["text"]]},
        batched=True,
        num_proc=num_proc,
        desc="cleaning",
    )
    kept = cleaned.filter(
        lambda batch: [len(t) >= cfg.min_chars for t in batch["text"]],
        batched=True,
        num_proc=num_proc,
        desc="filtering",
    )
    if len(kept) < 2:
        raise DataError(
            f"{cfg.source}: only {len(kept)} of {len(raw)} documents have at least data.min_chars={cfg.min_chars} "
            "characters after cleaning; need at least 2 (one for validation)"
        )
    split = kept.train_test_split(test_size=cfg.validation_fraction, seed=cfg.split_seed, shuffle=True)
    corpus = datasets.DatasetDict(train=split["train"], validation=split["test"])
    counts = CorpusCounts(
        read=len(raw),
        dropped_short=len(raw) - len(kept),
        train_documents=len(corpus["train"]),
        validation_documents=len(corpus["validation"]),
    )
    log.info(
        "documents: %d read, %d dropped (empty or < %d chars after cleaning), %d train, %d validation",
        counts.read,
        counts.dropped_short,
        cfg.min_chars,
        counts.train_documents,
        counts.validation_documents,
    )
    return corpus, counts


def _num_proc(cfg: DataConfig, rows: int) -> int | None:
    # Worker processes only pay off on big inputs; tiny test corpora run in-process.
    return cfg.num_proc if cfg.num_proc > 1 and rows >= 10_000 else None
