"""The fine-tuned model's card: written by training in place of sentence-transformers' generic one, refreshed by
evaluation with its figures, Hub metadata with a model-index only for full-set figures, snippets that run."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from huggingface_hub import ModelCard

from siamese.__main__ import main as train
from siamese.evaluation.evaluate import main as evaluate
from siamese.inference.card import refresh_model_card, write_model_card
from siamese.inference.encoder import NLIEncoder
from stagekit.model_card import PROJECT_TAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(repo_root, tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("card-runs")
    return train([
        "--config", str(repo_root / "configs" / "siamese" / "debug.yaml"), f"model.base_model={tiny_bert}",
        f"output_dir={out}", "train.max_steps=4", "train.save_steps=4", "train.eval_steps=4", "data.eval_pairs=16",
        "model.max_seq_length=32", "impl.num_threads=1",
    ]).model_dir  # fmt: skip


@pytest.fixture
def copy(model_dir, tmp_path):
    target = tmp_path / "run" / "model"
    shutil.copytree(model_dir, target)
    return target


def test_training_writes_our_card_in_place_of_the_generic_one(model_dir):
    card = ModelCard.load(model_dir / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert PROJECT_TAG in data["tags"] and data["datasets"] == ["nyu-mll/glue"] and data["license"] == "other"
    assert "base_model" not in data  # a local pretraining output is no Hub id
    assert "model-index" not in data  # not evaluated yet
    metrics = json.loads((model_dir / "metrics.json").read_text())
    text = card.text
    assert "Not evaluated yet" in text and f"python -m siamese.evaluation --model {model_dir}" in text
    assert f"{metrics['eval_validation_accuracy']:.1%}" in text  # the held-out accuracy of training
    assert "4 of 4 (max_steps)" in text and "learning rate 0.001" in text and "-core " in text
    assert "nli_head.safetensors" in text and "postprocessing.json" in text


def test_evaluation_refreshes_the_card_with_its_figures(copy, tmp_path):
    report = evaluate(["--model", str(copy), "limit=12", "baseline=null"])
    text = (copy / "README.md").read_text()
    assert "Not evaluated yet" not in text
    assert f"| MNLI dev matched accuracy | {report['mnli_validation_matched']['accuracy']:.1%} |" in text
    assert f"| STS-B test Spearman of cosine ×100 | {100 * report['stsb_test']['spearman']:.1f} |" in text
    assert "on the first 12 pairs of each set" in text
    assert "model-index" not in ModelCard.load(copy / "README.md").data.to_dict()  # not the full sets

    before = (copy / "README.md").read_text()
    evaluate(["--model", str(copy), "limit=8", f"out={tmp_path / 'elsewhere'}", "baseline=null"])
    assert (copy / "README.md").read_text() == before  # a report elsewhere leaves the folder's card alone


def test_figures_over_the_full_sets_go_into_the_model_index(copy):
    full = {"mnli_validation_matched": {"accuracy": 0.5612, "n": 9815},
            "mnli_validation_mismatched": {"accuracy": 0.5701, "n": 9832},
            "stsb_test": {"spearman": 0.5912, "pearson": 0.58, "n": 1379}, "limit": None}  # fmt: skip
    (copy / "report.json").write_text(json.dumps(full))
    write_model_card(copy)
    (entry,) = ModelCard.load(copy / "README.md").data.to_dict()["model-index"]
    got = {(r["dataset"]["type"], r["dataset"].get("split")): r["metrics"][0] for r in entry["results"]}
    assert got[("nyu-mll/glue", "validation_matched")] == {"type": "accuracy", "value": 0.5612,
                                                           "name": "accuracy (NLI head)"}  # fmt: skip
    assert got[("nyu-mll/glue", "validation_mismatched")]["value"] == 0.5701
    assert got[("sentence-transformers/stsb", "test")]["type"] == "spearman_cosine"


def test_the_cards_snippets_give_the_encoders_embeddings_and_nli_probabilities(model_dir):
    blocks = re.findall(r"```python\n(.*?)```", (model_dir / "README.md").read_text(), re.S)
    namespace: dict = {}
    for block in blocks:  # the instructions a reader copies, run in order
        exec(compile(block, "README.md", "exec"), namespace)
    encoder = NLIEncoder.load(model_dir, device="cpu")
    expected = encoder.predict(["A man is playing a guitar."], ["Someone is making music."])
    embeddings = encoder.embed(["A man is playing a guitar.", "Someone is making music."]).cpu().numpy()
    np.testing.assert_allclose(namespace["embeddings"], embeddings, atol=1e-5)
    probs = [namespace["logits"].softmax(-1)[i].item() for i in range(3)]
    np.testing.assert_allclose(probs, expected.probs[0], atol=1e-5)  # the head read before post-processing


def test_a_card_that_is_not_ours_is_left_alone(copy):
    (copy / "README.md").write_text("---\nlibrary_name: transformers\ntags: [other]\n---\n# someone's card\n")
    assert refresh_model_card(copy, copy) is None
    assert "someone's card" in (copy / "README.md").read_text()


def test_a_model_without_an_nli_head_gets_no_head_snippet(copy):
    (copy / "nli_head.safetensors").unlink()  # as loss.name=mnrl leaves it
    write_model_card(copy)
    text = (copy / "README.md").read_text()
    assert "no NLI head" in text and "nli_head.safetensors" not in text and text.count("```python") == 1
