"""Text the model's vocabulary cannot read: the encoder measures it, the app says so instead of scoring it.

The tiny test model's WordPiece vocabulary is learnt from English MNLI sentences, so Chinese, Arabic and emoji
are [UNK] to it, as they are to any English WordPiece vocabulary.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from app.predict import PairResult, predict_pair, predict_table
from tests.app.test_streamlit_app import metrics, paste_and_query, submit

CHINESE = "这是一个关于天气的句子。"
ARABIC = "مرحبا بالعالم كيف حالك"
EMOJI = "😀 😀 🙈 🎉"


def shown(elements) -> list[str]:
    """The texts of warnings or captions as the page shows them (the app escapes markdown: app/safe_text.py)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]


def test_the_prediction_carries_each_texts_unknown_token_share(tiny_encoder):
    # "A man eats 🍕." is a, man, e, ##at, ##s, [UNK], "." to the tiny vocabulary: 1 of 7 unknown.
    far = "a man is walking " * 20 + CHINESE  # the unknown text lies past what the model reads (32 tokens)
    pred = tiny_encoder.predict([CHINESE, "A man eats 🍕.", "A man eats.", far], [ARABIC, EMOJI, "Someone eats.", far])
    assert pred.unknown_share.shape == (4, 2)
    np.testing.assert_allclose(pred.unknown_share, [[1.0, 1.0], [1 / 7, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert list(pred.mostly_unknown) == [True, True, False, False]
    assert list(pred.truncated) == [False, False, False, True]
    from siamese.inference.encoder import MOSTLY_UNKNOWN

    assert MOSTLY_UNKNOWN == 0.5  # documented: more than half of what the model reads
    empty = tiny_encoder.predict([], [])
    assert empty.unknown_share.shape == (0, 2) and empty.mostly_unknown.shape == (0,)


def test_a_pair_result_names_the_texts_the_model_cannot_read(tiny_encoder):
    result = predict_pair(tiny_encoder, CHINESE, "A man eats.")
    assert isinstance(result, PairResult) and result.unreadable == ("premise",)
    assert "premise" in result.unreadable_message and "100 %" in result.unreadable_message
    assert "[UNK]" in result.unreadable_message and "no similarity or label" in result.unreadable_message
    fine = predict_pair(tiny_encoder, "A man eats 🍕.", "Someone eats.")
    assert fine.unreadable == () and fine.unreadable_message is None


def test_the_batch_table_scores_no_pair_with_an_unreadable_text(tiny_encoder):
    table = predict_table(tiny_encoder, [CHINESE, "A man eats.", ""], ["A man eats.", "Someone eats.", "x"])
    assert np.isnan(table.loc[0, "cosine"]) and table.loc[0, "label"] == "" and np.isnan(table.loc[0, "p_neutral"])
    assert "premise" in table.loc[0, "not_scored"] and "[UNK]" in table.loc[0, "not_scored"]
    assert table.loc[1, "not_scored"] == "" and not np.isnan(table.loc[1, "cosine"])
    assert table.loc[2, "not_scored"] == "empty premise"


@pytest.mark.parametrize(
    ("premise", "hypothesis"),
    [(CHINESE, EMOJI), (ARABIC, CHINESE), ("A man eats.", EMOJI)],
    ids=["chinese-emoji", "arabic-chinese", "english-emoji"],
)
def test_the_app_warns_instead_of_scoring_a_pair_it_cannot_read(app, premise, hypothesis):
    submit(app, premise, hypothesis)
    assert not app.exception
    warnings = shown(app.warning)
    assert len(warnings) == 1 and "[UNK]" in warnings[0] and "no similarity or label" in warnings[0]
    assert "Cosine similarity" not in metrics(app) and "Predicted label" not in metrics(app)
    text = " ".join(m.value for m in app.markdown)
    assert "Verdict" not in text and "random sentence pairs" not in text and not app.dataframe


def test_the_app_scores_a_pair_with_a_few_unknown_tokens(app):
    submit(app, "A man eats 🍕 at the park.", "Someone eats food.")
    assert not app.exception and not app.warning and "Cosine similarity" in metrics(app)


def test_search_warns_for_a_query_it_cannot_read_and_leaves_out_such_sentences(app):
    paste_and_query(app, ["A man is playing a guitar.", CHINESE, "Two dogs run in a park.", EMOJI], CHINESE)
    assert not app.exception and not app.error
    assert any("[UNK]" in w and "query" in w for w in shown(app.warning))
    assert not app.dataframe
    app.text_input(key="search_query").input("Two dogs run in a park.").run()
    assert not app.exception and not app.warning
    results = app.dataframe[-1].value
    assert list(results["sentence"]) == ["Two dogs run in a park.", "A man is playing a guitar."]
    assert any("2 sentences left out" in c and "[UNK]" in c for c in shown(app.caption))


def test_batch_in_the_app_says_which_pairs_were_not_scored(app):
    csv = f"premise,hypothesis\nA dog runs.,An animal moves.\n{CHINESE},{ARABIC}\n".encode()
    app.file_uploader(key="csv").set_value(("pairs.csv", csv, "text/csv")).run()
    app.button(key="predict_batch").click().run()
    assert not app.exception and not app.error
    table = app.dataframe[-1].value
    assert list(table["not_scored"] == "") == [True, False]
    assert any("1 of 2 pairs" in w and "not_scored" in w for w in shown(app.warning))
