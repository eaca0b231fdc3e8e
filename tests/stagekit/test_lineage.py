"""W&B artifacts without a server: what goes into one (no machine paths), the pipeline's group, and a W&B failure
that never stops training."""

from __future__ import annotations

import json
import logging

import pytest

from stagekit.stage_config import WandbConfig
from stagekit.wandb_tracking import GROUP_FILE, REFERENCE_FILE, artifact_files, describe, pipeline_group, redact_paths


def test_absolute_paths_are_cut_to_their_last_two_parts(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    text = (
        'output_dir: /srv/me/outputs\n"base_model": "/srv/me/outputs/pretrain-debug/model",\n'
        "cfg: run\\noutput_dir: /data/x/y\\ndata\n# Evaluation of `/srv/me/outputs/siamese-debug/model`\n"
        f"home: {tmp_path}/alice/outputs/run\n"
        "kept: ${BERT_DATA_DIR}/mnli/train.jsonl.gz https://huggingface.co/org/name outputs/run/model 3 / 4 /tmp"
    )
    assert redact_paths(text) == (
        'output_dir: …/me/outputs\n"base_model": "…/pretrain-debug/model",\n'
        "cfg: run\\noutput_dir: …/x/y\\ndata\n# Evaluation of `…/siamese-debug/model`\n"
        "home: ~/outputs/run\n"
        "kept: ${BERT_DATA_DIR}/mnli/train.jsonl.gz https://huggingface.co/org/name outputs/run/model 3 / 4 /tmp"
    )


def test_an_artifact_holds_the_model_files_only(tmp_path):
    for name in ("model.safetensors", "config.json", "README.md", REFERENCE_FILE, "1_Pooling/config.json",
                 "wandb/offline-run-1/run-1.wandb", ".tmp-x/a", "a.lock", "optimizer.pt", "rng_state.pth",
                 "training_args.bin"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    model = ["1_Pooling/config.json", "config.json", "model.safetensors"]
    assert artifact_files(tmp_path, checkpoint=True) == model
    assert artifact_files(tmp_path) == sorted([*model, "optimizer.pt", "rng_state.pth", "training_args.bin"])


def test_metadata_keeps_numbers_and_names_never_paths():
    metrics = {"val_loss": 2.5, "step": 30, "stop_reason": "max_steps", "entropy": [1.0, 2.0], "nan": float("nan"),
               "base": "/srv/me/model", "head_init": {"a": 1}, "ok": True}  # fmt: skip
    assert describe(metrics) == {"val_loss": 2.5, "step": 30, "stop_reason": "max_steps", "entropy": [1.0, 2.0],
                                 "ok": True}  # fmt: skip


def test_a_pipeline_names_one_group_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    sections = [WandbConfig(mode="offline"), WandbConfig(mode="offline")]
    group = pipeline_group(sections, tmp_path)
    assert group.startswith("pipeline-") and [s.group for s in sections] == [group, group]
    assert (tmp_path / GROUP_FILE).read_text().strip() == group
    again = [WandbConfig(mode="offline"), WandbConfig(mode="disabled")]
    assert pipeline_group(again, tmp_path) == group  # a resumed pipeline
    monkeypatch.setenv("WANDB_RUN_GROUP", "from-env")
    assert pipeline_group([WandbConfig(mode="offline")], tmp_path / "other") == "from-env"
    given = [WandbConfig(mode="offline"), WandbConfig(mode="offline", group="mine")]
    assert pipeline_group(given, tmp_path) == "mine" and given[0].group == "mine"
    assert (tmp_path / GROUP_FILE).read_text().strip() == "mine"


def test_no_group_without_tracking(tmp_path):
    sections = [WandbConfig(mode="disabled"), WandbConfig(mode="disabled")]
    assert pipeline_group(sections, tmp_path) is None and not (tmp_path / GROUP_FILE).exists()
    assert sections[0].group is None


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["init", "log_artifact"])
def test_a_wandb_failure_never_stops_training(tiny_args, tmp_path, monkeypatch, caplog, failing):
    import wandb
    from wandb.sdk.wandb_run import Run

    from pretrain.__main__ import main

    def fail(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # W&B's artifact staging copies
    if failing == "init":
        monkeypatch.setattr(wandb, "init", fail)
    else:
        monkeypatch.setattr(Run, "log_artifact", fail)
    with caplog.at_level(logging.WARNING):
        result = main(tiny_args("train.max_steps=2", "train.cloze_sentences=0", "wandb.mode=offline",
                                "impl.num_threads=1"))  # fmt: skip
    model = result.model_dir
    assert result.trained and (model / "model.safetensors").is_file() and (model / "metrics.json").is_file()
    assert json.loads((model / "metrics.json").read_text())["step"] == 2
    assert not (model / REFERENCE_FILE).exists()  # no artifact, so no reference to one
    expected = (
        "W&B offline init failed (W&B is down)"
        if failing == "init"
        else "W&B: logging pretrain-debug/model/ as a model artifact failed (W&B is down)"
    )
    assert expected in caplog.text and "W&B is down" in caplog.text


def offline_records(folder) -> list[dict]:
    """The records of the one offline W&B run under `folder`/wandb, read back by the SDK's reader."""
    import subprocess
    import sys

    (log_file,) = (folder / "wandb" / "latest-run").resolve().glob("run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return [json.loads(line)[r] for line in out.stdout.splitlines() if (r := json.loads(line)["type"]) == "artifact"]


def test_a_base_model_from_elsewhere_is_a_reference(tmp_path, monkeypatch, caplog):
    from stagekit.wandb_tracking import finish_run, start_run, use_model

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    folder = tmp_path / "someone-elses-model"
    folder.mkdir()
    assert start_run(WandbConfig(mode="offline"), tmp_path / "run", {}, "siamese") is not None
    with caplog.at_level(logging.INFO):
        use_model("sentence-transformers/all-MiniLM-L6-v2")
        use_model(folder)
    finish_run()
    (hub,) = offline_records(tmp_path / "run")  # the local folder adds no artifact
    assert hub["name"] == "hf-sentence-transformers-all-MiniLM-L6-v2" and hub["use_after_commit"]
    (entry,) = hub["manifest"]["contents"]
    assert entry["ref"] == "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"
    assert "someone-elses-model was not logged by a tracked run of ours" in caplog.text


@pytest.mark.slow
def test_log_model_checkpoint_logs_each_checkpoints_weights(tiny_args, tmp_path, monkeypatch):
    from pretrain.__main__ import main

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    result = main(tiny_args("train.max_steps=2", "train.save_steps=1", "train.eval_steps=1", "train.cloze_sentences=0",
                            "wandb.mode=offline", "wandb.log_model=checkpoint", "impl.num_threads=1"))  # fmt: skip
    logged = offline_records(result.model_dir.parent)
    # the SDK keeps an artifact's aliases in no fixed order ("latest" beside ours)
    ours = [[alias for alias in a["aliases"] if alias != "latest"] for a in logged]
    assert ours[:2] == [["step-1"], ["step-2"]] and ours[2][0].startswith("run-")
    assert {a["name"] for a in logged} == {"pretrain-debug"} and {a["type"] for a in logged} == {"model"}
    step_1 = {e["path"] for e in logged[0]["manifest"]["contents"]}
    assert "model.safetensors" in step_1 and "trainer_state.json" in step_1
    assert not any(f.startswith(("optimizer", "scheduler", "rng_state", "training_args")) for f in step_1)
    assert json.loads(logged[0]["metadata"])["step"] == 1
