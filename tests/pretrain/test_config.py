from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.__main__ import main
from pretrain.config import PretrainConfig
from stagekit.cli import run_cli
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import ConfigError

CONFIGS = sorted((REPO_ROOT / "configs" / "pretrain").glob("*.yaml"))


def test_the_three_recipes_exist():
    assert {p.name for p in CONFIGS} >= {"bert-medium.yaml", "cpu-small.yaml", "debug.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_loads_and_validates(path: Path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.model.num_hidden_layers >= 1 and cfg.model.vocab_size % 64 == 0


def test_recipes_are_the_promised_models():
    medium = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/bert-medium.yaml")
    assert (medium.model.num_hidden_layers, medium.model.hidden_size, medium.model.num_attention_heads) == (8, 512, 8)
    assert medium.model.intermediate_size == 2048 and medium.data.max_documents == 100_000
    assert (
        medium.data.source.path == "Skylion007/openwebtext" and medium.impl.precision == "auto" and medium.impl.compile
    )
    assert medium.model.architecture == "bert"  # the 8-layer BERT the project promises
    small = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/cpu-small.yaml")
    assert small.model.num_hidden_layers == 8 and small.run_name == "pretrain-cpu-small"
    assert small.model.architecture == "nomic_bert"  # what leaves the plateau within the CPU budget
    assert small.impl.precision == "fp32" and not small.impl.compile


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.bogus=1", "unknown config key 'train.bogus'"),
        ("train.learning_rate=-1", "config key 'train.learning_rate': must be positive"),
        ("train.max_steps=ten", "config key 'train.max_steps': expected an integer"),
        ("model.num_attention_heads=3", "config key 'model.num_attention_heads': must divide hidden_size"),
        ("model.vocab_size=1000", "config key 'model.vocab_size': must be a multiple of 64"),
        ("model.hidden_dropout_prob=1.5", "config key 'model.hidden_dropout_prob'"),
        ("data.block_size=256", "config key 'model.max_position_embeddings': must be >= data.block_size"),
        ("impl.device=tpu", "config key 'impl.device'"),
        ("train.min_lr=1", "config key 'train.min_lr'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/debug.yaml", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_rejects_a_bad_override_before_any_work(tmp_path, capsys):
    status = run_cli(
        main,
        [
            "--config",
            str(REPO_ROOT / "configs/pretrain/debug.yaml"),
            f"output_dir={tmp_path}",
            "train.learning_rate=-1",
        ],
    )
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("error: config key 'train.learning_rate'") and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--resume" in out and "key=value" in out


# data.config_name / data.revision given for a local file were dropped without a word.
@pytest.mark.parametrize(
    ("config", "overrides", "key"),
    [
        ("debug.yaml", ["data.source.config_name=wikitext-103-raw-v1"], "data.source.config_name"),
        ("debug.yaml", ["data.source.revision=main"], "data.source.revision"),
        ("bert-medium.yaml", ["data.source.path=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz"], "data.source.revision"),
    ],
)
def test_hub_only_settings_for_a_local_source_name_the_key(config, overrides, key):
    with pytest.raises(ConfigError, match=rf"'{key}'.*local.*set {key.rsplit('.', 1)[1]}: null") as err:
        load_config(PretrainConfig, REPO_ROOT / "configs" / "pretrain" / config, overrides)
    assert "\n" not in str(err.value)


def test_a_plain_string_is_the_source_path_with_the_other_keys_at_their_defaults():
    local = ["data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz"]  # bert-medium.yaml names a Hub revision
    source = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/bert-medium.yaml", local).data.source
    assert source.path.endswith("imdb_100k.jsonl.gz") and source.revision is None and source.split == "train"


@pytest.mark.parametrize(("old", "new"), [("data.revision=main", "data.source.revision"),
                                          ("data.split=train", "data.source.split")])  # fmt: skip
def test_the_source_keys_of_before_name_their_section(old, new):
    with pytest.raises(ConfigError, match=f"is now called '{new}'") as err:
        load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/debug.yaml", [old])
    assert "\n" not in str(err.value)


def test_a_checkpoint_recorded_with_the_flat_source_keys_resumes(tmp_path):
    import json

    from stagekit.config import renamed_keys, resumable_keys, to_dict
    from stagekit.resume import check_resume_settings

    cfg = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/debug.yaml")
    old = to_dict(cfg)
    source = old["data"].pop("source")
    old["data"] |= {"source": source["path"], "revision": None, "config_name": None, "split": "train"}
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "run_config.json").write_text(json.dumps(old))
    rules = (resumable_keys(PretrainConfig), renamed_keys(PretrainConfig), PretrainConfig.implied_by_old_checkpoints)
    assert check_resume_settings(str(checkpoint), to_dict(cfg), *rules) == []
