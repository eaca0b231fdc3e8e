"""The anchor for pretraining throughput: a bare training loop over our own model class, as fast as one
writes it by hand — no Trainer, no data loader.

Same model class as `python -m pretrain` (pretrain.model.build_model: SDPA, the MLM head over masked
positions only), compiled as pretrain.train.mlm_trainer compiles it, bf16 autocast, fused AdamW, and
batches masked once up front (pretrain.masking.BlockMasker over the first blocks of the training data)
and already on the device, cycled. On CUDA that is the loop "ours" is measured against; on a CPU the
speed-only parts that only pay on a GPU are skipped, as `python -m pretrain` skips them there: no
torch.compile, no bf16 autocast, and `foreach` AdamW instead of the fused kernel (`BareLoop.settings`
names what ran).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from pretrain.blocks import PackedData
from pretrain.config import PretrainConfig
from pretrain.masking import BlockMasker, mask_seed, stack
from pretrain.model import build_model
from stagekit.device import run_precision

SYNTHETIC_BATCHES = 8  # distinct pre-masked batches cycled (enough that no step reuses the last one's data)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups as the Trainer forms them: no weight decay on biases and LayerNorm weights."""
    from transformers.trainer_pt_utils import get_parameter_names

    # transformers' Trainer.get_decay_parameter_names (5.24): these name patterns and LayerNorm modules
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], patterns))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]


def premasked_batches(
    cfg: PretrainConfig, data: PackedData, batch_size: int, device: torch.device, count: int = SYNTHETIC_BATCHES
) -> list[dict[str, torch.Tensor]]:
    """`count` batches {"input_ids", "labels"} (int64, (batch_size, block_size)) on `device`, masked as
    training masks (train.mlm_probability / mask_replace_prob / random_replace_prob, seeded per block)."""
    t = cfg.train
    masker = BlockMasker(data.tokenizer, t.mlm_probability, t.mask_replace_prob, t.random_replace_prob)
    blocks = len(data.train)
    batches = []
    for b in range(count):
        examples = []
        for i in range(batch_size):
            index = (b * batch_size + i) % blocks
            input_ids, labels = masker(
                torch.as_tensor(data.train[index], dtype=torch.long), mask_seed(t.seed, 0, index)
            )
            examples.append({"input_ids": input_ids, "labels": labels})
        batches.append({k: v.to(device) for k, v in stack(examples).items()})
    return batches


@dataclass
class BareLoop:
    """One optimizer step per call, returning the tokens it trained on (batch_size × block_size).

    `clip_norm`: also clip the gradient norm (the Trainer's train.max_grad_norm) — off for the anchor,
    on when the Trainer's per-step overhead is measured against the same arithmetic.
    """

    cfg: PretrainConfig
    data: PackedData
    batch_size: int
    device: torch.device
    clip_norm: float | None = None
    settings: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg, cuda = self.cfg, self.device.type == "cuda"
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, self.data.tokenizer, masked_only_head=True).to(self.device).train()
        compiled = cuda and cfg.impl.compile
        if compiled:  # exactly as pretrain.train.mlm_trainer compiles it
            model.base_model.compile()
            model.get_output_embeddings().compile(dynamic=True)
        if cuda and cfg.impl.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        t = cfg.train
        groups = decay_groups(model, t.weight_decay)
        kind = {"fused": True} if cuda else {"foreach": True}
        self.optimizer = torch.optim.AdamW(
            groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, **kind
        )
        bf16 = cuda and run_precision("cuda", cfg.impl.precision).precision == "bf16"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.model, self.position = model, 0
        self.batches = premasked_batches(cfg, self.data, self.batch_size, self.device)
        self.settings = {
            "attention": model.config._attn_implementation,
            "masked-only head": True,
            "compile": compiled,
            "bf16 autocast": bf16,
            "AdamW": "fused" if cuda else "foreach",
            "clip": self.clip_norm,
            "batches": f"{len(self.batches)} pre-masked, on {self.device.type}",
        }

    def __call__(self) -> int:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        with self.autocast:
            loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return batch["input_ids"].numel()
