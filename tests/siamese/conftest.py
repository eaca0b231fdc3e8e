"""Session-scoped tiny fixtures: a 2-layer, 64-wide BERT with a WordPiece vocabulary trained on MNLI lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny_bert import make_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), data_dir)


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


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 folder (a byte-level BPE tokenizer without a padding token, as GPT-2's)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    out = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    texts = ["A man is playing a guitar on stage.", "Two dogs run through the snow.", "The children are laughing."]
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, show_progress=False, special_tokens=["<|eos|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|eos|>", eos_token="<|eos|>", unk_token="<|eos|>")
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    GPT2Model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
