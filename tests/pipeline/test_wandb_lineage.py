"""W&B offline, for real: the debug pipeline with `wandb.mode=offline`, then its runs' records (run-*.wandb, read
back with the wandb SDK's own reader, `wandb leet inspect --json`) hold the model artifacts, the inputs that make
the lineage pretraining → fine-tuning → evaluation, and one group; a rerun (a resumed pipeline) keeps the group."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from stagekit.wandb_tracking import REFERENCE_FILE
from tests.pipeline.test_pipeline import pipeline_argv


def records(run_folder: Path) -> list[dict]:
    """The records of the one offline run under `run_folder`/wandb (or of the newest, `latest-run`)."""
    (log_file,) = (run_folder / "wandb" / "latest-run").resolve().glob("run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def of_type(found: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in found if r["type"] == kind]


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def offline_pipeline(tmp_path_factory, data_dir, repo_root):
    """One debug pipeline with W&B offline (and a rerun that only evaluates again, with another eval.limit: an
    unchanged model with the same settings is not evaluated twice): the outputs folder, the
    pipeline's log lines of each run and the records of each W&B run."""
    tmp = tmp_path_factory.mktemp("wandb-pipeline")
    argv = [*pipeline_argv(repo_root, tmp), "pretrain.wandb.mode=offline", "siamese.wandb.mode=offline",
            "pretrain.impl.num_threads=1", "siamese.impl.num_threads=1"]  # fmt: skip
    handler, root = Captured(), logging.getLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the pretraining cache lives under the working directory
        mp.setenv("WANDB_MODE", "disabled")  # the configs' offline wins over the environment
        mp.setenv("WANDB_DATA_DIR", str(tmp / "wandb-data"))  # W&B's staging copies of artifact files
        mp.delenv("WANDB_RUN_GROUP", raising=False)
        root.addHandler(handler)
        old_level, root.level = root.level, logging.INFO
        try:
            main(argv)
            first = handler.lines[:]
            evaluation_first = records(tmp / "outputs" / "siamese-debug" / "model")
            handler.lines.clear()
            main([*argv, "eval.limit=10"])  # both stages finished; other evaluation settings: evaluated again
            second = handler.lines[:]
        finally:
            root.removeHandler(handler)
            root.level = old_level
    out = tmp / "outputs"
    return {
        "out": out,
        "tmp": tmp,
        "lines": (first, second),
        "pretrain": records(out / "pretrain-debug"),
        "siamese": records(out / "siamese-debug"),
        "evaluate": evaluation_first,
        "evaluate_again": records(out / "siamese-debug" / "model"),
    }


def artifacts(run: list[dict], *, used: bool) -> dict[str, dict]:
    return {a["name"]: a for a in of_type(run, "artifact") if bool(a.get("use_after_commit")) == used}


@pytest.mark.slow
def test_each_stage_logs_its_model_as_an_artifact(offline_pipeline):
    for stage, expected in (("pretrain", "val_loss"), ("siamese", "eval_validation_accuracy")):
        (run,) = of_type(offline_pipeline[stage], "run")
        model = artifacts(offline_pipeline[stage], used=False)[f"{stage}-debug"]
        assert model["type"] == "model" and f"run-{run['run_id']}" in model["aliases"]
        metadata = json.loads(model["metadata"])
        assert metadata["stage"] == stage and expected in metadata and metadata["step"] > 0
        files = {e["path"] for e in model["manifest"]["contents"]}
        assert {"model.safetensors", "config.json", "resolved_config.yaml", "run_info.json"} <= files
        assert not any(f.startswith("wandb/") for f in files) and REFERENCE_FILE not in files
        folder = offline_pipeline["out"] / f"{stage}-debug" / "model"
        reference = json.loads((folder / REFERENCE_FILE).read_text())
        assert (reference["name"], reference["run_id"], reference["digest"]) == (
            f"{stage}-debug", run["run_id"], model["digest"])  # fmt: skip


@pytest.mark.slow
def test_no_machine_path_goes_into_an_artifact(offline_pipeline):
    tmp = str(offline_pipeline["tmp"])
    logged = [a for stage in ("pretrain", "siamese", "evaluate") for a in of_type(offline_pipeline[stage], "artifact")]
    assert {a["type"] for a in logged} >= {"model", "evaluation"}
    for artifact in logged:
        assert tmp not in artifact.get("metadata", ""), artifact["name"]
        for entry in artifact["manifest"]["contents"]:  # W&B's staged copies: what `wandb sync` uploads
            if entry["path"].endswith((".json", ".yaml", ".md")):
                assert tmp not in Path(entry["local_path"]).read_text(), (artifact["name"], entry["path"])
    run_info = json.loads((offline_pipeline["out"] / "siamese-debug" / "model" / "run_info.json").read_text())
    assert run_info["base_model"] == "../pretrain-debug/model"  # the folder's own files name it by the run folder


@pytest.mark.slow
def test_lineage_runs_from_pretraining_through_fine_tuning_to_evaluation(offline_pipeline):
    pretrained = artifacts(offline_pipeline["pretrain"], used=False)["pretrain-debug"]
    fine_tuned = artifacts(offline_pipeline["siamese"], used=False)["siamese-debug"]
    # Offline the input is the same artifact, logged with use-after-commit: the same digest is the same version.
    assert artifacts(offline_pipeline["siamese"], used=True)["pretrain-debug"]["digest"] == pretrained["digest"]
    assert artifacts(offline_pipeline["evaluate"], used=True)["siamese-debug"]["digest"] == fine_tuned["digest"]
    report = artifacts(offline_pipeline["evaluate"], used=False)["siamese-debug-eval"]
    files = {e["path"] for e in report["manifest"]["contents"]}
    assert report["type"] == "evaluation" and {"report.json", "report.md"} <= files
    assert any(f.endswith("_confusion.png") for f in files)
    assert "mnli_validation_matched/accuracy" in json.loads(report["metadata"])


@pytest.mark.slow
def test_one_pipeline_is_one_group_named_first_and_kept_on_resume(offline_pipeline):
    first, second = offline_pipeline["lines"]
    group = first[0].split("W&B group ", 1)[1].split(":")[0]
    assert first[0].startswith("pipeline: W&B group pipeline-")
    runs = [of_type(offline_pipeline[k], "run")[0] for k in ("pretrain", "siamese", "evaluate", "evaluate_again")]
    assert [r["run_group"] for r in runs] == [group] * 4
    assert [r["job_type"] for r in runs] == ["pretrain", "siamese", "evaluate", "evaluate"]
    assert runs[2]["run_id"] != runs[3]["run_id"] and f"W&B group {group}:" in second[0]
