"""Every YAML under configs/siamese loads through the schema; bad values fail on one line naming the key."""

from __future__ import annotations

import pytest

from common.config import load_config
from common.errors import ConfigError
from siamese.config import SiameseConfig

CONFIGS = sorted((__import__("pathlib").Path(__file__).parents[2] / "configs" / "siamese").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(SiameseConfig, path)
    assert cfg.train.max_steps >= 1 and cfg.data.train_sources


def test_the_expected_configs_exist():
    assert {"debug", "cpu-small", "bert-medium"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.learning_rate=-1", "train.learning_rate"),
        ("train.batch_size=abc", "train.batch_size"),
        ("loss.name=cosine", "loss.name"),
        ("train.lr=1.0e-4", "train.lr"),
        ("model.max_seq_length=4", "model.max_seq_length"),
        ("data.shuffle_buffer=0", "data.shuffle_buffer"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(SiameseConfig, CONFIGS[0], [override])
    assert "\n" not in str(err.value)


def test_plateau_needs_evaluation():
    with pytest.raises(ConfigError, match="eval_pairs"):
        load_config(SiameseConfig, None, ["train.lr_scheduler=reduce_lr_on_plateau", "data.eval_pairs=0"])
