"""The app as a user drives it, through Streamlit's AppTest (same process, no browser)."""

from __future__ import annotations

import csv as csv_module
import io
import re

import pytest
from streamlit.testing.v1 import AppTest

from app.models import TRAIN_COMMAND
from siamese.inference.encoder import LABELS
from tests.app.conftest import APP


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def submit(at: AppTest, premise: str, hypothesis: str) -> AppTest:
    at.text_area(key="premise").input(premise)
    at.text_area(key="hypothesis").input(hypothesis)
    return at.button(key="predict").click().run()


def test_pair_shows_label_probabilities_and_cosine(app):
    submit(app, "A man is playing a guitar on stage.", "A man is performing music.")
    assert not app.exception and not app.warning
    shown = metrics(app)
    assert shown["Predicted label"] in LABELS
    assert -1.0 <= float(shown["Cosine similarity"]) <= 1.0
    probs = app.dataframe[0].value
    assert list(probs["label"]) == list(LABELS) and probs["probability"].sum() == pytest.approx(1.0, abs=1e-5)
    assert shown["Predicted label"] == probs.loc[probs["probability"].idxmax(), "label"]
    assert shown["MNLI dev matched accuracy"] == "41.0%"  # model card from report.json


@pytest.mark.parametrize(
    ("premise", "hypothesis"),
    [("", "Someone eats."), ("A man eats.", " \t\n "), ("\u200b\u200b", "Someone eats."), ("A man eats.", "\x00\x01")],
)
def test_empty_or_whitespace_input_warns_and_predicts_nothing(app, premise, hypothesis):
    submit(app, premise, hypothesis)
    assert not app.exception
    assert len(app.warning) == 1 and "Please enter" in app.warning[0].value
    assert "Predicted label" not in metrics(app) and not app.dataframe


def test_long_input_shows_truncation_notice(app):
    submit(app, "a very long premise " * 200, "short")
    assert "Predicted label" in metrics(app)
    assert any("truncated" in w.value for w in app.warning)


def test_example_picker_fills_inputs_and_shows_gold(app):
    app.selectbox(key="example").select_index(2).run()
    assert not app.exception
    examples = app.session_state["examples"]
    assert app.text_area(key="premise").value == examples[2].premise
    assert app.text_area(key="hypothesis").value == examples[2].hypothesis
    shown = metrics(app)
    assert shown["Gold label (MNLI)"] == examples[2].gold and shown["Predicted label"] in LABELS


def test_batch_csv_gives_one_row_per_pair(app):
    csv = 'premise,hypothesis\nA dog runs.,An animal moves.\n"Two, with comma",x\nA cat sleeps.,A cat is awake.\n'
    app.file_uploader(key="csv").set_value(("pairs.csv", csv.encode(), "text/csv")).run()
    assert app.selectbox(key="col_premise").value == "premise"
    app.button(key="predict_batch").click().run()
    assert not app.exception and not app.error
    table = app.dataframe[-1].value
    assert len(table) == 3 and list(table["premise"])[1] == "Two, with comma"
    assert set(table["label"]) <= set(LABELS)
    assert {"cosine", "p_entailment", "p_neutral", "p_contradiction", "truncated"} <= set(table.columns)
    assert app.get("download_button")


@pytest.mark.parametrize(
    ("data", "message"),
    [("é,x\n".encode("latin-1"), "not UTF-8"), (b"premise,hypothesis\n", "no rows"), (b"", "empty")],
)
def test_bad_csv_is_one_error_line(app, data, message):
    app.file_uploader(key="csv").set_value(("bad.csv", data, "text/csv")).run()
    assert not app.exception
    assert len(app.error) == 1 and message in app.error[0].value and "\n" not in app.error[0].value


def test_csv_over_row_limit_is_refused(app, monkeypatch):
    monkeypatch.setenv("APP_MAX_ROWS", "2")
    app.file_uploader(key="csv").set_value(("big.csv", b"a,b\n1,2\n3,4\n5,6\n", "text/csv")).run()
    assert "more than 2 rows" in app.error[0].value


def test_no_model_found_shows_the_command(app_env, monkeypatch, tmp_path, repo_root):
    monkeypatch.setenv("APP_OUTPUTS_DIR", str(tmp_path))
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    assert not at.exception
    assert "No trained model found" in at.error[0].value
    assert at.code[0].value == TRAIN_COMMAND


