"""transformers' Trainer for MLM pretraining: masked-token metrics, a short-block warm-up, tokens/s.

The training step is the Trainer's own (DDP, accumulation, bf16 autocast, clipping, fused AdamW,
checkpoints with optimizer/scheduler/RNG state, resume). What MLM adds:
- `evaluate` scores the fixed, pre-masked validation blocks token-weighted (the mean cross-entropy over
  every masked token, as perplexity is defined), with masked-token accuracy, gathered over all ranks;
  with a training masking other than BERT's it also scores a BERT-masked copy (`eval_bert15_*`), so runs
  with different masking rates compare;
- `ShortBlockWarmup` sets the model's `sequence_length` for the first steps;
- blocks are visited in a seeded order computed index by index (`BlockOrder`), so no per-epoch
  permutation of the corpus is held in memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback

from pretrain.blocks import BlockOrder
from pretrain.model import IGNORE_INDEX
from stagekit.callbacks import ThroughputMixin
from stagekit.schedule import ScheduleMixin


class ShortBlockWarmup(TrainerCallback):
    """Train on pieces of `size` tokens for the first `steps` optimizer steps (cramming's curriculum):
    attention over short spans is cheaper and its local structure is what a fresh model learns first."""

    def __init__(self, steps: int, size: int) -> None:
        self.steps, self.size = steps, size

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            model.sequence_length = self.size if state.global_step < self.steps else None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # A run may end inside the warm-up (max_steps, the time budget): what follows sees whole blocks.
        if model is not None:
            model.sequence_length = None


class MLMTrainer(ThroughputMixin, ScheduleMixin, Trainer):
    """`eval_sets`: {metric infix: pre-masked validation set}; "" is the primary set (`eval_loss` drives the
    plateau schedule and early stopping), e.g. {"": at the training masking, "bert15_": at BERT's}."""

    def __init__(self, *args: Any, eval_sets: dict[str, Dataset], **kwargs: Any) -> None:
        super().__init__(*args, eval_dataset=eval_sets[""], **kwargs)
        self.eval_sets = eval_sets

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """A checkpoint leaves out weights tied to others (the MLM decoder shares the word embeddings, its bias
        the head's bias): they are loaded with those, so only keys sharing memory with no loaded tensor are
        reported missing. The tie itself is checked, not assumed (transformers re-ties only when the missing
        keys equal `_keys_to_ignore_on_save`, which these models leave empty)."""
        self.model.tie_weights()
        missing = set(load_result.missing_keys)
        tensors = self.model.state_dict()
        loaded = {t.data_ptr() for k, t in tensors.items() if k not in missing}
        untied = sorted(k for k in missing if k not in tensors or tensors[k].data_ptr() not in loaded)
        super()._issue_warnings_after_load(type(load_result)(untied, list(load_result.unexpected_keys)))

    def worst_case_batch(self, n: int) -> dict[str, torch.Tensor]:
        """The first `n` masked training blocks as one batch: `impl.fit_batch`'s memory trial (blocks all have
        the same length, so any `n` of them cost the same)."""
        return self.data_collator([self.train_dataset[i] for i in range(n)])

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> BlockOrder:
        """Every block once per epoch in a seeded order that is never materialised (pretrain/blocks.py)."""
        return BlockOrder(len(train_dataset if train_dataset is not None else self.train_dataset), self.args.seed)

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """Every block once, sharded over the ranks (the last batch evened out with repeats that
        `gather_for_metrics` drops again); unlike training batches, none is dropped.
        """
        # Its own generator: creating an iterator draws a seed, and drawing it from torch's global RNG would
        # shift every later dropout mask, so an extra evaluation would make a resumed run differ.
        loader = DataLoader(
            dataset, batch_size=self.args.eval_batch_size, collate_fn=self.data_collator, generator=torch.Generator()
        )
        state = self.accelerator.state
        return prepare_data_loader(
            loader, self.args.device, num_processes=state.num_processes, process_index=state.process_index
        )

    @torch.no_grad()
    def score(self, dataset: Dataset) -> dict[str, float]:
        """Token-weighted loss (nats), perplexity and masked-token accuracy of `dataset` over all ranks."""
        model = self.model
        was_training, length = model.training, getattr(model, "sequence_length", None)
        model.eval()
        model.sequence_length = None  # full blocks, whatever the warm-up phase
        totals = torch.zeros(3, dtype=torch.float64, device=self.args.device)
        try:
            for batch in self.eval_loader(dataset):
                batch = self._prepare_inputs(batch)
                with self.accelerator.autocast():
                    logits = model(input_ids=batch["input_ids"], labels=batch["labels"]).logits
                labels = batch["labels"]
                selected = labels != IGNORE_INDEX
                if logits.dim() == 3:  # the full head (impl.masked_only_head=false)
                    logits = logits[selected]
                targets = labels[selected]
                rows = selected.nonzero()[:, 0]
                per_block = torch.zeros(len(labels), 3, dtype=torch.float64, device=labels.device)
                per_block[:, 0].index_add_(0, rows, F.cross_entropy(logits.float(), targets, reduction="none").double())
                per_block[:, 1].index_add_(0, rows, (logits.argmax(-1) == targets).double())
                per_block[:, 2] = selected.sum(1).double()
                # gather_for_metrics drops the blocks accelerate repeats to even out the last batch
                totals += self.accelerator.gather_for_metrics(per_block).sum(0)
        finally:
            model.sequence_length = length
            model.train(was_training)
        loss = float(totals[0] / totals[2].clamp(min=1))
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": float(totals[1] / totals[2])}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = {
            f"{metric_key_prefix}_{infix}{name}": value
            for infix, dataset in self.eval_sets.items()
            for name, value in self.score(dataset).items()
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
