"""Which settings ask a finished run for more training, and where a replaced model goes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from stagekit.resume import asks_for_more, finished_model, keep_previous_model


@pytest.mark.parametrize(
    ("recorded", "now", "more"),
    [
        ({"max_steps": 30, "max_train_minutes": None}, {"max_steps": 30, "max_train_minutes": None}, []),
        ({"max_steps": 30, "max_train_minutes": None}, {"max_steps": 10, "max_train_minutes": None}, []),
        ({"max_steps": 30, "max_train_minutes": None}, {"max_steps": 60, "max_train_minutes": None},
         ["train.max_steps: 30 → 60"]),
        ({"max_steps": 3000, "max_train_minutes": 13}, {"max_steps": 3000, "max_train_minutes": 20},
         ["train.max_train_minutes: 13 → 20"]),
        ({"max_steps": 3000, "max_train_minutes": 13}, {"max_steps": 3000, "max_train_minutes": None},
         ["train.max_train_minutes: 13 → None"]),  # the budget lifted: no bound but the steps
        ({"max_steps": 3000, "max_train_minutes": None}, {"max_steps": 3000, "max_train_minutes": 5}, []),
        ({"max_steps": 30, "num_train_epochs": 1.0}, {"max_steps": None, "num_train_epochs": 1.0},
         ["train.max_steps: 30 → None"]),  # bound by epochs now
    ],
)  # fmt: skip
def test_only_a_longer_bound_asks_for_more(recorded, now, more):
    assert asks_for_more(recorded, SimpleNamespace(**now)) == more


def model_folder(tmp_path, step, train):
    model = tmp_path / "model"
    model.mkdir()
    (model / "metrics.json").write_text(json.dumps({"step": step, "stop_reason": "max_steps"}))
    (model / "resolved_config.yaml").write_text(yaml.safe_dump({"train": train}))
    return model


def test_a_model_is_finished_unless_the_config_asks_for_more(tmp_path):
    model = model_folder(tmp_path, 30, {"max_steps": 30})
    assert finished_model(tmp_path / "none", SimpleNamespace(train=SimpleNamespace(max_steps=30))) is None
    done = finished_model(model, SimpleNamespace(train=SimpleNamespace(max_steps=30)))
    assert done.metrics["step"] == 30 and "is finished (step 30, max_steps)" in done.line and "\n" not in done.line
    assert finished_model(model, SimpleNamespace(train=SimpleNamespace(max_steps=40))) is None


def test_a_model_whose_record_cannot_be_read_is_left_alone(tmp_path):
    model = model_folder(tmp_path, 30, {"max_steps": 30})
    (model / "resolved_config.yaml").write_text("train: [unclosed")
    done = finished_model(model, SimpleNamespace(train=SimpleNamespace(max_steps=40)))
    assert done is not None and "cannot be read" in done.line


def test_a_replaced_model_moves_aside_under_its_step(tmp_path):
    model = model_folder(tmp_path, 30, {"max_steps": 30})
    (model / "report.md").write_text("evaluation")
    assert keep_previous_model(model) == tmp_path / "model-step-30"
    assert (tmp_path / "model-step-30" / "report.md").read_text() == "evaluation" and not model.exists()
    model = model_folder(tmp_path, 30, {"max_steps": 30})  # the same step again: a second folder, not over it
    assert keep_previous_model(model) == tmp_path / "model-step-30-2"
    assert keep_previous_model(tmp_path / "model") is None


def base_folder(tmp_path, name, weights: bytes, step=30):
    folder = tmp_path / "outputs" / name / "model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "metrics.json").write_text(json.dumps({"step": step}))
    return folder


# Pretraining trained on, and the fine-tuned model of its old output still said "finished".
def test_a_model_trained_from_another_base_is_not_finished(tmp_path, caplog):
    import logging

    from stagekit.resume import model_identity

    base = base_folder(tmp_path, "pretrain", b"old weights")
    run_dir = tmp_path / "outputs" / "siamese"
    before = model_identity(str(base), run_dir)
    run_dir.mkdir()
    assert before["model"] == "../pretrain/model" and before["step"] == 30 and len(before["sha256"]) == 64
    model = model_folder(run_dir, 10, {"max_steps": 10})
    (model / "run_info.json").write_text(json.dumps({"base_model_identity": before}))
    cfg = SimpleNamespace(train=SimpleNamespace(max_steps=10))
    assert finished_model(model, cfg, before) is not None
    assert finished_model(model, cfg, None) is not None  # a stage without a base compares nothing
    (base / "model.safetensors").write_bytes(b"new weights")
    (base / "metrics.json").write_text(json.dumps({"step": 40}))
    after = model_identity(str(base), run_dir)
    with caplog.at_level(logging.WARNING):
        assert finished_model(model, cfg, after) is None
    line = caplog.records[-1].getMessage()
    assert f"was fine-tuned from ../pretrain/model (step 30, sha256 {before['sha256'][:8]})" in line
    assert f"that base model is now ../pretrain/model (step 40, sha256 {after['sha256'][:8]})" in line
    assert "\n" not in line


def test_the_same_weights_elsewhere_are_the_same_base_and_an_old_record_counts_as_unchanged(tmp_path):
    from stagekit.resume import base_changed, model_identity

    run_dir = tmp_path / "outputs" / "siamese"
    one = model_identity(str(base_folder(tmp_path, "a", b"w")), run_dir)
    two = model_identity(str(base_folder(tmp_path, "b", b"w")), run_dir)
    other = model_identity(str(base_folder(tmp_path, "c", b"x")), run_dir)
    assert not base_changed(one, two) and base_changed(one, other)
    hub = model_identity("sentence-transformers/all-MiniLM-L6-v2", run_dir)
    assert hub == {"model": "sentence-transformers/all-MiniLM-L6-v2"} and base_changed(hub, one)
    assert not base_changed(None, one)  # written before bases were recorded: cannot tell


def test_a_checkpoint_of_another_base_is_named_and_set_aside(tmp_path):
    from stagekit.resume import RUN_CONFIG, STATE, model_identity, set_aside_checkpoints, stale_checkpoint

    run_dir = tmp_path / "outputs" / "siamese"
    base = base_folder(tmp_path, "pretrain", b"old")
    checkpoint = run_dir / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE).write_text(json.dumps({"global_step": 4}))
    record = {"base_model_identity": model_identity(str(base), run_dir)}
    (checkpoint / RUN_CONFIG).write_text(json.dumps(record))
    assert stale_checkpoint(str(checkpoint), model_identity(str(base), run_dir)) is None
    (base / "model.safetensors").write_bytes(b"new")
    line = stale_checkpoint(str(checkpoint), model_identity(str(base), run_dir))
    assert line.startswith(f"checkpoint {checkpoint} was trained from ../pretrain/model") and "step 0" in line
    assert set_aside_checkpoints(str(checkpoint)) == run_dir / "checkpoints-step-4"
    assert (run_dir / "checkpoints-step-4" / "checkpoint-4").is_dir() and not (run_dir / "checkpoints").exists()
