"""What counts as text at all: one rule for every reader of pairs, the app and the corpus."""

from __future__ import annotations

import unicodedata

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
