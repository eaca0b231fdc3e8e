"""A run killed the hard way, for the kill-and-resume tests of both stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from common.config import REPO_ROOT


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
