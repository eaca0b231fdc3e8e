"""Shared fixtures: the offline data folder, and an environment where nothing reaches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import REPO_ROOT

DATA_DIR = Path(os.environ["BERT_DATA_DIR"])  # set by common.config: ../shared/data unless given


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never track to W&B and never wait on the Hub.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder (../shared/data beside the checkout, or $BERT_DATA_DIR)."""
    if not (DATA_DIR / "mnli" / "train.jsonl.gz").is_file():
        pytest.fail(
            f"shared data not found at {DATA_DIR}: set BERT_DATA_DIR to the folder holding mnli/, stsb/, pretrain/"
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_bert_for_distributed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from bench.tiny_bert import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-distributed"), data_dir)


@pytest.fixture(scope="session")
def tiny_outputs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An outputs folder holding one tiny trained siamese model (tests/app/tiny_model.py), built once."""
    from tests.app.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("outputs")
    build_tiny_model(data_dir, root, run_name="tiny")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_outputs: Path) -> Path:
    return tiny_outputs / "tiny" / "model"
