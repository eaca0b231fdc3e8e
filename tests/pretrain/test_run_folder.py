"""The run folder of `python -m pretrain`: one run in it at a time, refused at once when it cannot be written,
and a resumed run continuing its W&B run."""

from __future__ import annotations

import json
import os
import re

import pytest

from pretrain.__main__ import main
from stagekit.cli import run_cli
from tests.processes import kill, start_until

pytestmark = pytest.mark.slow

# A first run that trains, without a checkpoint, for as long as the test needs it.
LONG = ("train.max_steps=100000", "train.save_steps=100000", "train.eval_steps=100000", "impl.num_threads=1")


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# two runs of one run_name at once: the second replaced the first's model and checkpoints without a warning.
def test_a_second_run_in_a_busy_folder_is_refused_and_runs_once_the_first_is_killed(tiny_args, tmp_path, capsys):
    first = start_until("pretrain", tiny_args(*LONG), " model: ", tmp_path / "first.log")
    second = tiny_args("train.learning_rate=1.0e-3", "train.max_steps=2")
    try:
        assert run_cli(main, second) == 2
        err = last_error(capsys)
        assert "in use by another run" in err and f"pid {first.pid}" in err, err
        assert first.poll() is None and not (tmp_path / "pretrain-debug" / "model").exists()
    finally:
        kill(first)
    assert run_cli(main, second) == 0  # SIGKILL left nothing stuck: the kernel dropped the lock
    assert (tmp_path / "pretrain-debug" / "model" / "model.safetensors").is_file()


# an output_dir that cannot be written ended in a traceback after the data were prepared.
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tiny_args, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = tmp_path / "cache"
    assert run_cli(main, tiny_args(f"data.cache_dir={cache}", out=blocker / "outputs")) == 2
    err = last_error(capsys)
    assert err.startswith("error: ") and "not writable (not a directory)" in err and "output_dir=" in err, err
    assert not cache.exists()  # refused before the data were prepared


def test_a_read_only_output_folder_is_refused_before_any_work(tiny_args, tmp_path, capsys, read_only):
    out, cache = tmp_path / "outputs", tmp_path / "cache"
    out.mkdir()
    read_only(out)
    assert run_cli(main, tiny_args(f"data.cache_dir={cache}", out=out)) == 2
    err = last_error(capsys)
    assert "not writable (read-only file system)" in err and "output_dir=" in err, err
    assert not cache.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder that chmod made read-only")
def test_a_folder_without_write_permission_is_refused_before_any_work(tiny_args, tmp_path, capsys):
    out = tmp_path / "outputs"
    out.mkdir(mode=0o555)
    assert run_cli(main, tiny_args(f"data.cache_dir={tmp_path / 'cache'}", out=out)) == 2
    assert "not writable (permission denied)" in last_error(capsys)


def test_a_cache_folder_that_cannot_be_written_is_refused_before_the_build(tiny_args, tmp_path, capsys, read_only):
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(cache)
    assert run_cli(main, tiny_args(f"data.cache_dir={cache}")) == 2
    err = last_error(capsys)
    assert "not writable (read-only file system)" in err and "data.cache_dir=" in err, err


def offline_run_ids(run_dir) -> list[str]:
    """The run id of each offline W&B run folder (offline-run-<time>-<id>) under the run folder."""
    return [re.sub(r"^offline-run-\d{8}_\d{6}-", "", p.name) for p in sorted(run_dir.glob("wandb/offline-run-*"))]


# a resume started a second W&B run under the same name.
def test_a_resumed_run_continues_its_wandb_run(tiny_args, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = ("wandb.mode=auto", "train.save_steps=4", "train.eval_steps=4", "train.logging_steps=2")
    main(tiny_args("train.max_steps=4", *settings))
    main(tiny_args("train.max_steps=8", *settings, "--resume"))
    ids = offline_run_ids(tmp_path / "pretrain-debug")
    assert len(ids) == 2 and ids[0] == ids[1], ids


def count_training_steps(monkeypatch) -> list[int]:
    """Every training step the MLM Trainer takes from now on."""
    from pretrain.trainer import MLMTrainer

    steps, real_step = [], MLMTrainer.training_step

    def counted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MLMTrainer, "training_step", counted)
    return steps


