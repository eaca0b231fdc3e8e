"""Every key is documented, docs/configuration.md is in step with the code, and every command the README,
docs/ and `--help` show parses and its config loads (keys, types and values checked, no training)."""

from __future__ import annotations

import re
import shlex

import pytest

from pipeline import config_docs
from pretrain import probe
from pretrain.config import PretrainConfig
from siamese.config import EvalConfig, SiameseConfig
from siamese.evaluation import evaluate
from stagekit.cli import config_parser
from stagekit.config import REPO_ROOT, describe_keys, load_config, renamed_keys, resumable_keys, to_dict
from stagekit.errors import ConfigError
from stagekit.resume import check_resume_settings

SCHEMAS = {"pretrain": PretrainConfig, "siamese": SiameseConfig}
# every config class whose keys docs/configuration.md lists (evaluation and the probe take --model beside theirs)
DOCUMENTED = SCHEMAS | {"siamese.evaluation": EvalConfig, "pretrain.probe": probe.ProbeConfig}
PARSERS = {"siamese.evaluation": evaluate.parser, "pretrain.probe": probe.parser}
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# `python -m pretrain ...`, `torchrun ... -m siamese ...`, `python -m pipeline ...`, `python -m siamese.evaluation ...`
# up to a comment or the line's end
COMMAND = re.compile(
    r"(?:python -m|torchrun [^`|#]*?-m) (pretrain\.probe|siamese\.evaluation|pretrain|siamese|pipeline)(?=[ \t\n`]|$)"
    r"([^`|#\n]*)"
)


@pytest.mark.parametrize("stage", DOCUMENTED)
def test_every_key_has_help(stage):
    undocumented = [info.dotted for info in describe_keys(DOCUMENTED[stage]) if not info.help.strip()]
    assert not undocumented, f"config keys without help: {undocumented}"


def test_configuration_md_is_in_step_with_the_config_classes():
    assert config_docs.TARGET.read_text(encoding="utf-8") == config_docs.render(), "run python -m pipeline.config_docs"


def parser_of(stage: str):
    return PARSERS[stage]() if stage in PARSERS else config_parser(f"python -m {stage}", "", SCHEMAS[stage])


@pytest.mark.parametrize("stage", DOCUMENTED)
def test_help_lists_every_key_and_its_examples_load(stage):
    schema, parser = DOCUMENTED[stage], parser_of(stage)
    text = parser.format_help()
    assert all(info.dotted in text for info in describe_keys(schema))
    assert schema.examples
    for example in schema.examples:
        words = shlex.split(example) + (["--model", "DIR"] if stage == "siamese.evaluation" else [])
        args = parser.parse_intermixed_args(words)
        load_config(schema, getattr(args, "config", None), args.overrides)


def documented_commands() -> list[tuple[str, str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8").replace("\\\n", " ")  # shell line continuations
        for match in COMMAND.finditer(text):
            found.append((document.name, match.group(1), match.group(2).strip()))
    return found


def test_the_documents_show_commands():
    stages = {stage for _, stage, _ in documented_commands()}
    assert stages == {"pretrain", "siamese", "pipeline", "siamese.evaluation", "pretrain.probe"}


@pytest.mark.parametrize(("document", "stage", "rest"), documented_commands())
def test_every_documented_command_parses_and_its_config_loads(document, stage, rest, monkeypatch):
    monkeypatch.setenv("CORPUS", str(REPO_ROOT / "README.md"))  # stands in for a user's $CORPUS
    # usage notation ("[key=value ...]", "[--no-int8]") goes; a list value ("loss.matryoshka_dims=[64,32]") stays
    usage = re.sub(r"(?<!=)\[[^\]]*\]", "", rest)
    words = [w for w in shlex.split(usage.replace("...", "")) if w not in ("--help", "-h")]
    if stage == "pipeline":
        from pipeline.__main__ import build_configs, parse_args

        build_configs(parse_args(["2" if w == "N" else w for w in words]))
        return
    schema = DOCUMENTED[stage]
    if "--config" in words and words.index("--config") == len(words) - 1:
        return  # prose: "python -m pretrain --config" followed by a file named in the sentence
    if stage == "siamese.evaluation" and "--model" not in words:
        return  # prose: the command named, not shown
    parsed = parser_of(stage).parse_intermixed_args(words)
    overrides = [o.replace("$CORPUS", str(REPO_ROOT / "README.md")) for o in parsed.overrides]
    load_config(schema, getattr(parsed, "config", None), overrides)


@pytest.mark.parametrize(
    ("stage", "old", "new"),
    [
        ("siamese", "train.batch_size=8", "train.per_device_train_batch_size"),
        ("siamese", "train.lr_scheduler=linear", "train.lr_scheduler_type"),
    ],
)
def test_an_old_key_name_is_refused_in_one_line_naming_the_new(stage, old, new):
    with pytest.raises(ConfigError) as err:
        load_config(SCHEMAS[stage], REPO_ROOT / f"configs/{stage}/debug.yaml", [old])
    assert new in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_of_the_old_vocabulary_resumes(tmp_path):
    """A checkpoint written before the rename records `train.batch_size` and `train.lr_scheduler`, and none of
    the keys the siamese stage gained; it resumes under today's names, a real change is still refused."""
    cfg = load_config(SiameseConfig, REPO_ROOT / "configs/siamese/debug.yaml")
    old = to_dict(cfg)
    train = old["train"]
    train["batch_size"] = train.pop("per_device_train_batch_size")
    train["lr_scheduler"] = train.pop("lr_scheduler_type")
    for gained in ("adam_epsilon", "plateau_threshold", "min_lr", "per_device_eval_batch_size"):
        train.pop(gained)
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "run_config.json").write_text(__import__("json").dumps(old))
    args = (resumable_keys(SiameseConfig), renamed_keys(SiameseConfig), SiameseConfig.implied_by_old_checkpoints)
    assert check_resume_settings(str(checkpoint), to_dict(cfg), *args) == []
    changed = load_config(
        SiameseConfig, REPO_ROOT / "configs/siamese/debug.yaml", ["train.per_device_train_batch_size=4"]
    )
    with pytest.raises(ConfigError, match="train.per_device_train_batch_size"):
        check_resume_settings(str(checkpoint), to_dict(changed), *args)
