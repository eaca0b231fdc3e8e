"""Packed 128-token blocks in a flat token file, cached on disk under a hash of what made them.

Preparation streams: documents flow from the source (pretrain.corpus) through worker processes that
clean and tokenize bounded chunks (pretrain.packing) into `train.bin` / `validation.bin` — nanoGPT's
flat token file, uint16 when the vocabulary fits. Training reads them memory-mapped (`TokenBlocks`),
so neither preparation nor training holds anything proportional to the corpus in memory.

The cache folder `<data.cache_dir>/<key>/` holds `tokenizer/`, `train.bin`, `validation.bin`,
`token_counts.npy`, `stats.json` and `build_seconds.json` (where the preparation's time went). It is
built as `.tmp-<key>-*` and renamed into place (stagekit/folders.py): a folder named `<key>` is always
complete, and a killed build leaves only a `.tmp-*` folder, which the next build of that key removes.

The order training visits blocks in: every block once per epoch, shuffled, with no permutation in memory.

torch's RandomSampler materialises `randperm(n).tolist()` each epoch (~36 bytes per block: 2.5 GB per rank
for the 9 B tokens of OpenWebText). `BlockOrder` computes the i-th position of a keyed pseudo-random
permutation on demand instead: a 4-round Feistel network over [0, 2^k) with cycle walking down to [0, n)
(Black & Rogaway, "Ciphers with arbitrary finite domains", CT-RSA 2002), so memory does not grow with
the corpus. The order depends only on (seed, epoch), never on the number of processes: accelerate cuts
the batches it forms into per-rank shares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import DTypeLike
from torch.utils.data import Sampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pretrain.build import build_cache, raise_few_blocks, unigram_entropy
from pretrain.config import PretrainConfig
from stagekit.errors import DataError
from stagekit.folders import require_writable
from stagekit.sources import local_files

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builds of one key then just both build
    fcntl = None

log = logging.getLogger(__name__)
__all__ = [
    "BlockOrder",
    "PackedData",
    "TokenBlocks",
    "cache_key",
    "open_cache",
    "prepare_data",
    "raise_few_blocks",
    "unigram_entropy",
]

CACHE_FORMAT = 3  # bump when cleaning, packing or the folder layout changes, so old caches are not reused
# DataConfig fields that change only how fast the blocks are made, never which blocks (tested).
SPEED_ONLY = ("num_proc", "chunk_documents", "streaming", "cache_dir")


class TokenBlocks:
    """Read-only, memory-mapped blocks of a flat token file (nanoGPT style): block i is
    tokens[i*block_size:(i+1)*block_size], each [CLS] ... [SEP] with [SEP] also between documents.

    Indexing reads only the blocks asked for (the operating system pages them in and may drop them
    again), so a corpus of any size costs no process memory. Pickling carries the path, not the data,
    so DataLoader workers and other ranks reopen the file. Raises DataError if the file's size is not
    a whole number of blocks.
    """

    def __init__(self, path: Path, block_size: int, dtype: DTypeLike) -> None:
        self.path, self.block_size, self.dtype = Path(path), block_size, np.dtype(dtype)
        size = self.path.stat().st_size
        if size % (block_size * self.dtype.itemsize):
            raise DataError(
                f"{self.path}: {size} bytes is not a whole number of {block_size}-token {self.dtype} blocks; "
                f"delete {self.path.parent} to rebuild it"
            )
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r") if size else np.empty(0, dtype=self.dtype)
        self.tokens: np.ndarray = tokens  # the flat token file, read-only
        self._blocks = tokens.reshape(-1, block_size)

    def __len__(self) -> int:
        """The number of blocks."""
        return len(self._blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens in all blocks, [CLS] and [SEP] included."""
        return len(self.tokens)

    def __getitem__(self, index: int | slice | np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
        """Block `index` as int64 (block_size,), or blocks for a slice / 1-D integer indices as int64
        (n, block_size). Raises IndexError for an index out of range or not 1-D integers."""
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.ndim > 1 or not np.issubdtype(index.dtype, np.integer):
                raise IndexError(
                    f"blocks are indexed by an int, a slice or 1-D integers, not {index.dtype}{index.shape}"
                )
            if index.ndim == 0:
                index = int(index)
        return torch.from_numpy(np.array(self._blocks[index], dtype=np.int64))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "block_size": self.block_size, "dtype": self.dtype.str}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["block_size"], np.dtype(state["dtype"]))

    def __repr__(self) -> str:
        return f"TokenBlocks({self.path}, {len(self)} blocks of {self.block_size} {self.dtype} tokens)"


_M64 = (1 << 64) - 1
ROUNDS = 4


