"""One definition of "empty text" for every reader and the app: no visible character."""

from __future__ import annotations

import pytest

from stagekit.text import csv_text, has_visible_content, spreadsheet_safe


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


# A spreadsheet runs a cell that starts with = + - @ (and TAB / CR before them) as a formula (OWASP "CSV injection").
@pytest.mark.parametrize(
    ("cell", "written"),
    [("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"), ('=HYPERLINK("http://x.example","y")', '\'=HYPERLINK("http://x.example","y")'),
     ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"), ("-2+3", "'-2+3"), ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
     ("\t=1+1", "'\t=1+1"), ("\r=1+1", "'\r=1+1"), ("A dog runs.", "A dog runs."), ("a = b", "a = b"), ("", ""),
     ("-0.5", "-0.5"), ("+3", "+3"), ("1e-3", "1e-3")],
)  # fmt: skip
def test_text_cells_a_spreadsheet_would_run_are_escaped(cell, written):
    assert spreadsheet_safe(cell) == written


def test_a_csv_escapes_text_cells_and_keeps_numbers():
    import io

    import pandas as pd

    table = pd.DataFrame({
        "premise": ["=HYPERLINK(\"http://x.example\",\"y\")", "A dog runs.", "@SUM(A1)"],
        "cosine": [-0.5, 0.25, float("nan")], "count": [-3, 4, 5], "truncated": [True, False, False],
    })  # fmt: skip
    back = pd.read_csv(io.StringIO(csv_text(table)))
    assert list(back["premise"]) == ['\'=HYPERLINK("http://x.example","y")', "A dog runs.", "'@SUM(A1)"]
    assert list(back["cosine"][:2]) == [-0.5, 0.25] and pd.isna(back["cosine"][2])  # numbers stay numbers
    assert list(back["count"]) == [-3, 4, 5] and list(back["truncated"]) == [True, False, False]
    assert list(table["premise"])[0].startswith("=")  # the table itself is left as it was


def test_every_csv_the_project_writes_goes_through_csv_text(repo_root):
    import re

    writers = re.compile(r"\.to_csv\(|csv\.writer\(|csv\.DictWriter\(")
    found = [
        f"{path.relative_to(repo_root)}:{number}"
        for folder in ("app", "bench", "pipeline", "pretrain", "siamese", "stagekit")
        for path in sorted((repo_root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if writers.search(line)
    ]
    assert found and all(f.startswith("stagekit/text.py:") for f in found), found
