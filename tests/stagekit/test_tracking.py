"""W&B runs: a resumed stage opens the run its checkpoint recorded, online as offline."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stagekit.tracking import WandbConfig, start_run


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
