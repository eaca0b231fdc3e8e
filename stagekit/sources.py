"""Where data come from: a local file (or glob) or a dataset on the Hugging Face Hub.

Both stages name a source the same way (`SourceConfig`: pretraining's `data.source`, fine-tuning's
`data.train_sources` / `eval_sources`), its path as `datasets.load_dataset` reads one: an existing local path
or glob is read with the builder its extension calls for; anything else is a Hub dataset id. Offline, a Hub id
fails at once with a message naming the local alternative instead of retrying for half a minute.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import pyarrow as pa

from stagekit.config import key, require
from stagekit.errors import DataError

log = logging.getLogger(__name__)

# extension (after stripping .gz/.bz2/...) -> datasets builder
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv", ".tsv": "csv"}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def local_files(source: str) -> list[str]:
    """The local files `source` names (a file, a glob or a directory), or [] if it names none."""
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.is_file() and builder_for(str(p), strict=False))
    if path.is_file():
        return [str(path)]
    if any(ch in source for ch in "*?["):
        return sorted(glob.glob(os.path.expanduser(source)))
    return []


def looks_local(source: str) -> bool:
    """A path the user meant as a file (absolute, ./, ../, or with a known extension)."""
    return source.startswith(("/", "./", "../", "~")) or builder_for(source, strict=False) is not None


def is_local(source: str) -> bool:
    """Whether `load_source` reads `source` from local files (or refuses it as a missing one), not the Hub."""
    return bool(local_files(source)) or looks_local(source)


def hub_only_setting(source: str, **settings: str | None) -> str | None:
    """The name of the first of `settings` that is set although `source` is local: a dataset config and a
    revision exist only on the Hub, and `load_source` would drop them without a word."""
    if not is_local(source):
        return None
    return next((name for name, value in settings.items() if value is not None), None)


@dataclass
class SourceConfig:
    """One data source of either stage. In a config, a plain string is the source's path with the other keys
    at their defaults (`data.source=corpus.jsonl.gz`)."""

    shorthand: ClassVar[str] = "path"  # the key a plain string sets (stagekit/config.py)
    path: str = key(
        "", "a local .jsonl / .jsonl.gz / .parquet / .csv / .tsv / .txt file, glob or folder, or a Hub dataset id"
    )
    config_name: str | None = key(None, "Hub datasets only: the dataset's configuration (e.g. mnli of nyu-mll/glue)")
    split: str = key("train", "the split to read")
    revision: str | None = key(None, "Hub datasets only: the git revision")
    weight: float = key(1.0, "its share when several sources are mixed (fine-tuning's train_sources); else unused")

    def check(self) -> None:
        require(bool(self.path.strip()), "path", "must name a local file or a Hub dataset")
        require(self.weight > 0, "weight", "must be > 0")
        ignored = hub_only_setting(self.path, config_name=self.config_name, revision=self.revision)
        if ignored is not None:
            value = getattr(self, ignored)
            require(False, ignored, f"{value!r} is for Hub datasets, and {self.path} is local: set {ignored}: null")


def file_type(path: str) -> str:
    """The extension that says how to read `path`, after any compression suffix: ".tsv" for "x.tsv.gz"."""
    name = path.lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return os.path.splitext(name)[1]


def builder_for(path: str, strict: bool = True) -> str | None:
    ext = file_type(path)
    builder = _BUILDERS.get(ext)
    if builder is None and strict:
        raise DataError(
            f"{path}: unsupported file type '{ext or os.path.basename(path)}' (use one of {', '.join(sorted(_BUILDERS))}, optionally .gz)"
        )
    return builder


def check_readable(path: str) -> None:
    """Fail with one line on a missing, empty or truncated compressed file before datasets sees it."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        except (EOFError, OSError, gzip.BadGzipFile) as err:
            raise DataError(f"{path}: not a complete gzip file ({err})") from None


# Seconds a reachability answer is reused: a run that checks several sources pays for one check, and a
# long-running app still notices when the network comes back.
_REACHABILITY_TTL_S = 60.0
_reachability: dict[tuple[str, int], tuple[float, bool]] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub ($HF_ENDPOINT) opens within `timeout` seconds, name lookup included.

    False at once when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set. Never raises.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ).lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    address = (endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443))
    checked = _reachability.get(address)
    if checked is not None and time.monotonic() - checked[0] < _REACHABILITY_TTL_S:
        return checked[1]
    reachable = _connects(address, timeout)
    _reachability[address] = (time.monotonic(), reachable)
    return reachable


def _connects(address: tuple[str, int], timeout: float) -> bool:
    # socket's own timeout does not cover the name lookup, which can hang far longer without a network:
    # connect in a daemon thread and stop waiting for it after `timeout`.
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, name="hub-reachable", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def require_hub(name: str, local_hint: str, *, setting: str = "the source") -> None:
    """Raise a one-line DataError if the Hub cannot be reached for `name`, naming `local_hint` instead.

    `setting` is what the user should change (a config key or a command-line option).
    """
    if not hub_reachable():
        raise DataError(
            f"'{name}' is not a local file and the Hugging Face Hub is unreachable (offline?); "
            f"point {setting} at a local file instead, e.g. {local_hint}"
        )


