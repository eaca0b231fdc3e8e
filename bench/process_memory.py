"""Peak anonymous memory of a process tree, sampled from /proc: what a job holds, without the page cache.

RSS counts the pages of memory-mapped files (our token files, datasets' Arrow files) and grows with
whatever the operating system keeps cached, so it is the wrong figure for "memory independent of corpus
size". This sums `Pss_Anon` from /proc/<pid>/smaps_rollup over a process and all its descendants:
heap and other anonymous pages only, with pages that forked workers share copy-on-write with their
parent divided between them instead of counted once per process. (Kernels without Pss_Anon: RssAnon.)
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


def anon_kib(pid: int) -> int:
    """Pss_Anon of one process in KiB (RssAnon where smaps_rollup lacks it); 0 once it has exited."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        field = "Pss_Anon:"
        if field not in text:
            text, field = Path(f"/proc/{pid}/status").read_text(), "RssAnon:"
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(field)))


@dataclass
class Peak:
    tree_mib: float  # peak of the sum over the process and its descendants (workers included)
    main_mib: float  # peak of the process alone


class PeakMemory:
    """Sample a process tree's anonymous memory every `interval` seconds in a background thread.

    One read of smaps_rollup costs ~3 ms on a busy 2-core machine (the kernel walks the page tables), so
    sampling 3 processes every 0.2 s takes ~5 % of one core from the job measured, alike for both paths.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self._tree = self._main = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                pids = [self.pid, *(c.pid for c in root.children(recursive=True))]
            except psutil.NoSuchProcess:
                return
            sizes = [anon_kib(pid) for pid in pids]
            self._tree, self._main = max(self._tree, sum(sizes)), max(self._main, sizes[0])
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> Peak:
        return Peak(self._tree / 1024, self._main / 1024)


@dataclass
class Measured:
    stdout: str
    wall_s: float  # the whole subprocess, interpreter start included
    cpu_s: float  # user + system time of the process and every descendant it waited for (its workers)
    peak: Peak


def run_measured(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Measured:
    """Run `command` (with `env` added to the environment) and measure it; its stderr (progress bars,
    logs) passes through. Raises SystemExit naming the command if it fails.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(command), cwd=cwd, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    with PeakMemory(proc.pid) as memory:
        out = proc.stdout.read()
        # wait4 (not Popen.wait) returns the CPU time of the child with its reaped descendants.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"benchmark step failed (exit {proc.returncode}): {' '.join(command)}")
    return Measured(out, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, memory.peak)
