"""Tiny runs of the real entry point on a slice of the shared IMDB stand-in corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import PretrainConfig
from stagekit.config import REPO_ROOT, load_config

DEBUG_CONFIG = REPO_ROOT / "configs" / "pretrain" / "debug.yaml"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One packed-data cache for the whole session: the corpus slice is tokenized and packed once."""
    return tmp_path_factory.mktemp("pretrain-cache")


@pytest.fixture
def tiny_args(tmp_path: Path, cache_dir: Path, data_dir: Path):
    """argv for `pretrain.train.main`: the debug config, outputs in tmp_path, plus extra overrides."""

    def make(*overrides: str, out: Path | None = None) -> list[str]:
        return [
            "--config",
            str(DEBUG_CONFIG),
            f"output_dir={out or tmp_path}",
            f"data.cache_dir={cache_dir}",
            f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz",
            "data.max_documents=300",
            *overrides,
        ]

    return make


@pytest.fixture(scope="session")
def tiny_data(cache_dir: Path, data_dir: Path):
    """The packed debug corpus (300 IMDB reviews, vocabulary 1,024), prepared once per session."""
    from pretrain.blocks import prepare_data

    overrides = [
        f"data.cache_dir={cache_dir}",
        f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz",
        "data.max_documents=300",
    ]
    return prepare_data(load_config(PretrainConfig, DEBUG_CONFIG, overrides))


@pytest.fixture
def tiny_config(tiny_args):
    def make(*overrides: str) -> PretrainConfig:
        args = tiny_args(*overrides)
        return load_config(PretrainConfig, args[1], args[2:])

    return make


@pytest.fixture(scope="session")
def pretrained_debug(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, data_dir: Path) -> Path:
    """The debug config's pretraining output after 10 steps (the model folder, card included), built once."""
    from pretrain.train import main

    out = tmp_path_factory.mktemp("pretrained-debug")
    main([
        "--config", str(DEBUG_CONFIG), f"output_dir={out}", f"data.cache_dir={cache_dir}",
        f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz", "data.max_documents=300", "train.max_steps=10",
        "impl.num_threads=1",
    ])  # fmt: skip
    return out / "pretrain-debug" / "model"
