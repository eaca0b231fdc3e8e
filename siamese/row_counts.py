"""Rows each NLI source gave, kept and dropped: counters the streaming readers (siamese/nli_data.py) write
from whichever process reads the stream, for run_info.json."""

from __future__ import annotations

import multiprocessing
from typing import Any

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
