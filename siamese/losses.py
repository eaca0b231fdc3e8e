"""The Siamese stage's objectives, chosen by `loss.name` (`build_loss`): `softmax`, sentence-transformers'
SoftmaxLoss (a linear NLI head over (u, v, |u-v|)); `mnrl`, in-batch ranking of (premise, entailment,
contradiction) triplets; `both`, the two on the same pair batch.

The ranking losses (`mnrl`, the ranking half of `both`) rank each premise's hypothesis among the in-batch
negatives of every rank (`ranking_loss`): N processes rank against the same candidates as one process with the
global batch. Without that, each rank would rank its premises against its own B hypotheses only: N processes
would train an easier objective (B − 1 negatives instead of N·B − 1) than the one-process run they stand in for.

A candidate whose input is identical to a premise's own hypothesis (the same token ids: a pair that occurs twice
in the data, or another row's contradiction that is this row's entailment) is no negative of that premise: it is
masked out of its candidates, on whichever rank it sits. Else a perfect encoder could not rank its positive above
its identical twin, and its loss could not fall below log 2. sentence-transformers reaches the same with its
no-duplicates batch sampler, which a streamed dataset does not use and which would reorder the pairs of each
step; its ranking losses have no such mask.

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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
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
from sentence_transformers.util import all_gather_with_grad

from siamese.config import LossConfig
from siamese.inference.encoder import head_features
from siamese.inference.labels import LABELS
from stagekit.distributed import all_reduce, distributed, rank, world_size
from stagekit.errors import UserError

log = logging.getLogger(__name__)


def input_keys(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """What identifies a column's inputs: its token ids (B, L), the tokens first and -1 after them where padded
    (on either side). Two rows are the same input exactly when their keys are equal (both padded to one length)."""
    ids = features["input_ids"].long()
    mask = features.get("attention_mask")
    if mask is None:
        return ids.clone()
    keep = mask.bool()
    first = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # the tokens, in order, then padding
    return torch.where(keep, ids, -1).gather(1, first)


def pad_keys(keys: list[torch.Tensor], length: int | None = None) -> list[torch.Tensor]:
    """`input_keys` of several columns padded with -1 to one length (`length`, or the longest's)."""
    length = max(k.shape[1] for k in keys) if length is None else length
    return [torch.nn.functional.pad(k, (0, length - k.shape[1]), value=-1) for k in keys]


def gather_pairs(
    v: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """Every rank's hypothesis embeddings, labels and (if given) `input_keys`, in rank order, and where this
    rank's rows start.

    `v` (B, D), `labels` (B,) and `keys` (B, L) are this rank's; B and L may differ between ranks (a short last
    batch, another longest text), so rows are padded to the largest B (keys to the largest L) for the all-gather
    and dropped again. Gradients flow back to the rank that embedded each row (sentence-transformers'
    `all_gather_with_grad`, which sums them over ranks: with DDP's average, the gradient of the mean of the ranks'
    losses). Returns (V (ΣB, D), L (ΣB,), K (ΣB, max L) or None, offset); alone, (v, labels, keys, 0).
    """
    if not distributed():
        return v, labels, keys, 0
    me, world = rank(), world_size()
    sizes = torch.zeros(2, world, dtype=torch.long, device=v.device)  # rows, key length
    sizes[0, me] = len(v)
    sizes[1, me] = 0 if keys is None else keys.shape[1]
    all_reduce(sizes, "sum")
    rows, lengths = sizes
    longest, pad = int(rows.max()), int(rows.max()) - len(v)
    padded_v = torch.cat([v, v.new_zeros(pad, v.shape[1])]) if pad else v
    gathered_v = all_gather_with_grad(padded_v)
    gathered_labels = _all_gather(torch.cat([labels, labels.new_full((pad,), -1)]) if pad else labels)
    gathered_keys = None
    if keys is not None:
        (keys,) = pad_keys([keys], int(lengths.max()))
        gathered_keys = _all_gather(torch.cat([keys, keys.new_full((pad, keys.shape[1]), -1)]) if pad else keys)
    keep = torch.cat([torch.arange(r * longest, r * longest + int(n), device=v.device) for r, n in enumerate(rows)])
    kept_keys = None if gathered_keys is None else gathered_keys[keep]
    return gathered_v[keep], gathered_labels[keep], kept_keys, int(rows[:me].sum())


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (one shape on all ranks), concatenated in rank order; no gradient."""
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def ranking_loss(
    u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, scale: float, keys: torch.Tensor | None = None
) -> torch.Tensor:
    """Each entailment premise must pick its own hypothesis among the entailment and contradiction hypotheses
    of the whole global batch (all ranks). Cross-entropy summed over this rank's premises and divided by the
    global premise count, times the world size: averaged over ranks (as DDP and the Trainer's logged loss do)
    it is the one-process mean. 0 (with a graph) when no rank has an entailment pair.

    `u`, `v` (B, D) embeddings of premises and hypotheses, `labels` (B,) 0/1/2; `keys` (B, L), the hypotheses'
    `input_keys`: a candidate whose key equals a premise's own hypothesis's is left out of that premise's
    candidates (its logit set to -inf). None: nothing is left out."""
    all_v, all_labels, all_keys, offset = gather_pairs(v, labels, keys)
    entail = labels == 0
    all_entail = all_labels == 0
    world = world_size()
    total = int(all_entail.sum())
    if total == 0:
        return u.sum() * 0.0
    candidates = torch.nn.functional.normalize(torch.cat([all_v[all_entail], all_v[all_labels == 2]]), dim=-1)
    before = int(all_entail[:offset].sum())  # this rank's first premise's hypothesis is candidate number `before`
    if not entail.any():
        return (u.sum() + candidates.sum()) * 0.0  # still part of the gather's graph on every rank
    anchors = torch.nn.functional.normalize(u[entail], dim=-1)
    scores = scale * anchors @ candidates.T
    target = torch.arange(before, before + len(anchors), device=scores.device)
    if all_keys is not None:
        scores = scores.masked_fill(_twins(all_keys[all_entail], all_keys[all_labels == 2], target), float("-inf"))
    return torch.nn.functional.cross_entropy(scores, target, reduction="sum") * world / total


def _twins(positives: torch.Tensor, negatives: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(A, C) True where candidate c (positives, then negatives) is the same input as anchor a's own positive
    `target[a]`, other than that positive itself."""
    _, group = torch.unique(torch.cat([positives, negatives]), dim=0, return_inverse=True)
    twins = group[None, :] == group[target][:, None]
    twins[torch.arange(len(target), device=target.device), target] = False
    return twins


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
    global one, all ranks' (`ranking_loss`); a hypothesis identical to a premise's own is no negative of it.
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


class PairSoftmaxLoss(SoftmaxLoss):
    """SoftmaxLoss whose two columns can share one forward pass (`impl.merge_pair_forward`).

    One forward over 2·B rows padded to the longer column launches half the kernels of two forwards:
    faster on a GPU; on a CPU the extra padding usually costs more than it saves. Same loss either way.
    """

    def __init__(self, model: SentenceTransformer, merge_pair_forward: bool = False) -> None:
        super().__init__(model, model.get_embedding_dimension(), num_labels=len(LABELS))
        self.merge_pair_forward = merge_pair_forward

    def forward(self, features, labels: torch.Tensor) -> torch.Tensor:
        u, v = embed_columns(self.model, features, separate_first=not self.merge_pair_forward)
        logits = self.classifier(head_features(u, v).to(self.classifier.weight.dtype))
        return self.loss_fct(logits, labels.view(-1))


def build_loss(
    model: SentenceTransformer,
    cfg: LossConfig,
    merge_pair_forward: bool = False,
    mini_batch_size: int | None = None,
    classifier: torch.nn.Linear | None = None,
) -> torch.nn.Module:
    """The objective `cfg.name` names (the module docstring for the ranking ones and their options).

    `mini_batch_size` (impl.mini_batch_size) embeds a ranking loss's batch in mini-batches with cached gradients;
    `classifier` gives `both` an existing NLI head (same parameter names, so the head's optimizer groups match).
    """
    if cfg.name == "softmax":
        return PairSoftmaxLoss(model, merge_pair_forward)
    if mini_batch_size is not None and merge_pair_forward:
        log.warning(
            "impl.merge_pair_forward has no effect with impl.mini_batch_size: columns are embedded by mini-batch"
        )
    if cfg.name == "mnrl":
        return mnrl_loss(model, cfg, mini_batch_size)
    return SoftmaxRankingLoss(model, cfg, merge_pair_forward, mini_batch_size, classifier)


def loss_classifier(loss: torch.nn.Module) -> torch.nn.Linear | None:
    """The NLI head a loss trains (SoftmaxLoss does not save it: we do), or None for ranking only."""
    return getattr(loss, "classifier", None)


def head_parameter_pattern(loss: torch.nn.Module) -> str | None:
    r"""A regular expression matching exactly the NLI head's parameter names within `loss` (e.g.
    `^(?:classifier\.weight|classifier\.bias)$`; `softmax.classifier.*` in SoftmaxRankingLoss), for
    sentence-transformers' `learning_rate_mapping`, which puts the matches in their own optimizer groups.
    None when the loss trains no head. Names are found by identity, so no encoder parameter can match."""
    classifier = loss_classifier(loss)
    if classifier is None:
        return None
    head = {id(p) for p in classifier.parameters()}
    names = [name for name, param in loss.named_parameters() if id(param) in head]
    return "^(?:" + "|".join(re.escape(name) for name in names) + ")$"
