"""NLI pairs as a stream: any source → (premise, hypothesis, label) rows, bad rows dropped and counted.

Nothing here holds the training set in memory. A source is opened with `streaming=True`, cleaned by
a batched map, mixed, shuffled in a bounded buffer, optionally length-bucketed, and handed to the
trainer as a `datasets.IterableDataset`; the trainer's collator tokenises and pads each batch to its
own longest pair. Labels follow GLUE / the Hub: 0 entailment, 1 neutral, 2 contradiction, -1 none.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import zlib
from collections import OrderedDict
from typing import Any

import datasets
from datasets import Features, IterableDataset, Json, Value

from common.errors import DataError
from common.sources import json_value, load_source, reading
from siamese.config import DataConfig, SourceConfig
from siamese.encoder import LABELS

log = logging.getLogger(__name__)

PAIR_FEATURES = Features({"premise": Value("string"), "hypothesis": Value("string"), "label": Value("int64")})
TRIPLET_FEATURES = Features({"anchor": Value("string"), "positive": Value("string"), "negative": Value("string")})

# Column names sources use for the same thing (Hub GLUE/SNLI, SentEval-style TSVs, SICK-style files).
_ALIASES = {
    "premise": ("premise", "sentence1", "sentence_a", "text_a"),
    "hypothesis": ("hypothesis", "sentence2", "sentence_b", "text_b"),
    "label": ("label", "gold_label", "labels"),
}
_LABEL_NAMES = {name: i for i, name in enumerate(LABELS)} | {"-": -1, "": -1, "none": -1, "no gold label": -1}
_COUNT_KEYS = ("seen", "kept", "dropped_no_label", "dropped_empty_text")


def label_id(value: Any, where: str) -> int:
    """Map a Hub int (ClassLabel) or a label string (any case) to 0/1/2, or -1 for "no gold label"."""
    if isinstance(value, bool):
        raise DataError(f"{where}: label {value!r} is not a class")
    if value is None:
        return -1
    if isinstance(value, (int, float)) and float(value).is_integer() and int(value) in (-1, 0, 1, 2):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _LABEL_NAMES:
            return _LABEL_NAMES[text]
        if text.lstrip("-").isdigit() and int(text) in (-1, 0, 1, 2):
            return int(text)
    raise DataError(
        f"{where}: label {value!r} is not one of 0/1/2/-1 or {'/'.join(LABELS)} (GLUE convention, any case)"
    )


class RowCounts:
    """Per-source counters shared with dataloader worker processes (inherited shared memory)."""

    def __init__(self) -> None:
        self._arrays: dict[str, Any] = {}

    def array(self, name: str) -> Any:
        if name not in self._arrays:
            self._arrays[name] = multiprocessing.get_context().Array("q", len(_COUNT_KEYS))
        return self._arrays[name]

    def as_dict(self) -> dict[str, dict[str, int]]:
        out = {name: dict(zip(_COUNT_KEYS, list(arr), strict=True)) for name, arr in self._arrays.items()}
        if "triplets" in out:  # the triplet builder counts triplets made and premises given up on
            t = out["triplets"]
            out["triplets"] = {"triplets": t["kept"], "premises_without_partner": t["dropped_empty_text"]}
        return out

    def total(self, key: str) -> int:
        return sum(arr[_COUNT_KEYS.index(key)] for name, arr in self._arrays.items() if name != "triplets")


def source_name(source: SourceConfig) -> str:
    parts = [source.path] + [p for p in (source.config_name, source.split) if p and p != "train"]
    return ":".join(parts)


def _resolve_columns(columns: list[str], where: str) -> dict[str, str]:
    lower = {c.lower(): c for c in columns}
    found = {}
    for role, names in _ALIASES.items():
        match = next((lower[n] for n in names if n in lower), None)
        if match is None:
            raise DataError(f"{where}: no '{role}' column (looked for {', '.join(names)}; found {', '.join(columns)})")
        found[role] = match
    return found


class _CleanPairs:
    """Batched map: rename columns, map labels, drop and count rows without a label or with empty text."""

    def __init__(self, columns: dict[str, str], where: str, counts: Any, json_labels: bool = False) -> None:
        self.columns, self.where, self.counts, self.json_labels = columns, where, counts, json_labels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
        premises, hypotheses = batch[self.columns["premise"]], batch[self.columns["hypothesis"]]
        labels = batch[self.columns["label"]]
        if self.json_labels:  # a JSON file's label column as raw JSON text: 0 and "0" alike, "-" as "-"
            labels = [json_value(y) for y in labels]
        with self.counts.get_lock():
            first_row = self.counts[0]
            no_label = empty = 0
            for i, (p, h, y) in enumerate(zip(premises, hypotheses, labels, strict=True)):
                label = label_id(y, f"{self.where}: row {first_row + i + 1}")
                p = p.strip() if isinstance(p, str) else ""
                h = h.strip() if isinstance(h, str) else ""
                if label < 0:
                    no_label += 1
                elif not p or not h:
                    empty += 1
                else:
                    out["premise"].append(p)
                    out["hypothesis"].append(h)
                    out["label"].append(label)
            self.counts[0] += len(labels)
            self.counts[1] += len(out["label"])
            self.counts[2] += no_label
            self.counts[3] += empty
        return out


def clean_pairs(raw: IterableDataset, where: str, counts: RowCounts) -> IterableDataset:
    """Any NLI-shaped stream → premise/hypothesis/label rows (0/1/2 only), counting what was dropped."""
    columns = raw.column_names
    if columns is None:  # json streams learn their columns from the first row
        try:
            with reading(where):
                columns = list(next(iter(raw)).keys())
        except StopIteration:
            raise DataError(f"{where}: holds no rows") from None
    mapping = _resolve_columns(list(columns), where)
    json_labels = isinstance((raw.features or {}).get(mapping["label"]), Json)
    if json_labels:  # never let datasets decode it: its lenient parser reads the string "-" as 0
        raw = raw.cast_column(mapping["label"], Json(decode=False))
    return raw.map(
        _CleanPairs(mapping, where, counts.array(where), json_labels),
        batched=True,
        batch_size=256,
        remove_columns=list(columns),
        features=PAIR_FEATURES,
    )


def open_pairs(source: SourceConfig, counts: RowCounts) -> IterableDataset:
    raw = load_source(
        source.path,
        split=source.split,
        config_name=source.config_name,
        revision=source.revision,
        streaming=True,
        local_hint="${BERT_DATA_DIR}/mnli/train.jsonl.gz",
        json_columns=_ALIASES["label"],  # ints, label names and "-" may share one column
    )
    return clean_pairs(raw, source_name(source), counts)


class _LengthBuckets:
    """Batched map over a window of batches: sort by length, cut into batches, shuffle batch order.

    Each batch then pads to a length close to all its members; the order is seeded by the window's
    content, so a resumed run replays exactly the same batches.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        keys = list(batch)
        n = len(batch[keys[0]])
        lengths = [sum(len(batch[k][i]) for k in keys if isinstance(batch[k][i], str)) for i in range(n)]
        order = sorted(range(n), key=lengths.__getitem__)
        chunks = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        seed = zlib.crc32("\x1f".join(str(batch[keys[0]][i]) for i in order[:4]).encode("utf-8"))
        random.Random(seed).shuffle(chunks)
        flat = [i for chunk in chunks for i in chunk]
        return {k: [batch[k][i] for i in flat] for k in keys}


