"""Write a directory completely or not at all: build it beside the target, then rename it into place; and
find out before any work whether a folder can be written at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stagekit.errors import UserError


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
