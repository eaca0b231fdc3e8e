"""A run killed the hard way, for the kill-and-resume tests of both stages; a run kept alive while a test
starts another one beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from stagekit.config import REPO_ROOT


def kill_once_ready(
    module: str, args: Sequence[str], ready: Callable[[], bool], timeout_s: float = 120, cwd: Path = REPO_ROOT
) -> None:
    """Run `python -m module args` in a subprocess and SIGKILL it as soon as `ready()` (e.g. a checkpoint
    exists): the kill-and-resume tests' crash, with no chance for the run to clean up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"python -m {module} was not ready to be killed within {timeout_s:.0f} s")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"


def start_until(
    module: str, args: Sequence[str], marker: str, log: Path, timeout_s: float = 120, cwd: Path = REPO_ROOT
) -> subprocess.Popen:
    """Start `python -m module args` and return it, still running, once `marker` is in what it logged
    (written to `log`); the caller kills it. Fails the test if it ends or takes longer first."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    while marker not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"python -m {module} did not log {marker!r} while running:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
