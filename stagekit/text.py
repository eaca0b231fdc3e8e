"""What counts as text at all: one rule for every reader of pairs, the app and the corpus; the hash that splits a
stream of texts into training and validation; and text cells made safe for a spreadsheet in every CSV the project
writes."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

# Unicode categories with nothing to see on their own: separators (Z*), controls (Cc), format characters such
# as the zero-width space/joiners, word joiner, BOM, soft hyphen and bidi marks (Cf), lone surrogates (Cs), and
# combining marks (Mn, Me), which need a base character to show.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Me"})
# Letters and symbols that are assigned a visible category yet render as blank space.
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_content(text: object) -> bool:
    """True when `text` is a str holding at least one character that renders as something.

    Whitespace, zero-width characters (U+200B-U+200D, U+2060, U+FEFF), control and format characters
    (Unicode Cc/Cf), lone combining marks and blank-looking fillers do not count; None and non-str
    values have no content either. Never raises.
    """
    if not isinstance(text, str):
        return False
    return any(ch not in _BLANK_LOOKING and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text)


def hashed_below(text: str, fraction: float, key: bytes) -> bool:
    """Whether a keyed blake2b (8 bytes, little-endian) of `text` falls below `fraction` of its range: a split of a
    stream that needs no length, is the same on every machine, process and worker (never Python's salted hash()),
    and puts exact copies of a text on the same side. Pretraining documents (pretrain/corpus.py) and NLI premises
    (siamese/nli_data.py) are split by it."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key)
    return int.from_bytes(digest.digest(), "little") < fraction * 2**64


# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection"); TAB and CR can precede
# the sign, and a few spreadsheets strip them first.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows instead of running: a single quote before a cell that starts
    with = + - @ TAB or CR (OWASP's rule), unless the whole cell is a plain number such as -0.5 or +3."""
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_text(table: Any) -> str:
    """A pandas DataFrame as CSV text (header, no index) with every text cell passed through `spreadsheet_safe`:
    the one writer of the CSVs the project hands out (the app's batch predictions). Number and bool columns are
    written as they are; `table` is not changed."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    escaped = table.copy()
    for column in escaped.columns:
        if not (is_numeric_dtype(escaped[column]) or is_bool_dtype(escaped[column])):
            escaped[column] = [spreadsheet_safe(v) if isinstance(v, str) else v for v in escaped[column]]
    escaped.columns = [spreadsheet_safe(str(c)) for c in escaped.columns]
    return escaped.to_csv(index=False)
