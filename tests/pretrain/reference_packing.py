"""The blocks of a config computed the plain in-memory way, to check the streamed preparation against."""

from __future__ import annotations

import gzip
import itertools
import json

import torch
from transformers import PreTrainedTokenizerBase

from pretrain.config import PretrainConfig
from pretrain.corpus import clean_text, in_validation


def first_documents(path: str, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in itertools.islice(fh, n)]


def reference(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """The blocks the plain in-memory way: read all, clean, filter, split, tokenize each document, pack."""
    d = cfg.data
    kept = [t for t in map(clean_text, first_documents(d.source.path, d.max_documents)) if len(t) >= d.min_chars]
    streams: dict[str, list[int]] = {"train": [], "validation": []}
    for text in kept:
        split = "validation" if in_validation(text, d.validation_fraction, d.split_seed) else "train"
        streams[split] += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    body, cls, sep = d.block_size - 2, tokenizer.cls_token_id, tokenizer.sep_token_id
    return {
        split: torch.tensor([[cls, *s[i : i + body], sep] for i in range(0, len(s) - body + 1, body)])
        for split, s in streams.items()
    }
