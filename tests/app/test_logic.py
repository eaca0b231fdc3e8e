"""The app's non-UI logic: model discovery, model card, examples, CSV checks, batch prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app.batch import UploadLimits, check_columns, default_columns, read_csv_upload
from app.examples import LOCAL_DEFAULT, Example, example_sources, first_available, load_examples
from app.models import discover_models, model_choices, model_label, read_model_card, requested_model
from app.predict import EmptyInput, PairResult, predict_pair, predict_table
from siamese.inference.encoder import HEAD_FILE, LABELS
from stagekit.errors import DataError, UserError


def _fake_run(root: Path, name: str, head: bool = True) -> Path:
    model = root / name / "model"
    model.mkdir(parents=True)
    if head:
        (model / HEAD_FILE).write_bytes(b"")
    return model


def test_discovery_newest_first_and_only_with_head(tmp_path):
    old, new = _fake_run(tmp_path, "old"), _fake_run(tmp_path, "new")
    _fake_run(tmp_path, "pretrain_only", head=False)
    os.utime(old / HEAD_FILE, (time.time() - 100, time.time() - 100))
    assert discover_models(tmp_path) == [new, old]
    assert discover_models(tmp_path / "missing") == []
    assert model_label(new, tmp_path) == "new"
    assert model_label(Path("/elsewhere/model"), tmp_path) == "/elsewhere/model"


def test_requested_model_from_argv_or_env(tmp_path):
    found = _fake_run(tmp_path, "run")
    env = {"APP_OUTPUTS_DIR": str(tmp_path)}
    assert requested_model(["--model", "/m"], env) == Path("/m")
    assert requested_model(["--other", "x"], {"APP_MODEL_DIR": "/e"}) == Path("/e")
    assert requested_model([], {}) is None
    assert model_choices(["--model", "/m"], env) == [Path("/m"), found]
    assert model_choices(["--model", str(found)], env) == [found]  # not listed twice
    assert model_choices([], env) == [found]


def test_model_card_reads_report_and_run_info(tiny_model_dir):
    card = read_model_card(tiny_model_dir)
    assert card.has_head and card.base_model and card.base_model.endswith("backbone")
    assert card.metric("mnli_validation_matched", "accuracy") == pytest.approx(0.41)
    assert card.metric("stsb_test", "spearman") == pytest.approx(0.12)
    assert card.metric("baseline", "accuracy") is None  # baseline is null
    assert card.notes == []


def test_model_card_notes_missing_or_broken_files(tmp_path):
    model = _fake_run(tmp_path, "run", head=False)
    (model / "report.json").write_text("{not json")
    card = read_model_card(model)
    assert card.report is None and card.base_model is None and not card.has_head
    assert any("run_info.json" in n for n in card.notes)
    assert any("report.json could not be read" in n for n in card.notes)
    assert any("no NLI head" in n for n in card.notes)
    (model / "report.json").write_text(json.dumps([1, 2]))
    assert any("not a JSON object" in n for n in read_model_card(model).notes)


def test_examples_come_from_local_mnli_dev(data_dir):
    assert example_sources({})[-1] == os.path.expandvars(LOCAL_DEFAULT)
    examples = load_examples(str(data_dir / "mnli" / "validation_matched.jsonl.gz"), limit=5)
    assert len(examples) == 5 and all(e.premise and e.hypothesis and e.gold in LABELS for e in examples)


def test_examples_fall_back_and_report_each_failure(tmp_path, data_dir):
    local = str(data_dir / "mnli" / "validation_matched.jsonl.gz")
    examples, problems = first_available(["nyu-mll/glue", local], limit=3)  # Hub unreachable in tests
    assert len(examples) == 3 and len(problems) == 1 and "unreachable" in problems[0]
    examples, problems = first_available([str(tmp_path / "none.jsonl.gz")])
    assert examples == [] and len(problems) == 1 and "none.jsonl.gz" in problems[0]


def test_examples_reject_wrong_columns(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n')
    examples, problems = first_available([str(path)])
    assert examples == [] and "premise" in problems[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"premise,hypothesis\n", "no rows"),
        ("premise,hypothesis\ncaf\xe9,x\n".encode("latin-1"), "not UTF-8"),
        (b"only\n1\n", "two columns"),
        (b"a,b\n" + b"x,y\n" * 11, "more than 10 rows"),
        (b"a,b\n" + b"x" * 200 + b",y\n", "upload limit"),
        (b'a,b\n"unclosed,y\n', "not a valid CSV"),
    ],
)
def test_bad_csv_is_one_line_error(data, message):
    with pytest.raises(DataError, match=message) as err:
        read_csv_upload(data, "up.csv", UploadLimits(max_bytes=100, max_rows=10))
    assert "\n" not in str(err.value) and "up.csv" in str(err.value)


def test_csv_columns_and_limits_from_env():
    table = read_csv_upload("\ufeffsentence1,sentence2,x\n1,é,z\n".encode(), "ok.csv", UploadLimits())
    assert list(table.columns) == ["sentence1", "sentence2", "x"] and table.iloc[0, 0] == "1"  # text stays text
    assert default_columns(["x", "premise", "hypothesis"]) == ("premise", "hypothesis")
    assert default_columns(["a", "b", "c"]) == ("a", "b")
    with pytest.raises(DataError, match="'nope' not in the file"):
        check_columns(table, "nope", "x")
    with pytest.raises(DataError, match="two different"):
        check_columns(table, "x", "x")
    assert UploadLimits.from_env({"APP_MAX_UPLOAD_MB": "0.5", "APP_MAX_ROWS": "7"}) == UploadLimits(500_000, 7)
    with pytest.raises(UserError, match="APP_MAX"):
        UploadLimits.from_env({"APP_MAX_ROWS": "many"})


def test_predict_pair_and_table_agree(tiny_encoder):
    result = predict_pair(tiny_encoder, "A man is eating.", "Someone eats food.")
    assert isinstance(result, PairResult) and result.label in LABELS and not result.truncated
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert predict_pair(tiny_encoder, " \n", "x") == EmptyInput(("premise",))
    assert "premise and a hypothesis" in EmptyInput(("premise", "hypothesis")).message
    premises = ["A man is eating.", "", "word " * 100] * 5
    hypotheses = ["Someone eats food.", "x", "y"] * 5
    seen = []
    table = predict_table(tiny_encoder, premises, hypotheses, batch_size=4, progress=seen.append)
    assert len(table) == 15 and seen[-1] == pytest.approx(1.0)
    assert table.loc[0, "label"] == result.label and table.loc[0, "cosine"] == pytest.approx(result.cosine, abs=1e-5)
    assert table.loc[1, "label"] == "" and np.isnan(table.loc[1, "cosine"])  # blank premise: no prediction
    assert bool(table.loc[2, "truncated"]) and not bool(table.loc[0, "truncated"])
    probs = table[[f"p_{label}" for label in LABELS]].dropna().to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_predict_without_head_gives_cosine_only(headless_model_dir):
    from siamese.inference.encoder import NLIEncoder

    encoder = NLIEncoder.load(headless_model_dir, device="cpu")
    result = predict_pair(encoder, "A man is eating.", "Someone eats.")
    assert result.probs is None and result.label is None and -1.0 <= result.cosine <= 1.0
    table = predict_table(encoder, ["a"], ["b"])
    assert list(table.columns) == ["premise", "hypothesis", "cosine", "truncated", "not_scored"]


def test_example_source_has_a_default_data_dir_on_a_fresh_import(repo_root):
    env = {k: v for k, v in os.environ.items() if k != "BERT_DATA_DIR"}
    code = "from app.examples import example_sources; print(example_sources({})[0])"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(repo_root.parent / "shared" / "data" / "mnli" / "validation_matched.jsonl.gz")


def test_cpu_threads_default_and_validation():
    from app.predict import cpu_threads

    assert cpu_threads({}) == 1 and cpu_threads({"APP_TORCH_THREADS": "4"}) == 4
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(UserError, match="APP_TORCH_THREADS"):
            cpu_threads({"APP_TORCH_THREADS": bad})


# the picker reads NLI rows through the training reader, so "-" is "no gold label" there too.
def test_example_without_a_gold_label_shows_none(tmp_path):
    path = tmp_path / "dev.jsonl"
    labels = [0, 2, "-", 1]
    path.write_text(
        "".join(json.dumps({"premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i}.", "label": y}) + "\n"
                for i, y in enumerate(labels)),
        encoding="utf-8",
    )  # fmt: skip
    examples = load_examples(str(path))
    assert [e.gold for e in examples] == ["entailment", "contradiction", None, "neutral"]
    assert [e.premise for e in examples] == [f"Premise {i}." for i in range(4)]
    unlabelled = tmp_path / "pairs.jsonl"  # no label column at all: pairs to try, none with a gold label
    unlabelled.write_text(json.dumps({"sentence1": "A.", "sentence2": "B."}) + "\n", encoding="utf-8")
    assert load_examples(str(unlabelled)) == [Example("A.", "B.", None)]


def test_examples_from_a_tsv_are_verbatim_and_skip_blank_text(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text(
        'sentence1\tsentence2\tgold_label\n"Stop," said the guard.\tHe spoke.\tentailment\n'
        "\u200b\u200b\tNothing to read.\tneutral\nA man walks.\tA man is outside.\tcontradiction\n",
        encoding="utf-8",
    )
    examples = load_examples(str(path))
    assert [(e.premise, e.gold) for e in examples] == [('"Stop," said the guard.', "entailment"),
                                                       ("A man walks.", "contradiction")]  # fmt: skip


def test_examples_with_an_unknown_label_are_a_one_line_problem(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps({"premise": "A.", "hypothesis": "B.", "label": 7}) + "\n", encoding="utf-8")
    examples, problems = first_available([str(path)])
    assert examples == [] and "label 7" in problems[0] and "\n" not in problems[0]


# the app's Hub example source fails in seconds too, naming the local file.
def test_hub_examples_with_an_unreachable_hub_fail_in_seconds(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect fails at once
    started = time.monotonic()
    examples, problems = first_available(["nyu-mll/glue"])
    assert time.monotonic() - started < 5
    assert examples == [] and "unreachable" in problems[0] and "mnli/validation_matched.jsonl.gz" in problems[0]


# text with no visible character is empty text, in the pair and the batch path alike.
@pytest.mark.parametrize("blank", ["\u200b\u200b", "\x00\x01", "\ufeff\u2060 "])
def test_invisible_text_gets_no_prediction(tiny_encoder, blank):
    assert predict_pair(tiny_encoder, blank, "Someone eats.") == EmptyInput(("premise",))
    assert predict_pair(tiny_encoder, "A man eats.", blank) == EmptyInput(("hypothesis",))
    table = predict_table(tiny_encoder, [blank, "A man eats."], ["x", "Someone eats."])
    assert np.isnan(table.loc[0, "cosine"]) and table.loc[0, "label"] == ""
    assert table.loc[1, "label"] in LABELS


def test_search_sentences_are_cleaned_counted_and_limited():
    from app.search import clean_sentences

    assert clean_sentences([" a ", "", "\u200b", "b", "a"], "x", 10) == ["a", "b"]
    with pytest.raises(DataError, match="no sentences"):
        clean_sentences(["", " "], "the pasted text", 10)
    with pytest.raises(DataError, match="more than the limit of 2"):
        clean_sentences(["a", "b", "c"], "x", 2)


def test_search_upload_reads_txt_lines_or_one_csv_column():
    from app.search import csv_columns, sentences_from_upload

    assert sentences_from_upload(b"one\ntwo\n\none\n", "s.txt", 10) == ["one", "two"]
    csv = b'id,text\n1,"First, with a comma"\n2,Second\n'
    assert csv_columns(csv) == ["id", "text"]
    assert sentences_from_upload(csv, "s.csv", 10, "text") == ["First, with a comma", "Second"]
    with pytest.raises(DataError, match="no column 'body'"):
        sentences_from_upload(csv, "s.csv", 10, "body")


def test_search_index_returns_the_top_k_best_first(tiny_encoder):
    from app.search import SearchIndex, search_table

    sentences = [f"sentence number {i} about {w}" for i, w in enumerate(["dogs", "cats", "rain", "music", "food"])]
    index = SearchIndex.build(tiny_encoder, sentences, progress=(seen := []).append)
    assert index.embeddings.shape == (5, 64) and np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0)
    assert seen == [1.0]
    table = search_table(index, tiny_encoder, sentences[3], k=3)
    assert table["sentence"].iloc[0] == sentences[3] and len(table) == 3
    assert list(table["cosine"]) == sorted(table["cosine"], reverse=True)
    # the scores are the model's cosines, k larger than the corpus gives all of it
    expected = torch.nn.functional.cosine_similarity(tiny_encoder.embed([sentences[3]]), tiny_encoder.embed(sentences))
    assert np.allclose(
        sorted(expected.numpy(), reverse=True), search_table(index, tiny_encoder, sentences[3], 99)["cosine"], atol=1e-5
    )
    with pytest.raises(UserError, match="Please enter a query"):
        search_table(index, tiny_encoder, " \u200b", 3)


def test_search_by_fewer_dimensions_ranks_by_the_embeddings_first_ones(tiny_encoder, tiny_model_dir):
    from app.search import SearchIndex, search_table
    from siamese.inference.encoder import NLIEncoder

    sentences = [f"sentence number {i} about {w}" for i, w in enumerate(["dogs", "cats", "rain", "music", "food"])]
    full = SearchIndex.build(tiny_encoder, sentences)
    narrow = full.truncate(16)
    assert narrow.embeddings.shape == (5, 16) and np.allclose(np.linalg.norm(narrow.embeddings, axis=1), 1.0)
    # the same index as one built by an encoder that truncates (sentence-transformers' truncate_dim)
    truncated = NLIEncoder.load(tiny_model_dir, device="cpu", truncate_dim=16)
    assert np.allclose(SearchIndex.build(truncated, sentences).embeddings, narrow.embeddings, atol=1e-6)
    # a full-width query against the narrow index is cut to its first 16 dimensions
    by_full = search_table(narrow, tiny_encoder, "a query about music", 5)
    by_truncated = search_table(narrow, truncated, "a query about music", 5)
    assert list(by_full["sentence"]) == list(by_truncated["sentence"])
    assert np.allclose(by_full["cosine"], by_truncated["cosine"], atol=1e-5)
    with pytest.raises(UserError, match="cannot search by 65 dimensions: the index holds 64"):
        full.truncate(65)


@pytest.mark.parametrize(
    ("probability", "words"),
    [
        (0.95, "very confident"),
        (0.75, "fairly confident"),
        (0.55, "leaning"),
        (0.45, "unsure"),
        (0.36, "close to a guess"),
    ],
)
def test_the_verdict_in_words(probability, words):
    from app.predict import confidence_words

    assert words in confidence_words(probability, 3)


def test_a_pair_gets_its_percentile_among_random_pairs(tiny_encoder):
    from siamese.inference.postprocess import SimilarityReference

    reference = SimilarityReference.from_cosines(np.linspace(-1.0, 1.0, 201), "uniform")
    result = predict_pair(tiny_encoder, "A man eats.", "Someone eats.", reference)
    assert result.percentile == pytest.approx((result.cosine + 1) / 2 * 100, abs=1.0)
    assert result.similarity_words == f"more similar than {result.percentile:.0f} % of random sentence pairs"
    assert result.verdict_words.startswith(f"{result.label}, ")
