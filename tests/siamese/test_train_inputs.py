"""Run-level checks of what a training run is given: counts of each row once, impossible values refused early."""

from __future__ import annotations

import json

import pytest
import torch

from siamese.__main__ import main
from stagekit.cli import run_cli

pytestmark = pytest.mark.slow


def run_args(repo_root, base, out, *extra: str) -> list[str]:
    return [
        "--config", str(repo_root / "configs" / "siamese" / "debug.yaml"),
        f"model.base_model={base}", f"output_dir={out}", "data.eval_pairs=0", "model.max_seq_length=32", *extra,
    ]  # fmt: skip


# the first-row preview re-read the lazy stream, and every row was counted twice.
def test_one_pass_over_a_file_counts_each_row_once(repo_root, tiny_bert, tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"premise": f"A person number {i} walks.", "hypothesis": f"Someone {i} moves.", "label": "-" if i % 8 == 3 else i % 3}
        for i in range(64)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    source = f"data.train_sources=[{{path: {path}}}]"
    one_pass = (
        "data.max_train_pairs=null",
        "train.per_device_train_batch_size=8",
        "train.max_steps=7",
        "train.save_steps=7",
    )
    model_dir = main(
        run_args(repo_root, tiny_bert, tmp_path, source, *one_pass)
    ).model_dir  # 56 labelled pairs = 7 steps of 8
    # a file in the output folder is named relative to the run folder
    counts = json.loads((model_dir / "run_info.json").read_text())["data_counts"]["../pairs.jsonl"]
    assert counts == {"seen": 64, "kept": 56, "dropped_no_label": 8, "dropped_empty_text": 0}


# refused before any training, in one line naming the key and the model's limit.
def test_max_seq_length_past_the_base_models_positions_is_refused_before_training(
    repo_root, short_bert, tmp_path, capsys
):
    argv = run_args(repo_root, short_bert, tmp_path, "model.max_seq_length=64")
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "model.max_seq_length=64" in err and "32 position" in err
    assert not (tmp_path / "siamese-debug" / "checkpoints").exists()


def first_batches(cfg, workers: int, count: int) -> list[dict]:
    """The first `count` collated training batches the trainer's dataloader gives with `workers` workers."""
    import dataclasses

    from siamese.nli_data import RowCounts, train_stream
    from siamese.train import siamese_trainer

    cfg = dataclasses.replace(cfg, impl=dataclasses.replace(cfg.impl, dataloader_num_workers=workers))
    stream = train_stream(
        cfg.data, cfg.train.per_device_train_batch_size, cfg.impl.length_bucket_batches, cfg.train.seed, RowCounts()
    )
    loader = siamese_trainer(cfg, stream, None, None, []).get_train_dataloader()
    batches = []
    for batch in loader:
        batches.append({k: v.tolist() if hasattr(v, "tolist") else v for k, v in batch.items()})
        if len(batches) == count:
            return batches
    return batches


# impl.dataloader_num_workers, a speed-only setting, changed which pairs were trained on: datasets re-seeds
# the shuffle buffer inside each worker (80 of 512 pairs of a pass differed) and gives each worker its own files.
@pytest.mark.parametrize("files", [1, 2])
def test_dataloader_workers_do_not_change_the_training_pairs(repo_root, tiny_bert, tmp_path, data_dir, files):
    import gzip

    from siamese.config import SiameseConfig
    from stagekit.config import load_config

    with gzip.open(data_dir / "mnli" / "train.jsonl.gz", "rt", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(400)]
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(files):
        (folder / f"part-{i}.jsonl").write_text("".join(lines[i::files]), encoding="utf-8")
    overrides = [
        f"model.base_model={tiny_bert}", f"output_dir={tmp_path}", "model.max_seq_length=32", "data.eval_pairs=0",
        f"data.train_sources=[{{path: {folder}}}]", "data.shuffle_buffer=64",
        "data.max_train_pairs=null",
    ]  # fmt: skip
    cfg = load_config(SiameseConfig, repo_root / "configs" / "siamese" / "debug.yaml", overrides)
    in_process = first_batches(cfg, 0, 12)
    assert len(in_process) == 12
    assert first_batches(cfg, 2, 12) == in_process


# Two training sources (mixing by weight) crashed before training: interleaving the streams deep-copies
# their cleaning maps, and the row counters inside them (shared memory) cannot be copied.
@pytest.mark.parametrize("workers", [0, 1])
def test_two_training_sources_train_and_count_their_rows_apart(repo_root, tiny_bert, tmp_path, workers):
    glue = tmp_path / "glue.jsonl"  # Hub GLUE columns, a label as a name or "-"
    glue_rows = [
        {"premise": f"A person number {i} walks.", "hypothesis": f"Someone {i} moves.", "label": "-" if i % 8 == 3 else i % 3}
        for i in range(40)
    ]  # fmt: skip
    glue.write_text("".join(json.dumps(row) + "\n" for row in glue_rows), encoding="utf-8")
    sick = tmp_path / "sick.jsonl"  # other column names, one row without text
    sick_rows = [
        {"sentence1": f"A dog number {i} runs." if i != 5 else " ", "sentence2": f"An animal {i} moves.", "gold_label": i % 3}
        for i in range(22)
    ]  # fmt: skip
    sick.write_text("".join(json.dumps(row) + "\n" for row in sick_rows), encoding="utf-8")
    sources = (
        f"data.train_sources=[{{path: {glue}, config_name: null, weight: 2.0}}, "
        f"{{path: {sick}, config_name: null, weight: 1.0}}]"
    )
    one_pass = (
        "data.max_train_pairs=null",
        "train.per_device_train_batch_size=8",
        "train.max_steps=7",  # 35 + 21 labelled pairs with text: 7 whole batches of 8
        "train.save_steps=7",
        f"impl.dataloader_num_workers={workers}",
    )
    model_dir = main(run_args(repo_root, tiny_bert, tmp_path, sources, *one_pass)).model_dir
    counts = json.loads((model_dir / "run_info.json").read_text())["data_counts"]
    assert counts["../glue.jsonl"] == {"seen": 40, "kept": 35, "dropped_no_label": 5, "dropped_empty_text": 0}
    assert counts["../sick.jsonl"] == {"seen": 22, "kept": 21, "dropped_no_label": 0, "dropped_empty_text": 1}


