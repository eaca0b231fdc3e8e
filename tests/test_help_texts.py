"""Every entry point's --help: its description is whole sentences (a docstring's first line alone was cut off
mid-sentence), so a reader sees what the command does and how it is called."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT

# Every module run as `python -m X` (its `if __name__ == "__main__"`, or a package's __main__.py); the
# pyproject scripts call the same main functions.
MODULES = sorted(
    ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    for folder in ("app", "bench", "pipeline", "pretrain", "siamese", "stagekit")
    for path in (REPO_ROOT / folder).rglob("*.py")
    if path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


def description(help_text: str) -> str:
    """The paragraph after argparse's usage block, on one line."""
    paragraphs = [p for p in help_text.split("\n\n") if p.strip()]
    assert paragraphs[0].startswith("usage:") and len(paragraphs) > 1, help_text[:300]
    return " ".join(paragraphs[1].split())


def whole(text: str) -> bool:
    """Ends a sentence, with its backquotes, parentheses and brackets closed."""
    closed = all(text.count(a) == text.count(b) for a, b in ("()", "[]")) and text.count("`") % 2 == 0
    return bool(re.search(r"[.!?][`)\"']*$", text)) and closed


def test_the_entry_points_are_found():
    assert {
        "pipeline.__main__",
        "stagekit.push",
        "app.space",
        "siamese.evaluation.__main__",
        "pretrain.probe",
        "pretrain.__main__",
    } <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_help_describes_the_command_in_whole_sentences(name, monkeypatch, capsys):
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0
    text = description(capsys.readouterr().out)
    assert whole(text), f"{name} --help: {text!r}"


@pytest.mark.parametrize(
    ("doc", "summary"),
    [("A line\ncontinued. More.\n\nDetails.", "A line continued. More."),
     ("Measured here:\n\n1. this", "Measured here."), ("One.", "One."), (None, "")],
)  # fmt: skip
def test_doc_summary_keeps_the_first_paragraph_whole(doc, summary):
    assert doc_summary(doc) == summary
