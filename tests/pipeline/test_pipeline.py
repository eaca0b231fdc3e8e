"""The whole pipeline end to end on the debug configs: pretrain → siamese → evaluate, then a rerun skips;
a pipeline killed during pretraining resumes it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pretrain.model import MaskedOnlyHeadMixin
from stagekit.resume import newest_checkpoint
from tests.processes import kill_once_ready


def pipeline_argv(repo_root, tmp_path) -> list[str]:
    return [
        "--pretrain-config", str(repo_root / "configs" / "pretrain" / "debug.yaml"),
        "--siamese-config", str(repo_root / "configs" / "siamese" / "debug.yaml"),
        "--output-dir", str(tmp_path / "outputs"),
        "--no-app", "eval.baseline=null", "eval.limit=12",
    ]  # fmt: skip


def machine_paths(root: Path, paths: list[Path]) -> list[str]:
    """Lines "file: path" for every file under `root` that names one of `paths` (absolute, as this machine has them)."""
    needles = {str(p) for p in paths if len(Path(p).parts) > 1}
    needles = {n.encode() for n in needles | {os.path.realpath(n) for n in needles}}
    return [f"{f.relative_to(root)}: {n.decode()}" for f in sorted(root.rglob("*")) if f.is_file()
            for n in needles if n in f.read_bytes()]  # fmt: skip


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips_finished_ones(tmp_path, data_dir, repo_root, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the pretraining cache lives under the working directory
    argv = pipeline_argv(repo_root, tmp_path)
    model_dir = main(argv)

    pretrained = tmp_path / "outputs" / "pretrain-debug" / "model"
    assert model_dir == tmp_path / "outputs" / "siamese-debug" / "model"
    assert (pretrained / "model.safetensors").is_file()
    # The siamese stage fine-tuned the model this pipeline pretrained, not the one its config names.
    assert json.loads((model_dir / "run_info.json").read_text())["base_model"] == "../pretrain-debug/model"
    report = json.loads((model_dir / "report.json").read_text())
    assert report["mnli_validation_matched"]["n"] == 12 and 0.0 <= report["mnli_validation_matched"]["accuracy"] <= 1.0
    # What --push-to-hub uploads (either model folder, evaluation included) names no path of this machine.
    private = [tmp_path, repo_root, Path.home(), data_dir]
    for folder in (pretrained, model_dir):
        assert machine_paths(folder, private) == []

    stamp = (pretrained / "model.safetensors").stat().st_mtime_ns
    evaluated = (model_dir / "report.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        main(argv)
    assert "1/3 pretraining" in caplog.text and "is finished (step 30, max_steps); nothing to train" in caplog.text
    assert (pretrained / "model.safetensors").stat().st_mtime_ns == stamp
    # The model and the evaluation settings are unchanged: its report stands.
    assert "report.json was made from this model with these settings; nothing to evaluate" in caplog.text
    assert (model_dir / "report.json").stat().st_mtime_ns == evaluated

    from stagekit.resume import weights_sha256

    # Pretraining trains on: the fine-tuned model of its old output is not finished, and is trained again from
    # step 0 (its checkpoints never continued), so that the report describes one model.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        main([*argv, "pretrain.train.max_steps=40"])
    assert f"{model_dir} was fine-tuned from ../pretrain-debug/model (step 30, sha256 " in caplog.text
    assert "but that base model is now ../pretrain-debug/model (step 40, sha256 " in caplog.text
    assert "siamese: starting at step 0 of 10" in caplog.text
    base = json.loads((model_dir / "run_info.json").read_text())["base_model_identity"]
    assert base["sha256"] == weights_sha256(pretrained) and base["step"] == 40
    siamese_run = model_dir.parent
    assert (siamese_run / "model-step-10" / "report.json").is_file()  # the old model, with its evaluation
    assert (siamese_run / "checkpoints-step-10" / "checkpoint-10").is_dir()  # its checkpoints, set aside
    report = json.loads((model_dir / "report.json").read_text())
    assert report["evaluated_with"]["model_sha256"] == weights_sha256(model_dir)
    assert report["base"]["path"] == "../pretrain-debug/model"
    for folder in (tmp_path / "outputs").glob("*/model*"):  # the new models and the ones set aside
        assert machine_paths(folder, private) == []


@pytest.mark.slow
def test_a_pipeline_killed_during_pretraining_resumes_it(tmp_path, data_dir, repo_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = pipeline_argv(repo_root, tmp_path)
    checkpoints = tmp_path / "outputs" / "pretrain-debug" / "checkpoints"
    kill_once_ready("pipeline", argv, lambda: newest_checkpoint(checkpoints) is not None, cwd=tmp_path)
    killed_at = int(newest_checkpoint(checkpoints).name.split("-")[1])
    assert not (tmp_path / "outputs" / "pretrain-debug" / "model").exists()

    steps, real_forward = [], MaskedOnlyHeadMixin.forward

    def counted(self, *args, **kwargs):
        if self.training:
            steps.append(1)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(MaskedOnlyHeadMixin, "forward", counted)
    main(argv)
    # the debug recipe trains 30 steps of one micro-batch: a restart would run all 30 again
    assert len(steps) == 30 - killed_at and killed_at > 0
    assert (tmp_path / "outputs" / "siamese-debug" / "model" / "report.json").is_file()


def test_a_bad_siamese_config_fails_before_pretraining_starts(tmp_path, repo_root):
    from stagekit.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: -1\n")
    with pytest.raises(ConfigError, match="'train.learning_rate'"):
        main([
            "--pretrain-config", str(repo_root / "configs" / "pretrain" / "debug.yaml"),
            "--siamese-config", str(bad), "--output-dir", str(tmp_path / "outputs"), "--no-app",
        ])  # fmt: skip
    assert not (tmp_path / "outputs").exists()


def test_nproc_must_be_positive(tmp_path, repo_root):
    from stagekit.errors import UserError

    with pytest.raises(UserError, match="--nproc"):
        main(["--nproc", "0", "--output-dir", str(tmp_path / "outputs"), "--no-app"])


def long_pretraining_config(repo_root, tmp_path):
    """The debug pretraining recipe with a run long enough to be caught in the middle (no checkpoint yet)."""
    import yaml

    data = yaml.safe_load((repo_root / "configs" / "pretrain" / "debug.yaml").read_text())
    data["train"] |= {"max_steps": 100000, "save_steps": 100000, "eval_steps": 100000}
    data["impl"]["num_threads"] = 1
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# two pipelines in the same folders at once: the second's stages ran beside the first's.
@pytest.mark.slow
def test_a_second_pipeline_in_the_same_folders_is_refused(tmp_path, data_dir, repo_root):
    import os
    import subprocess
    import sys

    from stagekit.config import REPO_ROOT
    from tests.processes import kill, start_until

    argv = pipeline_argv(repo_root, tmp_path)
    argv[1] = str(long_pretraining_config(repo_root, tmp_path))
    first = start_until("pipeline", argv, " model: ", tmp_path / "first.log", cwd=tmp_path)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "pipeline", *argv],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        err = second.stderr.strip().splitlines()[-1]
        assert second.returncode == 2 and "in use by another run" in err and f"pid {first.pid}" in err, err
        assert first.poll() is None
    finally:
        kill(first)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_stage(
    tmp_path, repo_root, capsys, read_only, monkeypatch
):
    from stagekit.cli import run_cli

    monkeypatch.chdir(tmp_path)  # where a pretraining stage would put its cache

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = pipeline_argv(repo_root, tmp_path)
    argv[argv.index("--output-dir") + 1] = str(blocker / "outputs")
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not writable (not a directory)" in err and "--output-dir" in err, err
    out = tmp_path / "outputs"
    out.mkdir()
    read_only(out)
    argv[argv.index("--output-dir") + 1] = str(out)
    assert run_cli(main, argv) == 2
    assert "not writable (read-only file system)" in capsys.readouterr().err
    assert not (tmp_path / ".cache").exists()  # no stage started: the pretraining cache was never built


def test_overrides_go_to_the_stage_they_name(tmp_path, repo_root):
    from pipeline.__main__ import build_configs, parse_args

    args = parse_args(["--output-dir", str(tmp_path), "pretrain.train.max_steps=7", "siamese.train.max_steps=9",
                       "eval.limit=5", "--pretrain-config", str(repo_root / "configs/pretrain/debug.yaml")])  # fmt: skip
    pretrain, siamese, evaluation = build_configs(args)
    assert (pretrain.train.max_steps, siamese.train.max_steps, evaluation.limit) == (7, 9, 5)
    assert siamese.model.base_model == str(tmp_path / "pretrain-debug" / "model")  # the pretraining output


@pytest.mark.parametrize("override", ["train.max_steps=7", "finetune.train.max_steps=7",
                                      "siamese.model.base_model=other"])  # fmt: skip
def test_an_override_of_no_section_or_of_the_base_model_is_refused_in_one_line(override, tmp_path):
    from pipeline.__main__ import build_configs, parse_args
    from stagekit.errors import ConfigError

    with pytest.raises(ConfigError, match="use pretrain.KEY=") as err:
        build_configs(parse_args(["--output-dir", str(tmp_path), override]))
    assert override in str(err.value) and "\n" not in str(err.value)
