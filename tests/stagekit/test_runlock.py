"""The run-folder lock: held while its process lives, gone when it dies, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from stagekit.config import REPO_ROOT
from stagekit.errors import UserError
from stagekit.folders import claim_run_folder

# Holds the folder, forks a child that outlives it (as a dataloader worker would), prints both pids.
HOLDER = """
import os, sys, time
from stagekit.folders import claim_run_folder
with claim_run_folder(sys.argv[1]):
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(os.getpid(), child, flush=True)
    time.sleep(120)
"""


def test_a_killed_holder_frees_the_folder_though_its_forked_child_lives_on(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    _, child = map(int, holder.stdout.readline().split())
    try:
        with pytest.raises(UserError, match=f"in use by another run \\(pid {holder.pid} "):
            with claim_run_folder(tmp_path):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        time.sleep(0.1)
        os.kill(child, 0)  # still alive, and it had inherited the lock file
        with claim_run_folder(tmp_path):
            pass
    finally:
        for pid in (holder.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_lock_is_released_at_the_end_of_the_block(tmp_path):
    with claim_run_folder(tmp_path):
        pass
    with claim_run_folder(tmp_path):
        pass
