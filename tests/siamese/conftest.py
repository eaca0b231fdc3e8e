"""Session-scoped tiny fixtures: a 2-layer, 64-wide BERT with a WordPiece vocabulary trained on MNLI lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_bert import make_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), data_dir)


@pytest.fixture(scope="session")
def short_bert(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The tiny BERT with only 32 position embeddings: inputs longer than that cannot be embedded."""
    return make_tiny_bert(tmp_path_factory.mktemp("short-bert"), data_dir, positions=32)
