"""NLI pairs as a stream: any source → (premise, hypothesis, label) rows, bad rows dropped and counted.

Nothing here holds the training set in memory. A source is opened with `streaming=True`, cleaned by
a batched map, mixed, shuffled in a bounded buffer, optionally length-bucketed, and handed to the
trainer as a `datasets.IterableDataset`; the trainer's collator tokenises and pads each batch to its
own longest pair. Labels follow GLUE / the Hub: 0 entailment, 1 neutral, 2 contradiction, -1 none.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import random
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any

import datasets
from datasets import Features, IterableDataset, Json, Value

from siamese.config import DataConfig
from siamese.inference.labels import LABELS
from stagekit.errors import DataError
from stagekit.sources import SourceConfig, json_value, load_source, local_files, reading
from stagekit.text import has_visible_content, hashed_below

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


CLASS_CHECK_PAIRS = 1_000  # the first training pairs read to see which classes the data hold, before training


def class_counts(labels: Iterable[int]) -> dict[str, int]:
    """Pairs per class among `labels` (ids 0/1/2; -1, no gold label, is left out), in LABELS order, classes
    present only: e.g. {"entailment": 300}."""
    counts = Counter(labels)
    return {name: counts[i] for i, name in enumerate(LABELS) if counts[i]}


def describe_classes(counts: dict[str, int]) -> str:
    """`class_counts` as a log line reads it: "entailment 340, neutral 330, contradiction 330"."""
    return ", ".join(f"{name} {n:,}" for name, n in counts.items()) or "none"


def require_several_classes(where: str, counts: dict[str, int], trains: str) -> None:
    """Refuse training data whose first pairs (`counts`: their `class_counts`) hold one class: a classifier trained
    on them (`trains`, e.g. "loss.name=softmax") learns to answer that class for every pair.

    Raises DataError (one line) naming the class and the pairs read, or saying that no pair was read.
    """
    if len(counts) > 1:
        return
    if not counts:
        raise DataError(f"{where}: no labelled pairs with text to train on")
    read = sum(counts.values())
    only = next(iter(counts), "that class")
    raise DataError(
        f"{where}: one class in its first {read:,} pairs ({describe_classes(counts)}): {trains} would learn to answer "
        f"{only} for every pair; train on pairs of several classes (shuffle a file sorted by label)"
    )


# Rows each source gave, kept and dropped: counters the streaming readers below write from whichever process
# reads the stream, for run_info.json.
COUNT_KEYS = ("seen", "kept", "dropped_no_label", "dropped_empty_text")


class SharedCounts:
    """One source's counters (`COUNT_KEYS`) in shared memory, indexed like the array they wrap.

    The cleaning map that writes them runs wherever the stream is read: in this process, or in a dataloader
    worker forked from it (siamese/trainer.py `StreamInMainOrder`), whose counts the shared memory carries
    back. Mixing several streams (`datasets.interleave_datasets`, `concatenate_datasets`) deep-copies them,
    map functions included: a copy of these counters is the same counters, so every source still counts
    into the run's numbers (a multiprocessing Array itself refuses to be copied, and a copy would count
    where nobody reads). Pickled only when a process is started (a spawned worker), as its Array allows.
    """

    def __init__(self) -> None:
        self._array = multiprocessing.get_context().Array("q", len(COUNT_KEYS))

    def __deepcopy__(self, memo: dict) -> SharedCounts:
        return self

    def __copy__(self) -> SharedCounts:
        return self

    def get_lock(self) -> Any:
        return self._array.get_lock()

    def __getitem__(self, index: int) -> int:
        return self._array[index]

    def __setitem__(self, index: int, value: int) -> None:
        self._array[index] = value

    def values(self) -> list[int]:
        return list(self._array)


class RowCounts:
    """Per-source counters shared with dataloader worker processes (`SharedCounts`)."""

    def __init__(self) -> None:
        self._arrays: dict[str, SharedCounts] = {}

    def array(self, name: str) -> SharedCounts:
        if name not in self._arrays:
            self._arrays[name] = SharedCounts()
        return self._arrays[name]

    def as_dict(self) -> dict[str, dict[str, int]]:
        out = {name: dict(zip(COUNT_KEYS, arr.values(), strict=True)) for name, arr in self._arrays.items()}
        if "triplets" in out:  # the triplet builder counts triplets made and premises given up on
            t = out["triplets"]
            out["triplets"] = {"triplets": t["kept"], "premises_without_partner": t["dropped_empty_text"]}
        return out

    def snapshot(self) -> dict[str, list[int]]:
        return {name: arr.values() for name, arr in self._arrays.items()}

    def restore(self, snapshot: dict[str, list[int]]) -> None:
        """Counters back to `snapshot`; ones created since then back to zero."""
        for name, arr in self._arrays.items():
            with arr.get_lock():
                for i, value in enumerate(snapshot.get(name, [0] * len(COUNT_KEYS))):
                    arr[i] = value

    def total(self, key: str) -> int:
        return sum(arr[COUNT_KEYS.index(key)] for name, arr in self._arrays.items() if name != "triplets")


def source_name(source: SourceConfig) -> str:
    parts = [source.path] + [p for p in (source.config_name, source.split) if p and p != "train"]
    return ":".join(parts)


def _resolve_columns(columns: list[str], where: str, optional: tuple[str, ...] = ()) -> dict[str, str | None]:
    lower = {c.lower(): c for c in columns}
    found: dict[str, str | None] = {}
    for role, names in _ALIASES.items():
        match = next((lower[n] for n in names if n in lower), None)
        if match is None and role not in optional:
            raise DataError(f"{where}: no '{role}' column (looked for {', '.join(names)}; found {', '.join(columns)})")
        found[role] = match
    return found


class _CleanPairs:
    """Batched map: rename columns, map labels, drop and count rows without a label or with empty text.

    Empty means no visible character (`stagekit.text.has_visible_content`), not only whitespace. With
    `keep_unlabelled`, rows without a gold label stay in the stream with label -1 (still counted as
    dropped_no_label, never as kept); a missing label column then means no row has one.
    """

    def __init__(
        self, columns: dict[str, str | None], where: str, counts: Any, json_labels: bool, keep_unlabelled: bool
    ) -> None:
        self.columns, self.where, self.counts = columns, where, counts
        self.json_labels, self.keep_unlabelled = json_labels, keep_unlabelled

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
        premises, hypotheses = batch[self.columns["premise"]], batch[self.columns["hypothesis"]]
        label_column = self.columns["label"]
        labels = batch[label_column] if label_column is not None else [None] * len(premises)
        if self.json_labels:  # a JSON file's label column as raw JSON text: 0 and "0" alike, "-" as "-"
            labels = [json_value(y) for y in labels]
        with self.counts.get_lock():
            first_row = self.counts[0]
            kept = no_label = empty = 0
            for i, (p, h, y) in enumerate(zip(premises, hypotheses, labels, strict=True)):
                label = label_id(y, f"{self.where}: row {first_row + i + 1}")
                if label < 0:
                    no_label += 1
                    if not self.keep_unlabelled:
                        continue
                if not (has_visible_content(p) and has_visible_content(h)):
                    if label >= 0:  # an unlabelled row is counted once, as dropped_no_label
                        empty += 1
                    continue
                out["premise"].append(p.strip())
                out["hypothesis"].append(h.strip())
                out["label"].append(label)
                if label >= 0:
                    kept += 1
            self.counts[0] += len(labels)
            self.counts[1] += kept
            self.counts[2] += no_label
            self.counts[3] += empty
        return out


def clean_pairs(
    raw: IterableDataset, where: str, counts: RowCounts, *, keep_unlabelled: bool = False
) -> IterableDataset:
    """Any NLI-shaped stream → premise/hypothesis/label rows (0/1/2; -1 too with `keep_unlabelled`).

    Rows without a gold label or without visible text are dropped (or, unlabelled, kept with -1) and
    counted in `counts` under `where`. Raises DataError for missing columns, and while streaming for an
    unmappable label (naming the row).
    """
    columns = raw.column_names
    if columns is None:  # json streams learn their columns from the first row
        try:
            with reading(where):
                columns = list(next(iter(raw)).keys())
        except StopIteration:
            raise DataError(f"{where}: holds no rows") from None
    mapping = _resolve_columns(list(columns), where, optional=("label",) if keep_unlabelled else ())
    json_labels = mapping["label"] is not None and isinstance((raw.features or {}).get(mapping["label"]), Json)
    if json_labels:  # never let datasets decode it: its lenient parser reads the string "-" as 0
        raw = raw.cast_column(mapping["label"], Json(decode=False))
    return raw.map(
        _CleanPairs(mapping, where, counts.array(where), json_labels, keep_unlabelled),
        batched=True,
        batch_size=256,
        remove_columns=list(columns),
        features=PAIR_FEATURES,
    )


TRAIN_HINT = "${BERT_DATA_DIR}/mnli/train.jsonl.gz"
VALIDATION_HINT = "${BERT_DATA_DIR}/snli/validation.jsonl.gz"  # data.eval_sources' local copy


def open_pairs(
    source: SourceConfig,
    counts: RowCounts,
    *,
    name: str | None = None,
    local_hint: str = TRAIN_HINT,
    keep_unlabelled: bool = False,
) -> IterableDataset:
    """The one reader of NLI rows: `source` streamed and cleaned by `clean_pairs`, its rows counted under
    `name` (default `source_name(source)`).

    Several local files (a folder or glob) are read and cleaned one by one, then streamed one after another,
    each counted under its own path (+ what `name` adds): files may name their columns differently or carry
    other extra columns, which one reader of all of them refuses. Raises DataError (one line) for a missing
    or malformed file, or a Hub source while the Hub is unreachable (naming `local_hint`, the local file to
    use instead).
    """
    name = name or source_name(source)
    files = local_files(source.path)
    if len(files) > 1:
        suffix = name.removeprefix(source_name(source))  # " (source 2)" when a source is listed twice
        streams = [
            open_pairs(
                dataclasses.replace(source, path=f), counts, name=f"{f}{suffix}", keep_unlabelled=keep_unlabelled
            )
            for f in files
        ]
        return datasets.concatenate_datasets(streams)
    raw = load_source(
        source.path,
        split=source.split,
        config_name=source.config_name,
        revision=source.revision,
        streaming=True,
        local_hint=local_hint,
        json_columns=_ALIASES["label"],  # ints, label names and "-" may share one column
    )
    return clean_pairs(raw, name, counts, keep_unlabelled=keep_unlabelled)


def source_names(sources: list[SourceConfig]) -> list[str]:
    """`source_name` of each source; a name listed more than once gets its place (" (source 2)"), so every
    source counts its own rows and numbers them in its own messages."""
    names = [source_name(s) for s in sources]
    return [f"{n} (source {i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def preview_row(
    stream: IterableDataset, counts: RowCounts, where: str, empty: str = "no labelled pairs with text to train on"
) -> dict[str, Any]:
    """The stream's first row, for the log, leaving `counts` as they were; DataError "<where>: <empty>" if none.

    Reading a lazy stream runs its cleaning map, which counts rows; the training pass then reads them
    again, so without the restore every previewed row would be counted twice in run_info.json.
    """
    before = counts.snapshot()
    try:
        with reading(where):
            return next(iter(stream.take(1)))
    except StopIteration:
        raise DataError(f"{where}: {empty}") from None
    finally:
        counts.restore(before)


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
    """`ds` in buckets of `batch_size` rows of similar length, in a shuffled order within each window of
    `window_batches` buckets (off for `window_batches` <= 1). `batch_size` is the pairs of one optimizer step
    (all micro-batches of all ranks): a bucket cut smaller would let the split of a step change its pairs."""
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


def triplets_of(pairs: dict[str, list], window: int) -> dict[str, list]:
    """(anchor, positive, negative) columns from in-memory pairs (held-out evaluation of the ranking loss)."""
    return _Triplets(window, RowCounts().array("eval"))(pairs)


def triplet_stream(pairs: IterableDataset, window: int, counts: RowCounts) -> IterableDataset:
    return pairs.map(
        _Triplets(window, counts.array("triplets")),
        batched=True,
        batch_size=256,
        remove_columns=list(PAIR_FEATURES),
        features=TRIPLET_FEATURES,
    )


# The validation slice of the training sources (data.validation_fraction) is a fixed property of the text, the
# same for every seed, run, rank and dataloader worker: a keyed blake2b, never Python's per-process salted hash().
# siamese/inference/card.py (HOLDOUT_RULE) says this rule in words on the model card.
HOLDOUT_KEY = b"nli-validation"


def premise_key(premise: str) -> str:
    """A premise as the holdout hashes it: lower-cased, letters and digits only, so the copies of one premise
    that two sources spell with different punctuation or case fall on the same side."""
    return "".join(c for c in premise.lower() if c.isalnum())


def held_out(premise: str, fraction: float) -> bool:
    """Whether a pair belongs to the validation slice: the hash of its `premise_key` falls below `fraction`.

    By premise, so every hypothesis of one premise (and every duplicate row) is on the same side.
    """
    return hashed_below(premise_key(premise), fraction, key=HOLDOUT_KEY)


class _HoldOut:
    """Batched filter on the premise column: the validation slice (`keep=True`) or the rest."""

    def __init__(self, fraction: float, keep: bool) -> None:
        self.fraction, self.keep = fraction, keep

    def __call__(self, premises: list[str]) -> list[bool]:
        return [held_out(p, self.fraction) == self.keep for p in premises]


def mixed_pairs(cfg: DataConfig, seed: int, counts: RowCounts, *, validation: bool = False) -> IterableDataset:
    """The training sources' clean pairs in one stream, before shuffling: several sources interleaved by
    weight (seeded, so every rank and every call sees the same order). With data.validation_fraction set,
    the pairs `held_out` for validation are left out, or with `validation` they alone are kept."""
    names = source_names(cfg.train_sources)
    streams = [open_pairs(s, counts, name=n) for s, n in zip(cfg.train_sources, names, strict=True)]
    ds = streams[0]
    if len(streams) > 1:
        weights = [s.weight for s in cfg.train_sources]
        ds = datasets.interleave_datasets(
            streams,
            probabilities=[w / sum(weights) for w in weights],
            seed=seed,
            stopping_strategy="all_exhausted_without_replacement",
        )
    if not cfg.validation_fraction:
        return ds
    holdout = _HoldOut(cfg.validation_fraction, keep=validation)
    return ds.filter(holdout, input_columns="premise", batched=True, batch_size=256)


def as_lists(ds: IterableDataset, limit: int | None, where: str) -> dict[str, list]:
    """The first `limit` rows of `ds` (all: None) as {"premise", "hypothesis", "label"} lists; a read error names
    `where` in one line (stagekit/sources.py `reading`)."""
    if limit is not None:
        ds = ds.take(limit)
    out: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
    with reading(where):
        for row in ds:
            for key in out:
                out[key].append(row[key])
    return out


def held_out_pairs(cfg: DataConfig, limit: int | None) -> dict[str, list]:
    """The validation slice of the training sources (data.validation_fraction) as lists: the first `limit` of
    its pairs, or all. The same pairs for every train.seed (sources interleaved with a fixed seed). Counted
    apart from the training pass. Raises DataError when no pair falls in the slice, or as `open_pairs` does."""
    where = "training data (" + ", ".join(source_name(s) for s in cfg.train_sources) + ")"
    out = as_lists(mixed_pairs(cfg, 0, RowCounts(), validation=True), limit, where)
    if not out["label"]:
        raise DataError(f"{where}: no pair held out by data.validation_fraction={cfg.validation_fraction}; raise it")
    return out


def first_pairs(cfg: DataConfig, n: int, seed: int, *, shuffled: bool = False) -> dict[str, list]:
    """The first `n` clean training pairs of `mixed_pairs` as lists (fewer if the sources hold fewer); the
    same pairs on every call and every rank. With `shuffled`, through the seeded shuffle buffer of the
    training stream (data.shuffle_buffer), so `seed` picks them. Counted apart from the training pass (not in
    run_info.json).

    Raises DataError when the sources hold no labelled pair, or as `open_pairs` does.
    """
    where = "training data (" + ", ".join(source_name(s) for s in cfg.train_sources) + ")"
    out: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
    ds = mixed_pairs(cfg, seed, RowCounts())
    if shuffled and cfg.shuffle_buffer > 1:
        ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
    with reading(where):
        for row in ds.take(n):
            for key in out:
                out[key].append(row[key])
    if not out["label"]:
        raise DataError(f"{where}: no labelled pairs with text to fit the NLI head on")
    return out


def train_stream(
    cfg: DataConfig,
    batch_size: int,
    bucket_batches: int,
    seed: int,
    counts: RowCounts,
    *,
    triplets: bool = False,
) -> IterableDataset:
    """The training stream: sources mixed, shuffled in a bounded buffer, capped, length-bucketed in buckets of
    `batch_size` pairs, the global batch (per-device batch × gradient accumulation × processes)."""
    ds = mixed_pairs(cfg, seed, counts)
    if triplets:
        ds = triplet_stream(ds, cfg.triplet_window, counts)
    if cfg.shuffle_buffer > 1:
        ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
    if cfg.max_train_pairs is not None:
        ds = ds.take(cfg.max_train_pairs)
    return bucket_by_length(ds, batch_size, bucket_batches)


def read_pairs(
    source: SourceConfig, limit: int | None, counts: RowCounts | None = None, *, local_hint: str = TRAIN_HINT
) -> dict[str, list]:
    """A small evaluation set as lists (dev sets are ~10k pairs): the first `limit` clean pairs.

    Raises DataError when the source gives no labelled pair, or as `open_pairs` does.
    """
    out = as_lists(open_pairs(source, counts or RowCounts(), local_hint=local_hint), limit, source_name(source))
    if not out["label"]:
        raise DataError(f"{source_name(source)}: no labelled pairs to evaluate on")
    return out
