"""Which settings ask a finished run for more training, and where a replaced model goes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from stagekit.finished import asks_for_more, finished_model, keep_previous_model


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
