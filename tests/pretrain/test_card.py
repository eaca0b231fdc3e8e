"""The pretraining output's model card: Hub front matter, the run's own figures, and load snippets that run."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from huggingface_hub import ModelCard

from pretrain.card import main as card_main
from stagekit.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(pretrained_debug):
    return pretrained_debug


def test_the_card_carries_hub_metadata_and_the_runs_figures(model_dir, data_dir):
    card = ModelCard.load(model_dir / "README.md")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "fill-mask"
    assert data["license"] == "other" and data["language"] == ["en"]
    assert data["datasets"] == ["stanfordnlp/imdb"]  # the shared IMDB file, named by the Hub set it copies
    assert "base_model" not in data  # pretrained from scratch
    (result,) = data["model-index"]
    figures = {m["type"]: m["value"] for m in result["results"][0]["metrics"]}
    assert figures["perplexity"] == pytest.approx(metrics["val_bert15_perplexity"], abs=1e-3)
    assert figures["accuracy"] == pytest.approx(metrics["val_bert15_accuracy"], abs=1e-3)

    text = card.text
    for heading in ("Data", "Tokenizer", "Training recipe", "Hardware and time", "Evaluation", "How to load", "Limits"):
        assert f"## {heading}" in text, heading
    assert f"{metrics['val_bert15_loss']:.3f}" in text and "1024 entries, lowercased" in text
    assert "10 of max_steps 10" in text and "learning rate 0.002" in text
    assert "-core " in text and "torch " in text  # the hardware that trained it
    assert str(data_dir) not in text  # a local corpus is named by its file, not the machine's path


def test_the_cards_load_snippet_runs_on_the_folder(model_dir):
    text = (model_dir / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert f'model_id = "{model_dir}"' in snippet
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # the instructions a reader copies
    assert namespace["model"].config.num_hidden_layers == 2
    assert namespace["encoder"].encode(["a sentence"]).shape == (1, 64)


def test_an_older_folder_gets_a_card_from_its_files(model_dir, tmp_path):
    old = tmp_path / "model"
    shutil.copytree(model_dir, old)
    for written_since in ("README.md", "run_info.json"):  # a folder from before cards and run_info.json
        (old / written_since).unlink()
    card_main([str(old)])
    text = (old / "README.md").read_text()
    assert "| hardware | not recorded |" in text and "## Evaluation" in text
    (old / "README.md").write_text("---\nlicense: mit\n---\n# someone else's card\n")
    with pytest.raises(UserError, match="not a card of this project's"):
        card_main([str(old)])  # never overwritten
    assert "someone else's card" in (old / "README.md").read_text()
