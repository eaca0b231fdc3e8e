"""configs/sweeps/: every sweep's command, expanded as the W&B agent expands it with a sample of its parameters,
parses with the siamese config vocabulary, and its metric is the stage's validation accuracy (no server)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from siamese.config import SiameseConfig
from siamese.inference.card import BEST_NLI_METRIC, is_reported_set
from stagekit.cli import config_parser, parse_config
from stagekit.config import REPO_ROOT, to_dict

SWEEPS = sorted((REPO_ROOT / "configs" / "sweeps").glob("*.yaml"))


def samples(parameters: dict) -> list[dict]:
    """Two assignments of every parameter: each one's first value (or minimum), then its last (or maximum)."""

    def ends(spec: dict) -> tuple:
        if "value" in spec:
            return spec["value"], spec["value"]
        if "values" in spec:
            return spec["values"][0], spec["values"][-1]
        return spec["min"], spec["max"]

    picked = {name: ends(spec) for name, spec in parameters.items()}
    return [{name: pair[i] for name, pair in picked.items()} for i in (0, 1)]


def expand(command: list[str], assignment: dict) -> list[str]:
    """The agent's expansion: `${args_no_hyphens}` → `key=value` words (the SDK's own formatting); `${env}` and
    `${interpreter}` are the launcher, not arguments."""
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in assignment.items()}})["args_no_hyphens"]
    words = []
    for word in command:
        if word == "${args_no_hyphens}":
            words += args
        elif word not in ("${env}", "${interpreter}"):
            words.append(word)
    return words


def test_there_are_sweeps():
    assert {p.name for p in SWEEPS} >= {"siamese-cpu-small.yaml", "siamese-debug.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_a_sweep_runs_the_siamese_cli_on_its_config_vocabulary(path: Path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")  # the agent sets it for each trial
    monkeypatch.chdir(REPO_ROOT)  # the agent runs from the repository root
    assert (REPO_ROOT / sweep["program"]).is_file()
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "siamese"] and "${args_no_hyphens}" in command
    assert sweep["metric"] == {"name": f"final/{BEST_NLI_METRIC}", "goal": "maximize"}
    for assignment in samples(sweep["parameters"]):
        argv = expand(command, assignment)[4:]
        parser = config_parser("python -m siamese", "", SiameseConfig)
        cfg, _ = parse_config(parser, SiameseConfig, argv)
        as_run = to_dict(cfg, expanded=True)
        for name, value in assignment.items():  # each parameter reached its key with its value
            section, key = name.split(".")
            expected = pytest.approx(value) if isinstance(value, float) else value
            assert as_run[section][key] == expected, name
        # one run folder per trial, tracked online; the metric exists: an NLI head scored on validation pairs
        assert cfg.run_dir.name.endswith("-abc123") and cfg.wandb.mode == "online"
        assert cfg.loss.name != "mnrl" and cfg.data.eval_pairs > 0
        assert cfg.data.eval_sources and not any(is_reported_set(s) for s in to_dict(cfg)["data"]["eval_sources"])


def test_every_value_of_every_sweep_parses(monkeypatch):
    """Each listed value on its own (e.g. every loss.name), not just the two sampled assignments."""
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    monkeypatch.chdir(REPO_ROOT)
    for path in SWEEPS:
        sweep = yaml.safe_load(path.read_text())
        config_file = sweep["command"][sweep["command"].index("--config") + 1]
        for name, spec in sweep["parameters"].items():
            for value in itertools.chain(spec.get("values", []), [spec[k] for k in ("min", "max") if k in spec]):
                argv = ["--config", config_file, *expand(["${args_no_hyphens}"], {name: value})]
                parse_config(config_parser("python -m siamese", "", SiameseConfig), SiameseConfig, argv)
