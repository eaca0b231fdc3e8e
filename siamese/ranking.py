"""The objectives with in-batch negatives: `loss.name=mnrl` and the ranking half of `loss.name=both`.

Two options change how they are computed, never what they rank against:

- `impl.mini_batch_size` (GradCache, Gao et al. 2021, arXiv:2101.06983): the per-device batch is embedded in
  mini-batches, first without gradients, then again mini-batch by mini-batch with the loss's cached gradients, so
  activation memory is that of one mini-batch while every pair still ranks against the whole batch (all ranks'
  under several processes). `mnrl` uses sentence-transformers' `CachedMultipleNegativesRankingLoss`; `both` runs
  its softmax and ranking parts through the same `CachedLossMixin`. A smaller per-device batch with gradient
  accumulation would instead cut the negatives: each micro-batch ranks against its own pairs only.
- `loss.matryoshka_dims` (Kusupati et al. 2022, arXiv:2205.13147): the ranking loss is also applied to the
  first k dimensions of each embedding, for every listed k, so a truncated embedding still ranks (summed with
  weight 1 per width, as sentence-transformers' `MatryoshkaLoss` does). The NLI head of `both` is trained and
  used on the full embedding only: its classifier over (u, v, |u-v|) has a fixed input width, and a pair
  classifier gains nothing from truncation (it reads two fresh embeddings, never a stored index).

Both rank through `siamese.gather.ranking_loss`: against every rank's candidates, and with a candidate whose input
is identical to a row's own positive (a pair that occurs twice in the data, so lands twice in one batch) left out
of that row's negatives. sentence-transformers reaches the same with its no-duplicates batch sampler, which a
streamed dataset does not use and which would reorder the pairs of each step; its ranking losses have no such mask.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
    SoftmaxLoss,
)

from siamese.config import LossConfig
from siamese.encoder import head_features
from siamese.gather import distributed, input_keys, pad_keys, ranking_loss
from siamese.labels import LABELS
from stagekit.errors import UserError

log = logging.getLogger(__name__)


def matryoshka_widths(model: SentenceTransformer, dims: Sequence[int] | None) -> tuple[int, ...]:
    """The widths the ranking loss trains at, widest first: the model's full width, then `loss.matryoshka_dims`.
    () when Matryoshka is off. Raises UserError for a width that is not below the model's."""
    if not dims:
        return ()
    full = model.get_embedding_dimension()
    for dim in dims:
        if dim >= full:
            raise UserError(
                f"loss.matryoshka_dims: {dim} is not below the model's {full} dimensions (the full width is always "
                "trained; list only the smaller ones)"
            )
    return (full, *sorted(set(dims), reverse=True))


def column_ranking(
    embeddings: Sequence[torch.Tensor], keys: Sequence[torch.Tensor] | None, scale: float
) -> torch.Tensor:
    """sentence-transformers' MultipleNegativesRankingLoss (query to document) on (anchor, positive, negative, …)
    columns of embeddings (B, D) each: every anchor picks its positive among all positives and negatives of the
    global batch. Computed by `ranking_loss`, which leaves out a candidate whose `input_keys` (`keys`: one (B, L)
    tensor per column after the anchor) equal the anchor's positive's. The mean over the anchors."""
    anchors, *columns = embeddings
    labels = torch.cat(
        [torch.full((len(c),), 0 if i == 0 else 2, device=anchors.device) for i, c in enumerate(columns)]
    )
    keys = torch.cat(pad_keys(list(keys))) if keys is not None else None
    return ranking_loss(torch.cat([anchors] * len(columns)), torch.cat(columns), labels, scale, keys)


class DistinctRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss whose negatives leave out inputs identical to a row's positive (`column_ranking`);
    across ranks whenever several processes run."""

    _keys: list[torch.Tensor] | None = None  # the candidate columns' input_keys, set by forward

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        features = list(sentence_features)
        self._keys = [input_keys(f) for f in features[1:]]  # before embedding: a module may change the features
        try:
            return super().forward(features, labels)
        finally:
            self._keys = None

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return column_ranking(embeddings, self._keys, self.scale)


class CachedDistinctRankingLoss(CachedMultipleNegativesRankingLoss):
    """CachedMultipleNegativesRankingLoss (GradCache) whose negatives leave out inputs identical to a row's
    positive (`column_ranking`); across ranks whenever several processes run."""

    _keys: list[torch.Tensor] | None = None  # the candidate columns' input_keys, set by forward

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        features = list(sentence_features)
        self._keys = [input_keys(f) for f in features[1:]]  # read by calculate_loss, within this call
        try:
            return super().forward(features, labels)
        finally:
            self._keys = None

    def calculate_loss(
        self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *, with_backward: bool = False
    ) -> torch.Tensor:
        loss = column_ranking([torch.cat(r) for r in reps], self._keys, self.scale)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss


def mnrl_loss(model: SentenceTransformer, cfg: LossConfig, mini_batch_size: int | None = None) -> torch.nn.Module:
    """MultipleNegativesRankingLoss on (premise, entailment, contradiction), cached with `mini_batch_size`, wrapped
    in MatryoshkaLoss with `cfg.matryoshka_dims`; in-batch negatives from every rank under several processes, none
    identical to a row's positive."""
    gather = distributed()
    if mini_batch_size is None:
        loss = DistinctRankingLoss(model, scale=cfg.mnrl_scale, gather_across_devices=gather)
    else:
        loss = CachedDistinctRankingLoss(
            model, scale=cfg.mnrl_scale, mini_batch_size=mini_batch_size, gather_across_devices=gather
        )
    widths = matryoshka_widths(model, cfg.matryoshka_dims)
    return MatryoshkaLoss(model, loss, list(widths)) if widths else loss


