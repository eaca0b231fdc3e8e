"""In-batch negatives from every rank: N processes rank against the same candidates as one process with the
global batch (both ranking losses: `loss.name=mnrl` and the ranking part of `both`, siamese/ranking.py).

Without this, each rank would rank its premises against its own B hypotheses only: N processes would train an
easier objective (B − 1 negatives instead of N·B − 1) than the one-process run they stand in for.

A candidate whose input is identical to a premise's own hypothesis (the same token ids: a pair that occurs twice
in the data, or another row's contradiction that is this row's entailment) is no negative of that premise: it is
masked out of its candidates, on whichever rank it sits. Else a perfect encoder could not rank its positive above
its identical twin, and its loss could not fall below log 2.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sentence_transformers.util import all_gather_with_grad


def distributed() -> bool:
    """True when a process group of more than one rank is running (then losses gather across ranks)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = torch.zeros(2, world, dtype=torch.long, device=v.device)  # rows, key length
    sizes[0, rank] = len(v)
    sizes[1, rank] = 0 if keys is None else keys.shape[1]
    dist.all_reduce(sizes)
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
    return gathered_v[keep], gathered_labels[keep], kept_keys, int(rows[:rank].sum())


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (one shape on all ranks), concatenated in rank order; no gradient."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
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
    world = dist.get_world_size() if distributed() else 1
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
