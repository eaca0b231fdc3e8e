"""One `train.seed` drives both stages: the same seed gives identical weights on CPU, another seed other weights.

Pretraining: initialisation, block order, masking, dropout. Fine-tuning: the shuffle buffer, the NLI head's
initialisation and the pairs its warm start is fitted on, dropout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.__main__ import main as pretrain
from siamese.__main__ import main as finetune
from siamese.config import DataConfig
from siamese.inference.encoder import HEAD_FILE
from siamese.nli_data import first_pairs
from stagekit.config import REPO_ROOT
from stagekit.sources import SourceConfig


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.rglob("*.safetensors")):
        tensors |= {f"{file.relative_to(folder)}:{k}": v for k, v in load_file(str(file)).items()}
    assert tensors, folder
    return tensors


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_head_warm_start_pairs_follow_the_seed(data_dir):
    cfg = DataConfig(
        train_sources=[SourceConfig(path=str(data_dir / "mnli" / "train.jsonl.gz"), config_name=None)],
        shuffle_buffer=500,
    )
    a, b, c = (first_pairs(cfg, 64, seed, shuffled=True)["premise"] for seed in (1, 1, 2))
    assert a == b and a != c


@pytest.mark.slow
def test_one_seed_gives_identical_weights_in_both_stages_and_another_seed_other_weights(tiny_args, tmp_path):
    def pretrained(seed: int, name: str) -> Path:
        out = tmp_path / name
        args = tiny_args("train.max_steps=6", "train.eval_steps=6", "train.save_steps=6", "impl.num_threads=1",
                         "model.hidden_dropout_prob=0.1", f"train.seed={seed}", out=out)  # fmt: skip
        return pretrain(args).model_dir

    def finetuned(base: Path, seed: int, name: str) -> Path:
        return finetune([
            "--config", str(REPO_ROOT / "configs" / "siamese" / "debug.yaml"), f"model.base_model={base}",
            f"output_dir={tmp_path / name}", "train.max_steps=4", "train.save_steps=4", "train.eval_steps=4",
            "data.eval_pairs=16", "model.max_seq_length=32", "impl.num_threads=1", "model.hidden_dropout_prob=0.1",
            "train.head_init_pairs=64", f"train.seed={seed}",
        ]).model_dir  # fmt: skip

    first, again, other = pretrained(3, "a"), pretrained(3, "b"), pretrained(4, "c")
    assert same(weights(first), weights(again))
    assert not same(weights(first), weights(other))

    tuned, retuned, seeded = finetuned(first, 5, "x"), finetuned(first, 5, "y"), finetuned(first, 6, "z")
    assert (tuned / HEAD_FILE).is_file()
    assert same(weights(tuned), weights(retuned))
    assert not same(weights(tuned), weights(seeded))
