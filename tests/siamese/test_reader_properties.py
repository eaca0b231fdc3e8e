"""Property-based checks of the NLI reader and the corpus cleaner on arbitrary unicode text."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pretrain.corpus import clean_text
from siamese.nli_data import RowCounts, read_pairs
from stagekit.errors import DataError
from stagekit.sources import SourceConfig
from stagekit.text import has_visible_content

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=120)  # any unicode but lone surrogates
INT_LABELS = st.sampled_from([0, 1, 2, -1])
STR_LABELS = st.sampled_from(["entailment", "Neutral", "CONTRADICTION", "-"])
STR_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2, "-": -1}


def write_jsonl(path, rows: list[dict]) -> SourceConfig:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return SourceConfig(path=str(path), config_name=None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), labels=st.sampled_from([INT_LABELS, STR_LABELS, INT_LABELS | STR_LABELS]))
def test_reader_keeps_exactly_the_labelled_non_empty_pairs(tmp_path_factory, data, labels):
    # Ints only, strings only, or both in one file (datasets alone reads a mixed "-" as 0).
    rows = data.draw(st.lists(st.tuples(TEXT, TEXT, labels), min_size=1, max_size=15))
    source = write_jsonl(
        tmp_path_factory.mktemp("nli") / "pairs.jsonl",
        [{"premise": p, "hypothesis": h, "label": y} for p, h, y in rows],
    )

    def as_id(y):
        return STR_IDS[y.lower()] if isinstance(y, str) else y

    # "Empty" is the one rule of stagekit.text (tested on its own there): no visible character.
    expected = [(p.strip(), h.strip(), as_id(y)) for p, h, y in rows
                if as_id(y) >= 0 and has_visible_content(p) and has_visible_content(h)]  # fmt: skip
    counts = RowCounts()
    if not expected:
        with pytest.raises(DataError, match="no labelled pairs"):
            read_pairs(source, None, counts)
        return
    out = read_pairs(source, None, counts)
    assert list(zip(out["premise"], out["hypothesis"], out["label"], strict=True)) == expected
    assert counts.total("kept") == len(expected)
    assert counts.total("kept") + counts.total("dropped_no_label") + counts.total("dropped_empty_text") == len(rows)


def test_a_10000_character_text_is_read_whole(tmp_path):
    long = "word " * 2000
    source = write_jsonl(tmp_path / "long.jsonl", [{"premise": long, "hypothesis": "short", "label": 0}])
    assert read_pairs(source, None)["premise"] == [long.strip()]


@given(TEXT)
def test_cleaned_text_has_single_spaces_and_no_edges(text):
    cleaned = clean_text(text)
    assert cleaned == cleaned.strip() and "  " not in cleaned and "\n" not in cleaned
