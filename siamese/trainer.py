"""What the Siamese stage adds to SentenceTransformerTrainer: the NLI head in every checkpoint, a stop on
NaN/inf loss, warmup in front of ReduceLROnPlateau, NLI accuracy during training, and a resume that
skips a half-written checkpoint and refuses one holding more than tensors in one line."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from transformers import TrainerCallback

from common.errors import UserError
from siamese.encoder import HEAD_FILE, NLIEncoder, save_head

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; nothing was saved after the last good checkpoint."""


class SiameseTrainer(SentenceTransformerTrainer):
    def __init__(self, *args, classifier: torch.nn.Linear | None = None, stop_on_nonfinite: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.classifier = classifier
        self.stop_on_nonfinite = stop_on_nonfinite

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints and the final model alike: sentence-transformers saves the encoder, not the loss's head.
        super()._save(output_dir, state_dict)
        if self.classifier is not None:
            save_head(self.classifier, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        super()._load_from_checkpoint(checkpoint_path)
        if self.classifier is None:
            return
        head_file = Path(checkpoint_path) / HEAD_FILE
        if not head_file.is_file():
            raise UserError(f"checkpoint {checkpoint_path} has no {HEAD_FILE}; it cannot resume the NLI head")
        device = self.classifier.weight.device
        self.classifier.load_state_dict(load_file(str(head_file), device=str(device)))
        log.info("restored the NLI head from %s", head_file)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if isinstance(result, tuple) else result
        if self.stop_on_nonfinite and model.training and not bool(torch.isfinite(loss.detach()).all()):
            # Raised before backward/step/save: the newest checkpoint on disk is the last good state.
            ckpts = sorted(Path(self.args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
            last = str(ckpts[-1]) if ckpts else "none yet"
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at step {self.state.global_step + 1}; stopped without saving. "
                f"Last good checkpoint: {last}. Lower train.learning_rate or check the data, then rerun with --resume"
            )
        return result


def resumable_checkpoint(checkpoints: Path) -> str | None:
    """The newest complete checkpoint under `checkpoints`; newer ones a kill left half-written are removed.

    The Trainer writes a checkpoint folder in place, trainer_state.json last: a folder whose state is
    missing or unreadable was cut short, and resuming from it would fail on its first missing file.
    """
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and p.name[len("checkpoint-") :].isdigit()]
    for path in sorted(found, key=lambda p: int(p.name[len("checkpoint-") :]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (FileNotFoundError, ValueError):
            log.warning("%s was not written completely (killed while saving?): removing it", path)
            shutil.rmtree(path)
    return None


@contextlib.contextmanager
def refusing_unsafe_pickles(checkpoint: str | None) -> Iterator[None]:
    """A checkpoint file holding more than tensors → one line. The Trainer's torch.load calls pass
    weights_only=True (tested), so torch refused to unpickle it and nothing in it ran."""
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


class PlateauWarmup(TrainerCallback):
    """Linear warmup in front of ReduceLROnPlateau, which applies none of its own (see NOTES.md)."""

    def __init__(self, warmup_steps: int, learning_rate: float) -> None:
        self.warmup_steps, self.learning_rate = warmup_steps, learning_rate

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None and state.global_step < self.warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate * (state.global_step + 1) / self.warmup_steps


class TimeBudget(TrainerCallback):
    """Stop and save once the training time budget is spent, so a run on a busy machine still ends on time."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.started > self.seconds and not control.should_training_stop:
            log.warning(
                "time budget of %.1f min spent at step %d: stopping early", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        return control


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
