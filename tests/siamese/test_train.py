"""End to end: `main([...debug...])` → a model folder both loaders read; resume; NaN stop; offline Hub."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from siamese.__main__ import main
from siamese.inference.encoder import HEAD_FILE, NLIEncoder
from stagekit.cli import run_cli
from stagekit.errors import ConfigError, UserError
from stagekit.resume import newest_checkpoint
from tests.processes import kill_once_ready

pytestmark = pytest.mark.slow


def debug_args(repo_root, tiny_bert, out, *extra: str) -> list[str]:
    return [
        "--config", str(repo_root / "configs" / "siamese" / "debug.yaml"),
        f"model.base_model={tiny_bert}", f"output_dir={out}", "train.max_steps=4", "train.save_steps=2",
        "train.eval_steps=4", "data.eval_pairs=16", "model.max_seq_length=32", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(repo_root, tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return main(debug_args(repo_root, tiny_bert, out)).model_dir, out


def test_debug_run_writes_a_folder_both_loaders_read(trained, tiny_bert):
    model_dir, out = trained
    assert model_dir == out / "siamese-debug" / "model"
    assert SentenceTransformer(str(model_dir), device="cpu").encode(["a test"]).shape == (1, 64)
    encoder = NLIEncoder.load(model_dir, device="cpu")
    prediction = encoder.predict(["A man sleeps."], ["A person rests."])
    assert prediction.probs.shape == (1, 3) and abs(prediction.probs.sum() - 1) < 1e-5
    info = json.loads((model_dir / "run_info.json").read_text())
    # named without this machine's paths: the base outside the output folder by its name, data by ${BERT_DATA_DIR}
    assert info["base_model"] == f"…/{tiny_bert.name}" and info["pairs_seen"] == 4 * 8
    counts, validation = info["data_counts"], info["validation_counts"]
    assert counts["${BERT_DATA_DIR}/mnli/train.jsonl.gz"]["dropped_no_label"] == 0
    # the validation pairs are held out of the training file (configs/siamese/debug.yaml), counted apart
    assert list(counts) == ["${BERT_DATA_DIR}/mnli/train.jsonl.gz"] and info["validation_pairs"] == 16
    assert validation == {}  # no eval source read: the held-out pairs are the training file's
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 4 and "eval_validation_accuracy" in metrics
    assert (model_dir / "resolved_config.yaml").is_file()
    # the stage fitted the model's post-processing (configs/siamese/debug.yaml: method auto on STS-B validation)
    decision = json.loads((model_dir / "postprocessing.json").read_text())
    assert metrics["postprocessing"] == decision["chosen"]["method"] and decision["selected_on"].startswith("STS-B")
    assert encoder.reference is not None and encoder.postprocessing == decision["modules"]
    assert not list(model_dir.parent.glob(".tmp-*"))  # the atomic write left nothing behind
    # every checkpoint carries the NLI head, which sentence-transformers alone would not save
    checkpoints = sorted((out / "siamese-debug" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "nli_head.safetensors").is_file() for c in checkpoints)


def test_rerun_without_resume_refuses_to_mix_runs(trained, repo_root, tiny_bert):
    _, out = trained
    with pytest.raises(UserError, match="--resume"):
        main(debug_args(repo_root, tiny_bert, out))


def test_resume_continues_from_the_last_checkpoint_with_its_head(trained, repo_root, tiny_bert):
    model_dir, out = trained
    head_before = NLIEncoder.load(out / "siamese-debug" / "checkpoints" / "checkpoint-4", device="cpu").head
    resumed = main(debug_args(repo_root, tiny_bert, out, "train.max_steps=6", "--resume")).model_dir
    assert json.loads((resumed / "metrics.json").read_text())["step"] == 6
    head_after = NLIEncoder.load(resumed, device="cpu").head
    # two more steps moved the restored head a little, not back to a fresh random one
    change = (head_after.weight - head_before.weight).abs().max().item()
    assert 0 < change < 0.1


def test_nan_loss_stops_with_a_clear_message(repo_root, tiny_bert, tmp_path, monkeypatch):
    from siamese import trainer as trainer_module

    original = trainer_module.SentenceTransformerTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * torch.nan if self.state.global_step >= 2 else loss

    monkeypatch.setattr(trainer_module.SentenceTransformerTrainer, "compute_loss", poisoned)
    with pytest.raises(UserError, match=r"loss became nan by step 4.*checkpoint-2"):
        main(debug_args(repo_root, tiny_bert, tmp_path, "data.eval_pairs=0"))
    assert not (tmp_path / "siamese-debug" / "model").exists()
    assert not (tmp_path / "siamese-debug" / "checkpoints" / "checkpoint-4").exists()


def test_hub_source_offline_is_a_one_line_error_from_the_command_line(repo_root, tiny_bert, tmp_path, capsys):
    argv = [*debug_args(repo_root, tiny_bert, tmp_path), "data.train_sources=[{path: nyu-mll/glue, config_name: mnli}]"]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    assert "nyu-mll/glue" in err and "unreachable" in err
    assert not (tmp_path / "siamese-debug" / "model").exists()


def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(repo_root, tiny_bert, tmp_path, monkeypatch):
    from siamese import trainer as trainer_module

    args = ("train.max_steps=6", "data.eval_pairs=0", "model.hidden_dropout_prob=0.1")  # dropout: RNG state matters
    straight = main(debug_args(repo_root, tiny_bert, tmp_path / "a", *args)).model_dir

    original = trainer_module.SentenceTransformerTrainer.compute_loss

    def dies_after_checkpoint_4(self, *a, **kw):
        if self.state.global_step == 5:
            raise RuntimeError("simulated kill")
        return original(self, *a, **kw)

    monkeypatch.setattr(trainer_module.SentenceTransformerTrainer, "compute_loss", dies_after_checkpoint_4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(debug_args(repo_root, tiny_bert, tmp_path / "b", *args))
    assert not (tmp_path / "b" / "siamese-debug" / "model").exists()
    monkeypatch.setattr(trainer_module.SentenceTransformerTrainer, "compute_loss", original)
    resumed = main(debug_args(repo_root, tiny_bert, tmp_path / "b", *args, "--resume")).model_dir

    assert_same_final_model(straight, resumed, atol=1e-6)


def assert_same_final_model(a: Path, b: Path, atol: float) -> None:
    """The encoder weights and the saved NLI head of two final model folders agree within `atol`."""
    for name in ("model.safetensors", HEAD_FILE):
        left, right = load_file(str(a / name)), load_file(str(b / name))
        assert left.keys() == right.keys(), name
        for key in left:
            torch.testing.assert_close(left[key], right[key], rtol=0, atol=atol, msg=f"{name}: {key}")


def has_complete_checkpoint(run: Path) -> bool:
    """A checkpoint a resume would continue (stagekit/resume.py `is_complete`: trainer_state.json and then
    run_config.json, both readable). Checking trainer_state.json alone let the kill land between the two, and
    the resumed run then started from step 0."""
    return newest_checkpoint(run / "checkpoints") is not None


def test_resume_after_sigkill_matches_an_uninterrupted_run(repo_root, tiny_bert, tmp_path, monkeypatch):
    from siamese import trainer as trainer_module

    common = (
        "train.max_steps=40",
        "train.save_steps=3",
        "train.logging_steps=10",
        "data.eval_pairs=0",
        "model.hidden_dropout_prob=0.1",  # dropout: the RNG state must survive the kill too
        # The subprocess must reduce in the same order as this process: same number of torch threads.
        f"impl.num_threads={torch.get_num_threads()}",
    )
    straight = main(debug_args(repo_root, tiny_bert, tmp_path / "straight", *common)).model_dir
    args = debug_args(repo_root, tiny_bert, tmp_path / "killed", *common)
    run = tmp_path / "killed" / "siamese-debug"
    kill_once_ready("siamese", args, lambda: has_complete_checkpoint(run))
    assert not (run / "model").exists()  # no half-written final model

    steps, real_step = [], trainer_module.SiameseTrainer.training_step

    def counted_step(*a, **kw):
        steps.append(1)
        return real_step(*a, **kw)

    monkeypatch.setattr(trainer_module.SiameseTrainer, "training_step", counted_step)
    resumed = main([*args, "--resume"]).model_dir
    assert json.loads((resumed / "metrics.json").read_text())["step"] == 40
    assert len(steps) < 40 and (40 - len(steps)) % 3 == 0, len(steps)  # went on from a checkpoint, not the start
    assert_same_final_model(straight, resumed, atol=1e-6)


def test_resume_skips_a_checkpoint_the_kill_left_half_written(repo_root, tiny_bert, tmp_path):
    args = debug_args(repo_root, tiny_bert, tmp_path, "data.eval_pairs=0", "model.hidden_dropout_prob=0.1")
    run = tmp_path / "siamese-debug"
    main(args)
    (run / "model").rename(tmp_path / "straight")  # the uninterrupted result; a killed run leaves no model
    half = run / "checkpoints" / "checkpoint-4"  # killed while writing: no trainer_state.json, optimizer cut short
    (half / "trainer_state.json").unlink()
    (half / "optimizer.pt").write_bytes((half / "optimizer.pt").read_bytes()[:100])
    resumed = main([*args, "--resume"]).model_dir  # continues from checkpoint-2 and writes checkpoint-4 again
    assert json.loads((half / "trainer_state.json").read_text())["global_step"] == 4
    assert_same_final_model(tmp_path / "straight", resumed, atol=1e-6)


def copy_checkpoints(trained, tmp_path) -> Path:
    """The module run's checkpoints in a fresh run folder, so a test can resume (or spoil) them alone."""
    _, out = trained
    target = tmp_path / "siamese-debug" / "checkpoints"
    shutil.copytree(out / "siamese-debug" / "checkpoints", target)
    return max(target.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def test_resume_never_unpickles_more_than_tensors(trained, repo_root, tiny_bert, tmp_path, monkeypatch):
    # transformers' Trainer reads optimizer.pt, scheduler.pt and rng_state.pth with torch.load
    newest = copy_checkpoints(trained, tmp_path)
    calls, real_load = [], torch.load

    def recording_load(f, *args, **kwargs):
        calls.append((Path(f).name, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    step = int(newest.name.split("-")[1])
    main(debug_args(repo_root, tiny_bert, tmp_path, f"train.max_steps={step + 2}", "--resume"))
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= {name for name, _ in calls}
    assert all(weights_only is True for _, weights_only in calls), calls


class Payload:
    """Unpickling this calls os.mkdir(path): what a tampered checkpoint could run without weights_only."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_checkpoint_holding_code_is_refused_with_one_line(trained, repo_root, tiny_bert, tmp_path):
    newest = copy_checkpoints(trained, tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(str(marker)), "param_groups": []}, newest / "optimizer.pt")
    step = int(newest.name.split("-")[1])
    with pytest.raises(UserError) as err:
        main(debug_args(repo_root, tiny_bert, tmp_path, f"train.max_steps={step + 2}", "--resume"))
    assert not marker.exists()
    message = str(err.value)
    assert newest.name in message and "not a plain tensor" in message and "\n" not in message
    assert not (tmp_path / "siamese-debug" / "model").exists()


@pytest.mark.parametrize(("loss", "head"), [("both", True), ("mnrl", False)])
def test_other_objectives_train_end_to_end(repo_root, tiny_bert, tmp_path, loss, head):
    extra = ["data.max_train_pairs=null"] + (["data.eval_pairs=600"] if loss == "mnrl" else [])
    model_dir = main(debug_args(repo_root, tiny_bert, tmp_path, f"loss.name={loss}", *extra)).model_dir
    assert (model_dir / "nli_head.safetensors").is_file() == head
    assert (NLIEncoder.load(model_dir, device="cpu").head is not None) == head
    if loss == "mnrl":
        counts = json.loads((model_dir / "run_info.json").read_text())["data_counts"]
        assert counts["triplets"]["triplets"] >= 4 * 8


def test_plateau_schedule_gets_a_warmup(repo_root, tiny_bert, tmp_path):
    model_dir = main(debug_args(repo_root, tiny_bert, tmp_path, "train.lr_scheduler_type=reduce_lr_on_plateau",
                                "train.warmup_steps=3", "train.logging_steps=1", "train.eval_steps=2")).model_dir  # fmt: skip
    state = json.loads((model_dir.parent / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    lrs = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert lrs[:3] == pytest.approx([1.0e-3 / 3, 2.0e-3 / 3, 1.0e-3])  # linear warmup, then the plateau's own lr


def test_out_of_memory_suggests_a_smaller_batch_with_accumulation(repo_root, tiny_bert, tmp_path, monkeypatch):
    from siamese import trainer as trainer_module

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module.SiameseTrainer, "training_step", out_of_memory)
    with pytest.raises(UserError) as err:
        main(debug_args(repo_root, tiny_bert, tmp_path, "train.gradient_accumulation_steps=2"))
    message = str(err.value)
    assert "out of memory" in message and "train.per_device_train_batch_size=8" in message and "\n" not in message
    assert "train.gradient_accumulation_steps (now 2)" in message and "16 pairs per step" in message
    run = tmp_path / "siamese-debug"
    assert not (run / "model").exists() and not list(run.glob(".tmp-*"))  # no half-written final model


# The NLI head's own learning rate, its warm start and checkpoint selection on NLI accuracy.


def run_capturing_trainer(monkeypatch, argv: list[str]):
    """`main(argv)`, returning the trainer it trained with (to read its optimizer's parameter groups)."""
    from stagekit import stage as train_module

    trainers, real_run = [], train_module.run_stage

    def spy(*args, **kwargs):
        result = real_run(*args, **kwargs)
        trainers.append(result.trainer)
        return result

    monkeypatch.setattr(train_module, "run_stage", spy)
    model_dir = main(argv).model_dir
    return trainers[-1], model_dir


def group_rates(trainer) -> dict[str, list[float]]:
    """The distinct learning rates of the head's parameter groups and of the encoder's; a group never mixes
    the two."""
    head = {id(p) for p in trainer.classifier.parameters()}
    rates: dict[str, set[float]] = {"head": set(), "encoder": set()}
    for group in trainer.optimizer.param_groups:
        in_head = [id(p) in head for p in group["params"]]
        assert all(in_head) or not any(in_head), "a parameter group holds head and encoder parameters"
        rates["head" if all(in_head) else "encoder"].add(group["lr"])
    return {kind: sorted(values) for kind, values in rates.items()}


@pytest.mark.parametrize("scheduler", ["constant_with_warmup", "reduce_lr_on_plateau"])
def test_the_head_trains_at_its_own_rate_also_after_a_resume(repo_root, tiny_bert, tmp_path, monkeypatch, scheduler):
    from siamese import train as train_module

    args = debug_args(repo_root, tiny_bert, tmp_path, f"train.lr_scheduler_type={scheduler}", "train.warmup_steps=2",
                      "train.head_init_pairs=32")  # fmt: skip
    trainer, model_dir = run_capturing_trainer(monkeypatch, [*args, "train.head_learning_rate=1.0e-2"])
    scale = getattr(trainer.lr_scheduler, "scale", 1.0)  # the plateau schedule's one stored factor
    rates = group_rates(trainer)
    assert rates["head"] == pytest.approx([1e-2 * scale]) and rates["encoder"] == pytest.approx([1e-3 * scale])
    assert json.loads((model_dir / "metrics.json").read_text())["head_init"]["pairs"] == 32

    # a resume changes both rates; the checkpoint's head is kept, not fitted again
    def no_warm_start(*a, **kw):
        raise AssertionError("a resumed run fitted the head again")

    monkeypatch.setattr(train_module, "warm_start_head", no_warm_start)
    resumed_args = [*args, "train.max_steps=6", "train.learning_rate=5.0e-4", "train.head_learning_rate=2.0e-2"]
    trainer, model_dir = run_capturing_trainer(monkeypatch, [*resumed_args, "--resume"])
    scale = getattr(trainer.lr_scheduler, "scale", 1.0)
    rates = group_rates(trainer)
    assert rates["head"] == pytest.approx([2e-2 * scale]) and rates["encoder"] == pytest.approx([5e-4 * scale])
    assert "head_init" not in json.loads((model_dir / "metrics.json").read_text())


def test_a_resume_cannot_give_the_head_its_own_group_or_take_it_away(trained, repo_root, tiny_bert, tmp_path):
    copy_checkpoints(trained, tmp_path)  # trained with train.head_learning_rate null
    args = debug_args(repo_root, tiny_bert, tmp_path, "train.max_steps=6", "train.head_learning_rate=1.0e-2")
    with pytest.raises(ConfigError, match=r"'train\.head_learning_rate': None in checkpoint .* but 0\.01") as err:
        main([*args, "--resume"])
    assert "\n" not in str(err.value)


def test_without_a_head_rate_the_optimizer_keeps_todays_two_groups(repo_root, tiny_bert, tmp_path, monkeypatch):
    trainer, _ = run_capturing_trainer(monkeypatch, debug_args(repo_root, tiny_bert, tmp_path, "train.max_steps=2"))
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2  # decay / no decay, with the head in them at the encoder's rate
    assert {id(p) for p in trainer.classifier.parameters()} <= {id(p) for g in groups for p in g["params"]}


def test_select_best_ships_the_best_checkpoints_encoder_and_head(repo_root, tiny_bert, tmp_path, monkeypatch):
    from siamese import trainer as trainer_module

    # NLI accuracy by step, so the best checkpoint is neither the first nor the last one
    scores = {2: 0.50, 4: 0.90, 6: 0.40}
    real_call = trainer_module.NLIAccuracyEvaluator.__call__

    def scripted(self, model, output_path=None, epoch=-1, steps=-1):
        metrics = real_call(self, model, output_path, epoch, steps)
        return metrics | {f"{self.name}_accuracy": scores.get(steps, 0.0)}

    monkeypatch.setattr(trainer_module.NLIAccuracyEvaluator, "__call__", scripted)
    model_dir = main(debug_args(repo_root, tiny_bert, tmp_path, "train.select_best=true", "train.max_steps=6",
                                "train.eval_steps=2", "train.save_steps=2", "train.select_metric=accuracy")).model_dir  # fmt: skip
    checkpoints = tmp_path / "siamese-debug" / "checkpoints"
    assert_same_final_model(checkpoints / "checkpoint-4", model_dir, atol=0)
    last = load_file(str(checkpoints / "checkpoint-6" / HEAD_FILE))  # the rotation keeps the best and the newest
    assert not torch.equal(last["weight"], load_file(str(model_dir / HEAD_FILE))["weight"])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["best_step"] == 4 and metrics["eval_validation_accuracy"] == 0.90
    assert metrics["best_metric_name"] == "eval_validation_accuracy"


@pytest.mark.parametrize(("loss", "select", "metric", "greater"),
                         [("softmax", "loss", "eval_validation_loss", False),
                          ("softmax", "accuracy", "eval_validation_accuracy", True),
                          ("mnrl", "loss", "eval_loss", False)])  # fmt: skip
def test_select_best_judges_by_the_heads_loss_or_accuracy_or_for_mnrl_by_eval_loss(
    repo_root, tiny_bert, loss, select, metric, greater
):
    from siamese.config import SiameseConfig
    from siamese.nli_data import RowCounts
    from siamese.train import eval_data, siamese_trainer
    from stagekit.config import load_config

    cfg = load_config(SiameseConfig, repo_root / "configs" / "siamese" / "debug.yaml",
                      [f"model.base_model={tiny_bert}", f"loss.name={loss}", "train.select_best=true",
                       f"train.select_metric={select}", "data.eval_pairs=600"])  # fmt: skip
    eval_pairs, eval_set = eval_data(cfg, RowCounts())
    trainer = siamese_trainer(cfg, eval_set.to_iterable_dataset(), eval_pairs, eval_set, [])
    assert trainer.args.load_best_model_at_end
    assert (trainer.args.metric_for_best_model, trainer.args.greater_is_better) == (metric, greater)


def test_a_best_checkpoint_without_its_head_is_an_error_not_a_silent_last_step(repo_root, tiny_bert, tmp_path):
    from siamese.config import SiameseConfig
    from siamese.nli_data import RowCounts
    from siamese.train import eval_data, siamese_trainer
    from stagekit.config import load_config

    cfg = load_config(SiameseConfig, repo_root / "configs" / "siamese" / "debug.yaml",
                      [f"model.base_model={tiny_bert}", "train.select_best=true"])  # fmt: skip
    eval_pairs, eval_set = eval_data(cfg, RowCounts())
    trainer = siamese_trainer(cfg, eval_set.to_iterable_dataset(), eval_pairs, eval_set, [])
    best = tmp_path / "checkpoint-3"
    trainer.model.save(str(best))  # the encoder only: the head file is missing
    trainer.state.best_model_checkpoint = str(best)
    with pytest.raises(UserError, match=f"checkpoint {best} has no {HEAD_FILE}"):
        trainer._load_best_model()
