"""End-to-end runs of `python -m pretrain` with a tiny model: learning, outputs, resume, stops, failures."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, pipeline

from pretrain.__main__ import main
from pretrain.fill_mask import main as fill_mask_main
from pretrain.model import MaskedOnlyHeadMixin
from stagekit.callbacks import TrainingDiverged
from stagekit.errors import ConfigError, UserError
from stagekit.resume import checkpoint_dirs, newest_checkpoint
from tests.processes import kill_once_ready

pytestmark = pytest.mark.slow


def final_weights(out: Path, run: str = "pretrain-debug") -> dict[str, torch.Tensor]:
    return load_file(str(out / run / "model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def logged(out: Path, key: str, run: str = "pretrain-debug") -> list[tuple[int, float]]:
    state = json.loads((newest_checkpoint(out / run / "checkpoints") / "trainer_state.json").read_text())
    return [(h["step"], h[key]) for h in state["log_history"] if key in h]


def test_tiny_model_learns_and_writes_a_self_describing_model(tiny_args, tmp_path, capsys):
    # From a zero output bias (the default) the loss starts at ln(vocab): the fall below shows gradients reach
    # the model. (The unigram start, train.output_bias_init=unigram, is tested in test_model.py.)
    metrics = main(
        tiny_args("train.max_steps=50", "train.logging_steps=5", "train.eval_steps=25", "train.output_bias_init=zero")
    ).metrics
    losses = [loss for _, loss in logged(tmp_path, "loss")]
    assert losses[-1] < losses[0] - 0.5  # the loss falls over 50 steps
    assert metrics["val_loss"] < metrics["unigram_entropy"] + 0.5
    out = capsys.readouterr().out
    assert "unigram entropy" in out and "cloze" in out and "attention entropy" in out

    run = tmp_path / "pretrain-debug"
    model_dir = run / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "resolved_config.yaml", "metrics.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")) and not list(run.glob(".tmp-*"))
    assert (run / "loss_lr.png").stat().st_size > 1000
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert saved["step"] == 50 and saved["val_loss"] == pytest.approx(metrics["val_loss"])
    # the "reads context" measures are in every run's metrics
    assert saved["cloze_items"] > 20 and 0 <= saved["cloze_top5"] <= 1 and 0 < saved["cloze_frequency_top5"] < 1
    assert len(saved["attention_entropy"]) == 2 and saved["val_bert15_loss"] == saved["val_loss"]

    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    assert model.config.num_hidden_layers == 2 and model.config._attn_implementation == "sdpa"
    fill = pipeline("fill-mask", model=str(model_dir), device="cpu")
    assert len(fill("the movie was [MASK] .", top_k=5)) == 5

    fill_mask_main(["--model", str(model_dir), "the movie was [MASK] ."])
    out = capsys.readouterr().out
    assert out.startswith("the movie was [MASK] .") and len(out.strip().splitlines()) == 6


def test_other_masking_is_also_scored_at_berts(tiny_args, tmp_path):
    metrics = main(
        tiny_args(
            "train.max_steps=4",
            "train.eval_steps=2",
            "train.mlm_probability=0.4",
            "train.mask_replace_prob=1.0",
            "train.random_replace_prob=0.0",
            "train.short_block_steps=2",
            "train.short_block_size=32",
        )
    ).metrics
    assert metrics["val_loss"] != metrics["val_bert15_loss"]  # two differently masked validation sets
    assert [s for s, _ in logged(tmp_path, "eval_bert15_loss")] == [s for s, _ in logged(tmp_path, "eval_loss")]


# a run that ended inside the short-block warm-up (max_steps or the time budget before short_block_steps) kept
# the model cutting rows into short pieces: the cloze probe then failed with "index 33 is out of bounds".
def test_a_run_that_ends_inside_the_short_block_warmup_finishes_on_full_blocks(tiny_args):
    metrics = main(tiny_args("train.max_steps=3", "train.short_block_steps=10", "train.short_block_size=32")).metrics
    assert metrics["step"] == 3 and metrics["cloze_items"] > 0 and 0 <= metrics["cloze_top5"] <= 1
    assert len(metrics["attention_entropy"]) == 2


RESUME_SETTINGS = (
    "train.eval_steps=4",
    "train.save_steps=5",
    "train.plateau_patience=0",  # the plateau schedule cuts the lr after the restart too: its state must survive
    "train.warmup_steps=2",
    "train.per_device_train_batch_size=8",
)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_args, tmp_path, capfd, caplog):
    main(tiny_args("train.max_steps=12", *RESUME_SETTINGS, out=tmp_path / "straight"))
    main(tiny_args("train.max_steps=5", *RESUME_SETTINGS, out=tmp_path / "split"))
    assert [p.name for p in checkpoint_dirs(tmp_path / "split/pretrain-debug/checkpoints")] == ["checkpoint-5"]
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="stagekit.stage"):
        main(tiny_args("train.max_steps=12", *RESUME_SETTINGS, "--resume", out=tmp_path / "split"))
    # The decoder's weight and bias are tied to the embeddings and the head's bias, not missing: no warning.
    log = capfd.readouterr()
    assert "missing keys" not in log.err + log.out
    assert any(
        "continuing from" in r.getMessage() and "checkpoint-5 (step 5 of 12)" in r.getMessage() for r in caplog.records
    )
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "split"))
    assert logged(tmp_path / "straight", "learning_rate") == logged(tmp_path / "split", "learning_rate")


def test_resume_after_sigkill(tiny_args, tmp_path):
    common = (
        "train.max_steps=60",
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
    kill_once_ready("pretrain", args, lambda: newest_checkpoint(ckpts) is not None)
    assert not (tmp_path / "killed/pretrain-debug/model").exists()  # no half-written final model
    main([*args, "--resume"])
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed"))


def test_a_run_over_an_existing_one_is_refused_naming_both_choices(tiny_args, tmp_path):
    main(tiny_args("train.max_steps=2", "train.save_steps=2"))
    with pytest.raises(UserError) as err:
        main(tiny_args("train.max_steps=4"))
    message = str(err.value)
    assert "--resume" in message and "remove" in message and "\n" not in message
    assert [p.name for p in checkpoint_dirs(tmp_path / "pretrain-debug/checkpoints")] == ["checkpoint-2"]


def test_resume_applies_a_new_learning_rate_and_says_so(tiny_args, tmp_path, caplog):
    settings = ("train.warmup_steps=1", "train.save_steps=4", "train.logging_steps=1", "train.plateau_patience=100")
    main(tiny_args("train.max_steps=4", "train.learning_rate=2.0e-3", *settings))
    main(tiny_args("train.max_steps=8", "train.learning_rate=5.0e-4", *settings, "--resume"))
    rates = dict(logged(tmp_path, "learning_rate"))
    assert rates[4] == pytest.approx(2.0e-3) and all(rates[s] == pytest.approx(5.0e-4) for s in (5, 6, 7, 8))
    assert "train.learning_rate: 0.002 → 0.0005" in caplog.text


def test_resume_refuses_a_change_it_cannot_apply(tiny_args, tmp_path):
    main(tiny_args("train.max_steps=2", "train.save_steps=2"))
    with pytest.raises(ConfigError, match="config key 'model.hidden_size'"):
        main(tiny_args("train.max_steps=4", "model.hidden_size=128", "--resume"))
    with pytest.raises(ConfigError, match="config key 'train.per_device_train_batch_size': 16 in checkpoint"):
        main(tiny_args("train.max_steps=4", "train.per_device_train_batch_size=8", "--resume"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_args, tmp_path, monkeypatch):
    real_forward = MaskedOnlyHeadMixin.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 12:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedOnlyHeadMixin, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        main(tiny_args("train.max_steps=20", "train.save_steps=10", "train.logging_steps=5"))
    message = str(err.value)
    assert "nan" in message and "checkpoint-10" in message and "--resume" in message and "\n" not in message
    ckpts = checkpoint_dirs(tmp_path / "pretrain-debug/checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-10"]  # nothing saved after the NaN
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpts[0] / "model.safetensors")).values())
    assert not (tmp_path / "pretrain-debug/model").exists()


# Short blocks one at a time: many steps mask no token at all (6 maskable tokens at 15 %: 38 % of blocks).
# Such a step scored 0 / 0 = NaN and stopped the run as "training diverged … lower the learning rate".
def test_steps_without_a_masked_token_train_on(tiny_args, tmp_path, monkeypatch):
    real_forward = MaskedOnlyHeadMixin.forward
    masked: list[int] = []

    def counting(self, *args, **kwargs):
        if self.training:
            masked.append(int((kwargs["labels"] != -100).sum()))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(MaskedOnlyHeadMixin, "forward", counting)
    args = ("data.block_size=8", "train.per_device_train_batch_size=1", "train.max_steps=12", "train.logging_steps=1")
    metrics = main(tiny_args(*args, "train.eval_steps=12", "train.save_steps=12")).metrics
    assert 0 in masked and metrics["step"] == 12
    losses = dict(logged(tmp_path, "loss"))
    assert all(math.isfinite(loss) for loss in losses.values()) and math.isfinite(metrics["val_loss"])


def test_time_budget_stops_evaluates_and_saves(tiny_args, tmp_path):
    metrics = main(tiny_args("train.max_steps=500", "train.max_train_minutes=0.0001", "train.logging_steps=3")).metrics
    assert metrics["step"] == 3 and metrics["stop_reason"].startswith("time budget")
    assert [p.name for p in checkpoint_dirs(tmp_path / "pretrain-debug/checkpoints")] == ["checkpoint-3"]
    assert 3 in dict(logged(tmp_path, "eval_loss"))


def test_fill_mask_refuses_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="is not a saved model"):
        fill_mask_main(["--model", str(tmp_path), "a [MASK] b"])


def test_fill_mask_and_attention_name_a_weights_file_cut_short(pretrained_debug, tmp_path):
    import shutil

    from pretrain.attention import main as attention_main

    broken = tmp_path / "model"
    shutil.copytree(pretrained_debug, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])  # an interrupted copy, a full disk
    for command in (
        lambda: fill_mask_main(["--model", str(broken), "a [MASK] b"]),
        lambda: attention_main(["--model", str(broken)]),
    ):
        with pytest.raises(UserError) as err:
            command()
        assert str(weights) in str(err.value) and "cut short" in str(err.value) and "\n" not in str(err.value)


def test_fill_mask_refuses_a_folder_without_a_masked_lm_head(pretrained_debug, tmp_path, capfd):
    """A fine-tuned sentence encoder keeps the encoder only: transformers would fill the head in at random and
    answer differently at every run."""
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(str(pretrained_debug), device="cpu").save(str(tmp_path))
    capfd.readouterr()
    with pytest.raises(UserError) as err:
        fill_mask_main(["--model", str(tmp_path), "the movie was [MASK] ."])
    message = str(err.value)
    assert str(tmp_path) in message and "no masked-LM head" in message and "cls.predictions" in message
    assert "\n" not in message and "LOAD REPORT" not in capfd.readouterr().err


def test_resume_skips_a_checkpoint_whose_weights_were_cut_short(tiny_args, tmp_path, caplog):
    """A full disk while saving the newest checkpoint: every resume from it died the same way. It counts as cut
    short: a warning, and the run continues from the checkpoint before it to the same weights."""
    args = tiny_args("train.max_steps=10", *RESUME_SETTINGS)
    main(args)
    run = tmp_path / "pretrain-debug"
    (run / "model").rename(tmp_path / "straight")  # a run stopped after its last save leaves no model
    weights = run / "checkpoints" / "checkpoint-10" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="stagekit.resume"):
        main([*args, "--resume"])
    (line,) = [r.getMessage() for r in caplog.records if "checkpoint-10" in r.getMessage()]
    assert "model.safetensors" in line and "cannot be opened" in line
    assert_same_weights(load_file(str(tmp_path / "straight" / "model.safetensors")), final_weights(tmp_path))


def test_out_of_memory_suggests_a_smaller_batch_with_accumulation(tiny_args, tmp_path, monkeypatch):
    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(MaskedOnlyHeadMixin, "forward", out_of_memory)
    with pytest.raises(UserError) as err:
        main(tiny_args("train.max_steps=5"))
    message = str(err.value)
    assert "out of memory" in message and "per_device_train_batch_size=16" in message
    assert "gradient_accumulation_steps" in message and "\n" not in message
    assert not (tmp_path / "pretrain-debug/model").exists()


def test_training_reads_only_the_blocks_it_trains_on(tiny_config, tiny_data):
    """Blocks stay memory-mapped on disk: a run touches only the blocks of its batches."""
    import dataclasses

    import numpy as np

    from pretrain.train import mlm_trainer

    read: list[int] = []

    class Recorded:
        def __init__(self, blocks):
            self.blocks = blocks

        def __len__(self) -> int:
            return len(self.blocks)

        def __getitem__(self, index):
            read.append(int(index))
            return self.blocks[index]

    assert isinstance(tiny_data.train.tokens, np.memmap)
    data = dataclasses.replace(tiny_data, train=Recorded(tiny_data.train))
    cfg = tiny_config("train.max_steps=5", "train.per_device_train_batch_size=4", "train.eval_steps=1000",
                      "train.save_steps=1000")  # fmt: skip
    mlm_trainer(cfg, data, report_to=[], fresh=True).train()
    # 5 batches of 4, plus the one accelerate's loader fetches ahead to know where the epoch ends
    assert len(read) == len(set(read)) == 6 * 4 < len(tiny_data.train) // 10
