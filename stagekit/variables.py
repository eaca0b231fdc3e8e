"""Environment variables in config strings: expanded for the run, kept as written in everything a run saves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Expanded(str):
    """A config string with its environment variables expanded, as the run uses it, that remembers the text it
    was written as (`written`, `${VAR}` and all), which is what saved configs record: the value of a variable
    (a path on this machine, a key or token) is never written into a run's files."""

    written: str

    def __new__(cls, expanded: str, written: str) -> Expanded:
        obj = super().__new__(cls, expanded)
        obj.written = written
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # copies and pickles keep both texts, never expand again elsewhere
        return (Expanded, (str(self), self.written))


def as_written(value: Any) -> Any:
    """`value` (a string, or lists and dicts of them) with every `Expanded` string back to its written text."""
    if isinstance(value, Expanded):
        return value.written
    if isinstance(value, dict):
        return {as_written(k): as_written(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_written(v) for v in value)
    return value


def expand(text: str) -> str:
    """`text` with its environment variables expanded (`os.path.expandvars`: `$VAR`, `${VAR}`; unset ones stay),
    as an `Expanded` that remembers `text` when anything was expanded."""
    expanded = os.path.expandvars(text)
    return text if expanded == text else Expanded(expanded, text)


DATA_VARIABLE = "BERT_DATA_DIR"
OUTSIDE = "…/"  # a path outside the data and output folders, named by its last part alone: not a Hub id, no folders


def portable(value: Any, run_dir: str | os.PathLike) -> Any:
    """`value` (a string, or lists and dicts of them, keys included) with every absolute path named as it may
    leave this machine in a run's files: under ${BERT_DATA_DIR} as `${BERT_DATA_DIR}/mnli/train.jsonl.gz`, under
    the output folder holding `run_dir` relative to `run_dir` (`../pretrain-debug/model`, `..` for the output
    folder itself), anywhere else by its last part alone (`…/model`). Relative paths, `${VAR}` texts, Hub ids
    and other strings stay as they are."""
    if isinstance(value, str):
        return _portable_path(value, Path(run_dir))
    if isinstance(value, dict):
        return {portable(k, run_dir): portable(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v, run_dir) for v in value)
    return value


def _portable_path(text: str, run_dir: Path) -> str:
    if not text.startswith(os.sep) or "\n" in text:
        return text
    roots = [(os.environ.get(DATA_VARIABLE), "${" + DATA_VARIABLE + "}"), (str(run_dir.resolve().parent), "..")]
    for root, name in roots:
        if not root:
            continue
        for form in dict.fromkeys((root.rstrip(os.sep), os.path.realpath(root))):
            if text == form or text.startswith(form + os.sep):
                return name + text[len(form) :]
    # Only what reads as a path: one word, or a file that is there (a sentence that starts with a slash is not).
    if len(text.split()) > 1 and not os.path.exists(text):
        return text
    return OUTSIDE + (Path(text).name or text)
