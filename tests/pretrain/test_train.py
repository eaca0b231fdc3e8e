"""End-to-end runs of `python -m pretrain` with a tiny model: learning, outputs, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, pipeline

from pretrain import engine as engine_module
from pretrain.__main__ import main
from pretrain.checkpoint import checkpoint_dirs
from pretrain.fill_mask import main as fill_mask_main
from pretrain.train import TrainingDiverged
from tests.processes import kill_once_ready

pytestmark = pytest.mark.slow


def final_weights(out: Path, run: str = "pretrain-debug") -> dict[str, torch.Tensor]:
    return load_file(str(out / run / "model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_tiny_model_learns_and_writes_a_self_describing_model(tiny_args, tmp_path, capsys):
    # From a zero output bias the loss starts at ln(vocab): the fall below shows gradients reach the model.
    # (The default unigram start is tested in test_model.py; a 2-layer model needs more than 50 steps to
    # leave that plateau.)
    metrics = main(
        tiny_args("train.max_steps=50", "train.logging_steps=5", "train.eval_steps=25", "train.output_bias_init=zero")
    )
    run = tmp_path / "pretrain-debug"
    history = json.loads((run / "checkpoints" / "step-0000050" / "state.json").read_text())["loop"]["history"]
    train_losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert train_losses[-1] < train_losses[0] - 0.5  # the loss falls over 50 steps
    assert metrics["val_loss"] < metrics["unigram_entropy"] + 0.5
    assert "unigram entropy" in capsys.readouterr().out

    model_dir = run / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "resolved_config.yaml", "metrics.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")) and not list(run.glob(".tmp-*"))
    assert (run / "loss_lr.png").stat().st_size > 1000
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert saved["step"] == 50 and saved["val_loss"] == pytest.approx(metrics["val_loss"])

    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    assert model.config.num_hidden_layers == 2 and model.config._attn_implementation == "sdpa"
    fill = pipeline("fill-mask", model=str(model_dir), device="cpu")
    assert len(fill("the movie was [MASK] .", top_k=5)) == 5

    fill_mask_main(["--model", str(model_dir), "the movie was [MASK] ."])
    out = capsys.readouterr().out
    assert out.startswith("the movie was [MASK] .") and len(out.strip().splitlines()) == 6


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_args, tmp_path):
    # Patience 0 makes the plateau schedule cut the lr after the restart too, so its state must survive.
    common = (
        "train.eval_steps=4",
        "train.save_steps=5",
        "train.plateau_patience=0",
        "train.warmup_steps=2",
        "train.per_device_train_batch_size=8",
    )
    main(tiny_args("train.max_steps=12", *common, out=tmp_path / "straight"))
    main(tiny_args("train.max_steps=5", *common, out=tmp_path / "split"))
    assert [p.name for p in checkpoint_dirs(tmp_path / "split/pretrain-debug/checkpoints")] == ["step-0000005"]
    main(tiny_args("train.max_steps=12", *common, "--resume", out=tmp_path / "split"))
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "split"))
    straight = json.loads((tmp_path / "straight/pretrain-debug/metrics.json").read_text())
    split = json.loads((tmp_path / "split/pretrain-debug/metrics.json").read_text())
    assert split["val_loss"] == straight["val_loss"]


def test_resume_after_sigkill(tiny_args, tmp_path, cache_dir):
    common = (
        "train.max_steps=80",
        "train.per_device_train_batch_size=4",
        "train.save_steps=5",
        "train.eval_steps=20",
        "train.logging_steps=10",
        # The subprocess must reduce in the same order as this process: same number of torch threads.
        f"impl.num_threads={torch.get_num_threads()}",
    )
    main(tiny_args(*common, out=tmp_path / "straight"))  # also builds the packed data the subprocess reuses
    args = tiny_args(*common, out=tmp_path / "killed")
    ckpts = tmp_path / "killed/pretrain-debug/checkpoints"
    kill_once_ready("pretrain", args, lambda: bool(checkpoint_dirs(ckpts)))
    assert not (tmp_path / "killed/pretrain-debug/model").exists()  # no half-written final model
    main([*args, "--resume"])
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_args, tmp_path, monkeypatch):
    real_loss = engine_module.mlm_loss
    calls = {"n": 0}

    def poisoned(model, input_ids, labels, masked_only=True):
        loss, correct, count = real_loss(model, input_ids, labels, masked_only)
        calls["n"] += 1
        return (loss * float("nan") if model.training and calls["n"] > 12 else loss), correct, count

    monkeypatch.setattr(engine_module, "mlm_loss", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        main(tiny_args("train.max_steps=20", "train.save_steps=10", "train.logging_steps=5"))
    message = str(err.value)
    assert "NaN/inf" in message and "step-0000010" in message and "\n" not in message
    ckpts = checkpoint_dirs(tmp_path / "pretrain-debug/checkpoints")
    assert [p.name for p in ckpts] == ["step-0000010"]
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpts[0] / "model.safetensors")).values())
    assert not (tmp_path / "pretrain-debug/model").exists()


def test_resume_with_a_different_model_is_refused(tiny_args, tmp_path):
    main(tiny_args("train.max_steps=2", "train.eval_steps=2"))
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="model.hidden_size"):
        main(tiny_args("train.max_steps=4", "model.hidden_size=128", "--resume"))


def test_fill_mask_refuses_a_folder_that_is_not_a_model(tmp_path):
    from common.errors import UserError

    with pytest.raises(UserError, match="is not a saved model"):
        fill_mask_main(["--model", str(tmp_path), "a [MASK] b"])


def test_out_of_memory_suggests_a_smaller_batch_with_accumulation(tiny_args, tmp_path, monkeypatch):
    from common.errors import UserError

    def out_of_memory(self, micro_batches):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine_module.MLMEngine, "train_step", out_of_memory)
    with pytest.raises(UserError) as err:
        main(tiny_args("train.max_steps=5"))
    message = str(err.value)
    assert "out of memory" in message and "per_device_train_batch_size=16" in message
    assert "gradient_accumulation_steps" in message and "\n" not in message
    assert not (tmp_path / "pretrain-debug/model").exists()
