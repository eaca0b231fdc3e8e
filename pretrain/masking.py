"""MLM examples: packed blocks masked with transformers' `DataCollatorForLanguageModeling`.

Each block's mask is drawn from a generator seeded by (train.seed, epoch, block index), so masking is a
pure function of the data position: a resumed run masks exactly as an uninterrupted one, every rank
draws independent masks, and 1 process × 16 blocks sees the same masked inputs as 2 processes × 8
(the accelerate sampler gives the same blocks to the global batch either way). Masking runs in the
dataset's `__getitem__`, so `impl.dataloader_num_workers` processes can do it ahead of a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

_MIX = (1_000_003, 7_919, 2_147_483_647)  # primes mixing seed, epoch and index into one generator seed


class BlockMasker:
    """Mask one block: `mlm_probability` of its non-special tokens are selected (labels keep the original
    id, -100 elsewhere); a selected token becomes [MASK] with `mask_replace_prob`, a random id with
    `random_replace_prob`, else stays (BERT: 0.15 / 0.8 / 0.1, Devlin et al. 2019)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
    ) -> None:
        self.collator = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=mlm_probability,
            mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob,
        )
        self.special_ids = torch.tensor(sorted(tokenizer.all_special_ids))

    def __call__(self, block: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`block`: integer (length,) → (input_ids, labels), both int64 (length,); `block` is not modified."""
        ids = block.to(torch.long, copy=True).unsqueeze(0)
        self.collator.generator = torch.Generator().manual_seed(seed)
        specials = torch.isin(ids, self.special_ids)  # passed in: the collator's own check is a Python loop
        input_ids, labels = self.collator.torch_mask_tokens(ids, special_tokens_mask=specials)
        return input_ids[0], labels[0]


def mask_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * _MIX[0] + epoch * _MIX[1] + index) % _MIX[2]


class MaskedBlocks(Dataset):
    """Training examples `{"input_ids", "labels"}` (int64, (block_size,)) over any indexable of blocks
    (e.g. the memory-mapped `pretrain.blocks.TokenBlocks`); nothing is copied up front."""

    def __init__(self, blocks: Sequence[torch.Tensor], masker: BlockMasker, seed: int) -> None:
        self.blocks, self.masker, self.seed, self.epoch = blocks, masker, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader at the start of each epoch: new masks every pass."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = torch.as_tensor(self.blocks[index], dtype=torch.long)
        input_ids, labels = self.masker(block, mask_seed(self.seed, self.epoch, index))
        return {"input_ids": input_ids, "labels": labels}


class FixedMaskedBlocks(Dataset):
    """Validation examples masked once (seeded), so every evaluation scores the same task."""

    def __init__(self, blocks: Sequence[torch.Tensor], masker: BlockMasker, seed: int, limit: int | None) -> None:
        count = len(blocks) if limit is None else min(limit, len(blocks))
        self.examples = []
        self.masked_tokens = 0  # the targets every evaluation scores
        for index in range(count):
            input_ids, labels = masker(torch.as_tensor(blocks[index], dtype=torch.long), mask_seed(seed, 0, index))
            self.examples.append({"input_ids": input_ids, "labels": labels})
            self.masked_tokens += int((labels != -100).sum())

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.examples[index]


def stack(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The data collator: blocks have one length, so a batch is a stack (no padding, no attention mask)."""
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}
