"""impl.fit_batch on the real pretraining entry point, under a fake memory limit; the choice of precision and
batch kept in metrics.json."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.__main__ import main
from pretrain.trainer import MLMTrainer

pytestmark = pytest.mark.slow


def test_fit_batch_keeps_the_batch_per_step_under_a_fake_memory_limit(tiny_args, tmp_path, monkeypatch):
    seen: list[int] = []
    compute_loss = MLMTrainer.compute_loss

    def limited(self, model, inputs, *args, **kwargs):  # a device on which more than 4 blocks do not fit
        seen.append(len(inputs["input_ids"]))
        if len(inputs["input_ids"]) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MLMTrainer, "compute_loss", limited)
    overrides = ("train.max_steps=3", "train.eval_steps=3", "train.save_steps=3", "train.cloze_sentences=4")
    metrics = main(tiny_args(*overrides, "impl.fit_batch=true")).metrics
    assert seen[:3] == [16, 8, 4]  # the memory trials: configured 16, then halves, until one fits
    assert set(seen[3:]) == {4} and len(seen) >= 3 + 3 * 4  # every training step: 4 micro-batches of 4 blocks
    assert (metrics["fit_batch_per_device"], metrics["fit_batch_accumulation"]) == (4, 4)
    assert metrics["tokens_seen"] == 3 * 16 * 128  # the batch per step the config asks for
    written = json.loads((tmp_path / "pretrain-debug" / "model" / "metrics.json").read_text())
    assert written["precision"] == "fp32" and written["precision_reason"].startswith("asked for")
    assert written["fit_batch_tried"] == ["16: out of memory", "8: out of memory", "4: fits"]
