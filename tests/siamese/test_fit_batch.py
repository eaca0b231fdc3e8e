"""impl.fit_batch on the real fine-tuning entry point, under a fake memory limit, and the precision record."""

from __future__ import annotations

import json

import pytest
import torch

from siamese.__main__ import main
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


@pytest.mark.parametrize("loss", ["mnrl", "both"])
def test_fit_batch_keeps_a_ranking_losss_in_batch_negatives_and_fits_its_mini_batch(
    repo_root, tiny_bert, tmp_path, monkeypatch, loss
):
    from sentence_transformers import SentenceTransformer

    from siamese.losses import CachedDistinctRankingLoss, SoftmaxRankingLoss

    forward = SentenceTransformer.forward

    def limited(self, features, *args, **kwargs):  # a device on which more than 2 sentences do not fit
        if torch.is_grad_enabled() and features["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(self, features, *args, **kwargs)

    ranked: list[int] = []  # candidates each training loss ranked against: the rows of the batch it saw
    cached = CachedDistinctRankingLoss if loss == "mnrl" else SoftmaxRankingLoss
    calculate = cached.calculate_loss

    def spy(self, reps, *args, **kwargs):
        if torch.is_grad_enabled():  # training, not the eval loss
            ranked.append(sum(len(r) for r in reps[1]))
        return calculate(self, reps, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "forward", limited)
    monkeypatch.setattr(cached, "calculate_loss", spy)
    triplets = ["data.max_train_pairs=null", "data.eval_pairs=600"] if loss == "mnrl" else []
    model_dir = main(
        debug_args(repo_root, tiny_bert, tmp_path, f"loss.name={loss}", "impl.fit_batch=true", *triplets)
    ).model_dir
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["fit_batch_per_device"], metrics["fit_batch_accumulation"]) == (8, 1)  # the batch is kept
    assert metrics["fit_batch_mini_batch"] == 2
    assert metrics["fit_batch_tried"] == ["8: out of memory", "mini-batch 4: out of memory", "mini-batch 2: fits"]
    assert ranked and set(ranked) == {8}  # every step ranked against all 8 pairs of its batch
    assert metrics["pairs_seen"] == 4 * 8 and metrics["step"] == 4
