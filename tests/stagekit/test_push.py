"""Publishing on the Hub: offline the push command and a stage's --push-to-hub fail in one line within seconds,
naming the folder; online the folder goes up whole through create_repo + upload_folder (a recording HfApi here)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from stagekit import push
from stagekit.cli import run_cli
from stagekit.model_card import MODEL_ID_LINE

CARD = '---\nlibrary_name: sentence-transformers\n---\n# card\n\n```python\nmodel_id = "outputs/x/model"\n```\n'


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what upload_folder would send."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        sent = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))  # the library's own filter
        card = (root / "README.md").read_text() if (root / "README.md").is_file() else None
        self.calls.append(("upload_folder", {"repo_id": repo_id, "files": sent, "card": card, **kwargs}))


@pytest.fixture
def hub(monkeypatch):
    """An online Hub as the push code sees it: reachable, and HfApi recording instead of sending."""
    RecordingApi.calls = []
    monkeypatch.setattr(push, "HfApi", RecordingApi)
    monkeypatch.setattr(push, "hub_reachable", lambda: True)
    return RecordingApi.calls


@pytest.fixture
def folder(tmp_path):
    """A fine-tuned model folder's files (contents do not matter to the upload), plus what must stay behind."""
    model = tmp_path / "siamese-x" / "model"
    for name in ("modules.json", "config.json", "model.safetensors", "nli_head.safetensors", "nli_labels.json",
                 "postprocessing.json", "similarity_reference.json", "report.json", "2_Dense/config.json",
                 "wandb/offline-run-1/run.wandb"):  # fmt: skip
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text("{}")
    (model / "README.md").write_text(CARD)
    return model


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_offline_the_push_command_fails_in_seconds_in_one_line_naming_the_folder(folder, env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stagekit.push", str(folder), "me/model"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "unreachable" in line and str(folder) in line
    assert "python -m stagekit.push" in line
    assert time.monotonic() - started < 60  # seconds (interpreter start included), not a minute of retries
    assert (folder / "README.md").read_text() == CARD


def test_the_push_creates_the_repo_and_uploads_the_whole_folder(folder, hub, monkeypatch, capsys):
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_secret")
    url = push.main([str(folder), "me/tiny-encoder", "--private", "--token-env", "MY_HUB_TOKEN"])
    assert url == "https://huggingface.co/me/tiny-encoder" and capsys.readouterr().out.strip() == url
    (create, created), (upload, uploaded) = hub
    assert create == "create_repo" and created["repo_id"] == "me/tiny-encoder" and created["token"] == "hf_secret"
    assert created["private"] is True and created["exist_ok"] is True
    assert upload == "upload_folder" and uploaded["repo_id"] == "me/tiny-encoder"
    # the head, its labels and the post-processing travel with the SentenceTransformer; W&B's files do not
    for name in ("nli_head.safetensors", "nli_labels.json", "postprocessing.json", "similarity_reference.json",
                 "2_Dense/config.json", "README.md", "model.safetensors"):  # fmt: skip
        assert name in uploaded["files"], name
    assert not any(f.startswith("wandb/") for f in uploaded["files"])
    # the card sent (and kept) names the repo in its load snippet
    assert MODEL_ID_LINE.search(uploaded["card"]).group("id") == "me/tiny-encoder"
    assert 'model_id = "me/tiny-encoder"' in (folder / "README.md").read_text()


HTTP_ERROR = next(c for c in HfHubHTTPError.__mro__ if c.__name__ == "HTTPError")  # httpx's, or its successor's


def forbidden() -> Exception:
    http = sys.modules[HTTP_ERROR.__module__]
    response = http.Response(403, request=http.Request("POST", "https://huggingface.co/api/models/me/x/commit/main"))
    return HfHubHTTPError("403 Forbidden: you cannot write to me/tiny-encoder\nmore lines", response=response)


@pytest.mark.parametrize("error", [forbidden, lambda: HTTP_ERROR("Server disconnected without sending a response.")])
def test_a_failed_upload_is_one_line_and_leaves_the_card_as_it_was(folder, hub, monkeypatch, capsys, error):
    def fail(self, **kwargs):
        raise error()

    monkeypatch.setattr(RecordingApi, "upload_folder", fail)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert run_cli(push.main, [str(folder), "me/tiny-encoder"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(folder) in line and "me/tiny-encoder" in line
    assert (folder / "README.md").read_text() == CARD


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["not-there", "me/x"], "no such model folder"), (["FOLDER", "not a repo id!"], "not a Hub repository id"),
     (["FOLDER", "me/x", "--token-env", "NO_SUCH_VARIABLE"], "NO_SUCH_VARIABLE is not set")],
)  # fmt: skip
def test_bad_input_is_refused_in_one_line(folder, hub, argv, words, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    assert run_cli(push.main, [str(folder) if a == "FOLDER" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not [c for c in hub if c[0] == "upload_folder"]


def test_without_a_token_the_push_says_how_to_get_one(folder, hub, monkeypatch, capsys):
    monkeypatch.setattr(push, "get_token", lambda: None)
    assert run_cli(push.main, [str(folder), "me/x"]) == 2
    assert "hf auth login" in capsys.readouterr().err and not hub


@pytest.mark.parametrize("stage", ["pretrain", "siamese"])
def test_a_stage_with_push_to_hub_offline_is_refused_before_any_work(stage, repo_root, tmp_path, capsys):
    main = __import__(f"{stage}.__main__", fromlist=["main"]).main
    argv = ["--config", str(repo_root / "configs" / stage / "debug.yaml"), f"output_dir={tmp_path}",
            "--push-to-hub", "me/model"]  # fmt: skip
    assert run_cli(main, argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--push-to-hub me/model" in line and "unreachable" in line
    assert str(tmp_path / f"{stage}-debug" / "model") in line  # where the model goes without the flag
    assert not list(tmp_path.iterdir())  # refused before any work: no run folder


@pytest.mark.slow
def test_a_stage_pushes_its_model_folder_after_training(hub, repo_root, tmp_path, data_dir, monkeypatch):
    from pretrain.__main__ import main

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    main(["--config", str(repo_root / "configs" / "pretrain" / "debug.yaml"), f"output_dir={tmp_path}",
          f"data.cache_dir={tmp_path / 'cache'}", f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz", "data.max_documents=300",
          "train.max_steps=4", "impl.num_threads=1", "--push-to-hub", "me/tiny-bert", "--hub-private"])  # fmt: skip
    (_, created), (_, uploaded) = hub
    assert created["private"] is True and uploaded["repo_id"] == "me/tiny-bert"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "metrics.json"} <= set(uploaded["files"])
    assert 'model_id = "me/tiny-bert"' in uploaded["card"]
    assert json.loads((tmp_path / "pretrain-debug" / "model" / "metrics.json").read_text())["step"] == 4


def advised(line: str) -> list[str]:
    """The words of the push command a one-line refusal ends with ("… push it once online with COMMAND")."""
    words = shlex.split(line.rsplit(" with ", 1)[1])
    assert words[:3] == ["python", "-m", "stagekit.push"], line
    return words[3:]


@pytest.mark.parametrize(
    "options", [[], ["--private"], ["--token-env", "MY_HUB_TOKEN"], ["--private", "--token-env", "MY_HUB_TOKEN"]]
)
def test_the_retry_command_after_an_offline_refusal_keeps_every_option(folder, options, monkeypatch, capsys):
    monkeypatch.setattr(push, "hub_reachable", lambda: False)
    argv = [str(folder), "me/tiny-encoder", *options]
    assert run_cli(push.main, argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert push.parser().parse_args(advised(line)) == push.parser().parse_args(argv)


def test_a_stages_retry_command_keeps_hub_private(repo_root, tmp_path, capsys):
    from pretrain.__main__ import main

    argv = ["--config", str(repo_root / "configs" / "pretrain" / "debug.yaml"), f"output_dir={tmp_path}",
            "--push-to-hub", "me/model", "--hub-private"]  # fmt: skip
    assert run_cli(main, argv) == 2  # offline: refused before training
    (line,) = capsys.readouterr().err.strip().splitlines()
    args = push.parser().parse_args(advised(line))
    assert (args.model, args.repo, args.private) == (str(tmp_path / "pretrain-debug" / "model"), "me/model", True)


def test_a_space_folder_is_pushed_as_a_space(tmp_path, hub, monkeypatch):
    space = tmp_path / "space"
    space.mkdir()
    (space / "README.md").write_text("---\ntitle: demo\nsdk: streamlit\napp_file: space_app.py\n---\n# demo\n")
    (space / "space_app.py").write_text("print('app')\n")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    push.main([str(space), "me/demo", "--private"])
    (_, created), (_, uploaded) = hub
    assert created["repo_type"] == "space" and created["space_sdk"] == "streamlit" and created["private"] is True
    assert uploaded["repo_type"] == "space" and "space_app.py" in uploaded["files"]
