"""The command lines of both stages: options and `key=value` overrides in any order."""

from __future__ import annotations

import pytest

from stagekit.config import REPO_ROOT


class Stop(Exception):
    """Raised by a stand-in for the training, once the parsed command line has been seen."""


# `--resume` between overrides ended the override list: "unrecognized arguments: train.max_steps=20".
@pytest.mark.parametrize("stage", ["pretrain", "siamese"])
def test_a_stage_reads_overrides_after_resume(stage, tmp_path, monkeypatch):
    import importlib

    from stagekit import stage as stage_module

    command = importlib.import_module(f"{stage}.__main__")

    def seen(stage, resume=False):
        raise Stop(stage.cfg, resume)

    monkeypatch.setattr(stage_module, "run_stage", seen)
    argv = ["--config", str(REPO_ROOT / f"configs/{stage}/debug.yaml"), f"output_dir={tmp_path}", "run_name=x",
            "--resume", "train.max_steps=20"]  # fmt: skip
    with pytest.raises(Stop) as stop:
        command.main(argv)
    cfg, resume = stop.value.args
    assert resume and cfg.run_name == "x" and cfg.train.max_steps == 20
