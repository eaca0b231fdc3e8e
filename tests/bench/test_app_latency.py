"""The latency benchmark runs end to end on the tiny model (figures are checked for shape, not speed)."""

from __future__ import annotations

import json

import pytest

from stagekit.errors import UserError


def test_latency_benchmark_reports_median_and_p95(tiny_model_dir, tmp_path, capsys):
    from bench.app_latency import main

    figures = main([str(tiny_model_dir), "--pairs", "50", "--warmup", "2", "--json", str(tmp_path / "f.json")])
    assert figures["pairs"] == 50 and figures["has_nli_head"]
    assert 0 < figures["median_ms"] <= figures["p95_ms"]
    assert json.loads((tmp_path / "f.json").read_text())["median_ms"] == figures["median_ms"]
    out = capsys.readouterr().out
    assert "median" in out and "p95" in out and "machine:" in out


def test_latency_benchmark_refuses_too_few_pairs_and_no_model(tmp_path, monkeypatch):
    from bench.app_latency import main

    with pytest.raises(UserError, match="at least 50"):
        main(["--pairs", "10"])
    monkeypatch.setenv("APP_OUTPUTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="no trained model"):
        main([])
