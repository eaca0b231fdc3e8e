"""Per-pair prediction latency of the app's predict path, after the model is loaded.

    python -m bench.app_latency [MODEL_DIR] [--pairs 100] [--warmup 10] [--threads N] [--json out.json]

MODEL_DIR defaults to the newest trained run under outputs/ (or $APP_OUTPUTS_DIR). Pairs are the first
rows of MNLI dev matched; each is predicted alone, as the app does when a user presses Predict.
Goal: median ≤ 50 ms per pair on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.examples import example_sources, first_available
from app.models import TRAIN_COMMAND, discover_models, outputs_root
from app.predict import PairResult, cpu_threads, predict_pair, predict_table
from stagekit.cli import doc_summary, run_cli
from stagekit.errors import UserError

GOAL_MS = 50.0


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip() for ln in with_cpuinfo.read_text().splitlines() if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}; load average {load}"
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("model", nargs="?", type=Path, help="model folder (default: newest under outputs/)")
    parser.add_argument("--pairs", type=int, default=100, help="timed pairs (at least 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed pairs first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: as the app, $APP_TORCH_THREADS or 1)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.pairs < 50:
        raise UserError("--pairs must be at least 50 for a meaningful p95")

    import torch

    from siamese.inference.encoder import NLIEncoder

    torch.set_num_threads(args.threads or cpu_threads())

    model_dir = args.model
    if model_dir is None:
        found = discover_models(outputs_root())
        if not found:
            raise UserError(f"no trained model under {outputs_root()}; make one with: {TRAIN_COMMAND}")
        model_dir = found[0]
    examples, problems = first_available(example_sources(), limit=args.pairs + args.warmup)
    if len(examples) < args.pairs + args.warmup:
        raise UserError(f"need {args.pairs + args.warmup} MNLI dev pairs, got {len(examples)}: {'; '.join(problems)}")

    start = time.perf_counter()
    encoder = NLIEncoder.load(model_dir, device="cpu")
    load_s = time.perf_counter() - start

    for ex in examples[: args.warmup]:
        predict_pair(encoder, ex.premise, ex.hypothesis)
    times_ms = []
    for ex in examples[args.warmup :]:
        start = time.perf_counter()
        result = predict_pair(encoder, ex.premise, ex.hypothesis)
        times_ms.append((time.perf_counter() - start) * 1000)
        assert isinstance(result, PairResult)

    timed = examples[args.warmup :]
    start = time.perf_counter()
    predict_table(encoder, [ex.premise for ex in timed], [ex.hypothesis for ex in timed])
    batch_ms = (time.perf_counter() - start) * 1000 / len(timed)

    figures = {
        "model": str(model_dir),
        "has_nli_head": encoder.head is not None,
        "parameters": sum(p.numel() for p in encoder.model.parameters()),
        "max_seq_length": encoder.max_seq_length,
        "pairs": len(times_ms),
        "load_s": round(load_s, 2),
        "median_ms": round(float(np.median(times_ms)), 2),
        "p95_ms": round(float(np.percentile(times_ms, 95)), 2),
        "mean_ms": round(float(np.mean(times_ms)), 2),
        "batch_mode_ms_per_pair": round(batch_ms, 2),
        "goal_ms": GOAL_MS,
        "machine": machine(),
    }
    verdict = "meets" if figures["median_ms"] <= GOAL_MS else "misses"
    print(f"model: {figures['model']} ({figures['parameters']:,} parameters, NLI head: {figures['has_nli_head']})")
    print(f"machine: {figures['machine']}")
    print(f"load: {figures['load_s']} s")
    print(
        f"per pair over {figures['pairs']} MNLI dev pairs: median {figures['median_ms']} ms, "
        f"p95 {figures['p95_ms']} ms, mean {figures['mean_ms']} ms ({verdict} the {GOAL_MS:g} ms goal)"
    )
    print(f"batch mode (CSV upload, batches of 32): {figures['batch_mode_ms_per_pair']} ms per pair")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    sys.exit(run_cli(main))
