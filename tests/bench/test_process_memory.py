"""The benchmarks' memory figure: anonymous memory of a process tree, shared copy-on-write pages once."""

from __future__ import annotations

import sys

import pytest

from bench.process_memory import run_measured
from stagekit.config import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# 400 MB of touched heap in a parent; the child it forks reads it (shared copy-on-write, not copied).
FORKED = """
import os, time
import numpy as np
a = np.ones(50_000_000)
if os.fork() == 0:
    assert a.sum() == 50_000_000
    time.sleep(1.5)
    os._exit(0)
time.sleep(1.5)
os.wait()
print("done")
"""


def test_peak_counts_heap_once_across_forked_processes_and_not_mapped_files(tmp_path):
    run = run_measured([sys.executable, "-c", FORKED], REPO_ROOT)
    assert run.stdout.strip() == "done" and run.wall_s > 1.5 and 0 < run.cpu_s < run.wall_s
    assert 360 < run.peak.tree_mib < 520  # ~381 MiB of array (+ interpreter), not twice that
    assert run.peak.main_mib < run.peak.tree_mib  # the parent's Pss shares its pages with the child

    path = tmp_path / "file.bin"
    path.write_bytes(b"\1" * 200_000_000)
    mapped = f"import time, numpy as np; m = np.memmap({str(path)!r}, mode='r'); m.sum(); time.sleep(1)"
    assert (
        run_measured([sys.executable, "-c", mapped], REPO_ROOT).peak.tree_mib < 100
    )  # 200 MB read through a memory map is page cache, not the process memory
