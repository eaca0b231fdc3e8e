"""A tiny, randomly initialised BERT with a WordPiece vocabulary trained on MNLI lines: the stand-in base
model of tests and of the memory benchmark (bench/siamese_memory.py), where what is measured does not depend
on the model's size. A test fixture first: the benchmark borrows it from a checkout, as it runs from one."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def make_tiny_bert(
    out_dir: Path,
    data_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    ffn: int = 128,
    lines: int = 400,
    vocab_size: int = 1000,
    positions: int = 512,
    max_length: int = 512,
    seed: int = 0,
) -> Path:
    """A randomly initialised BertModel + a WordPiece tokenizer trained on `lines` MNLI pairs, saved together
    in `out_dir` (returned). `positions`: the model's position embeddings; `max_length`: the tokenizer's
    `model_max_length`. The weights depend only on the sizes and `seed` (torch's generator is seeded here and
    left where the model's initialisation ends)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from pretrain.tokenizer import canonical_ids

    texts = []
    with gzip.open(data_dir / "mnli" / "train.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= lines:
                break
            row = json.loads(line)
            texts += [row["premise"], row["hypothesis"]]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, show_progress=False)
    canonical_ids(wordpiece)  # ids that depend on the learned tokens alone (the trainer's numbering changes per build)
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, model_max_length=max_length)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
