"""Uploaded CSVs: size and row limits, UTF-8, and which two columns hold the sentence pairs."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from stagekit.errors import DataError, UserError

PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"))


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 2_000_000
    max_rows: int = 1_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> UploadLimits:
        """$APP_MAX_UPLOAD_MB and $APP_MAX_ROWS override the defaults."""
        limits = cls()
        try:
            mb = float(env.get("APP_MAX_UPLOAD_MB", limits.max_bytes / 1e6))
            rows = int(env.get("APP_MAX_ROWS", limits.max_rows))
        except ValueError as err:
            raise UserError(f"APP_MAX_UPLOAD_MB / APP_MAX_ROWS must be numbers: {err}") from None
        if mb <= 0 or rows <= 0:
            raise UserError("APP_MAX_UPLOAD_MB and APP_MAX_ROWS must be positive")
        return cls(int(mb * 1e6), rows)


def read_csv_upload(data: bytes, name: str, limits: UploadLimits) -> pd.DataFrame:
    """The uploaded CSV as a table of strings, or a one-line DataError saying what is wrong with it."""
    if len(data) > limits.max_bytes:
        raise DataError(f"{name}: {len(data) / 1e6:.1f} MB is over the {limits.max_bytes / 1e6:g} MB upload limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8 CSV") from None
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, nrows=limits.max_rows + 1)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{name}: not a valid CSV: {str(err).strip().splitlines()[-1]}") from None
    if len(table) == 0:
        raise DataError(f"{name}: no rows below the header")
    if len(table) > limits.max_rows:
        raise DataError(f"{name}: more than {limits.max_rows:,} rows; split it into smaller files")
    if len(table.columns) < 2:
        raise DataError(f"{name}: needs at least two columns (found {len(table.columns)})")
    return table


def default_columns(columns: Sequence[str]) -> tuple[str, str]:
    """premise/hypothesis or sentence1/sentence2 when present, otherwise the first two columns."""
    for pair in PAIR_COLUMNS:
        if all(c in columns for c in pair):
            return pair
    return str(columns[0]), str(columns[1])


def check_columns(table: pd.DataFrame, first: str, second: str) -> None:
    missing = [c for c in (first, second) if c not in table.columns]
    if missing:
        raise DataError(f"column {missing[0]!r} not in the file (columns: {', '.join(map(str, table.columns))})")
    if first == second:
        raise DataError("choose two different columns")
