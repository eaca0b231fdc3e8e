"""Whether this process is one of several, and the few collectives both stages use.

Every "more than one process?" question in the code goes through `distributed()`: a process group may be
initialised with a single rank (torchrun --nproc_per_node=1), and then no collective is needed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def distributed() -> bool:
    """True when a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks in the process group; 1 without one."""
    return dist.get_world_size() if distributed() else 1


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if distributed() else 0


def all_reduce(tensor: torch.Tensor, op: Literal["sum", "mean", "min", "max"]) -> torch.Tensor:
    """`tensor` reduced over every rank, in place (and returned); unchanged on a single process. "mean" is the
    sum divided by the number of ranks."""
    if not distributed():
        return tensor
    dist.all_reduce(tensor, op=_OPS["sum" if op == "mean" else op])
    if op == "mean":
        tensor /= dist.get_world_size()
    return tensor


def all_ranks(value: int, op: Literal["sum", "min", "max"], device: torch.device | str) -> int:
    """An integer `value` reduced over every rank (e.g. the smallest batch every rank fits); itself alone."""
    if not distributed():
        return value
    return int(all_reduce(torch.tensor([value], device=device), op).item())


def any_rank(flag: bool, device: torch.device | str) -> bool:
    """True on every rank when `flag` is True on any rank; the flag itself on a single process."""
    return bool(all_ranks(int(flag), "max", device))


def barrier() -> None:
    """Wait for every rank; nothing on a single process."""
    if distributed():
        dist.barrier()


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s `tensor` on every rank, in place (and returned); unchanged on a single process."""
    if distributed():
        dist.broadcast(tensor, src=src)
    return tensor
