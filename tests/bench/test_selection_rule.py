"""bench/selection_rule.py: which step each rule picks, what the summary counts, and a run folder whose
checkpoints were deleted refused before any scoring."""

from __future__ import annotations

import pytest

from bench.selection_rule import kept_checkpoints, pick, summarise
from siamese.config import SiameseConfig
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import UserError

ROWS = [
    {"step": 250, "snli_accuracy": 0.48, "validation_loss": 0.95, "validation_accuracy": 0.55, "mnli_mean": 0.50},
    {"step": 500, "snli_accuracy": 0.46, "validation_loss": 0.90, "validation_accuracy": 0.57, "mnli_mean": 0.55},
    {"step": 750, "snli_accuracy": 0.48, "validation_loss": 0.90, "validation_accuracy": 0.56, "mnli_mean": 0.54},
]


def test_pick_takes_the_best_and_the_earliest_of_a_tie():
    assert pick(ROWS, "snli_accuracy", True) == 250  # 0.48 twice: the first, as the Trainer keeps it
    assert pick(ROWS, "validation_loss", False) == 500
    assert pick(ROWS, "validation_accuracy", True) == 500
    assert pick(ROWS, "step", True) == 750


def test_summary_counts_other_picks_and_points_lost():
    picks = {
        "old: SNLI dev accuracy": 250,
        "new: held-out loss": 500,
        "variant: held-out accuracy": 500,
        "last checkpoint": 750,
        "oracle": 500,
    }
    summary = summarise([{"checkpoints": ROWS, "picks": picks}])
    old, new, last = summary["old: SNLI dev accuracy"], summary["new: held-out loss"], summary["last checkpoint"]
    assert (old["differs_from_oracle"], new["differs_from_oracle"], last["differs_from_oracle"]) == (1, 0, 1)
    assert old["loss_vs_oracle_max"] == pytest.approx(5.0) and old["loss_vs_last_mean"] == pytest.approx(4.0)
    assert new["loss_vs_oracle_mean"] == 0 and new["loss_vs_last_mean"] == pytest.approx(-1.0)


def test_a_run_that_deleted_checkpoints_is_refused(tmp_path):
    cfg = load_config(SiameseConfig, REPO_ROOT / "configs" / "siamese" / "debug.yaml", ["train.save_steps=5"])
    for step in (10, 15):  # step 5 deleted, as train.save_total_limit does
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(UserError, match=r"steps 5 were deleted .*save_total_limit=3 or more"):
        kept_checkpoints(tmp_path, cfg)
    (tmp_path / "checkpoints" / "checkpoint-5").mkdir()
    assert [p.name for p in kept_checkpoints(tmp_path, cfg)] == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
