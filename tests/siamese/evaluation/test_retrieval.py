"""Retrieval as the field scores it (sentence-transformers' InformationRetrievalEvaluator on a set built from NLI
pairs, NanoBEIR with internet), and STS-B / retrieval at narrower embedding widths, in report.json and report.md."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from siamese.config import SourceConfig
from siamese.evaluation.evaluate import main
from siamese.evaluation.retrieval import (
    METRICS,
    nanobeir_metrics,
    nli_retrieval_set,
    retrieval_metrics,
    widths_to_score,
)
from siamese.evaluation.scores import read_stsb, stsb_by_width, stsb_metrics
from siamese.inference.encoder import NLIEncoder
from siamese.nli_data import read_pairs
from stagekit.errors import UserError

PAIRS = {  # GLUE labels: 0 entailment, 1 neutral, 2 contradiction
    "premise": ["A dog runs in a park.", "A dog runs in a park.", "A chef cooks pasta.", "Two kids play chess.",
                "A man repairs a bike.", "A chef cooks pasta."],
    "hypothesis": ["An animal is outside.", "The dog sleeps.", "Someone makes food.", "Children play a game.",
                   "An animal is outside.", "A chef is busy."],
    "label": [0, 2, 0, 0, 0, 1],
}  # fmt: skip


class TableEncoder:
    """Embeds each text as the vector `table` gives it: an encoder whose ranking the test chooses."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.model = SimpleNamespace(model_card_data=SimpleNamespace(set_evaluation_metrics=lambda *a, **k: None))

    def embed(self, texts, batch_size: int = 64) -> torch.Tensor:
        return torch.tensor([self.table[t] for t in texts])


def test_the_set_dedupes_premises_and_queries_are_the_entailed_hypotheses():
    rset = nli_retrieval_set(PAIRS, "toy")
    assert sorted(rset.corpus.values()) == sorted(set(PAIRS["premise"]))  # 4 distinct premises, each once
    assert sorted(rset.queries.values()) == ["An animal is outside.", "Children play a game.", "Someone makes food."]
    by_text = {text: qid for qid, text in rset.queries.items()}
    docs = {text: cid for cid, text in rset.corpus.items()}
    # a hypothesis two premises entail is one query with both as relevant documents
    assert rset.relevant[by_text["An animal is outside."]] == {
        docs["A dog runs in a park."],
        docs["A man repairs a bike."],
    }
    assert rset.describe() == {"name": "toy", "queries": 3, "corpus": 4}