class SoftmaxRankingLoss(CachedLossMixin, torch.nn.Module):
    """SoftmaxLoss and an in-batch ranking loss from one forward pass over a pair batch (`loss.name=both`).

    Ranking part: each premise of an entailment pair must pick its own hypothesis among all
    entailment hypotheses of the batch plus every contradiction hypothesis in it (hard negatives
    whenever a premise's contradiction lands in the same batch); under several processes the batch is the
    global one, all ranks' (siamese/gather.py); a hypothesis identical to a premise's own is no negative of it.
    Neutral pairs feed only the classifier. With Matryoshka widths the
    ranking part is the sum over widths, the classifier reads the full embedding.

    With `mini_batch_size` the encoder's gradient comes through GradCache (see the module docstring). The head's
    gradient then does not: the cached pass scores the loss with the head's weights detached, and the head is
    trained through the returned graph, so the Trainer's scaling of the loss (gradient accumulation, fp16 loss
    scale) reaches it as it reaches the encoder.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        cfg: LossConfig,
        merge_pair_forward: bool = False,
        mini_batch_size: int | None = None,
        classifier: torch.nn.Linear | None = None,
    ) -> None:
        torch.nn.Module.__init__(self)
        self.model = model
        self.softmax = SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=len(LABELS))
        if classifier is not None:  # the same head, e.g. when impl.fit_batch switches to mini-batches
            self.softmax.classifier = classifier
        self.softmax_weight, self.mnrl_weight, self.scale = cfg.softmax_weight, cfg.mnrl_weight, cfg.mnrl_scale
        self.widths = matryoshka_widths(model, cfg.matryoshka_dims) or (None,)
        self.merge_pair_forward = merge_pair_forward
        self.mini_batch_size = mini_batch_size
        self.uses_gradient_cache = mini_batch_size is not None  # read by CachedLossMixin and MatryoshkaLoss
        self._embedded: tuple[torch.Tensor, torch.Tensor] | None = None
        self._keys: torch.Tensor | None = None  # the hypotheses' input_keys, set by forward for `ranking`

    @property
    def classifier(self) -> torch.nn.Linear:
        return self.softmax.classifier

    def ranking(self, u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The ranking loss at every width (None: the full one), summed."""
        return sum(ranking_loss(u[:, :width], v[:, :width], labels, self.scale, self._keys) for width in self.widths)

    def forward(self, features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = labels.view(-1)
        features = list(features)
        self._keys = input_keys(features[1])  # before embedding: a module may change the features
        try:
            return self._forward(features, labels)
        finally:
            self._keys = None

    def _forward(self, features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.uses_gradient_cache:
            u, v = embed_columns(self.model, features, separate_first=not self.merge_pair_forward)
            logits = self.classifier(head_features(u, v).to(self.classifier.weight.dtype))
            return {
                "softmax": self.softmax_weight * F.cross_entropy(logits, labels),
                "mnrl": self.mnrl_weight * self.ranking(u, v, labels),
            }
        total = self.forward_cached(features, labels)  # both parts; the encoder's gradient via GradCache
        u, v = self._embedded
        self._embedded = None
        logits = self.classifier(head_features(u, v).to(self.classifier.weight.dtype))
        head = self.softmax_weight * F.cross_entropy(logits, labels)  # the head's gradient; embeddings detached
        # The sum is `total` in value; its gradient reaches the encoder through `total`, the head through `head`.
        return {"softmax": head, "mnrl": total - head.detach()}

    def calculate_loss(
        self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *, with_backward: bool = False
    ) -> torch.Tensor:
        """Both parts on the whole batch from its mini-batches' embeddings (CachedLossMixin's step 2)."""
        u, v = torch.cat(reps[0]), torch.cat(reps[1])
        self._embedded = (u.detach(), v.detach())
        weight, bias = self.classifier.weight.detach(), self.classifier.bias.detach()
        logits = F.linear(head_features(u, v).to(weight.dtype), weight, bias)
        total = self.softmax_weight * F.cross_entropy(logits, labels) + self.mnrl_weight * self.ranking(u, v, labels)
        if with_backward:
            total.backward()
            total = total.detach()
        return total
