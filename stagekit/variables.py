"""Environment variables in config strings: expanded for the run, kept as written in everything a run saves."""

from __future__ import annotations

import os
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
