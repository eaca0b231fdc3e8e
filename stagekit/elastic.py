"""What a run needs from torchrun's elastic agent on one machine or several: a restarted group that forms, a
restart that resumes by itself, and a failing rank that stops every other rank at once.

- **The group forms again after a restart.** torchrun's c10d rendezvous shares its own TCP store with the
  workers (`TORCHELASTIC_USE_AGENT_STORE=True`), and that store lives as long as torchrun, across restarts.
  torch's `env://` init writes the gloo / NCCL addresses under the same keys in every attempt, so a restarted
  rank could read a dead worker's address from the attempt before and fail with "Gloo connectFullMesh failed
  … timed out connecting … Connection refused". `join_process_group` initialises the group itself on a store
  prefixed with the restart count (accelerate then uses that group as it is).
- **A restart resumes.** torchrun re-runs the same command line. `resumes_after_restart` says "resume from the
  newest complete checkpoint" when this is a restart (`TORCHELASTIC_RESTART_COUNT` > 0) of the torchrun job
  that started the run in this folder (`mark_run_folder` records its `TORCHELASTIC_RUN_ID`), so a first
  attempt that was refused (e.g. a run folder that needed `--resume`) is refused again, not resumed.
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
from pathlib import Path

import torch.distributed as dist

from stagekit import distributed
from stagekit.errors import UserError

log = logging.getLogger(__name__)

MARKER = ".torchelastic_run"  # in the run folder: the TORCHELASTIC_RUN_ID of the job that runs it
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
    if distributed.distributed():
        return distributed.rank(), distributed.world_size()
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
    _, world_size = rank_and_size()
    if world_size <= 1 or dist.is_initialized() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    rank = int(os.environ["RANK"])
    if device == "cuda":  # as accelerate does before its own init: one GPU per process, by local rank
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", store=_attempt_store(), rank=rank, world_size=world_size
    )
    _store = _attempt_store(timedelta(seconds=10))  # its own socket: the main thread may be blocked in a wait
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(_store, rank, stop), name="bert-failure-watch", daemon=True)
    watcher.start()

    # Stopped and joined before the interpreter shuts down: a daemon thread still inside a store call then is
    # ended by unwinding through C++ frames, which aborts the process ("terminate called without an active
    # exception", exit status -6) after a run that succeeded.
    @atexit.register
    def _stop_watching() -> None:
        stop.set()
        watcher.join(timeout=15)


def _watch(store: dist.Store, rank: int, stop: threading.Event) -> None:
    """End this process, with the failing rank's line, once any other rank has reported a failure."""
    while not stop.wait(WATCH_INTERVAL_S):
        try:
            if not store.check([FAILED]):
                continue
            line = store.get(FAILED).decode(errors="replace")
        except Exception:  # the store went away (torchrun ended or restarts the group): nothing left to watch
            return
        if not line.startswith(f"rank {rank} "):
            print(f"error: {line}; rank {rank} stops too", file=sys.stderr, flush=True)
            os._exit(1)  # the main thread may be blocked in a collective that would wait for the timeout


def report_failure(err: BaseException) -> str:
    """Tell every rank of this attempt that this one failed with `err`; returns the one line
    ("rank R of N (host): cause"). Outside torchrun only the line."""
    rank, world_size = rank_and_size()
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    cause = text if isinstance(err, UserError) else f"{type(err).__name__}: {text}".rstrip(": ")
    line = f"rank {rank} of {world_size} ({socket.gethostname()}): {cause}"
    if _store is not None:
        try:
            _store.compare_set(FAILED, "", line)  # the first failure wins: others may fail of it in turn
        except Exception as store_err:  # the store is gone: torchrun is stopping the group anyway
            log.debug("could not report the failure to the other ranks: %s", store_err)
    return line


def where() -> str:
    """The prefix of an error line: "rank R of N: " under several processes, "" alone."""
    rank, world_size = rank_and_size()
    return f"rank {rank} of {world_size}: " if world_size > 1 else ""


def resumes_after_restart(run_dir: Path) -> bool:
    """True when torchrun restarted the job that started the run in `run_dir`: then it continues from its newest
    complete checkpoint without `--resume` (torchrun re-runs the command line as it was)."""
    if restart_count() == 0 or run_id() is None:
        return False
    try:
        recorded = (Path(run_dir) / MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    if recorded == run_id():
        log.warning(
            "torchrun restart %d of job %s: resuming from the newest complete checkpoint", restart_count(), recorded
        )
        return True
    return False


def mark_run_folder(run_dir: Path) -> None:
    """Record in `run_dir` which torchrun job runs it (main process, after the folder was accepted)."""
    if run_id() is not None:
        (Path(run_dir) / MARKER).write_text(run_id() + "\n", encoding="utf-8")


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
