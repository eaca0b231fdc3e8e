"""Peak memory of Siamese fine-tuning must not grow with the amount of data streamed through it.

Trains the same model with the same settings on a small and a large number of pairs (the 29k-pair
shared MNLI subset is cycled to reach the large count), each run in its own process, and prints the
peak RSS of each and their ratio (flat = within ±10%).

    python -m bench.siamese_memory                       # a tiny L1/H32 BERT built on the fly
    python -m bench.siamese_memory --model outputs/pretrain-cpu-small/model --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stagekit.cli import doc_summary

REPO = Path(__file__).resolve().parents[1]


def child(argv: list[str]) -> None:
    """Run one training in this process, then report this process's own peak RSS."""
    from siamese.__main__ import main
    from stagekit.cli import setup_logging

    setup_logging()
    started = time.time()
    model_dir = main(argv)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    metrics = json.loads((model_dir / "metrics.json").read_text())
    print("RESULT " + json.dumps({"peak_rss_mib": peak_kib / 1024, "pairs_seen": metrics["pairs_seen"],
                                  "seconds": time.time() - started}))  # fmt: skip


def run(pairs: int, args: argparse.Namespace, model: str, out: Path) -> dict:
    steps = -(-pairs // args.batch_size)
    argv = [
        "--config", str(REPO / "configs" / "siamese" / "debug.yaml"),
        f"model.base_model={model}", f"output_dir={out}", f"run_name=mem-{pairs}",
        f"model.max_seq_length={args.max_seq_length}", f"train.per_device_train_batch_size={args.batch_size}",
        f"train.max_steps={steps}", f"train.save_steps={steps}", "train.logging_steps=100",
        "data.max_train_pairs=null", "data.eval_pairs=0", f"data.shuffle_buffer={args.shuffle_buffer}",
        "wandb.mode=disabled",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"run with {pairs} pairs failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--model", help="base model folder (default: a tiny L1/H32 BERT built in a temp dir)")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--shuffle-buffer", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="siamese-memory-") as tmp:
        model = args.model
        if model is None:
            from tests.tiny_bert import make_tiny_bert

            data_dir = Path(os.environ.get("BERT_DATA_DIR", REPO.parent / "shared" / "data"))
            # The model's size does not matter for this question (data and trainer state growing with the
            # pairs streamed); a minimal one keeps 200k pairs within minutes on 2 CPU cores.
            model = str(make_tiny_bert(Path(tmp) / "tiny-bert", data_dir, layers=1, hidden=32, heads=1, ffn=64))
        results = {n: run(n, args, model, Path(tmp)) for n in (args.small, args.large)}
    small, large = results[args.small], results[args.large]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(f"model: {args.model or 'tiny L1/H32 BERT'}; batch {args.batch_size}, max_seq_length {args.max_seq_length}, "
          f"shuffle buffer {args.shuffle_buffer}")  # fmt: skip
    for r in results.values():
        print(f"{r['pairs_seen']:>9,} pairs: peak RSS {r['peak_rss_mib']:8.1f} MiB  ({r['seconds']:.0f} s)")
    print(f"ratio large/small: {ratio:.3f} -> {'FLAT (within ±10%)' if abs(ratio - 1) <= 0.10 else 'NOT FLAT'}")


if __name__ == "__main__":
    main()
