"""The ONNX export (siamese/inference/export.py) and the ONNX backend of NLIEncoder (siamese/inference/onnx_backend.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from siamese.inference.encoder import HEAD_FILE, NLIEncoder
from siamese.inference.export import EXPORT_FILE, main
from siamese.inference.onnx_backend import ONNX_FILES, OnnxTransformerModel
from siamese.inference.onnx_check import CHECK_SENTENCES, agreement
from siamese.inference.postprocess import cosine_rows
from stagekit.cli import run_cli
from stagekit.errors import UserError


@pytest.fixture(scope="module")
def torch_encoder(tiny_whitened_dir: Path) -> NLIEncoder:
    return NLIEncoder.load(tiny_whitened_dir, device="cpu")


def test_the_export_is_the_model_folder_plus_both_onnx_files(tiny_whitened_dir, tiny_exported_dir):
    for name in ("modules.json", HEAD_FILE, "postprocessing.json", "report.json", "2_Dense/config.json"):
        assert (tiny_exported_dir / name).is_file(), name
    summary = json.loads((tiny_exported_dir / EXPORT_FILE).read_text())
    assert set(summary["variants"]) == {"onnx", "onnx-int8"}
    for backend, variant in summary["variants"].items():
        assert variant["bytes"] == (tiny_exported_dir / ONNX_FILES[backend]).stat().st_size > 0
    assert summary["variants"]["onnx-int8"]["bytes"] < summary["variants"]["onnx"]["bytes"]
    assert not (tiny_whitened_dir / "onnx").exists()  # the source folder is left as it was


@pytest.mark.parametrize(
    ("backend", "least_cosine", "probs_tolerance"), [("onnx", 0.999, 1e-4), ("onnx-int8", 0.99, 0.05)]
)
def test_each_variant_agrees_with_torch_on_embeddings_and_head(
    torch_encoder, tiny_exported_dir, backend, least_cosine, probs_tolerance
):
    onnx = NLIEncoder.load(tiny_exported_dir, backend=backend)
    assert isinstance(onnx.model[0].model, OnnxTransformerModel) and onnx.backend == backend
    figures = agreement(torch_encoder, onnx, CHECK_SENTENCES)
    assert figures["cosine_min"] >= least_cosine and figures["core_cosine_min"] >= least_cosine
    assert figures["probs_max_abs_diff"] <= probs_tolerance
    recorded = json.loads((tiny_exported_dir / EXPORT_FILE).read_text())["variants"][backend]
    assert recorded["cosine_min"] == pytest.approx(figures["cosine_min"], abs=1e-6)


def test_post_processing_stays_a_torch_module_after_the_onnx_transformer(torch_encoder, tiny_exported_dir):
    onnx = NLIEncoder.load(tiny_exported_dir, backend="onnx")
    assert onnx.postprocessing == 1 and type(onnx.model[-1]).__name__ == "Dense"
    texts = list(CHECK_SENTENCES[:4])
    core, full = onnx.embed_core(texts).numpy(), onnx.embed(texts).numpy()
    assert core.shape[1] == full.shape[1] and np.abs(core - full).max() > 0.1  # the whitening ran
    assert cosine_rows(full, torch_encoder.embed(texts).numpy()).min() >= 0.999


def test_a_pair_batch_gives_the_same_prediction_as_torch(torch_encoder, tiny_exported_dir):
    onnx = NLIEncoder.load(tiny_exported_dir, backend="onnx")
    premises, hypotheses = ["A man eats.", "The cat sleeps on the sofa."], ["Someone eats.", "A dog barks."]
    a, b = torch_encoder.predict(premises, hypotheses), onnx.predict(premises, hypotheses)
    assert a.predicted == b.predicted
    np.testing.assert_allclose(a.cosine, b.cosine, atol=1e-4)
    assert list(a.truncated) == list(b.truncated)


def test_a_folder_without_the_onnx_file_says_how_to_export(tiny_model_dir):
    with pytest.raises(UserError, match="python -m siamese.inference.export"):
        NLIEncoder.load(tiny_model_dir, backend="onnx-int8")


def test_an_unknown_backend_names_the_choices(tiny_exported_dir):
    with pytest.raises(UserError, match="torch, onnx, onnx-int8"):
        NLIEncoder.load(tiny_exported_dir, backend="openvino")


def test_a_damaged_onnx_file_is_one_line_error(tiny_exported_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_exported_dir, copy)
    (copy / ONNX_FILES["onnx"]).write_bytes(b"not a model")
    with pytest.raises(UserError, match="could not be loaded by ONNX Runtime"):
        NLIEncoder.load(copy, backend="onnx")


def test_an_export_that_disagrees_with_torch_is_refused_and_writes_nothing(
    tiny_whitened_dir, tmp_path, monkeypatch, capsys
):
    import siamese.inference.export

    def bad(reference, candidate, sentences):
        return {"cosine_min": 0.5, "cosine_mean": 0.7, "core_cosine_min": 0.5}

    monkeypatch.setattr(siamese.inference.export, "agreement", bad)
    out = tmp_path / "exported"
    assert run_cli(main, ["--model", str(tiny_whitened_dir), "--out", str(out), "--no-int8"]) == 2
    assert "disagrees with torch" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("inside", ["", "export"])
def test_the_command_refuses_to_export_over_or_into_its_source(tiny_whitened_dir, capsys, inside):
    assert run_cli(main, ["--model", str(tiny_whitened_dir), "--out", str(tiny_whitened_dir / inside)]) == 2
    assert "--out must be outside --model" in capsys.readouterr().err
    assert not (tiny_whitened_dir / "export").exists()


def test_evaluation_runs_on_the_int8_export(tiny_exported_dir, tmp_path):
    from siamese.evaluation.evaluate import main as evaluate

    report = evaluate(["--model", str(tiny_exported_dir), "backend=onnx-int8", "limit=8", f"out={tmp_path}",
                       "base_stsb=false", "baseline=null"])  # fmt: skip
    assert report["backend"] == "onnx-int8"
    assert report["mnli_validation_matched"]["n"] == 8 and report["stsb_test"]["spearman"] is not None
    assert "Backend: onnx-int8" in (tmp_path / "report.md").read_text()


def test_the_benchmark_measures_every_backend_of_an_exported_model(tiny_exported_dir, capsys):
    from bench.onnx_latency import main as bench

    (result,) = bench(["--model", str(tiny_exported_dir), "--limit", "80", "--sentences", "64", "--pairs", "10"])
    assert result["export_s"] is None  # already exported: used as it is
    rows = {row["backend"]: row for row in result["backends"]}
    assert list(rows) == ["torch", "onnx", "onnx-int8"]
    assert rows["onnx-int8"]["mb"] < rows["onnx"]["mb"] and rows["torch"]["cosine_min"] == 1.0
    assert rows["onnx"]["cosine_min"] >= 0.999
    for row in rows.values():
        assert row["sentences_per_s"] > 0 and row["pair_median_ms"] > 0 and 0 <= row["mnli_validation_matched"] <= 1
    assert abs(rows["onnx"]["stsb_test"] - rows["torch"]["stsb_test"]) < 1e-3
    out = capsys.readouterr().out
    assert out.count(f"| {tiny_exported_dir} |") == 3 and "× torch's sentences/s" in out


def test_a_truncated_export_gives_the_first_dimensions_and_the_head_reads_them_all(
    torch_encoder, tiny_whitened_dir, tmp_path
):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "narrow"
    main(["--model", str(tiny_whitened_dir), "--out", str(out), "--no-int8", "--truncate-dim", "16"])
    texts = list(CHECK_SENTENCES[:6])
    full = torch_encoder.embed(texts).numpy()
    plain = SentenceTransformer(str(out), device="cpu").encode(texts)  # no code of ours: a saved module truncates
    assert plain.shape == (6, 16) and np.allclose(plain, full[:, :16], atol=1e-5)
    decision = json.loads((out / "postprocessing.json").read_text())
    assert decision["truncate_dim"] == 16 and decision["modules"] == 2  # the whitening and the truncation
    assert json.loads((out / EXPORT_FILE).read_text())["dims"] == 16
    premises, hypotheses = texts[:-1], texts[1:]
    for backend in ("torch", "onnx"):
        narrow = NLIEncoder.load(out, backend=backend)
        assert narrow.embed(texts).shape == (6, 16) and narrow.embed_core(texts).shape == (6, 64)
        a, b = torch_encoder.predict(premises, hypotheses), narrow.predict(premises, hypotheses)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)  # the head: full width, unchanged
        expected = cosine_rows(full[:-1, :16], full[1:, :16])
        np.testing.assert_allclose(b.cosine, expected, atol=1e-4)  # the cosine: the first 16 dimensions
    with pytest.raises(UserError, match="truncate_dim=65: the model's embeddings have 64 dimensions"):
        main(["--model", str(tiny_whitened_dir), "--out", str(tmp_path / "wide"), "--truncate-dim", "65"])
    assert not (tmp_path / "wide").exists()
