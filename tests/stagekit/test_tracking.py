"""W&B runs: a resumed stage opens the run its checkpoint recorded, online as offline."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stagekit.stage_config import WandbConfig
from stagekit.wandb_tracking import start_run


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_a_resume_id_reopens_that_run(tmp_path, monkeypatch, mode):
    import wandb

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(name="r", id=kwargs.get("id", "new"))

    monkeypatch.setattr(wandb, "init", fake_init)
    run = start_run(WandbConfig(mode=mode), tmp_path, {}, "pretrain", resume_id="abc123")
    assert run.id == "abc123"
    assert calls[0]["mode"] == mode and calls[0]["id"] == "abc123" and calls[0]["resume"] == "allow"
    start_run(WandbConfig(mode=mode), tmp_path, {}, "pretrain")  # a fresh run: W&B picks a new id
    assert "id" not in calls[1] and "resume" not in calls[1]


# The run config W&B uploads held the data folder's and the output folder's absolute paths of the machine that trained.
def test_the_config_sent_to_wandb_names_no_machine_path(tmp_path, monkeypatch):
    import os

    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or SimpleNamespace(name="r", id="x"))
    data = os.environ["BERT_DATA_DIR"]
    run_dir = tmp_path / "outputs" / "siamese-debug"
    config = {
        "output_dir": str(tmp_path / "outputs"),
        "model": {"base_model": str(tmp_path / "outputs" / "pretrain-debug" / "model")},
        "data": {"train_sources": [{"path": f"{data}/mnli/train.jsonl.gz"}]},
    }
    start_run(WandbConfig(mode="offline"), run_dir, config, "siamese")
    sent = repr(calls[0]["config"])
    assert str(tmp_path) not in sent and data not in sent
    assert calls[0]["config"]["data"]["train_sources"][0]["path"] == "${BERT_DATA_DIR}/mnli/train.jsonl.gz"
    assert calls[0]["config"]["model"]["base_model"] == "../pretrain-debug/model"
