"""bench/recipe_check.py: the command each seed runs, and which figures it flags against the recorded ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.recipe_check import MEASURES, compare, main, pipeline_command, reuse_pretraining, shown, summary
from stagekit.config import REPO_ROOT


def recorded(mean: float, spread: float) -> dict[str, dict]:
    return {name: {"mean": mean, "spread": spread} for name in MEASURES}


def test_a_seed_runs_the_recipe_at_fixed_steps_with_time_caps_off_on_one_thread():
    args = argparse.Namespace(recipe="cpu-small", pretrain_steps=1000, siamese_steps=2000, limit=None, overrides=[])
    command = pipeline_command(args, 2, Path("out"))
    assert command[1:4] == ["-m", "pipeline", "--no-app"]
    for stage in ("pretrain", "siamese"):
        for key in ("train.seed=2", "train.max_train_minutes=null", "impl.num_threads=1", "wandb.mode=disabled"):
            assert f"{stage}.{key}" in command
    assert "pretrain.train.max_steps=1000" in command and "siamese.train.max_steps=2000" in command
    assert not any(c.startswith("eval.limit") for c in command)


def test_summary_is_the_mean_and_the_sample_standard_deviation():
    figures = summary([54.0, 56.0, 55.0])
    assert figures["mean"] == pytest.approx(55.0) and figures["spread"] == pytest.approx(1.0)


def test_a_drop_beyond_the_recorded_spread_is_flagged_in_the_direction_that_is_worse():
    now = {name: {"mean": 50.0, "spread": 0.5} for name in MEASURES}
    rows, dropped = compare(now, recorded(51.5, 1.0), tolerance=1.0)
    higher = [name for name, up in MEASURES.items() if up]
    assert sorted(dropped) == sorted(higher)  # 1.5 below, spread 1.0: worse for "higher is better" figures only
    assert len(rows) == len(MEASURES)
    assert compare(now, recorded(50.9, 1.0), tolerance=1.0)[1] == []  # within the spread


def test_fewer_than_two_seeds_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
    assert "at least two different seeds" in capsys.readouterr().err


def test_the_recorded_command_names_no_folder_of_this_machine(tmp_path):
    assert shown(str(REPO_ROOT / "bench" / "recipe_figures.json")) == "bench/recipe_figures.json"
    assert shown(str(tmp_path / "runs")) == "…/runs"
    assert shown("--seeds") == "--seeds" and shown("outputs/x") == "outputs/x"


def test_a_candidate_s_overrides_go_to_every_seed_after_the_recipe_s_own_keys():
    args = argparse.Namespace(
        recipe="cpu-small", pretrain_steps=1000, siamese_steps=2000, limit=None,
        overrides=["siamese.train.learning_rate=3e-4", "siamese.loss.name=both"],
    )  # fmt: skip
    command = pipeline_command(args, 0, Path("out"))
    assert command[-2:] == args.overrides  # last, so they win over the recipe's fixed keys


def test_an_override_without_a_stage_or_a_value_is_refused(capsys):
    for bad in ("train.learning_rate=3e-4", "siamese.train.learning_rate"):
        with pytest.raises(SystemExit):
            main(["--seeds", "0", "1", bad])
        assert "an override is STAGE.KEY=VALUE" in capsys.readouterr().err


def test_a_seed_starts_from_the_finished_pretraining_of_an_earlier_check(tmp_path):
    model = tmp_path / "before" / "seed-1" / "pretrain-cpu-small" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    reuse_pretraining(tmp_path / "before", 1, tmp_path / "now")
    linked = tmp_path / "now" / "pretrain-cpu-small" / "model" / "model.safetensors"
    assert linked.read_bytes() == b"weights" and linked.stat().st_ino == (model / "model.safetensors").stat().st_ino
    with pytest.raises(SystemExit, match="no finished pretraining"):
        reuse_pretraining(tmp_path / "before", 2, tmp_path / "elsewhere")
