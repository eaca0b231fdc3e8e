"""The cross-encoder probe: a fixed number of steps on MNLI train, then MNLI dev matched / mismatched, written."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pretrain.export import save_model_files
from pretrain.model import build_model
from pretrain.probe import PUBLISHED, ProbeConfig, load
from pretrain.probe import main as probe
from stagekit.cli import run_cli
from stagekit.config import REPO_ROOT, load_config

pytestmark = pytest.mark.slow
DEBUG = str(REPO_ROOT / "configs" / "probe" / "debug.yaml")


def test_the_debug_probe_trains_fixed_steps_and_writes_both_dev_accuracies(pretrained_debug, tmp_path, capsys):
    report = probe(
        ["--config", DEBUG, "--model", str(pretrained_debug), f"output_dir={tmp_path}", "impl.num_threads=1"]
    )
    written = json.loads((tmp_path / "probe-debug" / "probe.json").read_text())
    assert written["steps"] == 10 and written["pairs_seen"] == 80  # fixed: no early stop, nothing chosen on dev
    assert math.isfinite(written["train_loss"]) and written["model"] == "…/model"  # outside the output folder
    for split in ("mnli_validation_matched", "mnli_validation_mismatched"):
        section = written[split]
        assert section["n"] == 64 and 0.0 <= section["accuracy"] <= 1.0
        assert sum(map(sum, section["confusion_matrix"])) == 64
        assert section["accuracy"] == pytest.approx(sum(section["confusion_matrix"][i][i] for i in range(3)) / 64)
        assert report[split]["accuracy"] == section["accuracy"]
    assert written["published"]["BERT-Medium (L8/H512)"] == {"matched": 0.8, "mismatched": 0.791}
    assert (tmp_path / "probe-debug" / "resolved_config.yaml").is_file()
    out = capsys.readouterr().out
    assert "MNLI dev matched" in out and "Turc et al. 2019" in out

    # The random-weights control writes beside the probe, not over it.
    probe(["--config", DEBUG, "--model", str(pretrained_debug), f"output_dir={tmp_path}", "impl.num_threads=1",
           "model.random_init=true", "train.max_steps=2"])  # fmt: skip
    assert json.loads((tmp_path / "probe-debug" / "probe.json").read_text()) == written
    control = json.loads((tmp_path / "probe-debug" / "probe-random-init.json").read_text())
    assert control["random_init"] and control["steps"] == 2
    assert "random_init: true" in (tmp_path / "probe-debug" / "resolved_config-random-init.yaml").read_text()
    assert "random_init: false" in (tmp_path / "probe-debug" / "resolved_config.yaml").read_text()
    assert "probe-random-init.json" in capsys.readouterr().out


@pytest.mark.parametrize("architecture", ["nomic_bert", "modernbert"])
def test_every_pretraining_architecture_becomes_a_classifier(architecture, tiny_config, tiny_data, tmp_path):
    cfg = tiny_config(f"model.architecture={architecture}", "model.hidden_size=32", "model.intermediate_size=64")
    torch.manual_seed(0)
    folder = tmp_path / "model"
    folder.mkdir()
    save_model_files(folder, build_model(cfg.model, tiny_data.tokenizer), tiny_data.tokenizer)
    report = probe([
        "--config", DEBUG, "--model", str(folder), f"output_dir={tmp_path}", "train.max_steps=2",
        "data.eval_limit=8", "impl.num_threads=1",
    ])  # fmt: skip
    assert all(0.0 <= report[s]["accuracy"] <= 1.0 for s in ("mnli_validation_matched", "mnli_validation_mismatched"))
    assert report["steps"] == 2


def test_the_random_init_control_keeps_the_shape_and_tokenizer_but_not_the_weights(pretrained_debug):
    from pretrain.probe import build_model as probe_model

    pretrained, _ = probe_model(load(["--config", DEBUG, "--model", str(pretrained_debug)]))
    control, tokenizer = probe_model(
        load(["--config", DEBUG, "--model", str(pretrained_debug), "model.random_init=true"])
    )
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert pretrained.state_dict()[embeddings].shape == control.state_dict()[embeddings].shape
    assert not torch.equal(pretrained.state_dict()[embeddings], control.state_dict()[embeddings])
    assert len(tokenizer) == control.config.vocab_size


def test_a_folder_that_is_not_a_pretraining_output_is_refused_in_one_line(tmp_path, capsys):
    assert run_cli(probe, ["--config", DEBUG, "--model", str(tmp_path), f"output_dir={tmp_path}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(tmp_path) in line and "python -m pretrain" in line


def test_model_sets_the_base_model_and_overrides_are_checked(tmp_path):
    assert load(["--config", DEBUG, "--model", "some/folder"]).model.base_model == "some/folder"
    with pytest.raises(Exception, match="train.max_steps"):
        load(["--config", DEBUG, "train.max_steps=null"])
    shipped = load_config(ProbeConfig, REPO_ROOT / "configs" / "probe" / "cpu-small.yaml")
    assert shipped.train.max_steps == 2000 and shipped.data.eval_limit is None  # the full dev sets
    assert set(PUBLISHED) >= {"BERT-Medium (L8/H512)"}


def write_pairs(path, rows):
    path.write_text(
        "".join(json.dumps(dict(zip(("premise", "hypothesis", "label"), r, strict=True))) + "\n" for r in rows)
    )
    return path


# a classifier trained on one class answers it for every pair; an accuracy on one class says nothing more.
def test_one_class_training_data_are_refused_and_a_one_class_dev_set_is_flagged(tiny_bert, tmp_path, capsys, caplog):
    one = write_pairs(tmp_path / "e.jsonl", [(f"A man number {i} eats.", f"Someone {i} eats.", 0) for i in range(24)])
    args = ["--config", DEBUG, "--model", str(tiny_bert), f"output_dir={tmp_path}", "impl.num_threads=1",
            "train.max_steps=1", "data.eval_limit=24", "model.max_seq_length=32"]  # fmt: skip
    assert run_cli(probe, [*args, f"data.train_source.path={one}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "one class in its first 24 pairs (entailment 24)" in err and err.startswith("error: training data (")
    assert not (tmp_path / "probe-debug" / "probe.json").exists()
    with caplog.at_level("WARNING"):
        probe([*args, f"data.matched.path={one}"])
    line = "mnli_validation_matched: all 24 pairs are entailment, so its accuracy measures that one class only"
    assert line in [r.getMessage() for r in caplog.records]
    assert line in json.loads((tmp_path / "probe-debug" / "probe.json").read_text())["warnings"]


def test_a_damaged_weights_file_or_a_decoder_is_refused_in_one_line(pretrained_debug, gpt2, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pretrained_debug, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:2000])
    for folder, words in ((broken, [str(broken / "model.safetensors"), "cut short"]), (gpt2, [str(gpt2), "'gpt2'"])):
        assert run_cli(probe, ["--config", DEBUG, "--model", str(folder), f"output_dir={tmp_path}"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert all(word in line for word in words), line
