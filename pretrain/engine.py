"""The training engine: model, AdamW, warmup → ReduceLROnPlateau, masking and one optimizer step.

`build_training(cfg, tokenizer)` builds exactly what `python -m pretrain` trains with, so the
throughput benchmark times our real path by calling `engine.train_step(micro_batches)`.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from common.device import resolve_device
from pretrain.config import PretrainConfig, TrainConfig
from pretrain.model import build_model, init_output_bias, mlm_loss, weight_decay_groups

log = logging.getLogger(__name__)


class WarmupThenPlateau:
    """Linear warmup to learning_rate, then ReduceLROnPlateau on the validation loss.

    transformers' built-in plateau schedule has no warmup (NOTES.md), so the two are combined here.
    The current lr lives in the optimizer's param groups and is restored with the optimizer state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer = optimizer
        self.base_lr = cfg.learning_rate
        self.warmup_steps = cfg.warmup_steps
        self.plateau = ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold,
            min_lr=cfg.min_lr,
        )

    def before_step(self, step: int) -> None:
        """Set the lr for optimizer step `step` (0-based) while warming up."""
        if step < self.warmup_steps:
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * (step + 1) / self.warmup_steps

    def after_eval(self, step: int, val_loss: float) -> None:
        if step >= self.warmup_steps:  # during warmup the loss falls anyway; only judge plateaus after it
            self.plateau.step(val_loss)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state)


class MLMEngine:
    def __init__(
        self, cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase, token_counts: torch.Tensor | None = None
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(resolve_device(cfg.impl.device))
        cuda = self.device.type == "cuda"
        if cfg.impl.num_threads:
            torch.set_num_threads(cfg.impl.num_threads)
        if cuda and cfg.impl.tf32:
            torch.set_float32_matmul_precision("high")
        # This CPU has no fast bf16 and compiles for minutes (NOTES.md): both only on CUDA.
        self.bf16 = cuda and cfg.impl.bf16
        if not cuda and (cfg.impl.bf16 or cfg.impl.compile):
            log.info("impl.bf16 / impl.compile apply to CUDA only; training in fp32 eager on %s", self.device)

        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, tokenizer)
        if token_counts is not None and cfg.train.output_bias_init == "unigram":
            init_output_bias(model, token_counts)
        self.model = model.to(self.device)
        train = cfg.train
        self.optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, train.weight_decay),
            lr=train.learning_rate,
            betas=(train.adam_beta1, train.adam_beta2),
            eps=train.adam_epsilon,
            fused=True if cuda else None,
        )
        self.schedule = WarmupThenPlateau(self.optimizer, train)
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=train.mlm_probability)
        # The collator's own generator: masking is reproducible from the seed and restorable on resume.
        self.collator.generator = torch.Generator().manual_seed(train.seed)
        self.special_ids = torch.tensor(tokenizer.all_special_ids)
        self.step = 0
        if cuda and cfg.impl.compile:
            # Module.compile() keeps state_dict keys unchanged, so checkpoints stay plain.
            self.model.bert.compile()
            self.model.cls.compile(dynamic=True)  # the masked-position count changes every batch

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def mask(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """15% of non-special tokens selected; 80% [MASK], 10% random, 10% kept (transformers' collator)."""
        input_ids = blocks.to(torch.long, copy=True)  # a copy: the collator edits its input in place
        specials = torch.isin(input_ids, self.special_ids)
        # The special-token mask is passed in so the collator skips its per-row Python loop.
        return self.collator.torch_mask_tokens(input_ids, special_tokens_mask=specials)

    def to_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        if self.device.type == "cuda":
            return [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
        return list(tensors)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor):
        with self.autocast():
            return mlm_loss(self.model, input_ids, labels, masked_only=self.cfg.impl.masked_only_head)

    def train_step(self, micro_batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the micro-batches of raw blocks; returns (mean loss, grad norm) on device."""
        self.model.train()
        self.schedule.before_step(self.step)
        total = torch.zeros((), device=self.device)
        # The labelled regions are what `bench.pretrain_throughput --profile` splits the step time into.
        for blocks in micro_batches:
            with record_function("mask"):
                input_ids, labels = self.to_device(*self.mask(blocks))
            with record_function("forward"):
                loss, _, _ = self.loss(input_ids, labels)
            with record_function("backward"):
                (loss / len(micro_batches)).backward()
            total += loss.detach()
        with record_function("optimizer"):
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / len(micro_batches), grad_norm

    def fixed_masks(self, blocks: torch.Tensor, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Validation batches masked once with their own generator: every evaluation sees the same task,
        and evaluating never moves the training RNG (so resumed runs stay exact)."""
        saved, self.collator.generator = self.collator.generator, torch.Generator().manual_seed(seed)
        try:
            return [self.mask(blocks[i : i + batch_size]) for i in range(0, len(blocks), batch_size)]
        finally:
            self.collator.generator = saved

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = torch.zeros((), device=self.device, dtype=torch.long)
        for input_ids, labels in tqdm(batches, desc="evaluating", unit="batch", leave=False, disable=len(batches) < 4):
            input_ids, labels = self.to_device(input_ids, labels)
            loss, batch_correct, batch_count = self.loss(input_ids, labels)
            loss_sum += loss.double() * batch_count
            correct += batch_correct
            count += batch_count
        mean = float(loss_sum / count.clamp(min=1))
        return {
            "val_loss": mean,
            "val_perplexity": float(torch.tensor(mean).exp()),
            "val_accuracy": float(correct / count.clamp(min=1)),
        }

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "collator": self.collator.generator.get_state()}
        if torch.cuda.is_available():
            state.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        self.collator.generator.set_state(state["collator"])
        cuda = [state[k] for k in sorted((k for k in state if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)


def build_training(
    cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase, token_counts: torch.Tensor | None = None
) -> MLMEngine:
    """Model + optimizer + schedule + masking exactly as `python -m pretrain` trains them.

    `token_counts` (per token id, from the training blocks) sets the MLM head's initial bias when
    train.output_bias_init is "unigram".
    """
    return MLMEngine(cfg, tokenizer, token_counts)
