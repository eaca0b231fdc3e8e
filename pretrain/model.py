"""The masked language model: BERT or a rotary-position encoder that transformers ships, built from the
config's fields, with the MLM head computed at masked positions only — inside `forward`, so DDP's
gradient averaging and torch.compile see the whole loss.

| model.architecture | class | layout |
|---|---|---|
| bert (default) | `BertForMaskedLM` | post-LayerNorm, learned absolute positions, GELU FFN |
| nomic_bert | `NomicBertForMaskedLM` | post-LayerNorm, rotary positions, gated FFN |
| modernbert | `ModernBertForMaskedLM` | pre-LayerNorm, rotary positions, gated FFN, every layer global |

The saved folder holds the plain transformers class (config.json names it), so it loads with
`AutoModelForMaskedLM.from_pretrained`, `pipeline("fill-mask")` and `SentenceTransformer(path)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    NomicBertConfig,
    NomicBertForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import MaskedLMOutput

from pretrain.config import BertModelConfig, ModelConfig, ModernBertModelConfig, NomicBertModelConfig

IGNORE_INDEX = -100


class MaskedOnlyHeadMixin:
    """`forward(input_ids, labels)` with the MLM head run only where `labels != -100`.

    The hidden×vocab projection is the largest matmul of a small encoder, and ~15 % of the positions
    need it. The loss is the sum of cross-entropies over masked positions divided by
    `num_items_in_batch`, the masked count the Trainer gathers over all micro-batches and ranks of an
    optimizer step (so 2 ranks × 8 blocks give the gradient of 1 rank × 16 blocks), or by this batch's
    count when called alone; a step with no masked token has loss 0. `logits` holds the masked positions
    only: shape (masked tokens, vocab). With `masked_only_head = False` the class's own head runs over every
    position (logits (batch, length, vocab)) and the loss is the same sum; without labels the class's own
    forward runs unchanged. (Subclass names end in "ForMaskedLM": transformers picks a model's loss function
    from its class name.)
    `sequence_length` (set by `ShortBlockWarmup`) cuts each row into pieces of that many tokens first.
    """

    masked_only_head: bool = True
    sequence_length: int | None = None

    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        if self.sequence_length and input_ids is not None and input_ids.shape[-1] > self.sequence_length:
            input_ids = input_ids.reshape(-1, self.sequence_length)
            labels = None if labels is None else labels.reshape(-1, self.sequence_length)
            attention_mask = None if attention_mask is None else attention_mask.reshape(-1, self.sequence_length)
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        selected = labels != IGNORE_INDEX
        if self.masked_only_head:
            hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = scored = self.mlm_head(hidden[selected])
        else:  # the class's own head over every position, scored here: its mean is NaN when nothing is masked
            logits = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
            scored = logits[selected]
        total = F.cross_entropy(scored.float(), labels[selected], reduction="sum")
        # A step may mask no token at all (short blocks, small batches): the sum over no target is 0 and so is its
        # gradient, where 0 / 0 would be NaN and poison the weights.
        count = selected.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        return MaskedLMOutput(loss=total / count.to(total.device).clamp(min=1), logits=logits)


class MaskedOnlyBertForMaskedLM(MaskedOnlyHeadMixin, BertForMaskedLM):
    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cls(hidden)


class MaskedOnlyNomicBertForMaskedLM(MaskedOnlyHeadMixin, NomicBertForMaskedLM):
    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cls(hidden)


class MaskedOnlyModernBertForMaskedLM(MaskedOnlyHeadMixin, ModernBertForMaskedLM):
    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.head(hidden))


# architecture -> (training class, the transformers class a saved folder names)
CLASSES: dict[str, tuple[type[PreTrainedModel], type[PreTrainedModel]]] = {
    "bert": (MaskedOnlyBertForMaskedLM, BertForMaskedLM),
    "nomic_bert": (MaskedOnlyNomicBertForMaskedLM, NomicBertForMaskedLM),
    "modernbert": (MaskedOnlyModernBertForMaskedLM, ModernBertForMaskedLM),
}


def hf_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase):
    """The transformers config for `cfg`, with the tokenizer's special ids and SDPA attention
    (transformers 5 builds eager attention unless told otherwise)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "architecture"}
    ids = {"pad_token_id": tokenizer.pad_token_id}
    if isinstance(cfg, BertModelConfig):
        return BertConfig(**fields, **ids, attn_implementation="sdpa")
    if isinstance(cfg, NomicBertModelConfig):
        theta = fields.pop("rope_theta")
        rope = {"rope_type": "default", "rope_theta": theta}
        return NomicBertConfig(**fields, **ids, rope_parameters=rope, attn_implementation="sdpa")
    if isinstance(cfg, ModernBertModelConfig):
        theta = fields.pop("global_rope_theta")
        layers = cfg.num_hidden_layers
        specials = {
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        }
        return ModernBertConfig(
            **fields,
            **ids,
            **specials,
            layer_types=["full_attention"] * layers,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": theta}},
            attn_implementation="sdpa",
        )
    raise TypeError(f"unknown model config {type(cfg).__name__}")


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, masked_only_head: bool = True):
    """A freshly initialised training model (seed the RNG first) for `cfg.architecture`."""
    train_class, _ = CLASSES[cfg.architecture]
    model = train_class(hf_config(cfg, tokenizer))
    model.masked_only_head = masked_only_head
    return model


def saved_class_name(model: PreTrainedModel) -> str:
    """The transformers class a saved training model should name in config.json."""
    for train_class, hf_class in CLASSES.values():
        if isinstance(model, train_class):
            return hf_class.__name__
    return type(model).__name__


def output_bias(model: PreTrainedModel) -> torch.Tensor:
    """The MLM head's per-token output bias (the decoder's bias; BERT ties cls.predictions.bias to it)."""
    bias = model.get_output_embeddings().bias
    if bias is None:
        raise ValueError(f"{type(model).__name__} has no output bias to initialise")
    return bias


def init_output_bias(model: PreTrainedModel, counts: torch.Tensor) -> None:
    """Start the MLM head's bias at the log unigram prior of the training tokens.

    `counts`: float (vocab_size,) occurrences per id in the training blocks. A zero bias predicts
    uniformly (loss ln V); with the prior the untrained model already scores the unigram entropy. That
    saved BERT ~150 steps on the plateau, but NomicBERT left the plateau ~200 steps later with it than
    without (docs/cpu-recipe-experiments.md), so `train.output_bias_init` defaults to zero. Add-one
    smoothing keeps tokens that never occur (specials among them) finite.
    """
    prior = (counts.double() + 1) / (counts.double() + 1).sum()
    bias = output_bias(model)
    with torch.no_grad():
        bias.copy_(prior.log().to(bias.dtype))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embedding/decoder weights counted once
