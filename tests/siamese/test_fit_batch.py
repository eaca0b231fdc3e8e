"""impl.fit_batch on the real fine-tuning entry point, under a fake memory limit, and the precision record."""

from __future__ import annotations

import json

import pytest
import torch

from siamese.train import main
from siamese.trainer import SiameseTrainer
from tests.siamese.test_train import debug_args

pytestmark = pytest.mark.slow


def test_fit_batch_probes_the_longest_pairs_and_keeps_the_pairs_per_step(repo_root, tiny_bert, tmp_path, monkeypatch):
    seen: list[tuple[int, int]] = []
    compute_loss = SiameseTrainer.compute_loss

    def limited(self, model, inputs, *args, **kwargs):  # a device on which more than 2 pairs do not fit
        rows, length = next(v.shape for k, v in inputs.items() if k.endswith("input_ids"))
        if not torch.is_grad_enabled():  # evaluation keeps no activations for a backward pass: it fits
            return compute_loss(self, model, inputs, *args, **kwargs)
        seen.append((rows, length))
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SiameseTrainer, "compute_loss", limited)
    model_dir = main(
        debug_args(repo_root, tiny_bert, tmp_path, "impl.fit_batch=true", "train.head_init_pairs=0")
    ).model_dir
    assert [rows for rows, _ in seen[:3]] == [8, 4, 2] and all(length == 32 for _, length in seen[:3])  # longest
    assert {rows for rows, _ in seen[3:]} <= {2, 1}  # training: micro-batches of 2 (a batch's tail may be shorter)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["fit_batch_per_device"], metrics["fit_batch_accumulation"]) == (2, 4)
    assert metrics["pairs_seen"] == 4 * 8 and metrics["step"] == 4
    assert metrics["precision"] == "fp32" and "CPU" in metrics["precision_reason"]
