"""The ranking losses on two gloo processes train the one-process objective of the global batch (siamese/losses.py;
for `mnrl` the same as sentence-transformers' `gather_across_devices`), and a twin of a row's positive is no negative
on whichever rank it sits."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from siamese.losses import column_ranking, ranking_loss

pytestmark = pytest.mark.slow

SCALE = 20.0
# Rows per rank: unequal (a short last batch), and rank 1 holds entailment pairs whose contradictions sit on rank 0.
LABELS = torch.tensor([0, 2, 1, 0, 2, 0, 0, 2])
SPLIT = (5, 3)


def embeddings(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def one_process(loss_name: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    u, v = embeddings(len(LABELS), 0).requires_grad_(), embeddings(len(LABELS), 1).requires_grad_()
    if loss_name == "both":
        loss = ranking_loss(u, v, LABELS, SCALE)
    else:
        loss = MultipleNegativesRankingLoss(None, scale=SCALE).compute_loss_from_embeddings([u, v], LABELS)
    loss.backward()
    return loss.item(), u.grad, v.grad


def _rank(rank: int, world: int, port: int, loss_name: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        split = SPLIT if loss_name == "both" else (4, 4)  # MNRL's gather needs one batch size on every rank
        start, stop = sum(split[:rank]), sum(split[: rank + 1])
        u = embeddings(len(LABELS), 0)[start:stop].clone().requires_grad_()
        v = embeddings(len(LABELS), 1)[start:stop].clone().requires_grad_()
        labels = LABELS[start:stop]
        if loss_name == "both":
            loss = ranking_loss(u, v, labels, SCALE)
        else:
            mnrl = MultipleNegativesRankingLoss(None, scale=SCALE, gather_across_devices=True)
            loss = mnrl.compute_loss_from_embeddings([u, v], labels)
            ours = column_ranking([u, v], None, SCALE)  # `mnrl`'s loss: sentence-transformers' on the same ranks
            assert ours.item() == pytest.approx(loss.item(), rel=1e-12)
        loss.backward()
        results[rank] = (loss.item(), u.grad.clone(), v.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("loss_name", ["both", "mnrl"])
def test_two_processes_rank_against_the_global_batch(loss_name):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    # fork, not spawn: a spawned child re-runs the parent's __main__, which after the app tests is a Streamlit script
    mp.start_processes(_rank, args=(2, port, loss_name, results), nprocs=2, join=True, start_method="fork")
    loss, u_grad, v_grad = one_process(loss_name)
    # DDP and the Trainer's logged loss average over the ranks: that average is the one-process loss ...
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(loss, rel=1e-12)
    # ... and DDP's average of the ranks' gradients is its gradient (each row's gradient lives on its own rank).
    assert torch.allclose(torch.cat([results[0][1], results[1][1]]) / 2, u_grad, atol=1e-12)
    assert torch.allclose(torch.cat([results[0][2], results[1][2]]) / 2, v_grad, atol=1e-12)
    # Without the gather each rank ranks among its own rows only: a different, easier objective.
    u, v = embeddings(len(LABELS), 0), embeddings(len(LABELS), 1)
    if loss_name == "both":
        alone = [ranking_loss(u[a:b], v[a:b], LABELS[a:b], SCALE) for a, b in ((0, 5), (5, 8))]
    else:
        mnrl = MultipleNegativesRankingLoss(None, scale=SCALE)
        alone = [mnrl.compute_loss_from_embeddings([u[a:b], v[a:b]], LABELS[a:b]) for a, b in ((0, 4), (4, 8))]
    assert abs(sum(x.item() for x in alone) / 2 - loss) > 1e-3


# A batch with twins across ranks, embedded by a perfect encoder (a premise and its entailment alike): premises
# P0 P1 P2, hypotheses E0 E1 (entailments), C0 (a contradiction). Rank 0: (P0 E0 0) (P0 C0 2) (P1 E1 0); rank 1: (P0
# E0 0), the twin of rank 0's first row; (P2 E1 2), a contradiction identical to P1's entailment; (P1 E1 0).
TWIN_PREMISES = [0, 0, 1, 0, 2, 1]
TWIN_HYPOTHESES = [0, 3, 1, 0, 1, 1]  # meaning of each hypothesis: E0 0, E1 1, C0 3
TWIN_LABELS = torch.tensor([0, 2, 0, 0, 2, 0])
TOKENS = {0: [5, 6], 1: [7, 8, 9], 3: [10]}  # token ids of E0, E1, C0


def twin_batch(start: int, stop: int, padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows start:stop as (premise embeddings, hypothesis embeddings, hypothesis keys padded by `padding`)."""
    u = torch.nn.functional.one_hot(torch.tensor(TWIN_PREMISES[start:stop]), 8).double()
    v = torch.nn.functional.one_hot(torch.tensor(TWIN_HYPOTHESES[start:stop]), 8).double()
    ids = [TOKENS[m] for m in TWIN_HYPOTHESES[start:stop]]
    width = max(map(len, ids)) + padding  # ranks pad to other lengths: the gather pads them to one
    keys = torch.tensor([row + [-1] * (width - len(row)) for row in ids])
    return u, v, keys


def _twin_rank(rank: int, world: int, port: int, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        start, stop = 3 * rank, 3 * rank + 3
        u, v, keys = twin_batch(start, stop, padding=2 if rank == 0 else 0)
        labels = TWIN_LABELS[start:stop]
        results[rank] = (ranking_loss(u, v, labels, SCALE, keys).item(), ranking_loss(u, v, labels, SCALE).item())
    finally:
        dist.destroy_process_group()


def test_a_twin_of_the_positive_on_another_rank_is_no_negative():
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(_twin_rank, args=(2, port, results), nprocs=2, join=True, start_method="fork")
    u, v, keys = twin_batch(0, 6, padding=0)
    alone = ranking_loss(u, v, TWIN_LABELS, SCALE, keys).item()
    assert 0 <= alone < 1e-6
    assert 0 <= (results[0][0] + results[1][0]) / 2 < 1e-6
    # Unmasked, each premise ties its positive with the positive's twins, whichever rank they are on: log 2 for P0
    # (one twin), log 3 for P1 (its entailment twice more, once as P2's contradiction).
    assert (results[0][1] + results[1][1]) / 2 == pytest.approx((math.log(2) + math.log(3)) / 2, rel=1e-6)