def test_perfect_retrieval_scores_one_and_a_second_place_scores_a_half(caplog):
    import logging

    pairs = {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [0, 0, 0]}
    one_hot = {f"{kind}{i}": [float(i == j) for j in range(3)] for kind in "ph" for i in range(3)}
    with caplog.at_level(logging.INFO):
        perfect = retrieval_metrics(TableEncoder(one_hot), nli_retrieval_set(pairs, "toy"), [3])
    assert perfect["by_width"][3] == {key: 1.0 for key in METRICS}
    # one line per width, not the evaluator's twenty
    assert [r.name for r in caplog.records] == ["siamese.evaluation.retrieval"] and "mrr@10 1.0000" in caplog.text
    # h0 is closer to p1 (cosine 0.8) than to p0 (0.6), which entails it: its relevant document comes second
    table = {"p0": [1.0, 0.0], "p1": [0.0, 1.0], "h0": [0.6, 0.8], "h1": [0.0, 1.0]}
    pairs = {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [0, 0]}
    scores = retrieval_metrics(TableEncoder(table), nli_retrieval_set(pairs, "toy"), [2])["by_width"][2]
    assert scores["mrr@10"] == pytest.approx((0.5 + 1.0) / 2) and scores["recall@1"] == pytest.approx(0.5)
    assert scores["recall@5"] == 1.0 and scores["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1) / 2)


def test_widths_to_score():
    assert widths_to_score(128) == [128, 64, 32]
    assert widths_to_score(128, (48,)) == [128, 64, 48, 32]
    assert widths_to_score(384, (128, 64, 32)) == [384, 192, 128, 96, 64, 48, 32]
    assert widths_to_score(64, (64, 16)) == [64, 32, 16]


def local(path) -> SourceConfig:
    return SourceConfig(path=str(path), config_name=None, split="train")


def test_a_narrower_width_scores_what_a_truncated_model_embeds(untrained_model_dir, data_dir):
    rset = nli_retrieval_set(read_pairs(local(data_dir / "mnli" / "validation_matched.jsonl.gz"), 60), "mnli")
    full, truncated = (
        NLIEncoder.load(untrained_model_dir, device="cpu"),
        NLIEncoder.load(untrained_model_dir, "cpu", truncate_dim=32),
    )
    assert truncated.embed(["a test"]).shape == (1, 32) and full.embed(["a test"]).shape == (1, 64)
    widths = retrieval_metrics(full, rset, [64, 32])["by_width"]
    assert widths[32] == pytest.approx(retrieval_metrics(truncated, rset, [32])["by_width"][32])
    assert widths[64] != widths[32]
    sts = read_stsb(local(data_dir / "stsb" / "validation.jsonl.gz"), 50, 5.0)
    by_width = stsb_by_width(full, *sts, [64, 32])
    assert by_width[64]["spearman"] == pytest.approx(stsb_metrics(full, *sts)["spearman"], abs=1e-5)
    assert by_width[32]["spearman"] == pytest.approx(stsb_metrics(truncated, *sts)["spearman"], abs=1e-5)


def test_the_report_has_retrieval_and_stsb_at_each_width_for_model_and_baseline(untrained_model_dir, tmp_path):
    report = main(
        ["--model", str(untrained_model_dir), "limit=40", f"out={tmp_path}", f"baseline={untrained_model_dir}"]
    )
    for section in (report, report["baseline"]):
        retrieval = section["retrieval"]
        assert retrieval["name"] == "mnli_validation_matched" and retrieval["queries"] > 0 and retrieval["corpus"] > 0
        assert list(retrieval["by_width"]) == [64, 32] and list(section["stsb_test_by_width"]) == [64, 32]
        for metrics in retrieval["by_width"].values():
            assert set(metrics) == set(METRICS) and all(0.0 <= v <= 1.0 for v in metrics.values())
    assert json.loads((tmp_path / "report.json").read_text())["retrieval"]["by_width"]["32"]["mrr@10"] == pytest.approx(
        report["retrieval"]["by_width"][32]["mrr@10"]
    )
    markdown = (tmp_path / "report.md").read_text()
    assert "## Retrieval and STS-B by embedding width: mnli_validation_matched" in markdown
    mrr = report["retrieval"]["by_width"][32]["mrr@10"]
    assert f"| model | 32 | {report['stsb_test_by_width'][32]['spearman']:.4f} | {mrr:.4f} |" in markdown
    assert "| baseline | 64 |" in markdown


def test_another_nli_file_is_a_retrieval_set(untrained_model_dir, data_dir, tmp_path):
    snli = data_dir / "snli" / "validation.jsonl.gz"
    report = main(["--model", str(untrained_model_dir), "limit=30", f"out={tmp_path}", f"retrieval={snli}"])
    assert report["retrieval"]["name"] == "snli/validation" and report["retrieval"]["queries"] <= 30
    with pytest.raises(UserError, match="retrieval=nowhere.jsonl: no such file"):
        main(["--model", str(untrained_model_dir), "limit=4", f"out={tmp_path / 'x'}", "retrieval=nowhere.jsonl"])


def test_nanobeir_offline_fails_in_seconds_naming_the_local_set(untrained_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect fails at once
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        main(["--model", str(untrained_model_dir), "limit=4", f"out={tmp_path / 'out'}", "retrieval=nanobeir"])
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "unreachable" in message and "retrieval" in message and "mnli/validation_matched.jsonl.gz" in message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_nanobeir_is_scored_per_width_from_one_pass(untrained_model_dir, monkeypatch):
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.evaluation import NanoBEIREvaluator

    subsets = {  # one tiny stand-in for each of NanoBEIR's sets: the Hub is not reachable from tests
        "corpus": Dataset.from_dict({"_id": ["d0", "d1", "d2"], "text": PAIRS["premise"][2:5]}),
        "queries": Dataset.from_dict({"_id": ["q0", "q1"], "text": ["Someone makes food.", "Children play a game."]}),
        "qrels": Dataset.from_dict({"query-id": ["q0", "q1"], "corpus-id": ["d0", "d1"]}),
    }
    monkeypatch.setattr(NanoBEIREvaluator, "_load_dataset_subset_split", lambda self, subset, **_: subsets[subset])
    encoder = NLIEncoder.load(untrained_model_dir, device="cpu")
    calls = []
    real_embed = encoder.embed
    encoder.embed = lambda texts, batch_size=64: calls.append(len(texts)) or real_embed(texts, batch_size)
    section = nanobeir_metrics(encoder, [64, 32])
    assert calls == [5]  # the distinct texts of all 13 sets, embedded once for both widths
    assert section["queries"] == 13 * 2 and list(section["by_width"]) == [64, 32]
    assert all(0.0 <= v <= 1.0 for metrics in section["by_width"].values() for v in metrics.values())
