"""What the model cards claim matches the run: the tokenizer's documents as read, triplets and no NLI head for
an `mnrl` model, the Matryoshka widths and an export's truncation, and an unevaluated card saying how its
evaluation gets published. Cards are rendered from small folders of the files the stages write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from pretrain.card import pretrain_card
from siamese.inference.card import siamese_card
from stagekit.model_card import PROJECT_TAG


def siamese_folder(tmp_path: Path, loss: str = "softmax", matryoshka: list[int] | None = None,
                   post: dict | None = None) -> Path:  # fmt: skip
    """A fine-tuned model folder's card inputs: resolved config, run_info, metrics, modules (64 dimensions)."""
    folder = tmp_path / "siamese-x" / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    resolved = {
        "run_name": "siamese-x",
        "model": {"base_model": "outputs/pretrain-x/model", "pooling": "mean", "max_seq_length": 64},
        "data": {"train_sources": [{"path": "data/mnli/train.jsonl.gz"}],
                 "eval_sources": [{"path": "data/snli/validation.jsonl.gz"}], "eval_pairs": 100},
        "loss": {"name": loss, "matryoshka_dims": matryoshka},
        "train": {"per_device_train_batch_size": 8, "max_steps": 10, "learning_rate": 0.001, "seed": 1},
    }  # fmt: skip
    counts = {"data/mnli/train.jsonl.gz": {"seen": 90, "kept": 80, "dropped_no_label": 10, "dropped_empty_text": 0}}
    if loss == "mnrl":
        counts["triplets"] = {"triplets": 30, "premises_without_partner": 5}
    (folder / "resolved_config.yaml").write_text(yaml.safe_dump(resolved))
    (folder / "run_info.json").write_text(json.dumps({"loss": loss, "pairs_seen": 80, "data_counts": counts}))
    (folder / "metrics.json").write_text(json.dumps({"step": 10, "pairs_seen": 80, "stop_reason": "max_steps"}))
    (folder / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64}))
    if loss != "mnrl":
        (folder / "nli_head.safetensors").write_text("")
    if post is not None:
        (folder / "postprocessing.json").write_text(json.dumps(post))
    return folder


def test_an_mnrl_card_describes_triplets_and_no_nli_head(tmp_path):
    card = siamese_card(siamese_folder(tmp_path, loss="mnrl"))
    text = card.render()
    assert "triplets" in card.summary and "NLI pairs" not in card.summary
    assert "head" not in card.summary
    data = dict(card.sections)["Data"]
    assert "30" in data and "triplets trained on" in data and "pairs trained on" not in data
    limits = dict(card.sections)["Limits"]
    assert "NLI head" not in limits
    assert "8 triplets" in dict(card.sections)["Training recipe"]
    assert "natural-language-inference" not in ModelCard(text).data.to_dict()["tags"]


def test_a_pairs_card_keeps_its_nli_head(tmp_path):
    card = siamese_card(siamese_folder(tmp_path))
    assert "NLI head" in card.summary and "NLI head" in dict(card.sections)["Limits"]
    assert "pairs trained on" in dict(card.sections)["Data"]


def test_the_card_names_the_matryoshka_widths(tmp_path):
    text = siamese_card(siamese_folder(tmp_path, loss="both", matryoshka=[32, 16])).render()
    assert "Matryoshka" in text and "64, 32 and 16" in text and "truncate_dim=32" in text


def test_the_card_of_a_truncated_export_gives_its_width(tmp_path):
    card = siamese_card(siamese_folder(tmp_path, loss="both", matryoshka=[16], post={"modules": 1, "truncate_dim": 16}))
    assert "16-dimensional embeddings" in card.summary and "the first 16 of 64" in card.summary


def test_an_unevaluated_card_says_how_its_evaluation_is_published(tmp_path):
    folder = siamese_folder(tmp_path)
    evaluation = dict(siamese_card(folder).sections)["Evaluation"]
    assert "Not evaluated yet" in evaluation and "when training ended" in evaluation
    assert "python -m siamese.evaluation --model" in evaluation and "python -m stagekit.push" in evaluation


def test_the_pretraining_card_counts_the_tokenizers_documents_as_read(tmp_path):
    folder = tmp_path / "pretrain-x" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 1024}))
    (folder / "metrics.json").write_text(json.dumps({"tokenizer_documents": 365, "train_documents": 365}))
    resolved = {"tokenizer": {"max_training_documents": 10000, "min_frequency": 2}, "data": {}, "model": {}}
    (folder / "resolved_config.yaml").write_text(yaml.safe_dump(resolved))
    tokenizer = dict(pretrain_card(folder).sections)["Tokenizer"]
    assert "365 training documents" in tokenizer and "10,000" not in tokenizer


def test_a_truncated_export_keeps_the_projects_card(tiny_whitened_dir, tmp_path):
    from siamese.inference.export import main as export

    out = tmp_path / "narrow"
    export(["--model", str(tiny_whitened_dir), "--out", str(out), "--no-int8", "--truncate-dim", "16"])
    card = ModelCard.load(out / "README.md")
    assert PROJECT_TAG in card.data.to_dict()["tags"]
    assert "16-dimensional embeddings" in card.text and f'model_id = "{out}"' in card.text


@pytest.mark.parametrize("truncate", [None, 16])
def test_an_export_of_a_card_not_ours_keeps_that_card(tiny_whitened_dir, tmp_path, truncate):
    from siamese.inference.export import main as export

    source = tmp_path / "theirs"
    import shutil

    shutil.copytree(tiny_whitened_dir, source)
    (source / "README.md").write_text("---\nlibrary_name: other\n---\n# their card\n")
    out = tmp_path / "out"
    export(["--model", str(source), "--out", str(out), "--no-int8", *(["--truncate-dim", "16"] if truncate else [])])
    assert (out / "README.md").read_text() == (source / "README.md").read_text()
