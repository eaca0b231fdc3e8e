"""What serving through ONNX buys: torch vs ONNX fp32 vs int8, in one run on this CPU.

    python -m bench.onnx_latency --model outputs/siamese-cpu-small/model --model all-MiniLM-L6-v2
        [--sentences 1000] [--repeats 3] [--pairs 50] [--limit N] [--threads 1] [--json out.json] [--record]

For each model: a folder exported by `python -m siamese.inference.export` is used as it is; any other model is exported
first into a temporary folder (the export's time is reported). Then, per backend, measured one after another in
the same process so that the ratios between them hold even on a busy machine: the file the backend loads (MB),
the worst embedding cosine to torch on the export's check sentences (onnx/export.json),
single-pair latency (median and p95 of `--pairs` MNLI dev matched pairs, each predicted alone as the app does),
sentences/s embedding `--sentences` MNLI dev sentences in batches of 64 (median of `--repeats` passes), and quality: MNLI dev matched and
mismatched accuracy (models with an NLI head) and STS-B test Spearman, through siamese/evaluation/evaluate.py's readers and
siamese/evaluation/scores.py. `--limit N` scores the first N pairs of each set only. `--record` appends the table to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stagekit.cli import doc_summary
from stagekit.errors import UserError

BATCH = 64
GOAL_SPEEDUP = 2.0  # int8 sentences/s over torch's
GOAL_POINTS = 1.0  # MNLI dev accuracy and STS-B Spearman within this many points of torch's


def exported(model: str, scratch: Path) -> tuple[Path, float | None]:
    """The exported folder of `model` and the export's seconds (None when `model` already was one)."""
    from siamese.inference.encoder import resolve_base
    from siamese.inference.export import export
    from siamese.inference.onnx_backend import ONNX_FILES

    path = Path(resolve_base(model)).expanduser()
    if all((path / f).is_file() for f in ONNX_FILES.values()):
        return path, None
    start = time.perf_counter()
    out = scratch / path.name
    export(path, out)
    return out, time.perf_counter() - start


def weights_mb(folder: Path, backend: str) -> float:
    """Size of what `backend` loads for the transformer: the safetensors weights, or the ONNX file."""
    from siamese.inference.onnx_backend import ONNX_FILES

    files = list(folder.glob("*.safetensors")) if backend == "torch" else [folder / ONNX_FILES[backend]]
    files = [f for f in files if f.name != "nli_head.safetensors"]
    return sum(f.stat().st_size for f in files) / 1e6


def measure(folder: Path, backend: str, texts: list[str], pairs: list[tuple[str, str]], data, repeats: int = 3) -> dict:
    """All figures of one backend on one exported folder (see the module docstring); sentences/s is the median
    of `repeats` passes over `texts`, so one pass slowed by another process on the machine does not decide it."""
    from siamese.evaluation.scores import nli_metrics, stsb_metrics
    from siamese.inference.encoder import NLIEncoder

    start = time.perf_counter()
    encoder = NLIEncoder.load(folder, device="cpu", backend=backend)
    row: dict = {"backend": backend, "load_s": time.perf_counter() - start, "mb": weights_mb(folder, backend)}
    for premise, hypothesis in pairs[:5]:  # warm-up: first-call allocations, ONNX Runtime's lazy init
        encoder.predict([premise], [hypothesis])
    times = []
    for premise, hypothesis in pairs:
        start = time.perf_counter()
        encoder.predict([premise], [hypothesis])
        times.append((time.perf_counter() - start) * 1000)
    row["pair_median_ms"], row["pair_p95_ms"] = float(np.median(times)), float(np.percentile(times, 95))
    encoder.embed(texts[:BATCH], batch_size=BATCH)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.embed(texts, batch_size=BATCH)
        rates.append(len(texts) / (time.perf_counter() - start))
    row["sentences_per_s"] = float(np.median(rates))
    for split, rows in data.nli.items():
        if encoder.head is not None:
            predicted = encoder.predict(rows["premise"], rows["hypothesis"], batch_size=BATCH).probs.argmax(axis=1)
            row[split] = nli_metrics(rows["label"], predicted)["accuracy"]
    row["stsb_test"] = stsb_metrics(encoder, *data.stsb)["spearman"]
    return row


