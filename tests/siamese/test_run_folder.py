"""The run folder of `python -m siamese`: one run in it at a time, refused at once when it cannot be written,
and a resumed run continuing its W&B run."""

from __future__ import annotations

import pytest

from siamese.__main__ import main
from stagekit.cli import run_cli
from tests.pretrain.test_run_folder import last_error, offline_run_ids
from tests.processes import kill, start_until
from tests.siamese.test_train import debug_args

pytestmark = pytest.mark.slow


def test_a_second_run_in_a_busy_folder_is_refused(repo_root, tiny_bert, tmp_path, capsys):
    long = ("train.max_steps=100000", "train.save_steps=100000", "train.eval_steps=100000", "data.eval_pairs=0",
            "data.max_train_pairs=null", "impl.num_threads=1")  # fmt: skip
    first = start_until("siamese", debug_args(repo_root, tiny_bert, tmp_path, *long), " steps × ", tmp_path / "log")
    try:
        assert run_cli(main, debug_args(repo_root, tiny_bert, tmp_path, "train.learning_rate=5.0e-4")) == 2
        err = last_error(capsys)
        assert "in use by another run" in err and f"pid {first.pid}" in err, err
        assert first.poll() is None and not (tmp_path / "siamese-debug" / "model").exists()
    finally:
        kill(first)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    repo_root, tiny_bert, tmp_path, capsys, monkeypatch, read_only
):
    from siamese import model as siamese_model

    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded for a run that cannot write its output")

    monkeypatch.setattr(siamese_model, "build_model", no_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run_cli(main, debug_args(repo_root, tiny_bert, blocker / "outputs")) == 2
    assert "not writable (not a directory)" in last_error(capsys)
    out = tmp_path / "outputs"
    out.mkdir()
    read_only(out)
    assert run_cli(main, debug_args(repo_root, tiny_bert, out)) == 2
    err = last_error(capsys)
    assert "not writable (read-only file system)" in err and "output_dir=" in err, err


def test_a_resumed_run_continues_its_wandb_run(repo_root, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(debug_args(repo_root, tiny_bert, tmp_path, "wandb.mode=auto", "train.max_steps=2", "data.eval_pairs=0"))
    main(debug_args(repo_root, tiny_bert, tmp_path, "wandb.mode=auto", "train.max_steps=4", "data.eval_pairs=0",
                    "--resume"))  # fmt: skip
    ids = offline_run_ids(tmp_path / "siamese-debug")
    assert len(ids) == 2 and ids[0] == ids[1], ids


# --resume on a finished fine-tuning run trained a step past the end and deleted the evaluation in the model
# folder: report.json, report.md and the plots.
def test_resume_never_deletes_an_evaluation(repo_root, tiny_bert, tmp_path):
    import json

    from siamese.evaluation.evaluate import main as evaluate
    from tests.pretrain.test_run_folder import snapshot

    main(debug_args(repo_root, tiny_bert, tmp_path))
    model = tmp_path / "siamese-debug" / "model"
    evaluate(["--model", str(model), "limit=8", "baseline=null", "base_stsb=false"])
    evaluation = {p.name for p in model.iterdir() if p.name.startswith("report") or p.suffix == ".png"}
    assert {"report.json", "report.md"} <= evaluation and len(evaluation) > 2
    before = snapshot(tmp_path)
    main(debug_args(repo_root, tiny_bert, tmp_path, "--resume"))  # finished: nothing to do
    assert snapshot(tmp_path) == before
    main(debug_args(repo_root, tiny_bert, tmp_path, "train.max_steps=6", "--resume"))  # trains on
    kept = tmp_path / "siamese-debug" / "model-step-4"
    assert (
        evaluation <= {p.name for p in kept.iterdir()} and json.loads((kept / "metrics.json").read_text())["step"] == 4
    )
    assert json.loads((model / "metrics.json").read_text())["step"] == 6 and not (model / "report.json").exists()


# A base model that changed under a fine-tuning run: raising its steps continued the encoder of the old base.
def test_a_run_whose_base_changed_trains_again_from_step_0(repo_root, tiny_bert, tmp_path, caplog):
    import json
    import logging
    import shutil

    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    main(debug_args(repo_root, base, tmp_path, "data.eval_pairs=0"))
    run = tmp_path / "siamese-debug"
    old = json.loads((run / "model" / "run_info.json").read_text())["base_model_identity"]
    weights = load_file(base / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, base / "model.safetensors")  # the base trained on
    with caplog.at_level(logging.INFO):
        main(debug_args(repo_root, base, tmp_path, "data.eval_pairs=0", "train.max_steps=6", "--resume"))
    assert "was fine-tuned from ../base (sha256 " in caplog.text and "siamese: starting at step 0 of 6" in caplog.text
    assert f"checkpoint {run / 'checkpoints' / 'checkpoint-4'} was trained from ../base" in caplog.text
    new = json.loads((run / "model" / "run_info.json").read_text())["base_model_identity"]
    assert new["sha256"] != old["sha256"] and (run / "model-step-4").is_dir() and (run / "checkpoints-step-4").is_dir()
    assert (run / "checkpoints" / "checkpoint-4").is_dir()  # saved by this run on its way to step 6
