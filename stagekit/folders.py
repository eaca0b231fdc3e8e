"""Run and model folders: written completely or not at all, and one run per run folder at a time.

Writing: `atomic_dir` builds a directory beside its target and renames it into place; `atomic_write_text` does
the same for one file; `require_writable` finds out before any work whether a folder can be written at all.

One run per folder: a lock the operating system holds for the living process (`claim_run_folder`). Before it,
a second run started into the same folder while the first was alive (before the first checkpoint, which
stagekit/resume.py `choose_checkpoint` checks for) trained beside it, and whichever ended last replaced the
other's model and checkpoints. Now the folder's lock file is `flock`ed by the run's main process for as long as
it works on the folder: a second run is refused in one line.

The lock belongs to the process, not to a file's existence: when the holder dies, even by SIGKILL, the
kernel drops it, so a killed run never leaves the folder stuck (a restarted `torchrun --max-restarts`
group takes it again at once); the lock file itself stays and only says who held it last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stagekit.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (pretrain/blocks.py makes the same choice); runs are not guarded
    fcntl = None


def require_writable(folder: str | Path, remedy: str) -> None:
    """Make `folder` (and its parents) and check that files can be created in it, or raise a one-line
    UserError ending in `remedy` (what to change, e.g. "set output_dir= to a writable folder").

    Run before any work, so a read-only output is one line at the start, not a traceback minutes in, at
    the first save or plot. `os.access` sees a read-only mount also for root (EROFS), who passes every permission check;
    the file actually created and removed catches what access() cannot know (e.g. a network file system).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
            raise OSError(0, "read-only file system" if read_only else "permission denied")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{folder} is not writable ({(err.strerror or str(err)).lower()}): {remedy}") from None


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target` in one rename.

    A run killed half-way leaves only a `.tmp-*` folder behind, never a half-written `target` that
    evaluation or the app would load.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace the file at `path` by `text` in one rename: a reader (or a kill) never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


RUN_LOCK = ".run.lock"  # held by a training stage (`python -m pretrain`, `python -m siamese`, the pipeline's stages)

_held: dict[int, Path] = {}  # file descriptors of the locks this process holds


def _close_in_child() -> None:
    # A forked child (dataloader worker, packing worker) shares the open lock file: were it to outlive a
    # killed parent, the folder would stay locked. Closing the child's copy leaves the parent's lock as is.
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def _take(path: Path) -> int | None:
    """The locked file descriptor, or None when another process holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _held[fd] = path
    return fd


@contextlib.contextmanager
def claim_run_folder(
    run_dir: str | Path,
    *,
    is_main: bool = True,
    device: Any = "cpu",
    remedy: str = "set output_dir= to a writable folder",
) -> Iterator[None]:
    """Hold `run_dir` for the block: checked writable (else `remedy`), then locked, both before any work.

    Under several processes only the main one (global rank 0, the one that writes outputs) checks and locks;
    every rank then agrees on the outcome with one all-reduce (`stagekit.distributed.any_rank`, so the process
    group must be up), and all raise the same kind of one-line UserError: none is left waiting for the
    others. Raises UserError when the folder cannot be written or another living process holds its lock.
    """
    from stagekit.distributed import any_rank

    run_dir, problem, fd = Path(run_dir), None, None
    if is_main:
        try:
            require_writable(run_dir, remedy)
            if fcntl is not None:
                fd = _take(run_dir / RUN_LOCK)
                if fd is None:
                    problem = (
                        f"{run_dir} is in use by another run{_holder(run_dir / RUN_LOCK)}: wait for it to end, or set "
                        "another run_name= (a run that was killed frees its folder at once)"
                    )
        except UserError as err:
            problem = str(err)
        except OSError as err:  # the lock file itself could not be made
            problem = f"{run_dir / RUN_LOCK} could not be opened ({err.strerror or err}): {remedy}"
    if any_rank(problem is not None, device):
        raise UserError(problem or f"{run_dir} was refused by the main process (rank 0), which says why")
    try:
        yield
    finally:
        if fd is not None:
            _held.pop(fd, None)
            os.close(fd)  # the last descriptor of this open file: the kernel drops the lock