def table(results: list[dict]) -> tuple[str, list[str]]:
    """The markdown header and rows: one row per model and backend, ratios against that model's torch row."""
    header = (
        "| model | backend | weights MB | worst cosine to torch | pair median ms | pair p95 ms | sentences/s | "
        "× torch | MNLI-m acc | MNLI-mm acc | STS-B test ρ |"
    )
    rows = []

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.2f}"

    for result in results:
        torch_rate = result["backends"][0]["sentences_per_s"]
        for row in result["backends"]:
            rows.append(
                f"| {result['name']} | {row['backend']} | {row['mb']:.1f} | {row['cosine_min']:.4f} | "
                f"{row['pair_median_ms']:.1f} | "
                f"{row['pair_p95_ms']:.1f} | {row['sentences_per_s']:.0f} | {row['sentences_per_s'] / torch_rate:.2f} | "
                f"{pct(row.get('mnli_validation_matched'))} | {pct(row.get('mnli_validation_mismatched'))} | "
                f"{pct(row['stsb_test'])} |"
            )
    return header, rows


def verdict(result: dict) -> str:
    """Whether int8 meets the goal against torch: ≥ 2× sentences/s, accuracy and Spearman within 1 point."""
    by = {row["backend"]: row for row in result["backends"]}
    base, int8 = by["torch"], by["onnx-int8"]
    speedup = int8["sentences_per_s"] / base["sentences_per_s"]
    keys = [k for k in ("mnli_validation_matched", "mnli_validation_mismatched", "stsb_test") if k in base]
    worst = max(100 * abs(int8[k] - base[k]) for k in keys)
    met = speedup >= GOAL_SPEEDUP and worst <= GOAL_POINTS
    return (
        f"{result['name']}: int8 {speedup:.2f}× torch's sentences/s, largest quality change {worst:.2f} points "
        f"({'meets' if met else 'misses'} the goal of ≥ {GOAL_SPEEDUP:g}× within {GOAL_POINTS:g} point)"
    )


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.onnx_latency", description=doc_summary(__doc__))
    parser.add_argument("--model", action="append", required=True, help="a model folder or all-MiniLM-L6-v2")
    parser.add_argument("--sentences", type=int, default=1000, help="sentences embedded for sentences/s")
    parser.add_argument("--pairs", type=int, default=50, help="pairs predicted one at a time for latency")
    parser.add_argument("--limit", type=int, help="score the first N pairs of each evaluation set (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the sentences; the median is kept")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime alike")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.sentences < BATCH or args.pairs < 10 or args.repeats < 1:
        raise UserError(f"--sentences must be at least {BATCH}, --pairs at least 10 and --repeats at least 1")

    import torch

    from siamese.evaluation.evaluate import EVAL_SETS, check_sources, eval_source, read_eval_data
    from siamese.evaluation.scores import stsb_scale
    from siamese.inference.export import EXPORT_FILE
    from siamese.inference.onnx_backend import BACKENDS

    torch.set_num_threads(args.threads)
    sources = {key: eval_source(key) for key in EVAL_SETS}
    check_sources(sources)
    data = read_eval_data(sources, args.limit, stsb_scale(sources["stsb_test"].path))
    matched = data.nli["mnli_validation_matched"]
    texts = list(dict.fromkeys(matched["premise"] + matched["hypothesis"]))[: args.sentences]
    pairs = list(zip(matched["premise"], matched["hypothesis"], strict=True))[: args.pairs]
    if len(texts) < args.sentences or len(pairs) < args.pairs:
        raise UserError(f"--limit {args.limit} leaves too few MNLI dev sentences for --sentences / --pairs")
    results = []
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as scratch:
        for model in args.model:
            folder, export_s = exported(model, Path(scratch))
            backends = [measure(folder, backend, texts, pairs, data, args.repeats) for backend in BACKENDS]
            checked = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))["variants"]
            for row in backends:
                row["cosine_min"] = checked.get(row["backend"], {}).get("cosine_min", 1.0)
            results.append({"name": model, "folder": str(folder), "export_s": export_s, "backends": backends})
    from bench.harness import append_results, machine

    header, rows = table(results)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {machine()}; load average at the end {load}")
    print("\n".join([header, *rows]))
    for result in results:
        print(verdict(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.record:
        import sys

        command = "python -m bench.onnx_latency " + " ".join(argv if argv is not None else sys.argv[1:])
        append_results("ONNX and int8 (bench/onnx_latency.py)", command, rows, header)
    return results


if __name__ == "__main__":
    import sys

    from stagekit.cli import run_cli

    sys.exit(run_cli(main))
