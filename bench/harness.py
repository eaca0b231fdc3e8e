"""What every benchmark shares: timed windows, peak memory, matmul peak, machine line, results file."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """One line naming the hardware, so a figure is never quoted without its machine."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_windows(
    step: Callable[[], int],
    *,
    warmup: int,
    windows: int,
    steps_per_window: int,
    device: torch.device | str,
    cpu_rates: list[float] | None = None,
) -> list[float]:
    """Run `step` (returns the units it processed, e.g. tokens) and return units/s per window.

    Warm-up steps are not timed (allocation, autotuning, compilation); the median of the windows is the
    figure to quote, the spread says how noisy the machine was. `cpu_rates`, if given, gets units per CPU
    second of this process per window (what other jobs on a shared CPU change far less).
    """
    for _ in range(warmup):
        step()
    sync(device)
    rates = []
    for _ in range(windows):
        units = 0
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps_per_window):
            units += step()
        sync(device)
        rates.append(units / (time.perf_counter() - start))
        if cpu_rates is not None:
            cpu_rates.append(units / max(time.process_time() - start_cpu, 1e-9))
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_gpu() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def matmul_peak_tflops(dtype: torch.dtype | None = None, n: int | None = None, iters: int | None = None) -> float:
    """Measured dense matmul throughput: the ceiling MFU is reported against. On CUDA bf16 products of
    8192² matrices (50 timed); on a CPU fp32 products of 1024² matrices with torch's threads (20 timed),
    since bf16 has no fast path on most CPUs."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n, iters = n or (8192 if cuda else 1024), iters or (50 if cuda else 20)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(5):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def append_results(title: str, command: str, rows: list[str], header: str) -> None:
    """Add a dated section to docs/benchmarks.md; earlier sections are kept."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmarks\n\nEvery section is one run of a script under `bench/`; newest last.\n")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"\n## {title} — {stamp}\n", f"Machine: {machine()}  ", f"Command: `{command}`\n", header]
    block.append("|" + "|".join("---" for _ in header.strip().strip("|").split("|")) + "|")
    block.extend(rows)
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(block) + "\n")
