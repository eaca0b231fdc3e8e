"""The whole pipeline end to end on the debug configs: pretrain → siamese → evaluate, then a rerun skips."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.__main__ import main


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips_finished_ones(tmp_path, data_dir, repo_root, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the pretraining cache lives under the working directory
    argv = [
        "--pretrain-config", str(repo_root / "configs" / "pretrain" / "debug.yaml"),
        "--siamese-config", str(repo_root / "configs" / "siamese" / "debug.yaml"),
        "--output-dir", str(tmp_path / "outputs"),
        "--no-app", "--no-baseline", "--eval-limit", "12",
    ]  # fmt: skip
    model_dir = main(argv)

    pretrained = tmp_path / "outputs" / "pretrain-debug" / "model"
    assert model_dir == tmp_path / "outputs" / "siamese-debug" / "model"
    assert (pretrained / "model.safetensors").is_file()
    # The siamese stage fine-tuned the model this pipeline pretrained, not the one its config names.
    assert json.loads((model_dir / "run_info.json").read_text())["base_model"] == str(pretrained)
    report = json.loads((model_dir / "report.json").read_text())
    assert report["mnli_validation_matched"]["n"] == 12 and 0.0 <= report["mnli_validation_matched"]["accuracy"] <= 1.0

    stamp = (pretrained / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pipeline"):
        main(argv)
    assert "1/3 pretraining" in caplog.text and "skipped" in caplog.text
    assert (pretrained / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_bad_siamese_config_fails_before_pretraining_starts(tmp_path, repo_root):
    from common.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: -1\n")
    with pytest.raises(ConfigError, match="'train.learning_rate'"):
        main([
            "--pretrain-config", str(repo_root / "configs" / "pretrain" / "debug.yaml"),
            "--siamese-config", str(bad), "--output-dir", str(tmp_path / "outputs"), "--no-app",
        ])  # fmt: skip
    assert not (tmp_path / "outputs").exists()
