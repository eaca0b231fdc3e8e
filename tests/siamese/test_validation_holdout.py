"""The validation slice held out of the training sources (data.validation_fraction): never trained on, the same
split on every run, seed and process, and what checkpoints are chosen on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from siamese.config import DataConfig, SiameseConfig
from siamese.nli_data import RowCounts, first_pairs, held_out_pairs, premise_key, train_stream
from siamese.train import eval_data
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import ConfigError, DataError
from stagekit.sources import SourceConfig
from tests.siamese.test_nli_data import write_jsonl_gz

FRACTION = 0.06


def mnli(data_dir, **overrides) -> DataConfig:
    source = SourceConfig(path=str(data_dir / "mnli" / "train.jsonl.gz"), config_name=None)
    return DataConfig(train_sources=[source], validation_fraction=FRACTION, shuffle_buffer=1000, **overrides)


def streamed_premises(cfg: DataConfig, seed: int = 0) -> set[str]:
    stream = train_stream(cfg, batch_size=32, bucket_batches=4, seed=seed, counts=RowCounts())
    return {premise_key(row["premise"]) for row in stream}


def test_no_held_out_premise_is_ever_trained_on(data_dir):
    cfg = mnli(data_dir)
    validation = held_out_pairs(cfg, None)
    held = {premise_key(p) for p in validation["premise"]}
    trained = streamed_premises(cfg)
    assert held and trained and not held & trained
    # ~6 % of the 29,337 pairs, every hypothesis of a held-out premise with it
    assert 0.04 * 29_337 < len(validation["label"]) < 0.08 * 29_337
    warm_start = first_pairs(cfg, 4000, seed=0, shuffled=True)  # the NLI head's fitting pairs
    assert not held & {premise_key(p) for p in warm_start["premise"]}
    # without the holdout the same premises are trained on: the filter, not the data, keeps them apart
    off = DataConfig(train_sources=cfg.train_sources, shuffle_buffer=1)
    assert held <= streamed_premises(off)


def test_the_split_is_by_premise_so_copies_in_two_sources_share_a_side(tmp_path):
    # the same premise spelt with and without its periods and case (one source lost every "."), and its
    # three hypotheses: all on one side, whichever it is
    premises = [f"Dr. Hall met {i} people in the U.S. today" for i in range(200)]
    first = [{"premise": p, "hypothesis": f"h{j}", "label": j} for p in premises for j in range(3)]
    second = [{"premise": p.replace(".", "").upper(), "hypothesis": "x", "label": 0} for p in premises]
    sources = [
        SourceConfig(path=str(write_jsonl_gz(tmp_path / name, rows)), config_name=None)
        for name, rows in (("a.jsonl.gz", first), ("b.jsonl.gz", second))
    ]
    cfg = DataConfig(train_sources=sources, validation_fraction=0.2, shuffle_buffer=1)
    validation = held_out_pairs(cfg, None)
    held = {premise_key(p) for p in validation["premise"]}
    assert 20 < len(held) < 60 and len(validation["label"]) == 4 * len(held)
    assert not held & streamed_premises(cfg)


SPLIT_SCRIPT = """
import json, sys
from siamese.nli_data import held_out_pairs
from siamese.config import DataConfig
from stagekit.sources import SourceConfig
cfg = DataConfig(train_sources=[SourceConfig(path=sys.argv[1], config_name=None)], validation_fraction=0.06)
print(json.dumps(held_out_pairs(cfg, 300)["premise"]))
"""


def test_the_split_is_the_same_in_every_process_and_for_every_seed(data_dir):
    cfg = mnli(data_dir)
    here = held_out_pairs(cfg, 300)["premise"]
    path = cfg.train_sources[0].path
    runs = []
    for hash_seed in ("1", "2"):  # Python's own str hash differs between these processes
        env = os.environ | {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", SPLIT_SCRIPT, path], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1] == here
    # the training order follows train.seed; what is held out does not
    assert streamed_premises(cfg, seed=1) == streamed_premises(cfg, seed=2)


def test_the_stage_scores_checkpoints_on_the_held_out_slice(data_dir):
    cfg = load_config(
        SiameseConfig, None, [f"data.train_sources=[{data_dir}/mnli/train.jsonl.gz]", f"data.validation_fraction={FRACTION}",
                              "data.eval_pairs=200", "data.eval_sources=[nyu-mll/glue]"],
    )  # fmt: skip  # an eval source that would fail offline: it is not read
    pairs, eval_set = eval_data(cfg, RowCounts())
    assert pairs == held_out_pairs(cfg.data, 200) and len(eval_set) == 200


def test_a_slice_too_small_to_hold_a_pair_says_so(tmp_path):
    path = write_jsonl_gz(tmp_path / "one.jsonl.gz", [{"premise": "A man sleeps.", "hypothesis": "A b.", "label": 0}])
    cfg = DataConfig(train_sources=[SourceConfig(path=str(path), config_name=None)], validation_fraction=1e-9)
    with pytest.raises(DataError, match=r"no pair held out by data\.validation_fraction=1e-09; raise it") as err:
        held_out_pairs(cfg, None)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (["data.validation_fraction=0.7"], "data.validation_fraction", "must be in [0, 0.5]"),
        (["train.select_metric=f1"], "train.select_metric", "f1"),
        (["loss.name=mnrl", "train.select_best=true", "train.select_metric=accuracy"], "train.select_metric",
         "loss.name=mnrl trains none"),
    ],
)  # fmt: skip
def test_bad_holdout_and_selection_values_name_the_key(overrides, key, says):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(SiameseConfig, None, overrides)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_cpu_small_recipe_chooses_on_an_in_domain_held_out_slice_by_loss():
    cfg = load_config(SiameseConfig, REPO_ROOT / "configs" / "siamese" / "cpu-small.yaml")
    assert cfg.data.validation_fraction and cfg.train.select_best and cfg.train.select_metric == "loss"
    assert cfg.data.eval_pairs >= 1500  # accuracy's standard error ~1.2 points, not 2.2 at 500 pairs


@pytest.mark.slow
def test_a_run_chooses_by_validation_loss_and_its_card_records_the_held_out_slice(repo_root, tiny_bert, tmp_path):
    import yaml

    from siamese.__main__ import main as train
    from siamese.inference.card import write_model_card

    model_dir = train([
        "--config", str(repo_root / "configs" / "siamese" / "debug.yaml"), f"model.base_model={tiny_bert}",
        f"output_dir={tmp_path}", "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2", "data.eval_pairs=40",
        "model.max_seq_length=32", "impl.num_threads=1", "train.select_best=true",
    ]).model_dir  # fmt: skip
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["best_metric_name"] == "eval_validation_loss"
    state = json.loads(sorted((tmp_path / "siamese-debug" / "checkpoints").glob("checkpoint-*"))[-1].joinpath(
        "trainer_state.json").read_text())  # fmt: skip
    losses = {h["step"]: h["eval_validation_loss"] for h in state["log_history"] if "eval_validation_loss" in h}
    assert metrics["best_step"] == min(losses, key=losses.get)
    text = (model_dir / "README.md").read_text()
    assert "40 pairs of the local file `mnli/train.jsonl.gz`" in text
    assert "whose premise falls in a 0.06 share by a fixed hash (blake2b of the premise" in text
    assert "never trained on" in text and "chosen by its loss on the validation pairs" in text

    # the card's check of overlap with the reported sets follows the slice to the sources it was cut from
    full = {"mnli_validation_matched": {"accuracy": 0.5, "n": 9815}, "limit": None}
    (model_dir / "report.json").write_text(json.dumps(full))
    assert "among the pairs scored here" not in write_model_card(model_dir).read_text()
    resolved = yaml.safe_load((model_dir / "resolved_config.yaml").read_text())
    resolved["data"]["train_sources"] = [{"path": "${BERT_DATA_DIR}/mnli/validation_matched.jsonl.gz"}]
    (model_dir / "resolved_config.yaml").write_text(yaml.safe_dump(resolved))
    assert "which are among the pairs scored here" in write_model_card(model_dir).read_text()
