"""One definition of "empty text" for every reader and the app: no visible character."""

from __future__ import annotations

import pytest

from stagekit.text import has_visible_content


@pytest.mark.parametrize(
    "text",
    ["", " \t\n", "\u200b\u200b", "\x00\x01", "\ufeff", "\u2060\u200c\u200d", "\u00a0\u3000", "\u00ad",
     "\u202e\u202c", "\u3164", "\u2800", "\u0301", None, 7],
)  # fmt: skip
def test_text_without_a_visible_character_is_empty(text):
    assert not has_visible_content(text)


@pytest.mark.parametrize("text", ["a", " x ", "\u200bHello", "\x00 7", "é", "日本", "🙂", "-", "\u0915\u093f"])
def test_text_with_any_visible_character_has_content(text):
    assert has_visible_content(text)
