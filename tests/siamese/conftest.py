"""Session-scoped tiny fixtures built on tests/conftest.py's `tiny_bert`: a shorter BERT, an untrained encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny_bert import make_tiny_bert


@pytest.fixture(scope="session")
def short_bert(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The tiny BERT with only 32 position embeddings: inputs longer than that cannot be embedded."""
    return make_tiny_bert(tmp_path_factory.mktemp("short-bert"), data_dir, positions=32)


@pytest.fixture(scope="module")
def untrained_model_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentenceTransformer folder of the tiny BERT with mean pooling and a random NLI head (seed 0): what
    evaluation reads, without training."""
    from siamese.config import ImplConfig, LossConfig, ModelConfig
    from siamese.inference.encoder import save_head
    from siamese.losses import build_loss
    from siamese.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(base_model=str(tiny_bert), max_seq_length=32), ImplConfig(device="cpu"))
    loss = build_loss(model, LossConfig())
    out = tmp_path_factory.mktemp("untrained-model")
    model.save(str(out))
    save_head(loss.classifier, out)
    return out
