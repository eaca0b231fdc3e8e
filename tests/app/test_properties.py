"""Property-based: the app's predict helper and CSV reader never raise on arbitrary unicode."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.batch import UploadLimits, read_csv_upload
from app.predict import EmptyInput, PairResult, predict_pair
from app.safe_text import md_escape
from stagekit.errors import DataError
from stagekit.text import has_visible_content

texts = st.one_of(
    st.text(),  # arbitrary unicode, control characters included
    st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003\u3000"), max_size=20),  # whitespace only
    st.text(min_size=2000, max_size=4000),  # far past the model's max length
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(premise=texts, hypothesis=texts)
@example(premise="", hypothesis="")
@example(premise="\x00\x01\u200b", hypothesis="\ufeff")
@example(premise="x" * 10_000, hypothesis="<script>alert(1)</script>")
def test_predict_pair_never_raises(tiny_encoder, premise, hypothesis):
    result = predict_pair(tiny_encoder, premise, hypothesis)
    # "Empty" is the one rule of stagekit.text (tested there): no visible character, so "\x00\x01\u200b" too.
    empty = tuple(
        name for name, text in (("premise", premise), ("hypothesis", hypothesis)) if not has_visible_content(text)
    )
    if empty:
        assert result == EmptyInput(empty)
        return
    assert isinstance(result, PairResult)
    assert math.fsum(result.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in result.probs.values())
    assert math.isfinite(result.cosine) and result.label in result.probs


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda s: s.encode("utf-8"))))
def test_csv_reader_only_raises_data_errors(data):
    try:
        table = read_csv_upload(data, "u.csv", UploadLimits(max_bytes=250, max_rows=20))
    except DataError as err:
        assert "\n" not in str(err)
    else:
        assert 1 <= len(table) <= 20 and len(table.columns) >= 2


@given(text=st.text())
def test_md_escape_hides_every_markdown_character(text):
    escaped = md_escape(text)
    assert re.sub(r"\\(.)", r"\1", escaped, flags=re.S) == text  # nothing lost, nothing added
    assert not re.search(r"(?<!\\)(\\\\)*[`*_\[\]<>$|~]", escaped.replace("\\\\", ""))