def test_broken_model_path_is_one_line_error(app_env, monkeypatch, tmp_path, repo_root):
    monkeypatch.setenv("APP_MODEL_DIR", str(tmp_path))  # a folder, but no model in it
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    assert not at.exception and "holds no model" in at.error[0].value


def test_model_without_head_gives_cosine_and_a_note(app_env, monkeypatch, headless_model_dir, repo_root):
    monkeypatch.setenv("APP_MODEL_DIR", str(headless_model_dir))
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    submit(at, "A man eats.", "Someone eats.")
    assert not at.exception
    assert "Cosine similarity" in metrics(at) and metrics(at)["Predicted label"] == "—"
    assert any("no NLI head" in i.value for i in at.info)
    assert any("no report.json" in c.value for c in at.caption)


def test_no_examples_hides_the_picker(app_env, monkeypatch, tmp_path, repo_root):
    monkeypatch.setenv("BERT_DATA_DIR", str(tmp_path))
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    assert not at.exception
    assert [s for s in at.selectbox if s.key == "example"] == []
    assert any("No example pairs" in c.value for c in at.caption)


def test_user_text_is_never_rendered_as_html(app):
    submit(app, "<b>bold</b> <script>alert(1)</script>", "<img src=x onerror=alert(1)>")
    assert not app.exception
    assert all(not getattr(m.proto, "allow_html", False) for m in app.markdown)
    assert all("<script>" not in m.value for m in app.markdown)


def test_app_code_never_allows_html(repo_root):
    for path in (repo_root / "app").glob("*.py"):
        assert "unsafe_allow_html" not in path.read_text(), path


def test_model_loads_once_across_reruns_and_again_when_retrained(
    app_env, monkeypatch, tiny_model_dir, tmp_path, repo_root
):
    import os
    import shutil

    import streamlit as st

    from siamese.inference.encoder import NLIEncoder

    model = tmp_path / "run" / "model"
    shutil.copytree(tiny_model_dir, model)
    monkeypatch.setenv("APP_MODEL_DIR", str(model))
    calls = []
    real_load = NLIEncoder.load.__func__
    monkeypatch.setattr(
        NLIEncoder, "load", classmethod(lambda cls, *a, **k: calls.append(a) or real_load(cls, *a, **k))
    )
    st.cache_resource.clear()
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    submit(at, "A man eats.", "Someone eats.")
    submit(at, "A dog runs.", "An animal moves.")
    assert not at.exception and len(calls) == 1
    # a retrained run replaces the folder in one rename (stagekit.folders.atomic_dir): the app must reload it
    shutil.copytree(tiny_model_dir, tmp_path / "run" / "new")
    shutil.rmtree(model)
    os.replace(tmp_path / "run" / "new", model)
    submit(at, "A dog runs.", "An animal moves.")
    assert not at.exception and len(calls) == 2


@pytest.mark.parametrize(("name", "keep"), [("nli_head.safetensors", 10), ("model.safetensors", 0)])
def test_damaged_weights_file_is_one_line_error_naming_it(
    app_env, monkeypatch, tiny_model_dir, tmp_path, repo_root, name, keep
):
    import shutil

    broken = tmp_path / "broken" / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / name).write_bytes((broken / name).read_bytes()[:keep])  # an interrupted copy, a full disk
    monkeypatch.setenv("APP_MODEL_DIR", str(broken))
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    (error,) = at.error
    assert not at.exception and "cannot be opened" in error.value and "\n" not in error.value
    assert name.replace("_", "\\_") in error.value and "cut short" in error.value  # as Markdown shows it


def test_the_cosine_is_read_against_random_pairs_and_the_verdict_in_words(app):
    submit(app, "The stock market fell sharply today.", "A cat is sitting on the mat.")
    assert not app.exception
    text = " ".join(m.value for m in app.markdown)
    assert "more similar than" in text and "% of random sentence pairs" in text
    label = metrics(app)["Predicted label"]
    assert f"**Verdict:** {label}, " in text and re.search(r"\d+%", text)


def paste_and_query(at: AppTest, sentences: list[str], query: str) -> AppTest:
    at.radio(key="search_source").set_value("Paste sentences").run()
    at.text_area(key="search_text").input("\n".join(sentences)).run()
    return at.text_input(key="search_query").input(query).run()


SENTENCES = ["A man is playing a guitar.", "The stock market fell today.", "Two dogs run in a park.", "It rains."]


