"""The run folder of `python -m pretrain`: one run in it at a time, refused at once when it cannot be written,
and a resumed run continuing its W&B run."""

from __future__ import annotations

import json
import os
import re

import pytest

from pretrain.train import main
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


# A ${VAR} in a config string was expanded before the config was saved: a secret in it was written in clear
# into resolved_config.yaml, every checkpoint's run_config.json and the W&B config.
def test_saved_configs_keep_variables_as_written_and_old_expanded_checkpoints_resume(tiny_args, tmp_path, monkeypatch):
    from stagekit import tracking

    monkeypatch.setenv("RUN_SECRET", "s3cr3t-0123")
    tracked: list[dict] = []
    monkeypatch.setattr(tracking, "start_run", lambda cfg, out, config, *args, **kwargs: tracked.append(config))
    written = ("data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz", "wandb.run_name=bert-${RUN_SECRET}")
    settings = (*written, "wandb.mode=offline", "train.save_steps=2", "train.eval_steps=2")
    main(tiny_args("train.max_steps=2", *settings))
    run = tmp_path / "pretrain-debug"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert not [p for p in files if b"s3cr3t" in p.read_bytes()]  # configs, checkpoints, training_args.bin, model
    record = run / "checkpoints" / "checkpoint-2" / "run_config.json"
    for saved in (record, run / "resolved_config.yaml", run / "model" / "resolved_config.yaml"):
        assert (
            "${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz" in saved.read_text()
            and "bert-${RUN_SECRET}" in saved.read_text()
        )
    assert tracked[0]["wandb"]["run_name"] == "bert-${RUN_SECRET}"  # the config W&B gets

    # a checkpoint written before configs kept ${VAR} recorded the data file's expanded path: it still resumes
    old = json.loads(record.read_text())
    old["data"]["source"] = os.path.expandvars(old["data"]["source"])
    record.write_text(json.dumps(old))
    assert main(tiny_args("train.max_steps=4", *settings, "--resume"))["step"] == 4
