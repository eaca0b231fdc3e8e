"""BertForMaskedLM from the config's BertConfig fields, its MLM loss, and AdamW's weight-decay groups."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerBase

from pretrain.config import ModelConfig

IGNORE_INDEX = -100


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> BertForMaskedLM:
    config = BertConfig(
        **dataclasses.asdict(cfg),
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",  # transformers 5 defaults to eager attention (NOTES.md)
    )
    return BertForMaskedLM(config)


def init_output_bias(model: BertForMaskedLM, counts: torch.Tensor) -> None:
    """Start the MLM head's bias at the log unigram prior of the training tokens.

    A zero bias predicts uniformly (loss ln V); with the prior the untrained model already scores the
    unigram entropy, which the cpu-small recipe otherwise took ~150 steps to reach (docs/
    cpu-recipe-experiments.md). Add-one smoothing keeps tokens that never occur (specials among them) finite.
    """
    prior = (counts + 1) / (counts + 1).sum()
    with torch.no_grad():
        model.cls.predictions.bias.copy_(prior.log())  # the decoder's bias is this same tensor


def mlm_loss(
    model: BertForMaskedLM, input_ids: torch.Tensor, labels: torch.Tensor, masked_only: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over masked positions, plus (correct, count) for masked-token accuracy.

    Packed blocks hold no padding, so no attention mask is needed. With `masked_only`, the MLM head
    (a hidden×vocab matmul, the largest in the model) runs on the ~15% masked positions only; the loss
    is the same mean over the same positions as the full head's.
    """
    selected = labels != IGNORE_INDEX
    targets = labels[selected]
    if masked_only:
        hidden = model.bert(input_ids=input_ids).last_hidden_state
        logits = model.cls(hidden[selected])
    else:
        logits = model(input_ids=input_ids).logits[selected]
    loss = F.cross_entropy(logits.float(), targets)
    correct = (logits.argmax(dim=-1) == targets).sum()
    return loss, correct, selected.sum()


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices and embeddings, none on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embedding/decoder weights counted once