def test_search_finds_a_pasted_sentence_first(app):
    paste_and_query(app, SENTENCES, "Two dogs run in a park.")
    assert not app.exception and not app.error
    results = app.dataframe[-1].value
    assert list(results["rank"]) == [1, 2, 3, 4] and results["sentence"].iloc[0] == "Two dogs run in a park."
    assert results["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert list(results["cosine"]) == sorted(results["cosine"], reverse=True)
    assert any("4 sentences" in c.value for c in app.caption)


def test_a_model_trained_for_truncation_searches_at_the_width_chosen(
    tiny_model_dir, app_env, repo_root, tmp_path, monkeypatch
):
    import shutil

    model = tmp_path / "nested" / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "resolved_config.yaml").write_text("loss:\n  name: both\n  matryoshka_dims: [32, 16]\n")
    monkeypatch.setenv("APP_MODEL_DIR", str(model))
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    paste_and_query(at, SENTENCES, "Two dogs run in a park.")
    assert at.selectbox(key="search_dims").options == ["64", "32", "16"]
    at.selectbox(key="search_dims").set_value(16).run()
    assert not at.exception and not at.error
    results = at.dataframe[-1].value
    assert results["sentence"].iloc[0] == "Two dogs run in a park."
    # the cosines of the embeddings' first 16 dimensions, not of all 64
    import torch

    from siamese.inference.encoder import NLIEncoder

    for dims in (16, 64):
        encoder = NLIEncoder.load(model, device="cpu", truncate_dim=dims)
        cosine = torch.nn.functional.cosine_similarity(
            encoder.embed(["Two dogs run in a park."]), encoder.embed(SENTENCES)
        )
        matches = sorted(cosine.tolist(), reverse=True) == pytest.approx(list(results["cosine"]), abs=1e-4)
        assert matches == (dims == 16)


def test_a_model_without_trained_widths_offers_no_width_choice(app):
    paste_and_query(app, SENTENCES, "It rains.")
    assert not app.exception and not [s for s in app.selectbox if s.key == "search_dims"]


def test_search_over_the_default_mnli_premises(app):
    app.text_input(key="search_query").input("A woman is reading a book.").run()
    assert not app.exception and not app.error
    results = app.dataframe[-1].value
    assert len(results) == 10 and results["sentence"].is_unique
    assert any("3,000 sentences" in c.value for c in app.caption)


def test_search_upload_that_is_not_text_is_one_error_line(app):
    app.radio(key="search_source").set_value("Upload a file").run()
    app.file_uploader(key="search_upload").set_value(("s.txt", "é\n".encode("latin-1"), "text/plain")).run()
    assert not app.exception
    assert len(app.error) == 1 and "not UTF-8" in app.error[0].value and "\n" not in app.error[0].value


def test_compare_shows_the_baseline_beside_the_model(app):
    app.toggle(key="compare").set_value(True).run()
    submit(app, "A man is playing a guitar.", "Someone makes music.")
    assert not app.exception
    shown = metrics(app)
    assert "Cosine similarity" in shown and "Cosine similarity (all-MiniLM-L6-v2)" in shown
    paste_and_query(app, SENTENCES, "A person plays an instrument.")
    assert not app.exception and not app.error
    mine, baseline = app.dataframe[-2].value, app.dataframe[-1].value
    # MiniLM knows what a guitar is; the tiny test model does not have to
    assert baseline["sentence"].iloc[0] == "A man is playing a guitar." and len(mine) == len(baseline) == 4


def test_the_batch_download_escapes_cells_a_spreadsheet_would_run(app, monkeypatch):
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    served: list[bytes] = []
    keep = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if filename == "predictions.csv":
            served.append(path_or_data)
        return keep(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    csv = 'premise,hypothesis\n"=cmd|\' /C calc\'!A0",@SUM(A1)\n"=HYPERLINK(""http://x.example"",""y"")",+1\n'
    app.file_uploader(key="csv").set_value(("pairs.csv", csv.encode(), "text/csv")).run()
    app.button(key="predict_batch").click().run()
    assert not app.exception and served
    header, first, second = csv_module.reader(io.StringIO(served[-1].decode("utf-8")))
    assert first[:2] == ["'=cmd|' /C calc'!A0", "'@SUM(A1)"]
    assert second[:2] == ['\'=HYPERLINK("http://x.example","y")', "+1"]  # +1 is a number, left as it is
    assert float(first[header.index("cosine")]) <= 1.0  # numbers stay numbers
