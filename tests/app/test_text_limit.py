"""One huge paste: every text the app takes in has a size cap in characters, checked before any tokenization."""

from __future__ import annotations

import re

import numpy as np
import pytest

import app.predict as predict
from siamese.inference.encoder import NLIEncoder
from tests.app.test_streamlit_app import metrics, paste_and_query, submit

LIMIT = 10_000  # the default of $APP_MAX_CHARS
HUGE = "A man walks his dog in the park. " * 400  # 13,200 characters: a few pages, far past what a model reads


def shown(elements) -> list[str]:
    """The texts of errors or warnings as the page shows them (the app escapes markdown: app/safe_text.py)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]


@pytest.fixture
def tokenized(monkeypatch) -> list[int]:
    """The length in characters of every text handed to the model's tokenizer through NLIEncoder."""
    seen: list[int] = []
    for name in ("token_stats", "embed_core"):
        real = getattr(NLIEncoder, name)

        def spy(self, texts, *args, _real=real, **kwargs):
            seen.extend(len(t) for t in texts)
            return _real(self, texts, *args, **kwargs)

        monkeypatch.setattr(NLIEncoder, name, spy)
    return seen


def test_the_cap_comes_from_the_environment():
    assert predict.max_text_chars({}) == LIMIT and predict.max_text_chars({"APP_MAX_CHARS": "500"}) == 500
    for bad in ("0", "-5", "lots", ""):
        with pytest.raises(predict.UserError, match="APP_MAX_CHARS"):
            predict.max_text_chars({"APP_MAX_CHARS": bad})


def test_a_pair_over_the_cap_is_not_scored_nor_tokenized(tiny_encoder, tokenized):
    result = predict.predict_pair(tiny_encoder, HUGE, "Someone walks.")
    assert result == predict.TooLong(("premise",), (len(HUGE),), LIMIT, tiny_encoder.max_seq_length)
    assert f"{len(HUGE):,} characters" in result.message and "limit of 10,000 characters" in result.message
    assert "not scored" in result.message and "APP_MAX_CHARS" in result.message
    both = predict.predict_pair(tiny_encoder, HUGE, HUGE, max_chars=100)
    assert both.fields == ("premise", "hypothesis") and "they were not scored" in both.message
    assert tokenized == []
    assert isinstance(predict.predict_pair(tiny_encoder, "x" * LIMIT, "y"), predict.PairResult)  # the cap is allowed


def test_the_batch_table_scores_no_pair_over_the_cap(tiny_encoder, tokenized):
    table = predict.predict_table(tiny_encoder, ["A man eats.", "A dog runs."], ["Someone eats.", HUGE])
    assert table.loc[0, "not_scored"] == "" and not np.isnan(table.loc[0, "cosine"])
    assert np.isnan(table.loc[1, "cosine"]) and table.loc[1, "label"] == ""
    assert table.loc[1, "not_scored"] == f"hypothesis over 10,000 characters ({len(HUGE):,})"
    assert max(tokenized) <= LIMIT


def test_the_app_refuses_a_huge_paste_with_the_cap_and_scores_nothing(app, tokenized):
    submit(app, HUGE, "Someone walks.")
    assert not app.exception
    errors = shown(app.error)
    assert len(errors) == 1 and "limit of 10,000 characters" in errors[0] and "not scored" in errors[0]
    assert "Predicted label" not in metrics(app) and "Cosine similarity" not in metrics(app)
    assert max(tokenized, default=0) <= LIMIT


def test_search_refuses_a_query_or_a_sentence_over_the_cap(app, tokenized):
    paste_and_query(app, ["A man is playing a guitar.", "It rains."], HUGE)
    assert not app.exception
    assert any("query" in w and "limit of 10,000 characters" in w and "not searched" in w for w in shown(app.warning))
    assert not app.dataframe
    app.text_area(key="search_text").input("\n".join(["It rains.", HUGE, "A dog runs."])).run()
    assert not app.exception
    errors = shown(app.error)
    assert len(errors) == 1 and "line 2" in errors[0] and "limit of 10,000 characters" in errors[0]
    assert max(tokenized) <= LIMIT


def test_a_search_upload_with_a_sentence_over_the_cap_is_one_error_line(app, tokenized):
    app.radio(key="search_source").set_value("Upload a file").run()
    data = f"It rains.\n{HUGE}\n".encode()
    app.file_uploader(key="search_upload").set_value(("s.txt", data, "text/plain")).run()
    assert not app.exception
    errors = shown(app.error)
    assert len(errors) == 1 and "s.txt" in errors[0] and "line 2" in errors[0] and "\n" not in errors[0]
    assert tokenized == []


def test_batch_in_the_app_leaves_a_pair_over_the_cap_unscored(app, tokenized):
    csv = f"premise,hypothesis\nA dog runs.,An animal moves.\n{HUGE},x\n".encode()
    app.file_uploader(key="csv").set_value(("pairs.csv", csv, "text/csv")).run()
    app.button(key="predict_batch").click().run()
    assert not app.exception and not app.error
    table = app.dataframe[-1].value
    assert list(table["not_scored"] == "") == [True, False] and "over 10,000 characters" in table["not_scored"][1]
    assert any("1 of 2 pairs" in w for w in shown(app.warning))
    assert max(tokenized) <= LIMIT
