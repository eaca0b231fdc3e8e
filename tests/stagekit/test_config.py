from __future__ import annotations

import copy
import json
import pickle
from dataclasses import dataclass, field
from typing import Literal

import pytest

from stagekit.config import load_config, require, save_config, to_dict
from stagekit.errors import ConfigError
from stagekit.resume import check_resume_settings


@dataclass
class Model:
    hidden_size: int = 64
    num_attention_heads: int = 4
    dropout: float = 0.1

    def check(self) -> None:
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", "must divide hidden_size")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass
class Train:
    lr: float = 1.0e-3
    steps: int = 10
    name: str | None = None
    kind: Literal["a", "b"] = "a"
    method: Literal["auto", "none"] = "auto"
    tags: list[str] = field(default_factory=list)

    def check(self) -> None:
        require(self.lr > 0, "lr", "must be positive")


@dataclass
class Root:
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    flag: bool = False


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 128\ntrain:\n  lr: 3e-4\n")  # PyYAML reads 3e-4 as a string
    cfg = load_config(Root, path, ["train.steps=7", "flag=true", "train.tags=[x, y]", "train.name=run1"])
    assert cfg.model.hidden_size == 128 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.steps == 7 and cfg.flag is True and cfg.train.tags == ["x", "y"] and cfg.train.name == "run1"


def test_a_choice_named_none_is_that_choice_on_the_command_line_and_null_is_null():
    # `none` on the command line also means null for keys that may be null: a key whose choices include "none"
    # takes it as that choice (siamese/config.py postprocess.method).
    assert load_config(Root, None, ["train.method=none"]).train.method == "none"
    assert load_config(Root, None, ["train.name=none"]).train.name is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.bogus=1"], "unknown config key 'train.bogus'"),
        (["train.steps=ten"], "config key 'train.steps': expected an integer"),
        (["train.lr=-1"], "config key 'train.lr': must be positive"),
        (["model.num_attention_heads=5"], "config key 'model.num_attention_heads': must divide hidden_size"),
        (["train.kind=c"], "config key 'train.kind'"),
        (["noequals"], "not of the form key=value"),
        (["flag.x=1"], "config key 'flag'"),
    ],
)
def test_errors_are_one_line_and_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(Root, None, overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Root, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, bad)


# PyYAML keeps the last of a key given twice: a second `train:` section replaced the whole first one with defaults.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  lr: 1.0e-3\n  steps: 8\nmodel:\n  hidden_size: 32\ntrain:\n  steps: 9\n",
         "key 'train' is given twice (lines 1 and 6)"),
        ("model:\n  hidden_size: 32\n  dropout: 0.2\n  hidden_size: 64\n",
         "key 'model.hidden_size' is given twice (lines 2 and 4)"),
        ("flag: true\ntrain: {lr: 1.0e-3, lr: 2.0e-3}\nflag: false\n", "key 'flag' is given twice (lines 1 and 3)"),
        ("train:\n  tags:\n    - {a: 1, a: 2}\n", "key 'train.tags[0].a' is given twice (lines 3 and 3)"),
    ],
)  # fmt: skip
def test_a_key_given_twice_in_a_config_file_is_one_line_naming_it_and_both_lines(tmp_path, text, expected):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(Root, path)
    assert str(err.value) == f"config file {path}: {expected}; keep one"


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base\n  lr: 1.0e-3\n  steps: 8\ntrain:\n  <<: *base\n  steps: 9\n")
    with pytest.raises(ConfigError, match="unknown config key 'base'"):  # parsed, then refused as a key
        load_config(Root, path)


@dataclass
class Small:
    architecture: Literal["small"] = "small"
    width: int = 8


@dataclass
class Rotary:
    architecture: Literal["rotary"] = "rotary"
    width: int = 8
    theta: float = 1000.0


@dataclass
class Tagged:
    model: Small | Rotary = field(default_factory=Small)


def test_a_tagged_section_is_built_as_the_class_its_tag_names():
    assert isinstance(load_config(Tagged, None, []).model, Small)
    rotary = load_config(Tagged, None, ["model.architecture=rotary", "model.theta=10"]).model
    assert isinstance(rotary, Rotary) and rotary.theta == 10.0
    with pytest.raises(ConfigError, match=r"unknown config key 'model.theta' \(known for model.architecture=small"):
        load_config(Tagged, None, ["model.theta=10"])
    with pytest.raises(ConfigError, match="config key 'model.architecture': 'big' is not one of"):
        load_config(Tagged, None, ["model.architecture=big"])