def load_source(
    source: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    local_hint: str = "a .jsonl.gz file under ${BERT_DATA_DIR}",
    json_columns: Collection[str] = (),
):
    """Open `source` as a `datasets` Dataset (or IterableDataset when streaming).

    Local files are checked first (missing, empty, truncated gzip → one-line DataError); a Hub id is
    loaded with the real Hub code, after a quick reachability check so offline use fails fast.
    `json_columns` (any case) are read from JSON files as raw JSON text, to be decoded with `json_value`.
    """
    import datasets

    files = local_files(source)
    if files:
        for f in files:
            builder_for(f)  # an unsupported type: one line naming the file
        types = {".json" if file_type(f) == ".jsonl" else file_type(f) for f in files}
        if len(types) > 1:
            raise DataError(f"{source}: mixes file types {sorted(types)}; use one type per source")
        for f in files:
            check_readable(f)
        builder = builder_for(files[0])
        kwargs: dict = {}
        try:
            if builder == "json" and json_columns:
                kwargs["features"] = _raw_json_features(source, files, json_columns)
            if builder == "csv":
                kwargs = _delimited_text_options(source, files)
            return datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming, **kwargs)
        except datasets.exceptions.DatasetGenerationError as err:
            cause = err.__cause__ or err
            raise DataError(f"{source}: could not be read as {builder}: {str(cause).splitlines()[0]}") from None
    if looks_local(source):
        raise DataError(f"{source}: no such file")
    require_hub(source, local_hint)
    log.info(
        "loading %s (config=%s, split=%s, revision=%s, streaming=%s) from the Hub",
        source,
        config_name,
        split,
        revision,
        streaming,
    )
    try:
        return datasets.load_dataset(source, config_name, split=split, revision=revision, streaming=streaming)
    except (ConnectionError, OSError) as err:
        raise DataError(f"'{source}' could not be loaded from the Hub: {str(err).splitlines()[0]}") from None


def _delimited_text_options(source: str, files: list[str]) -> dict:
    """pandas `read_csv` options (through datasets' csv builder) that keep every cell as the text written.

    A .tsv is tab-separated lines with nothing quoted (GLUE's and SentEval's NLI files): a quote is text, and
    CSV quoting would silently merge the rows after an unclosed one. A .csv is quoted CSV, read by pandas'
    python engine, which refuses a stray quote where the C engine merges rows or drops quote characters.
    No cell becomes a missing value ("NA", "null", "") or a number ("007"): every column is a string.
    """
    import datasets
    import pandas as pd

    tsv = file_type(files[0]) == ".tsv"
    options: dict = {"keep_default_na": False, "na_filter": False, "encoding": "utf-8-sig"}  # Excel writes a BOM
    options |= {"sep": "\t", "quoting": csv.QUOTE_NONE} if tsv else {"engine": "python"}
    try:
        header = pd.read_csv(files[0], nrows=0, **options).columns
    except (ValueError, UnicodeDecodeError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise DataError(f"{files[0]}: could not be read: {str(err).strip().splitlines()[0]}") from None
    return options | {"features": datasets.Features({str(name): datasets.Value("string") for name in header})}


def _raw_json_features(source: str, files: list[str], names: Collection[str]):
    """The files' own features with `names` as undecoded JSON text, so every chunk reads them alike.

    Left alone, datasets fixes a column's type from the first 10 MB: a later chunk of another type
    fails to cast, and a column mixing ints and strings becomes JSON text that it decodes leniently
    (the string "-" comes back as 0).
    """
    import datasets

    with reading(source):
        features = datasets.load_dataset("json", data_files=files, split="train", streaming=True).features
    if features is None:
        return None
    wanted = {name.lower() for name in names}
    return datasets.Features(
        {k: datasets.Json(decode=False) if k.lower() in wanted else v for k, v in features.items()}
    )


def json_value(text: str | None):
    """A value read through `json_columns`: the JSON it holds, or the text itself for a string that
    datasets stored unquoted (it quotes only strings its lenient parser rejects; "-" it keeps as is)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@contextlib.contextmanager
def reading(where: str) -> Iterator[None]:
    """Turn a malformed or non-UTF-8 file met while streaming into one line naming it."""
    try:
        yield
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise DataError(f"{where}: could not be read: {str(err).splitlines()[0]}") from None
    except ValueError as err:  # datasets' pandas fallback for JSON lines; any other ValueError is a bug: re-raise
        frames = traceback.extract_tb(err.__traceback__)
        if not any("datasets/packaged_modules" in f.filename.replace("\\", "/") for f in frames):
            raise
        raise DataError(f"{where}: could not be read: {str(err).splitlines()[0]}") from None
