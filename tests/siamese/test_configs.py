"""Every YAML under configs/siamese loads through the schema; bad values fail on one line naming the key."""

from __future__ import annotations

import re

import pytest

from siamese.config import SiameseConfig
from siamese.inference.card import is_reported_set
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import ConfigError

CONFIGS = sorted((__import__("pathlib").Path(__file__).parents[2] / "configs" / "siamese").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(SiameseConfig, path)
    assert cfg.train.max_steps >= 1 and cfg.data.train_sources


@pytest.mark.parametrize("path", [*CONFIGS, None], ids=[*(p.stem for p in CONFIGS), "defaults"])
def test_checkpoints_are_chosen_on_validation_pairs_never_on_a_reported_set(path):
    # MNLI dev matched / mismatched are what evaluation and the model card report; the pairs scored during
    # training pick the shipped checkpoint (train.select_best), so they must come from elsewhere.
    cfg = load_config(SiameseConfig, path) if path else SiameseConfig()
    if cfg.data.validation_fraction:  # a slice held out of the training sources (siamese/nli_data.py `held_out`)
        assert not any(is_reported_set({"path": s.path, "split": s.split}) for s in cfg.data.train_sources)
        assert "mnli" in f"{cfg.data.train_sources[0].path} {cfg.data.train_sources[0].config_name}"
        return
    validation = cfg.data.eval_sources[0]
    assert not is_reported_set({"path": validation.path, "split": validation.split})
    assert "snli" in validation.path and "validation" in f"{validation.path} {validation.split}"


def test_a_reported_set_is_recognised_locally_and_on_the_hub():
    assert is_reported_set({"path": "${BERT_DATA_DIR}/mnli/validation_matched.jsonl.gz"})
    assert is_reported_set({"path": "/data/mnli/validation_mismatched.jsonl.gz"})
    assert is_reported_set({"path": "nyu-mll/glue", "split": "validation_matched"})
    assert not is_reported_set({"path": "nyu-mll/glue", "split": "train"})
    assert not is_reported_set({"path": "${BERT_DATA_DIR}/snli/validation.jsonl.gz"})


def test_the_expected_configs_exist():
    assert {"debug", "cpu-small", "bert-medium"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.learning_rate=-1", "train.learning_rate"),
        ("train.per_device_train_batch_size=abc", "train.per_device_train_batch_size"),
        ("loss.name=cosine", "loss.name"),
        ("train.lr=1.0e-4", "train.lr"),
        ("model.max_seq_length=4", "model.max_seq_length"),
        ("data.shuffle_buffer=0", "data.shuffle_buffer"),
        ("train.head_learning_rate=0", "train.head_learning_rate"),
        ("train.head_init_pairs=-1", "train.head_init_pairs"),
        ("train.select_best=maybe", "train.select_best"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(SiameseConfig, CONFIGS[0], [override])
    assert "\n" not in str(err.value)


def test_plateau_needs_evaluation():
    with pytest.raises(ConfigError, match="eval_pairs"):
        load_config(SiameseConfig, None, ["train.lr_scheduler_type=reduce_lr_on_plateau", "data.eval_pairs=0"])


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (["train.select_best=true", "train.eval_steps=300", "train.save_steps=500"], "train.save_steps",
         "multiple of eval_steps (300)"),
        (["train.select_best=true", "data.eval_pairs=0"], "train.select_best", "data.eval_pairs > 0"),
        (["loss.name=mnrl", "train.head_learning_rate=1.0e-3"], "train.head_learning_rate", "trains no NLI head"),
        (["loss.name=mnrl", "train.head_init_pairs=100"], "train.head_init_pairs", "trains no NLI head"),
    ],
)  # fmt: skip
def test_the_head_and_selection_keys_refuse_what_cannot_work(overrides, key, says):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(SiameseConfig, None, overrides)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_head_recipe_is_off_by_default_and_on_in_every_shipped_recipe():
    """The schema's defaults are SBERT's (no head rate, no warm start, the last step); the shipped recipes turn
    all three on (docs/results.md, "Siamese fine-tuning: the recipe")."""
    train = load_config(SiameseConfig, None).train
    assert (train.head_learning_rate, train.head_init_pairs, train.select_best) == (None, 0, False)
    for name in ("cpu-small", "bert-medium", "minilm-baseline"):
        shipped = load_config(SiameseConfig, REPO_ROOT / "configs" / "siamese" / f"{name}.yaml").train
        assert shipped.head_learning_rate and shipped.head_init_pairs > 0 and shipped.select_best, name
    cfg = load_config(SiameseConfig, None, ["train.select_best=true", "train.eval_steps=300", "train.save_steps=600",
                                            "train.head_learning_rate=1.0e-3", "train.head_init_pairs=4096"])  # fmt: skip
    assert cfg.train.select_best and cfg.train.head_learning_rate == 1.0e-3 and cfg.train.head_init_pairs == 4096


# a dataset config or revision given for a local file was dropped without a word.
@pytest.mark.parametrize(
    ("override", "key"),
    [
        (
            'data.train_sources=[{path: "${BERT_DATA_DIR}/mnli/train.jsonl.gz", config_name: mnli}]',
            "data.train_sources[0].config_name",
        ),
        (
            'data.eval_sources=[{path: "${BERT_DATA_DIR}/mnli/validation_matched.jsonl.gz", revision: main}]',
            "data.eval_sources[0].revision",
        ),  # fmt: skip
    ],
)
def test_hub_only_settings_for_a_local_source_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}'.*local.*: null") as err:
        load_config(SiameseConfig, CONFIGS[0], [override])
    assert "\n" not in str(err.value)
    hub = "data.train_sources=[{path: nyu-mll/glue, config_name: mnli, revision: main}]"
    assert load_config(SiameseConfig, CONFIGS[0], [hub]).data.train_sources[0].revision == "main"
    plain = 'data.train_sources=["${BERT_DATA_DIR}/mnli/train.jsonl.gz"]'  # a plain string is a source's path
    assert load_config(SiameseConfig, CONFIGS[0], [plain]).data.train_sources[0].path.endswith("train.jsonl.gz")
