"""stagekit/distributed.py on one process and on two gloo ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stagekit import distributed as d


def test_a_single_process_leaves_values_as_they_are():
    tensor = torch.tensor([3.0, 5.0])
    assert not d.distributed() and d.world_size() == 1 and d.rank() == 0
    assert d.all_reduce(tensor, "mean") is tensor and tensor.tolist() == [3.0, 5.0]
    assert d.all_ranks(7, "min", "cpu") == 7 and d.any_rank(True, "cpu") and not d.any_rank(False, "cpu")
    d.barrier()
    assert d.broadcast(tensor).tolist() == [3.0, 5.0]


def _worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mean = d.all_reduce(torch.tensor([float(rank * 4)]), "mean").item()  # (0 + 4) / 2
        total = d.all_reduce(torch.tensor([rank + 1]), "sum").item()  # 1 + 2
        smallest = d.all_ranks(10 + rank, "min", "cpu")
        flagged = d.any_rank(rank == 1, "cpu")
        shared = d.broadcast(torch.tensor([rank + 100]), src=1).item()
        results[rank] = (d.distributed(), d.world_size(), d.rank(), mean, total, smallest, flagged, shared)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_on_every_collective():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    # fork, not spawn: spawn re-runs the parent's __main__, which after the app's tests is the Streamlit script
    mp.start_processes(_worker, args=(port, results), nprocs=2, join=True, start_method="fork")
    assert results[0] == (True, 2, 0, 2.0, 3, 10, True, 101)
    assert results[1] == (True, 2, 1, 2.0, 3, 10, True, 101)