def bucket_by_length(ds: IterableDataset, batch_size: int, window_batches: int) -> IterableDataset:
    if window_batches <= 1:
        return ds
    features = ds.features
    return ds.map(_LengthBuckets(batch_size), batched=True, batch_size=batch_size * window_batches, features=features)


class _Triplets:
    """Batched map: (premise, entailed hypothesis, contradicting hypothesis) from premise groups.

    Premises wait in a bounded window (oldest evicted and counted) until both an entailment and a
    contradiction of theirs have streamed by; neutral pairs are not used by the ranking loss.
    """

    def __init__(self, window: int, counts: Any) -> None:
        self.window, self.counts = window, counts
        self.pending: OrderedDict[str, dict[int, str]] = OrderedDict()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"anchor": [], "positive": [], "negative": []}
        evicted = 0
        for premise, hypothesis, label in zip(batch["premise"], batch["hypothesis"], batch["label"], strict=True):
            if label == 1:
                continue
            group = self.pending.setdefault(premise, {})
            group.setdefault(label, hypothesis)
            if 0 in group and 2 in group:
                del self.pending[premise]
                out["anchor"].append(premise)
                out["positive"].append(group[0])
                out["negative"].append(group[2])
            elif len(self.pending) > self.window:
                self.pending.popitem(last=False)
                evicted += 1
        with self.counts.get_lock():
            self.counts[1] += len(out["anchor"])
            self.counts[3] += evicted  # premises that never met their partner within the window
        return out


def triplet_stream(pairs: IterableDataset, window: int, counts: RowCounts) -> IterableDataset:
    return pairs.map(
        _Triplets(window, counts.array("triplets")),
        batched=True,
        batch_size=256,
        remove_columns=list(PAIR_FEATURES),
        features=TRIPLET_FEATURES,
    )


def train_stream(
    cfg: DataConfig,
    batch_size: int,
    bucket_batches: int,
    seed: int,
    counts: RowCounts,
    *,
    triplets: bool = False,
    pairs: list[IterableDataset] | None = None,
) -> IterableDataset:
    """The training stream: sources mixed, shuffled in a bounded buffer, capped, length-bucketed.

    `pairs` replaces the configured sources (tests feed generators through it).
    """
    streams = pairs if pairs is not None else [open_pairs(s, counts) for s in cfg.train_sources]
    if len(streams) == 1:
        ds = streams[0]
    else:
        weights = [s.weight for s in cfg.train_sources]
        ds = datasets.interleave_datasets(
            streams,
            probabilities=[w / sum(weights) for w in weights],
            seed=seed,
            stopping_strategy="all_exhausted_without_replacement",
        )
    if triplets:
        ds = triplet_stream(ds, cfg.triplet_window, counts)
    if cfg.shuffle_buffer > 1:
        ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
    if cfg.max_train_pairs is not None:
        ds = ds.take(cfg.max_train_pairs)
    return bucket_by_length(ds, batch_size, bucket_batches)


def read_pairs(source: SourceConfig, limit: int | None, counts: RowCounts | None = None) -> dict[str, list]:
    """A small evaluation set as lists (dev sets are ~10k pairs): the first `limit` clean pairs."""
    ds = open_pairs(source, counts or RowCounts())
    if limit is not None:
        ds = ds.take(limit)
    out: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
    with reading(source_name(source)):
        for row in ds:
            for key in out:
                out[key].append(row[key])
    if not out["label"]:
        raise DataError(f"{source_name(source)}: no labelled pairs to evaluate on")
    return out
