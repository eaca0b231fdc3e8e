"""In-batch negatives from every rank: N processes rank against the same candidates as one process with the
global batch (the ranking part of `loss.name=both`; `mnrl` uses sentence-transformers' own
`gather_across_devices`).

Without this, each rank ranked its premises against its own B hypotheses only: N processes trained an easier
objective (B − 1 negatives instead of N·B − 1) than the one-process run they stand in for.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sentence_transformers.util import all_gather_with_grad


def distributed() -> bool:
    """True when a process group of more than one rank is running (then losses gather across ranks)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_pairs(v: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every rank's hypothesis embeddings and labels, in rank order, and where this rank's rows start.

    `v` (B, D) and `labels` (B,) are this rank's; B may differ between ranks (a short last batch), so rows are
    padded to the largest B for the all-gather and dropped again. Gradients flow back to the rank that
    embedded each row (sentence-transformers' `all_gather_with_grad`, which sums them over ranks: with DDP's
    average, the gradient of the mean of the ranks' losses). Returns (V (ΣB, D), L (ΣB,), offset); alone,
    (v, labels, 0).
    """
    if not distributed():
        return v, labels, 0
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = torch.zeros(world, dtype=torch.long, device=v.device)
    sizes[rank] = len(v)
    dist.all_reduce(sizes)
    longest, pad = int(sizes.max()), int(sizes.max()) - len(v)
    padded_v = torch.cat([v, v.new_zeros(pad, v.shape[1])]) if pad else v
    padded_labels = torch.cat([labels, labels.new_full((pad,), -1)]) if pad else labels
    gathered_v = all_gather_with_grad(padded_v)
    gathered_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(gathered_labels, padded_labels.contiguous())
    keep = torch.cat([torch.arange(r * longest, r * longest + int(n), device=v.device) for r, n in enumerate(sizes)])
    return gathered_v[keep], torch.cat(gathered_labels)[keep], int(sizes[:rank].sum())


def ranking_loss(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Each entailment premise must pick its own hypothesis among the entailment and contradiction hypotheses
    of the whole global batch (all ranks). Cross-entropy summed over this rank's premises and divided by the
    global premise count, times the world size: averaged over ranks (as DDP and the Trainer's logged loss do)
    it is the one-process mean. 0 (with a graph) when no rank has an entailment pair."""
    all_v, all_labels, offset = gather_pairs(v, labels)
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
    return torch.nn.functional.cross_entropy(scores, target, reduction="sum") * world / total