def _mix(x: int) -> int:
    """splitmix64's finaliser (Steele et al. 2014): a cheap 64-bit avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class BlockOrder(Sampler[int]):
    """Indices 0..n-1, each once per epoch, in an order fixed by (seed, epoch). O(1) memory.

    `set_epoch(e)` is called by the Trainer's data loader at the start of every epoch.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("BlockOrder needs at least one block")
        self.n, self.seed, self.epoch = n, seed, 0
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2  # the network permutes [0, 2^(2·half)), at most 4n values
        self.mask = (1 << self.half) - 1
        self._keys = self._round_keys()

    def _round_keys(self) -> list[int]:
        return [_mix(_mix(self.seed) ^ _mix(self.epoch * ROUNDS + r + 1)) for r in range(ROUNDS)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._keys = self._round_keys()

    def _permute(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self.mask)
        return (left << self.half) | right

    def position(self, i: int) -> int:
        """The block visited i-th in this epoch: walk the cycle until it lands inside [0, n)."""
        x = self._permute(i)
        while x >= self.n:
            x = self._permute(x)
        return x

    def __iter__(self) -> Iterator[int]:
        return (self.position(i) for i in range(self.n))

    def __len__(self) -> int:
        return self.n


@dataclass
class PackedData:
    """What training needs from the cache: nothing in it grows with the corpus except on disk."""

    tokenizer: PreTrainedTokenizerBase
    train: TokenBlocks
    validation: TokenBlocks
    stats: dict[str, Any]  # document, block and token counts, unigram entropy, cache key, dtype, block size
    token_counts: torch.Tensor  # float64 (vocab_size,): each id's count in the train blocks, specials 0


def cache_key(cfg: PretrainConfig) -> str:
    """A hash of everything that determines the blocks: corpus (files by path, size and mtime), cleaning,
    split, tokenizer settings, vocabulary and block size — and none of the speed-only settings."""
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in SPEED_ONLY}
    # The source as the flat keys it was before it became a section (weight means nothing to one source), so a
    # cache built then keeps its key: a rebuild would train a tokenizer that differs in a few rare tokens.
    source = data.pop("source")
    data |= {k: source[k] for k in ("config_name", "revision", "split")} | {"source": source["path"]}
    files = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in local_files(cfg.data.source.path)]
    spec = {
        "format": CACHE_FORMAT,
        "data": data,
        "files": files,
        "tokenizer": dataclasses.asdict(cfg.tokenizer),
        "vocab_size": cfg.model.vocab_size,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for building `target`; the OS releases it when the holder dies, even by SIGKILL."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(target.parent / f".lock-{target.name}", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale(target: Path) -> None:
    # Called under the build lock of this key: any temporary folder of it belongs to a build that died.
    for stale in [*target.parent.glob(f".tmp-{target.name}-*"), *target.parent.glob(f".old-{target.name}-*")]:
        log.warning("removing %s, left by a preparation that was killed", stale)
        shutil.rmtree(stale, ignore_errors=True)


def open_cache(folder: Path) -> PackedData:
    """Open a finished cache folder read-only: tokenizer, memory-mapped blocks, counts and stats."""
    stats = json.loads((folder / "stats.json").read_text())
    dtype, block_size = np.dtype(stats["dtype"]), stats["block_size"]
    splits = {split: TokenBlocks(folder / f"{split}.bin", block_size, dtype) for split in ("train", "validation")}
    for split, blocks in splits.items():
        if len(blocks) != stats[f"{split}_blocks"]:
            raise DataError(
                f"{blocks.path}: {len(blocks)} blocks, stats.json says {stats[f'{split}_blocks']}; delete {folder}"
            )
    return PackedData(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        train=splits["train"],
        validation=splits["validation"],
        stats=stats,
        token_counts=torch.from_numpy(np.load(folder / "token_counts.npy")),
    )


def prepare_data(cfg: PretrainConfig) -> PackedData:
    """Open the packed blocks of `cfg`, building the cache first (atomically, one builder per key) if needed.

    Raises DataError (one line) for unreadable data, a missing text column, or a split too small for one block.
    """
    key = cache_key(cfg)
    target = Path(cfg.data.cache_dir) / key
    if (target / "stats.json").is_file():
        log.info("packed data: cache hit %s", target)
    else:
        require_writable(target.parent, "set data.cache_dir= to a writable folder")  # before the minutes of building
        with _build_lock(target):
            if not (target / "stats.json").is_file():  # another process may have built it while we waited
                _remove_stale(target)
                log.info("packed data: building cache %s", target)
                build_cache(cfg, target)
    data = open_cache(target)
    stats = data.stats
    log.info(
        "data: %d train blocks (%.2fM tokens), %d validation blocks of %d %s tokens; documents %d read, "
        "%d dropped, %d train, %d validation; tokenizer from %d documents; cache %s",
        len(data.train),
        data.train.num_tokens / 1e6,
        len(data.validation),
        stats["block_size"],
        stats["dtype"],
        stats["documents_read"],
        stats["documents_dropped"],
        stats["train_documents"],
        stats["validation_documents"],
        stats["tokenizer_documents"],
        target,
    )
    log.info(
        "unigram entropy of the training tokens: %.3f nats (perplexity %.0f)",
        stats["unigram_entropy"],
        math.exp(stats["unigram_entropy"]),
    )
    log.info("sample block: %s", data.tokenizer.decode(data.train[0].tolist()))
    return data
