"""The app on a Hub id: from the local Hugging Face cache offline, a one-line message when it is not there, and
the Space folder (app/space.py) that runs the app on a published model."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from streamlit.testing.v1 import AppTest

from app import models
from app.examples import EXAMPLES_ENV
from app.models import model_choices, model_label, resolve_model
from app.search import SENTENCES_ENV
from app.space import DATA, ENTRY, EXAMPLES_FILE, PACKAGES, REQUIREMENTS, SEARCH_SENTENCES, SENTENCES_FILE
from app.space import main as space_main
from stagekit import push
from stagekit.config import REPO_ROOT
from stagekit.errors import UserError
from tests.stagekit.test_push import RecordingApi


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
def space(tmp_path, monkeypatch):
    for name in (EXAMPLES_ENV, SENTENCES_ENV):  # unset, and restored after the test: the entry sets them
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return space_main(["--model", "me/tiny-encoder", "--out", str(tmp_path / "space")])


def test_the_space_folder_holds_a_streamlit_space(space):
    readme = (space / "README.md").read_text()
    assert "sdk: streamlit" in readme and f"app_file: {ENTRY}" in readme and "- me/tiny-encoder" in readme
    import streamlit

    assert f"sdk_version: {streamlit.__version__}" in readme
    assert 'os.environ.setdefault("APP_MODEL_DIR", "me/tiny-encoder")' in (space / ENTRY).read_text()
    # the packages the app imports are all there: they import from the Space folder alone
    imports = "import app.models, app.predict, app.search, app.batch, app.examples, siamese.evaluation.evaluate"
    done = subprocess.run([sys.executable, "-c", f"{imports}; import app; print(app.__file__)"], cwd=space,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(space.resolve())
    assert sorted(p.name for p in space.iterdir()) == sorted([*PACKAGES, ENTRY, "README.md", "requirements.txt", DATA])


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


def test_the_space_carries_its_examples_and_search_sentences(space, data_dir):
    rows = [json.loads(line) for line in (space / EXAMPLES_FILE).read_text().splitlines()]
    assert len(rows) == 200 and all(row["label"] in (0, 1, 2, -1) and row["premise"] for row in rows)
    sentences = (space / SENTENCES_FILE).read_text().splitlines()
    assert 0 < len(sentences) <= SEARCH_SENTENCES and len(set(sentences)) == len(sentences)
    readme = (space / DATA / "README.md").read_text()
    assert "`mnli/validation_matched.jsonl.gz`" in readme and "nyu-mll/glue" in readme  # the source, by name
    assert str(data_dir) not in readme  # no machine paths


def test_the_space_runs_its_tabs_without_a_data_folder(space, tiny_model_dir, app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("BERT_DATA_DIR", str(tmp_path / "no-data-here"))  # as on a Space
    monkeypatch.setenv("APP_MODEL_DIR", str(tiny_model_dir))
    at = AppTest.from_file(str(space / ENTRY), default_timeout=60).run()
    assert not at.exception and not at.error and not at.warning, [e.value for e in at.error]
    (picker,) = [s for s in at.selectbox if s.label.startswith("Load an example pair")]
    assert len(picker.options) == 200
    count = len((space / SENTENCES_FILE).read_text().splitlines())
    assert any(c.value.startswith(f"{count:,} sentences") for c in at.caption)  # the search tab's own set


def test_a_failed_space_push_is_retried_by_the_same_command_or_the_advised_one(tmp_path, monkeypatch, capsys):
    from stagekit.cli import run_cli

    monkeypatch.setattr(push, "hub_reachable", lambda: False)
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_secret")
    monkeypatch.delenv(EXAMPLES_ENV, raising=False)
    argv = ["--model", "me/tiny-encoder", "--out", str(tmp_path / "space"), "--push", "me/demo", "--private",
            "--token-env", "MY_HUB_TOKEN"]  # fmt: skip
    assert run_cli(space_main, argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    advice = shlex.split(line.rsplit(" with ", 1)[1])
    assert advice[:3] == ["python", "-m", "stagekit.push"]

    RecordingApi.calls = []
    monkeypatch.setattr(push, "HfApi", RecordingApi)
    monkeypatch.setattr(push, "hub_reachable", lambda: True)
    push.main(advice[3:])  # the advised command, online
    assert run_cli(space_main, argv) == 0  # the same command again, online: the folder it wrote is written again
    calls = RecordingApi.calls
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"] * 2
    for name, call in calls:
        assert call["repo_id"] == "me/demo" and call["repo_type"] == "space"
        if name == "create_repo":
            assert call["private"] is True and call["token"] == "hf_secret" and call["space_sdk"] == "streamlit"
        else:
            assert ENTRY in call["files"] and EXAMPLES_FILE in call["files"]


def test_a_space_needs_a_hub_model_and_a_new_folder(tmp_path, capsys):
    from stagekit.cli import run_cli

    assert run_cli(space_main, ["--model", "outputs/x/model", "--out", str(tmp_path / "s")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    assert run_cli(space_main, ["--model", "me/x", "--out", str(tmp_path / "full")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "stagekit.push" in lines[0] and "not empty" in lines[1]


def test_the_search_sentences_file_is_read_or_refused_in_one_line(tmp_path):
    from app.search import default_sentences

    path = tmp_path / "sentences.txt"
    path.write_text("A man plays.\n\nA man plays.\nA dog runs.\n")
    assert default_sentences({SENTENCES_ENV: str(path)}) == ["A man plays.", "A dog runs."]
    with pytest.raises(UserError, match=f"^{SENTENCES_ENV}=.*missing.txt: cannot be read") as err:
        default_sentences({SENTENCES_ENV: str(tmp_path / "missing.txt")})
    assert "\n" not in str(err.value)


def test_a_space_without_example_pairs_to_carry_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    from stagekit.cli import run_cli

    monkeypatch.setenv("BERT_DATA_DIR", str(tmp_path / "no-data-here"))
    monkeypatch.delenv(EXAMPLES_ENV, raising=False)
    assert run_cli(space_main, ["--model", "me/x", "--out", str(tmp_path / "space")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no example pairs for the Space" in line and "BERT_DATA_DIR" in line
    assert not (tmp_path / "space").exists()
