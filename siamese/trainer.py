"""What the Siamese stage adds to SentenceTransformerTrainer, on top of the stack both stages share
(stagekit/schedule.py `ScheduleMixin`, stagekit/callbacks.py `ThroughputMixin`): the NLI head in every
checkpoint and kept in step across ranks, NLI accuracy during training, a resume that refuses a checkpoint
holding more than tensors in one line, and the same training pairs for any `impl.dataloader_num_workers`."""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from sentence_transformers import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from transformers import TrainerCallback

from siamese.inference.encoder import HEAD_FILE, NLIEncoder, save_head
from stagekit.callbacks import ThroughputMixin
from stagekit.distributed import all_reduce
from stagekit.errors import UserError
from stagekit.schedule import ScheduleMixin
from stagekit.sources import reading
from stagekit.weights import check_weights, load_tensors

log = logging.getLogger(__name__)


class SiameseTrainer(ThroughputMixin, ScheduleMixin, SentenceTransformerTrainer):
    """`classifier`: the loss's NLI head (None for ranking-only objectives); `data_name`: the training sources
    as the one-line error of a malformed row names them."""

    def __init__(self, *args, classifier: torch.nn.Linear | None = None, data_name: str = "training data", **kwargs):
        super().__init__(*args, **kwargs)
        self.classifier, self.data_name = classifier, data_name
        if classifier is not None:
            self.add_callback(AverageHeadGradients(classifier))

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        # A malformed row met while streaming, or a checkpoint file holding more than tensors: one line each.
        with reading(self.data_name), refusing_unsafe_pickles(resume_from_checkpoint):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def worst_case_batch(self, n: int) -> dict:
        """`n` training rows as long as `model.max_seq_length` allows, collated: `impl.fit_batch`'s memory trial."""
        return longest_pairs(self, self.model.max_seq_length)(n)

    def _build_dataloader(self, dataset, batch_size: int, dataset_kind: str):
        # sentence-transformers' loader with its own settings; only the stream it reads in workers changes.
        loader = super()._build_dataloader(dataset, batch_size, dataset_kind)
        if dataset_kind != "train" or not loader.num_workers or not isinstance(dataset, datasets.IterableDataset):
            return loader
        return torch.utils.data.DataLoader(
            StreamInMainOrder(dataset),
            batch_size=loader.batch_size,
            drop_last=loader.drop_last,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            persistent_workers=loader.persistent_workers,
            prefetch_factor=loader.prefetch_factor,
        )

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints and the final model alike: sentence-transformers saves the encoder, not the loss's head.
        super()._save(output_dir, state_dict)
        if self.classifier is not None:
            save_head(self.classifier, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        check_weights(checkpoint_path)  # the best checkpoint too (train.select_best): a file cut short in one line
        super()._load_from_checkpoint(checkpoint_path)
        if self.classifier is None:
            return
        head_file = Path(checkpoint_path) / HEAD_FILE
        if not head_file.is_file():
            raise UserError(f"checkpoint {checkpoint_path} has no {HEAD_FILE}; it cannot resume the NLI head")
        device = self.classifier.weight.device
        self.classifier.load_state_dict(load_tensors(head_file, device=device))
        log.info("restored the NLI head from %s", head_file)

    def _load_best_model(self) -> None:
        # With train.select_best: the encoder and the NLI head of the best checkpoint, through the same
        # `_load_from_checkpoint` as a resume. sentence-transformers' own version logs a failure and goes on,
        # which would ship the last step's weights under the best step's name: here a failure raises.
        best = self.state.best_model_checkpoint
        log.info(
            "loading the best checkpoint %s (%s = %s)", best, self.args.metric_for_best_model, self.state.best_metric
        )
        self._load_from_checkpoint(best)
        self.model.model_card_data.set_best_model_step(int(best.rsplit("-", 1)[-1]))


def longest_pairs(trainer: Any, max_seq_length: int) -> Callable[[int], dict[str, Any]]:
    """Inputs for stagekit/batch_fit.py's trial on a sentence-pair trainer: `batch` rows shaped like the first
    training row, every text column long enough to reach `max_seq_length` tokens, collated by the trainer's own
    collator."""

    def make(batch: int) -> dict[str, Any]:
        first = next(iter(trainer.train_dataset))
        long_text = " ".join(["sentence"] * max_seq_length)
        row = {k: long_text if isinstance(v, str) else v for k, v in first.items()}
        return trainer.data_collator([dict(row) for _ in range(batch)])

    return make


class StreamInMainOrder(torch.utils.data.IterableDataset):
    """The training stream in the order the main process reads it, from dataloader worker 0 alone.

    Inside a dataloader worker, datasets re-seeds the shuffle buffer and the mixing of sources by the
    worker's id (id 0 too) and hands each worker its own files, so the pairs trained on would depend on
    `impl.dataloader_num_workers`, a setting that may change only speed (tests/siamese/test_train_inputs.py).
    `IterableDataset.iter` reads without that worker logic. The stream has one order, so one worker
    reads, cleans and collates it ahead of the training step; any others stop at once.
    """

    def __init__(self, stream: datasets.IterableDataset, rows_per_read: int = 256) -> None:
        self.stream, self.rows_per_read = stream, rows_per_read

    def set_epoch(self, epoch: int) -> None:  # called each pass by accelerate, as on the stream itself
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id > 0:
            return
        for batch in self.stream.iter(batch_size=self.rows_per_read):
            columns = list(batch)
            for i in range(len(batch[columns[0]])):
                yield {column: batch[column][i] for column in columns}


class AverageHeadGradients(TrainerCallback):
    """Average the NLI head's gradients over all ranks before each optimizer step.

    SoftmaxLoss's classifier lives in the loss, outside the module DDP wraps, so DDP never averages its
    gradients: without this, every rank's head would drift apart (each trained on its own pairs only).
    """

    def __init__(self, classifier: torch.nn.Module) -> None:
        self.classifier = classifier

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for param in self.classifier.parameters():  # all_reduce leaves a single process's gradients as they are
            if param.grad is not None:
                all_reduce(param.grad, "mean")


@contextlib.contextmanager
def refusing_unsafe_pickles(checkpoint: str | None) -> Iterator[None]:
    """A checkpoint file holding more than tensors → one line. The Trainer's torch.load calls pass
    weights_only=True (tested), so torch refuses to unpickle it and nothing in it runs."""
    try:
        yield
    except pickle.UnpicklingError as err:
        if checkpoint is None:
            raise
        detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "weights_only=True")
        raise UserError(
            f"{checkpoint}: a file there holds something that is not a plain tensor ({detail}); it was not "
            "unpickled, as that could run code. Remove this checkpoint to resume from an earlier one"
        ) from None


class NLIAccuracyEvaluator(SentenceEvaluator):
    """Accuracy and cross-entropy of the live NLI head on held-out pairs (eval_<name>_accuracy in logs)."""

    def __init__(self, pairs: dict[str, list], classifier: torch.nn.Linear, name: str, batch_size: int = 64):
        super().__init__()
        self.pairs, self.classifier, self.name, self.batch_size = pairs, classifier, name, batch_size
        self.primary_metric = "accuracy"

    @torch.inference_mode()
    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        # The same inference path as evaluation and the app, over the live model and head.
        prediction = NLIEncoder(model, self.classifier).predict(
            self.pairs["premise"], self.pairs["hypothesis"], batch_size=self.batch_size
        )
        labels = np.asarray(self.pairs["label"])
        gold = prediction.probs[np.arange(len(labels)), labels]
        metrics = {
            "accuracy": float((prediction.probs.argmax(axis=1) == labels).mean()),
            "loss": float(-np.log(np.clip(gold, 1e-12, None)).mean()),  # cross-entropy of the head's softmax
            "mean_cosine": float(prediction.cosine.mean()),
        }
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
