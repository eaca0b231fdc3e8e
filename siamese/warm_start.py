"""Warm start of the NLI head: fit it on the frozen encoder's features before fine-tuning moves the encoder.

SoftmaxLoss's classifier starts random, and at the encoder's learning rate it stays close to random for
most of a short run, while the encoder is trained through it (all-MiniLM-L6-v2's STS-B fell from
82 to 30 in one pass over the 29k-pair subset). Here the head is first fitted as a multinomial logistic
regression on fixed (u, v, |u-v|) features of the first training pairs — the frozen-encoder baseline of docs/results.md ("Siamese fine-tuning: the recipe")
(scikit-learn's LogisticRegression, C = 1, 57.9 % on MNLI dev matched) — so training starts from a head
that already separates the classes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from siamese.inference.encoder import NLIEncoder, head_features
from stagekit.distributed import broadcast

log = logging.getLogger(__name__)

# L-BFGS iterations of the full-batch fit. Convex problem from a zero start: measured on 1,024 MNLI pairs
# with all-MiniLM-L6-v2 features, it reached Adam's 300-step objective to 1e-7 in 0.2 s.
MAX_ITER = 300


@dataclass
class WarmStart:
    """What the warm start did, for the log and metrics.json (accuracies in [0, 1])."""

    pairs: int
    seconds: float
    fit_accuracy: float  # on the pairs it was fitted on
    eval_accuracy: float | None  # on the held-out eval pairs (None without them)
    eval_accuracy_untrained: float | None  # the random head it replaced, on the same pairs

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def pair_features(model: SentenceTransformer, pairs: dict[str, list], batch_size: int) -> torch.Tensor:
    """(n, 3·d) features (u, v, |u-v|) of the frozen encoder, in eval mode and without gradients.

    The same inference path as evaluation and the app (`NLIEncoder.embed_core`: what the head reads); the model's training mode is
    restored afterwards. The result is an ordinary tensor (not an inference-mode one), so it can be fitted on.
    """
    was_training = model.training
    try:
        encoder = NLIEncoder(model.eval())
        u = encoder.embed_core(pairs["premise"], batch_size)
        v = encoder.embed_core(pairs["hypothesis"], batch_size)
    finally:
        model.train(was_training)
    return head_features(u, v).float().clone()


def fit_linear_head(
    features: torch.Tensor, labels: torch.Tensor, num_labels: int, max_iter: int = MAX_ITER
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on fixed features by full-batch L-BFGS from zeros.

    Minimises mean cross-entropy + ||W||² / (2n): scikit-learn's LogisticRegression objective at C = 1
    (C·Σ loss + ||W||²/2, divided by C·n), the bias not penalised. Convex and started from zeros, so the
    result depends only on the features (deterministic on one device).

    Args:
        features: (n, f) float features.
        labels: (n,) class ids in [0, num_labels).
    Returns:
        weight (num_labels, f) and bias (num_labels,), in the features' dtype and on their device.
    """
    n, dim = features.shape
    weight = torch.zeros(num_labels, dim, dtype=features.dtype, device=features.device, requires_grad=True)
    bias = torch.zeros(num_labels, dtype=features.dtype, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )  # fmt: skip

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + (weight * weight).sum() / (2 * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach(), bias.detach()


def accuracy(classifier: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        logits = classifier(features.to(classifier.weight.device, classifier.weight.dtype))
    return float((logits.argmax(dim=-1).cpu() == labels.cpu()).float().mean())


def broadcast_head(classifier: torch.nn.Linear) -> None:
    """Rank 0's head on every rank: the fits agree up to float noise; training must start from one head."""
    for param in classifier.parameters():
        broadcast(param.data, src=0)


def warm_start_head(
    model: SentenceTransformer,
    classifier: torch.nn.Linear,
    fit_pairs: dict[str, list],
    eval_pairs: dict[str, list] | None,
    batch_size: int = 64,
) -> WarmStart:
    """Fit `classifier` in place on the frozen `model`'s features of `fit_pairs` (see `fit_linear_head`),
    then make it the same on every rank. `eval_pairs` only measure it (before and after)."""
    started = time.time()
    features = pair_features(model, fit_pairs, batch_size)
    labels = torch.as_tensor(np.asarray(fit_pairs["label"]), device=features.device)
    weight, bias = fit_linear_head(features, labels, classifier.out_features)
    held_out = None
    if eval_pairs is not None:
        held_out = (pair_features(model, eval_pairs, batch_size), torch.as_tensor(np.asarray(eval_pairs["label"])))
    before = accuracy(classifier, *held_out) if held_out else None
    with torch.no_grad():
        classifier.weight.copy_(weight.to(classifier.weight))
        classifier.bias.copy_(bias.to(classifier.bias))
    broadcast_head(classifier)
    result = WarmStart(
        pairs=len(labels),
        seconds=time.time() - started,
        fit_accuracy=accuracy(classifier, features, labels),
        eval_accuracy=accuracy(classifier, *held_out) if held_out else None,
        eval_accuracy_untrained=before,
    )
    log.info(
        "NLI head warm start: logistic regression on %d frozen-encoder pairs in %.0f s; accuracy %.3f on them, "
        "%s on the eval pairs (untrained head: %s)",
        result.pairs, result.seconds, result.fit_accuracy, _fmt(result.eval_accuracy),
        _fmt(result.eval_accuracy_untrained),
    )  # fmt: skip
    return result


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
