"""The process group both stages run in: joining it (`setup_process`, with torch's threads and the seed),
whether this process is one of several, the few collectives both stages use, and what a run needs from
torchrun's elastic agent on one machine or several.

Every "more than one process?" question in the code goes through `distributed()`: a process group may be
initialised with a single rank (torchrun --nproc_per_node=1), and then no collective is needed.

From torchrun: a restarted group that forms, and a failing rank that stops every other rank at once (a
restart resumes by itself: stagekit/resume.py `resumes_after_restart`).

- **The group forms again after a restart.** torchrun's c10d rendezvous shares its own TCP store with the
  workers (`TORCHELASTIC_USE_AGENT_STORE=True`), and that store lives as long as torchrun, across restarts.
  torch's `env://` init writes the gloo / NCCL addresses under the same keys in every attempt, so a restarted
  rank could read a dead worker's address from the attempt before and fail with "Gloo connectFullMesh failed
  … timed out connecting … Connection refused". `join_process_group` initialises the group itself on a store
  prefixed with the restart count (accelerate then uses that group as it is).
- **A failing rank stops all.** A rank that raises writes one line naming itself and the cause into the
  store (`report_failure`); a watcher thread on every rank reads it within `WATCH_INTERVAL_S` and ends that
  process with the same line. Without it, ranks on other machines waited in their next collective until the
  NCCL / gloo timeout (30 minutes by default), because their own torchrun saw nothing wrong.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from stagekit.errors import UserError

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


log = logging.getLogger(__name__)

FAILED = "bert-failed"  # the store key a failing rank writes its one-line cause under
WATCH_INTERVAL_S = 0.5  # how often each rank looks for another rank's failure
STORE_TIMEOUT = timedelta(minutes=30)  # torch's default process-group timeout

_store: dist.Store | None = None  # the watcher's own connection, per attempt; None outside torchrun


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def run_id() -> str | None:
    """torchrun's job id (`--rdzv_id`, a fresh uuid under `--standalone`); None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def rank_and_size() -> tuple[int, int]:
    """(global rank, world size) from the launcher's environment, or of the running group; (0, 1) alone."""
    if distributed():
        return rank(), world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _attempt_store(timeout: timedelta = STORE_TIMEOUT) -> dist.Store:
    """A new client of torchrun's store, with this attempt's own key space."""
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"bert-attempt-{restart_count()}/", base)


def join_process_group(device: str) -> None:
    """Under torchrun's shared store, initialise the default process group on this attempt's keys and start
    the failure watcher; otherwise (one process, or a launcher that hosts its own store) leave it to accelerate.
    `device` "cuda" → NCCL, else gloo (accelerate's choice)."""
    global _store
    _, size = rank_and_size()
    if size <= 1 or dist.is_initialized() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    index = int(os.environ["RANK"])
    if device == "cuda":  # as accelerate does before its own init: one GPU per process, by local rank
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", store=_attempt_store(), rank=index, world_size=size)
    _store = _attempt_store(timedelta(seconds=10))  # its own socket: the main thread may be blocked in a wait
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(_store, index, stop), name="bert-failure-watch", daemon=True)
    watcher.start()

    # Stopped and joined before the interpreter shuts down: a daemon thread still inside a store call then is
    # ended by unwinding through C++ frames, which aborts the process ("terminate called without an active
    # exception", exit status -6) after a run that succeeded.
    @atexit.register
    def _stop_watching() -> None:
        stop.set()
        watcher.join(timeout=15)


def setup_process(device: str, num_threads: int | None, seed: int):
    """Join the process group torchrun / accelerate launch set up (if any); set torch's CPU threads (null:
    torch's default) and the seed model initialisation draws from. Returns accelerate's PartialState.

    `cpu=True` matters: without it accelerate treats CPU processes as unrelated single runs, and every rank
    would think it is the main one (two cache builds, two final models). Under torchrun the group is joined on
    this attempt's own store keys first (`join_process_group`: a restarted group forms again).
    """
    from accelerate import PartialState
    from transformers import set_seed

    join_process_group(device)
    state = PartialState(cpu=device == "cpu")
    if not state.is_main_process:  # logs come from global rank 0; warnings and errors from every rank
        logging.getLogger().setLevel(logging.WARNING)
    if num_threads:
        torch.set_num_threads(num_threads)
    set_seed(seed)
    return state


def _watch(store: dist.Store, index: int, stop: threading.Event) -> None:
    """End this process, with the failing rank's line, once any other rank has reported a failure."""
    while not stop.wait(WATCH_INTERVAL_S):
        try:
            if not store.check([FAILED]):
                continue
            line = store.get(FAILED).decode(errors="replace")
        except Exception:  # the store went away (torchrun ended or restarts the group): nothing left to watch
            return
        if not line.startswith(f"rank {index} "):
            print(f"error: {line}; rank {index} stops too", file=sys.stderr, flush=True)
            os._exit(1)  # the main thread may be blocked in a collective that would wait for the timeout


def report_failure(err: BaseException) -> str:
    """Tell every rank of this attempt that this one failed with `err`; returns the one line
    ("rank R of N (host): cause"). Outside torchrun only the line."""
    index, size = rank_and_size()
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    cause = text if isinstance(err, UserError) else f"{type(err).__name__}: {text}".rstrip(": ")
    line = f"rank {index} of {size} ({socket.gethostname()}): {cause}"
    if _store is not None:
        try:
            _store.compare_set(FAILED, "", line)  # the first failure wins: others may fail of it in turn
        except Exception as store_err:  # the store is gone: torchrun is stopping the group anyway
            log.debug("could not report the failure to the other ranks: %s", store_err)
    return line


def where() -> str:
    """The prefix of an error line: "rank R of N: " under several processes, "" alone."""
    index, size = rank_and_size()
    return f"rank {index} of {size}: " if size > 1 else ""


def launched() -> bool:
    """True in a process that torchrun / accelerate launch started as one of several (WORLD_SIZE > 1): then
    `python -m pipeline` runs its stages in these processes instead of starting torchrun itself."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def run_under_torchrun(module: str, argv: list[str], nproc: int) -> None:
    """`python -m module argv` on `nproc` processes of this machine under `torchrun --standalone`, waited for.
    Raises UserError (one line) when it fails; each rank has printed its own error above."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    # gloo, which CPU processes use, can hang at shutdown on hosts whose default interface is not loopback.
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ}
    done = subprocess.run([*command, "-m", module, *argv], env=env, check=False)
    if done.returncode != 0:
        raise UserError(f"python -m {module} on {nproc} processes failed (exit status {done.returncode}); see above")
