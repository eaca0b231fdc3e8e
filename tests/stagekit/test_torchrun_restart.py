"""Which torchrun restart resumes by itself (stagekit/resume.py through choose_checkpoint), and the failure line
(stagekit/distributed.py)."""

from __future__ import annotations

import json

import pytest

from stagekit import distributed
from stagekit.errors import UserError
from stagekit.resume import MARKER, RUN_CONFIG, STATE, choose_checkpoint


def a_run_with_checkpoints(run_dir, steps=(4, 8)):
    for step in steps:
        folder = run_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / STATE).write_text(json.dumps({"global_step": step}))
        (folder / RUN_CONFIG).write_text(json.dumps({"world_size": 2}))
    return run_dir


def torchrun(monkeypatch, restart: int, job: str = "job-a") -> None:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)


def test_the_first_attempt_records_its_job_and_a_restart_of_it_resumes_without_the_flag(tmp_path, monkeypatch):
    torchrun(monkeypatch, 0)
    assert choose_checkpoint(tmp_path, resume=False) is None  # a fresh run: the folder is now this job's
    a_run_with_checkpoints(tmp_path)  # ... which saved two checkpoints before a worker was killed
    torchrun(monkeypatch, 1)
    assert choose_checkpoint(tmp_path, resume=False).endswith("checkpoint-8")


def test_a_restart_resumes_past_a_checkpoint_cut_short_by_the_kill(tmp_path, monkeypatch):
    torchrun(monkeypatch, 0)
    choose_checkpoint(tmp_path, resume=False)
    a_run_with_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "checkpoint-12").mkdir()  # killed while saving: no trainer_state.json
    torchrun(monkeypatch, 1)
    assert choose_checkpoint(tmp_path, resume=False).endswith("checkpoint-8")
    assert not (tmp_path / "checkpoints" / "checkpoint-12").exists()


@pytest.mark.parametrize("restart, job", [(0, "job-a"), (1, "job-b")])
def test_a_new_launch_or_another_jobs_restart_still_needs_resume(tmp_path, monkeypatch, restart, job):
    torchrun(monkeypatch, 0, "job-a")
    choose_checkpoint(tmp_path, resume=False)
    a_run_with_checkpoints(tmp_path)
    torchrun(monkeypatch, restart, job)  # a second torchrun over the folder, or a restart of a job that was refused
    with pytest.raises(UserError, match="already holds a run .*pass --resume"):
        choose_checkpoint(tmp_path, resume=False)


def test_outside_torchrun_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    a_run_with_checkpoints(tmp_path)
    with pytest.raises(UserError):
        choose_checkpoint(tmp_path, resume=False)
    assert not (tmp_path / MARKER).exists()


def test_the_failure_line_names_the_rank_and_the_cause(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    line = distributed.report_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail"))
    assert line.startswith("rank 3 of 4 (") and line.endswith(
        "): RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    )
    assert distributed.report_failure(UserError("config key 'x': bad")).endswith("): config key 'x': bad")
    assert distributed.where() == "rank 3 of 4: "
