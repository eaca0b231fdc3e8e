"""The app on a Hub id: from the local Hugging Face cache offline, a one-line message when it is not there, and
the Space folder (app/space.py) that runs the app on a published model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from streamlit.testing.v1 import AppTest

from app import models
from app.models import model_choices, model_label, resolve_model
from app.space import ENTRY, PACKAGES, REQUIREMENTS
from app.space import main as space_main
from stagekit.config import REPO_ROOT
from stagekit.errors import UserError


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own (the layout huggingface_hub writes: models--o--n/...)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    models._snapshot.cache_clear()
    yield cache
    models._snapshot.cache_clear()


def cache_model(cache: Path, repo: str, folder: Path) -> Path:
    """Put `folder` into `cache` as the snapshot of `repo` at main, as a download would leave it."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    return snapshot


def test_offline_a_hub_id_not_in_the_cache_is_one_line_within_seconds(hub_cache, app_env):
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        model_choices(["--model", "me/tiny-encoder"])
    message = str(err.value)
    assert "\n" not in message and "'me/tiny-encoder'" in message and "unreachable" in message
    assert "outputs/siamese-cpu-small/model" in message  # the local alternative
    assert time.monotonic() - started < 10


def test_offline_a_cached_hub_model_is_shown_under_its_id(hub_cache, tiny_model_dir, app_env):
    snapshot = cache_model(hub_cache, "me/tiny-encoder", tiny_model_dir)
    assert resolve_model("me/tiny-encoder") == snapshot
    choices = model_choices([], {"APP_MODEL_DIR": "me/tiny-encoder", "APP_OUTPUTS_DIR": str(app_env)})
    assert choices[0] == snapshot and model_label(choices[0], app_env) == "me/tiny-encoder (Hub)"
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir  # a folder stays a folder


def test_the_app_says_so_in_one_line_when_a_hub_model_cannot_be_had(hub_cache, app_env, monkeypatch, repo_root):
    monkeypatch.setenv("APP_MODEL_DIR", "me/tiny-encoder")
    at = AppTest.from_file(str(repo_root / "app" / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    (error,) = at.error
    assert "me/tiny-encoder" in error.value and "unreachable" in error.value and len(error.value.splitlines()) == 1


@pytest.fixture
def space(tmp_path):
    return space_main(["--model", "me/tiny-encoder", "--out", str(tmp_path / "space")])


def test_the_space_folder_holds_a_streamlit_space(space):
    readme = (space / "README.md").read_text()
    assert "sdk: streamlit" in readme and f"app_file: {ENTRY}" in readme and "- me/tiny-encoder" in readme
    import streamlit

    assert f"sdk_version: {streamlit.__version__}" in readme
    assert 'os.environ.setdefault("APP_MODEL_DIR", "me/tiny-encoder")' in (space / ENTRY).read_text()
    # the packages the app imports are all there: they import from the Space folder alone
    imports = "import app.models, app.predict, app.search, app.batch, app.examples, siamese.evaluate"
    done = subprocess.run([sys.executable, "-c", f"{imports}; import app; print(app.__file__)"], cwd=space,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(space.resolve())
    assert sorted(p.name for p in space.iterdir()) == sorted([*PACKAGES, ENTRY, "README.md", "requirements.txt"])


def test_the_space_entry_runs_the_app(space, tiny_model_dir, app_env, monkeypatch):
    monkeypatch.setenv("APP_MODEL_DIR", str(tiny_model_dir))  # a Space variable overrides the model it names
    at = AppTest.from_file(str(space / ENTRY), default_timeout=60).run()
    assert not at.exception and not at.error
    assert any(m.label == "MNLI dev matched accuracy" for m in at.metric)


def test_the_spaces_requirements_keep_the_projects_bounds():
    ours = {line.split(">=")[0].split("<")[0]: line for line in REQUIREMENTS.splitlines() if line[:1].isalpha()}
    project = {line.split(">=")[0].split("<")[0]: line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
               if line[:1].isalpha()}  # fmt: skip
    assert ours and all(project[name] == line for name, line in ours.items())


def test_a_space_needs_a_hub_model_and_a_new_folder(tmp_path, capsys):
    from stagekit.cli import run_cli

    assert run_cli(space_main, ["--model", "outputs/x/model", "--out", str(tmp_path / "s")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    assert run_cli(space_main, ["--model", "me/x", "--out", str(tmp_path / "full")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "stagekit.push" in lines[0] and "not empty" in lines[1]