def snapshot(folder) -> dict[str, int]:
    """Every file's write time, but the lock's (it says which process held the folder last)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".run.lock"}


# --resume on a finished run trained step 31 of 30 (and 32 with a lower max_steps), rc 0, and replaced the model,
# its metrics and its last checkpoint.
def test_resume_on_a_finished_run_trains_nothing_and_leaves_it_as_it_is(tiny_args, tmp_path, caplog, monkeypatch):
    import logging

    settings = ("train.save_steps=4", "train.eval_steps=4", "train.logging_steps=2")
    main(tiny_args("train.max_steps=4", *settings))
    run = tmp_path / "pretrain-debug"
    (run / "model" / "report.md").write_text("an evaluation, written after training")
    before, steps = snapshot(run), count_training_steps(monkeypatch)
    for max_steps in (4, 2):  # the same steps, or fewer: finished either way
        caplog.clear()
        with caplog.at_level(logging.INFO):
            result = main(tiny_args(f"train.max_steps={max_steps}", *settings, "--resume"))
        assert steps == [] and snapshot(run) == before  # not one step, not one file written
        assert f"{run / 'model'} is finished (step 4, max_steps); nothing to train" in caplog.text
        assert not result.trained and result.metrics["step"] == 4


def test_a_finished_run_asked_for_more_steps_trains_on_and_keeps_the_old_model_with_its_evaluation(
    tiny_args, tmp_path, monkeypatch
):
    import json

    settings = ("train.save_steps=4", "train.eval_steps=4", "train.logging_steps=2")
    main(tiny_args("train.max_steps=4", *settings))
    run = tmp_path / "pretrain-debug"
    (run / "model" / "report.md").write_text("an evaluation of the step-4 model")
    steps = count_training_steps(monkeypatch)
    main(tiny_args("train.max_steps=6", *settings, "--resume"))
    assert steps == [4, 5] and json.loads((run / "model" / "metrics.json").read_text())["step"] == 6
    kept = run / "model-step-4"
    assert (kept / "report.md").read_text() == "an evaluation of the step-4 model"
    assert json.loads((kept / "metrics.json").read_text())["step"] == 4 and (kept / "model.safetensors").is_file()
    assert not (run / "model" / "report.md").exists()  # it spoke of the old model


# A ${VAR} in a config string was expanded before the config was saved: a secret in it was written in clear
# into resolved_config.yaml, every checkpoint's run_config.json, the W&B config and run_info.json.
def test_saved_configs_keep_variables_as_written_and_old_expanded_checkpoints_resume(tiny_args, tmp_path, monkeypatch):
    from stagekit import wandb_tracking

    monkeypatch.setenv("RUN_SECRET", "s3cr3t-0123")
    tracked: list[dict] = []
    monkeypatch.setattr(wandb_tracking, "start_run", lambda cfg, out, config, *args, **kwargs: tracked.append(config))
    written = ("data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz", "wandb.run_name=bert-${RUN_SECRET}")
    settings = (*written, "wandb.mode=offline", "train.save_steps=2", "train.eval_steps=2")
    main(tiny_args("train.max_steps=2", *settings))
    run = tmp_path / "pretrain-debug"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert not [p for p in files if b"s3cr3t" in p.read_bytes()]  # configs, checkpoints, training_args.bin, model
    record = run / "checkpoints" / "checkpoint-2" / "run_config.json"
    for saved in (record, run / "model" / "resolved_config.yaml"):
        assert (
            "${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz" in saved.read_text()
            and "bert-${RUN_SECRET}" in saved.read_text()
        )
    assert tracked[0]["wandb"]["run_name"] == "bert-${RUN_SECRET}"  # the config W&B gets

    # a checkpoint written before configs kept ${VAR} recorded the data file's expanded path: it still resumes
    old = json.loads(record.read_text())
    old["data"]["source"]["path"] = os.path.expandvars(old["data"]["source"]["path"])
    record.write_text(json.dumps(old))
    assert main(tiny_args("train.max_steps=4", *settings, "--resume")).metrics["step"] == 4