@dataclass
class Listed:
    models: list[Model] = field(default_factory=list)


# A list override that is not valid YAML ended in a 74-line traceback from the YAML parser.
@pytest.mark.parametrize(
    ("schema", "override", "key"),
    [
        (Root, "train.tags=[x, y", "train.tags"),
        (Root, "train.tags=[x]]", "train.tags"),
        (Root, "train.tags=[!!python/name:os.system x]", "train.tags"),
        (Listed, "models=[{hidden_size: 8", "models"),
        (Listed, "models=[{hidden_size: 8}, {dropout: [}]", "models"),
    ],
)
def test_a_malformed_list_override_is_one_line_naming_the_key(schema, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(schema, None, [override])
    message = str(err.value)
    assert f"config key '{key}'" in message and "not valid YAML" in message and "\n" not in message


# A ${VAR} in a config string was expanded before the config was saved: a secret in it (or any other value of
# the environment) was written in clear into resolved_config.yaml, run_config.json and the W&B config.
def test_variables_are_expanded_for_the_run_and_saved_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("RUN_ROOT", "/scratch/me")
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-0123")
    path = tmp_path / "c.yaml"
    path.write_text('train:\n  name: "${RUN_ROOT}/runs"\n')
    cfg = load_config(Root, path, ["train.tags=['run-${WANDB_API_KEY}', plain]"])
    assert cfg.train.name == "/scratch/me/runs" and cfg.train.tags == ["run-s3cr3t-0123", "plain"]  # the run's
    saved = tmp_path / "resolved_config.yaml"
    save_config(cfg, saved)
    for text in (saved.read_text(), json.dumps(to_dict(cfg))):
        assert "s3cr3t" not in text and "/scratch/me" not in text
        assert "${RUN_ROOT}/runs" in text and "run-${WANDB_API_KEY}" in text
    assert to_dict(cfg, expanded=True)["train"]["name"] == "/scratch/me/runs"
    assert load_config(Root, saved) == cfg  # the saved file gives the same run again
    for copied in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert copied == cfg and to_dict(copied) == to_dict(cfg)


def test_a_resume_compares_the_config_as_written_and_accepts_checkpoints_that_recorded_it_expanded(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DATA", "/data/v1")
    cfg = load_config(Root, None, ["train.name=${DATA}/train.jsonl"])
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    # today's record, and one written before configs kept ${VAR} (the value expanded)
    for recorded in (
        to_dict(cfg),
        {**to_dict(cfg), "train": {**to_dict(cfg)["train"], "name": "/data/v1/train.jsonl"}},
    ):
        (checkpoint / "run_config.json").write_text(json.dumps(recorded))
        assert check_resume_settings(str(checkpoint), to_dict(cfg), (), expanded=to_dict(cfg, expanded=True)) == []
    changed = load_config(Root, None, ["train.name=${DATA}/other.jsonl"])
    with pytest.raises(ConfigError, match="config key 'train.name': '/data/v1/train.jsonl' in checkpoint"):
        check_resume_settings(str(checkpoint), to_dict(changed), (), expanded=to_dict(changed, expanded=True))


# run_info.json, report.json and probe.json named absolute paths of the machine that trained, and were uploaded.
def test_paths_leave_the_machine_relative_to_the_data_or_output_folder(tmp_path, monkeypatch):
    from stagekit.variables import portable

    monkeypatch.setenv("BERT_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    run_dir = tmp_path / "outputs" / "siamese"
    record = {
        "base_model": str(tmp_path / "outputs" / "pretrain" / "model"),
        "output_dir": str(tmp_path / "outputs"),
        "counts": {str(tmp_path / "data" / "mnli" / "train.jsonl.gz"): 3},
        "elsewhere": [str(tmp_path / "models" / "bert")],
        "kept": ["outputs/pretrain/model", "${BERT_DATA_DIR}/x.jsonl.gz", "google-bert/bert-base-uncased", "/ not"],
    }
    assert portable(record, run_dir) == {
        "base_model": "../pretrain/model",
        "output_dir": "..",
        "counts": {"${BERT_DATA_DIR}/mnli/train.jsonl.gz": 3},
        "elsewhere": ["…/bert"],
        "kept": ["outputs/pretrain/model", "${BERT_DATA_DIR}/x.jsonl.gz", "google-bert/bert-base-uncased", "/ not"],
    }