def pairs_per_step(repo_root, tiny_bert, out, monkeypatch, *split: str) -> tuple[dict[int, list], dict]:
    """The pairs each optimizer step trained on (sorted token ids of both columns and the label, per pair) and
    the final encoder and head weights, of a debug run with per-device batch × accumulation `split`."""
    from siamese.trainer import SiameseTrainer

    steps: dict[int, list] = {}
    compute_loss = SiameseTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if torch.is_grad_enabled():  # training micro-batches, not the eval loss
            columns = [(inputs[f"{c}_input_ids"], inputs[f"{c}_attention_mask"]) for c in ("premise", "hypothesis")]
            for row, label in enumerate(inputs["label"].tolist()):
                pair = tuple(tuple(ids[row][mask[row].bool()].tolist()) for ids, mask in columns)
                steps.setdefault(self.state.global_step, []).append((pair, label))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SiameseTrainer, "compute_loss", spy)
    no_dropout = ("model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0")
    trainer = main(run_args(repo_root, tiny_bert, out, "train.max_steps=4", *no_dropout, *split)).trainer
    weights = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    weights |= {f"head.{k}": v.clone() for k, v in trainer.classifier.state_dict().items()}
    return {step: sorted(pairs) for step, pairs in steps.items()}, weights


# With length bucketing (every shipped config) buckets were cut at the per-device batch: 8 × 1 and 4 × 2 trained
# other pairs in each step (eval loss 1.175 vs 1.134 after the same steps).
def test_per_device_batch_times_accumulation_trains_the_same_pairs_in_each_step(
    repo_root, tiny_bert, tmp_path, monkeypatch
):
    whole, whole_weights = pairs_per_step(
        repo_root, tiny_bert, tmp_path / "8x1", monkeypatch, "train.per_device_train_batch_size=8"
    )
    split, split_weights = pairs_per_step(
        repo_root, tiny_bert, tmp_path / "4x2", monkeypatch,
        "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2",
    )  # fmt: skip
    assert sorted(whole) == [0, 1, 2, 3] and all(len(pairs) == 8 for pairs in whole.values())
    assert split == whole
    assert whole_weights.keys() == split_weights.keys()
    for name, tensor in whole_weights.items():  # the mean over 8 pairs = the mean of two means over 4, up to float
        torch.testing.assert_close(split_weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def write_pairs(path, rows) -> str:
    path.write_text(
        "".join(json.dumps(dict(zip(("premise", "hypothesis", "label"), r, strict=True))) + "\n" for r in rows)
    )
    return f"data.train_sources=[{{path: {path}}}]"


def given_pairs(path, rows) -> tuple[str, str]:
    """Overrides that train on exactly `rows`, none held out for validation."""
    return write_pairs(path, rows), "data.validation_fraction=null"


# entailment-only data trained for exit 0, and the model answered entailment to every pair.
@pytest.mark.parametrize("loss", ["softmax", "both"])
def test_training_data_of_one_class_are_refused_for_a_classifier(repo_root, tiny_bert, tmp_path, capsys, loss):
    rows = [(f"A person number {i} walks.", f"Someone {i} moves.", 0) for i in range(40)]
    argv = run_args(repo_root, tiny_bert, tmp_path, *given_pairs(tmp_path / "e.jsonl", rows), f"loss.name={loss}")
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: training data (") and "\n" not in err
    assert "one class in its first 40 pairs (entailment 40)" in err and f"loss.name={loss}" in err
    assert not (tmp_path / "siamese-debug" / "checkpoints").exists()


# mnrl said "no labelled pairs" of labelled pairs: what it lacks is a premise with both kinds of hypothesis.
@pytest.mark.parametrize(
    ("labels", "same_premise", "expected"),
    [((0, 1), True, "no contradiction pair in its first 40 pairs (entailment 20, neutral 20)"),
     ((0, 2), False, "no premise with both an entailment and a contradiction hypothesis")],
)  # fmt: skip
def test_mnrl_says_what_its_triplets_lack(repo_root, tiny_bert, tmp_path, capsys, labels, same_premise, expected):
    rows = [
        (f"A person number {i // 2 if same_premise else i} walks.", f"Someone {i} moves.", labels[i % 2])
        for i in range(40)
    ]
    argv = run_args(repo_root, tiny_bert, tmp_path, *given_pairs(tmp_path / "p.jsonl", rows), "loss.name=mnrl")
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: training data (") and expected in err and "no labelled pairs" not in err
    assert not (tmp_path / "siamese-debug" / "checkpoints").exists()


def test_training_logs_the_classes_it_saw(repo_root, tiny_bert, tmp_path, caplog):
    rows = [(f"A person number {i} walks.", f"Someone {i} moves.", i % 3) for i in range(30)]
    argv = run_args(repo_root, tiny_bert, tmp_path, *given_pairs(tmp_path / "m.jsonl", rows), "train.max_steps=1")
    with caplog.at_level("INFO"):
        main(argv)
    assert any(
        "classes in its first 30 pairs: entailment 10, neutral 10, contradiction 10" in r.message
        for r in caplog.records
    )
