"""The app on an exported model (siamese/inference/export.py): `--backend` / $APP_BACKEND, and the model card says it."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app.models import requested_backend
from siamese.inference.encoder import LABELS
from tests.app.test_streamlit_app import APP, metrics, submit


def test_the_backend_comes_from_the_command_line_then_the_environment():
    assert requested_backend([]) == "torch"
    assert requested_backend([], {"APP_BACKEND": "onnx"}) == "onnx"
    assert requested_backend(["--model", "x", "--backend", "onnx-int8"], {"APP_BACKEND": "onnx"}) == "onnx-int8"


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_the_app_runs_the_exported_model_and_says_which_backend(
    app_env, monkeypatch, tiny_exported_dir, repo_root, backend
):
    monkeypatch.setenv("APP_MODEL_DIR", str(tiny_exported_dir))
    monkeypatch.setenv("APP_BACKEND", backend)
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    assert not at.exception, at.exception
    assert any(t.value.startswith(f"backend: {backend} (ONNX Runtime") for t in at.sidebar.text)
    submit(at, "A man is playing a guitar on stage.", "A man is performing music.")
    assert not at.exception and metrics(at)["Predicted label"] in LABELS


def test_a_model_that_was_never_exported_is_one_line_error(app_env, monkeypatch, tiny_model_dir, repo_root):
    monkeypatch.setenv("APP_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("APP_BACKEND", "onnx")
    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    assert not at.exception and "python -m siamese.inference.export" in at.error[0].value


def test_bert_app_passes_the_backend_to_streamlit(monkeypatch):
    import subprocess

    from app import launch

    seen = {}

    def run(command, check):
        seen["command"] = command
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(launch.subprocess, "run", run)
    assert launch.launch(None, 8600, "onnx-int8") == 0
    assert seen["command"][-3:] == ["--", "--backend", "onnx-int8"]
