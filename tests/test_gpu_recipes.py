"""The T4 recipes are bert-medium's recipes with time caps, batch fitting and auto precision (docs/gpus.md)."""

from __future__ import annotations

import dataclasses

from pretrain.config import PretrainConfig
from siamese.config import SiameseConfig
from stagekit.config import REPO_ROOT, load_config

CONFIGS = REPO_ROOT / "configs"
# What the T4 recipe may differ in: caps, where the runs live, and speed-only settings.
PRETRAIN_CHANGES = {"run_name", "train.max_steps", "train.max_train_minutes", "train.save_steps", "data.num_proc"}
SIAMESE_CHANGES = {"run_name", "model.base_model", "train.max_train_minutes"}


def differences(a, b, prefix: str = "") -> set[str]:
    found = set()
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            found |= differences(x, y, f"{prefix}{f.name}.")
        elif x != y:
            found.add(f"{prefix}{f.name}")
    return found


def test_the_t4_pretraining_recipe_is_bert_medium_with_a_time_cap():
    medium = load_config(PretrainConfig, CONFIGS / "pretrain" / "bert-medium.yaml")
    t4 = load_config(PretrainConfig, CONFIGS / "pretrain" / "t4.yaml")
    changed = {k for k in differences(medium, t4) if not k.startswith("impl.")}
    assert changed <= PRETRAIN_CHANGES, changed - PRETRAIN_CHANGES
    assert t4.train.max_train_minutes == 60 and t4.impl.precision == "auto" and t4.impl.fit_batch


def test_the_t4_siamese_recipe_is_bert_medium_with_a_time_cap():
    medium = load_config(SiameseConfig, CONFIGS / "siamese" / "bert-medium.yaml")
    t4 = load_config(SiameseConfig, CONFIGS / "siamese" / "t4.yaml")
    changed = {k for k in differences(medium, t4) if not k.startswith("impl.")}
    assert changed <= SIAMESE_CHANGES, changed - SIAMESE_CHANGES
    assert t4.model.base_model == "outputs/pretrain-t4/model" and t4.impl.device == "auto" and t4.impl.fit_batch
