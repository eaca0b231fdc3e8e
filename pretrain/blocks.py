"""Clean documents → tokenizer → packed 128-token blocks, cached on disk under a hash of what made them.

Documents are tokenized with `datasets.map` (batched, multi-process), concatenated with a [SEP] after
each document and cut into blocks `[CLS] ... [SEP]` of exactly `block_size` tokens (run_mlm's
group_texts, with the special tokens BERT expects). A second run with the same corpus, cleaning,
tokenizer and block size loads the cache and skips every step here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common.atomic import atomic_dir
from common.errors import DataError
from common.sources import local_files
from pretrain.config import PretrainConfig
from pretrain.corpus import load_corpus
from pretrain.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the packing itself changes, so old caches are not reused


@dataclass
class PackedData:
    tokenizer: PreTrainedTokenizerBase
    train: torch.Tensor  # (blocks, block_size) int32
    validation: torch.Tensor
    stats: dict[str, Any]  # document and token counts, unigram entropy, cache key
    token_counts: torch.Tensor  # float64 (vocab_size,): occurrences of each id in the train blocks, specials 0


def cache_key(cfg: PretrainConfig) -> str:
    """A hash of everything that determines the blocks: corpus, cleaning, split, tokenizer, block size."""
    data = dataclasses.asdict(cfg.data)
    for speed_only in ("num_proc", "cache_dir", "streaming"):
        data.pop(speed_only)
    files = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in local_files(cfg.data.source)]
    spec = {
        "format": CACHE_FORMAT,
        "data": data,
        "files": files,
        "tokenizer": dataclasses.asdict(cfg.tokenizer),
        "vocab_size": cfg.model.vocab_size,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _pack(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, block_size: int) -> dict[str, list]:
    encodings = tokenizer.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    stream: list[int] = []
    for enc in encodings:
        stream.extend(enc.ids)
        stream.append(sep)  # marks the document boundary inside a block
    body = block_size - 2
    # The tail shorter than a block is dropped, as in group_texts (at most body-1 tokens per map batch).
    return {"input_ids": [[cls, *stream[i : i + body], sep] for i in range(0, len(stream) - body + 1, body)]}


def pack_documents(
    docs: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, num_proc: int | None = None
) -> datasets.Dataset:
    return docs.map(
        _pack,
        batched=True,
        batch_size=1000,
        num_proc=num_proc,
        remove_columns=docs.column_names,
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size},
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        desc="tokenizing and packing",
    )


def blocks_tensor(blocks: datasets.Dataset, block_size: int) -> torch.Tensor:
    """All blocks as one in-memory (n, block_size) int32 tensor: batches are then cheap random gathers."""
    column = blocks.data.column("input_ids").combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(flat, dtype=np.int32).reshape(-1, block_size))  # a writable copy


def token_counts(blocks: torch.Tensor, vocab_size: int, special_ids: list[int]) -> torch.Tensor:
    """How often each token id occurs in the blocks (float64, length vocab_size), specials set to 0."""
    counts = torch.bincount(blocks.flatten(), minlength=vocab_size).double()
    counts[special_ids] = 0
    return counts


def unigram_entropy(blocks: torch.Tensor, vocab_size: int, special_ids: list[int]) -> float:
    """Entropy (nats) of the token distribution, specials excluded: the loss of guessing by frequency alone.

    An MLM that learnt anything from context has a validation loss well below this.
    """
    counts = token_counts(blocks, vocab_size, special_ids)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def build_cache(cfg: PretrainConfig, target: Path) -> None:
    corpus, counts = load_corpus(cfg.data)
    tokenizer = train_tokenizer(
        corpus["train"], cfg.tokenizer, vocab_size=cfg.model.vocab_size, model_max_length=cfg.data.block_size
    )
    num_proc = cfg.data.num_proc if cfg.data.num_proc > 1 and len(corpus["train"]) >= 10_000 else None
    if num_proc:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the worker processes are the parallelism
    packed = {split: pack_documents(docs, tokenizer, cfg.data.block_size, num_proc) for split, docs in corpus.items()}
    for split, blocks in packed.items():
        if len(blocks) == 0:
            raise_few_blocks(cfg, split)
    train = blocks_tensor(packed["train"], cfg.data.block_size)
    stats = {
        "cache_key": target.name,
        "documents_read": counts.read,
        "documents_dropped": counts.dropped_short,
        "train_documents": counts.train_documents,
        "validation_documents": counts.validation_documents,
        "train_blocks": len(packed["train"]),
        "validation_blocks": len(packed["validation"]),
        "train_tokens": int(train.numel()),
        "tokenizer_size": len(tokenizer),
        "unigram_entropy": unigram_entropy(train, cfg.model.vocab_size, tokenizer.all_special_ids),
    }
    with atomic_dir(target) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        for split, blocks in packed.items():
            blocks.save_to_disk(str(tmp / split))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))


def raise_few_blocks(cfg: PretrainConfig, split: str) -> None:
    raise DataError(
        f"{cfg.data.source}: the {split} split gives no block of data.block_size={cfg.data.block_size} tokens; "
        "use more documents (data.max_documents) or a larger data.validation_fraction"
    )


def prepare_data(cfg: PretrainConfig) -> PackedData:
    """Load the packed blocks and tokenizer from the cache, building them first if needed."""
    key = cache_key(cfg)
    target = Path(cfg.data.cache_dir) / key
    if (target / "stats.json").is_file():
        log.info("packed data: cache hit %s", target)
    else:
        log.info("packed data: building cache %s", target)
        build_cache(cfg, target)
    tokenizer = AutoTokenizer.from_pretrained(target / "tokenizer")
    stats = json.loads((target / "stats.json").read_text())
    train = blocks_tensor(datasets.load_from_disk(str(target / "train")), cfg.data.block_size)
    data = PackedData(
        tokenizer=tokenizer,
        train=train,
        validation=blocks_tensor(datasets.load_from_disk(str(target / "validation")), cfg.data.block_size),
        stats=stats,
        token_counts=token_counts(train, cfg.model.vocab_size, tokenizer.all_special_ids),
    )
    log.info(
        "data: %d train blocks (%.2fM tokens), %d validation blocks; documents %d read, %d dropped; cache key %s",
        len(data.train),
        data.train.numel() / 1e6,
        len(data.validation),
        stats["documents_read"],
        stats["documents_dropped"],
        key,
    )
    log.info(
        "unigram entropy of the training tokens: %.3f nats (perplexity %.0f)",
        stats["unigram_entropy"],
        math.exp(stats["unigram_entropy"]),
    )
    log.info("sample block: %s", tokenizer.decode(data.train[0].tolist()))
    return data
