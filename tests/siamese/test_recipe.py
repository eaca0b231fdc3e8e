"""On a tiny budget: fine-tuning the real all-MiniLM-L6-v2 with a warm-started head at its own
learning rate must teach the head NLI without damaging the frozen encoder's similarity ranking.

The old recipe (head at the encoder's 2e-5, random start) fails this test: after the same 8 steps its head
is as good as random (measured: 35.5 % untrained → 34.0 %, STS-B 0.9390 → 0.9378); the new one passes
(35.5 % → 46.5 %, STS-B 0.9390 → 0.9397). ~35 s of one CPU thread, most of it encoding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from siamese.__main__ import main
from siamese.config import LossConfig
from siamese.evaluation.scores import read_stsb, stsb_metrics
from siamese.inference.encoder import NLIEncoder, resolve_base
from siamese.losses import build_loss
from siamese.nli_data import read_pairs
from siamese.warm_start import accuracy, pair_features
from stagekit.sources import SourceConfig

pytestmark = pytest.mark.slow

# NLI accuracy on 200 held-out pairs must beat the untrained head by 6 points: about halfway between the
# old recipe (−1.5) and the new one (+11) on this seeded run, so float noise between platforms cannot flip
# it either way. (One standard error of an accuracy at n = 200, p ≈ 0.4 is 3.5 points: 6 points is well
# clear of a head that learnt nothing.)
ACCURACY_GAIN = 0.06
# The frozen encoder's STS-B Spearman may fall by at most 0.02: the recipe's bar (82 → at least 80 on the
# full test set). Before and after are ranked on the same pairs, so the slice adds no sampling noise to
# the difference; the run is seeded, so the drop is a fixed number (measured: none, −0.0007).
STS_MARGIN = 0.02
HELD_OUT_PAIRS, STS_PAIRS = 200, 150


def source(path) -> SourceConfig:
    return SourceConfig(path=str(path), config_name=None)


def test_fine_tuning_teaches_the_head_without_damaging_the_frozen_ranking(repo_root, data_dir, tmp_path):
    torch.set_num_threads(1)
    held_out = read_pairs(source(data_dir / "mnli" / "validation_mismatched.jsonl.gz"), HELD_OUT_PAIRS)
    sts = read_stsb(source(data_dir / "stsb" / "validation.jsonl.gz"), STS_PAIRS, score_scale=5.0)
    frozen = SentenceTransformer(resolve_base("all-MiniLM-L6-v2"), device="cpu")
    sts_before = stsb_metrics(NLIEncoder(frozen), *sts)["spearman"]
    torch.manual_seed(42)
    untrained = build_loss(frozen, LossConfig()).classifier  # a fresh head, as a run starts from
    labels = torch.as_tensor(held_out["label"])
    untrained_accuracy = accuracy(untrained, pair_features(frozen, held_out, 64), labels)

    model_dir = main([
        "--config", str(repo_root / "configs" / "siamese" / "minilm-baseline.yaml"), f"output_dir={tmp_path}",
        "train.max_steps=8", "train.per_device_train_batch_size=16", "train.save_steps=1000", "train.eval_steps=1000",
        "data.eval_pairs=0", "train.select_best=false",  # 8 steps: no checkpoints to choose from
        "data.shuffle_buffer=1000", "impl.num_threads=1", "wandb.mode=disabled",
        "train.head_init_pairs=512", "train.head_learning_rate=1.0e-3",  # the recipe under test
    ]).model_dir  # fmt: skip

    tuned = NLIEncoder.load(model_dir, device="cpu")
    prediction = tuned.predict(held_out["premise"], held_out["hypothesis"])
    tuned_accuracy = float((prediction.probs.argmax(axis=1) == np.asarray(held_out["label"])).mean())
    sts_after = stsb_metrics(tuned, *sts)["spearman"]
    numbers = f"accuracy {untrained_accuracy:.3f} → {tuned_accuracy:.3f}, STS-B {sts_before:.4f} → {sts_after:.4f}"
    assert tuned_accuracy >= untrained_accuracy + ACCURACY_GAIN, numbers
    assert sts_before - sts_after <= STS_MARGIN, numbers
