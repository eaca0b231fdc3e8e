"""The app tests' views of the tiny trained siamese model (tests/conftest.py builds it once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from siamese.inference.encoder import HEAD_FILE, LABELS_FILE, NLIEncoder

APP = "app/streamlit_app.py"


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir: Path) -> NLIEncoder:
    return NLIEncoder.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def headless_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a plain SentenceTransformer folder: no NLI head, no run_info/report."""
    target = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(tiny_model_dir, target)
    for name in (HEAD_FILE, LABELS_FILE, "run_info.json", "report.json"):
        (target / name).unlink()
    return target


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tiny_outputs: Path) -> Path:
    """Point the app at the tiny outputs folder and forget any model the caller's shell names."""
    monkeypatch.setenv("APP_OUTPUTS_DIR", str(tiny_outputs))
    for name in ("APP_MODEL_DIR", "APP_EXAMPLES", "APP_MAX_UPLOAD_MB", "APP_MAX_ROWS"):
        monkeypatch.delenv(name, raising=False)
    return tiny_outputs


@pytest.fixture
def app(app_env: Path, repo_root: Path):
    """The app on the tiny model, after its first run (streamlit.testing.v1.AppTest: same process, no browser)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(repo_root / APP), default_timeout=60).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="package", autouse=True)  # restored when tests/app ends, not at session end
def _one_torch_thread():
    """Batch-1 inference of a tiny model gains nothing from threads, and on a busy 2-core machine
    OpenMP's spinning threads make it many times slower; restore the setting for other test folders."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
