"""Which checkpoint a resume continues from: a checkpoint whose files cannot be opened counts as cut short."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from stagekit.resume import RUN_CONFIG, STATE, choose_checkpoint, newest_checkpoint


def write_checkpoint(root, step: int):
    folder = root / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"weight": torch.full((32, 32), float(step))}, str(folder / "model.safetensors"))
    torch.save({"state": {0: torch.ones(8)}}, folder / "optimizer.pt")
    (folder / STATE).write_text(json.dumps({"global_step": step}))
    (folder / RUN_CONFIG).write_text(json.dumps({"train": {"max_steps": 10}}))
    return folder


@pytest.mark.parametrize(("name", "keep"), [("model.safetensors", 0), ("model.safetensors", 700), ("optimizer.pt", 50)])
def test_a_checkpoint_whose_files_cannot_be_opened_is_skipped_with_a_warning(tmp_path, caplog, name, keep):
    before, newest = write_checkpoint(tmp_path, 5), write_checkpoint(tmp_path, 10)
    (newest / name).write_bytes((newest / name).read_bytes()[:keep])  # a full disk, a partial copy
    assert newest_checkpoint(tmp_path / "checkpoints") == before
    with caplog.at_level(logging.WARNING, logger="stagekit.resume"):
        assert choose_checkpoint(tmp_path, resume=True) == str(before)
    (line,) = [r.getMessage() for r in caplog.records if "checkpoint-10" in r.getMessage()]
    assert name in line and "cannot be opened" in line and "checkpoint before it" in line
    assert not newest.exists() and before.is_dir()  # removed like a checkpoint a kill cut short


def test_intact_checkpoints_resume_from_the_newest(tmp_path):
    write_checkpoint(tmp_path, 5)
    newest = write_checkpoint(tmp_path, 10)
    assert choose_checkpoint(tmp_path, resume=True) == str(newest)
