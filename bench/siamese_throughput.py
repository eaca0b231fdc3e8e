"""Siamese fine-tuning pairs/s: sentence-transformers' default training vs ours, same model, loss and batch.

(a) reference: what the sentence-transformers docs show: the MNLI pairs loaded as a map-style Dataset,
    SentenceTransformer(Transformer + mean Pooling), SoftmaxLoss, SentenceTransformerTrainer with
    default arguments (random sampler, per-batch padding).
(b) ours: `python -m siamese` with the given config (streamed data, length-bucketed batches, ...).

Both run in their own subprocess with the same number of torch threads; pairs/s is steps × batch size
over the trainer's own train_runtime, and peak RSS is each process's own.
    python -m bench.siamese_throughput --model outputs/pretrain-cpu-small/model --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import append_results, machine
from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT

MNLI = "${BERT_DATA_DIR}/mnli/train.jsonl.gz"


def reference(args: argparse.Namespace, out: Path) -> float:
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    train = datasets.load_dataset("json", data_files=os.path.expandvars(MNLI), split="train")
    train = train.select_columns(["premise", "hypothesis", "label"])
    encoder = Transformer(args.model, max_seq_length=args.max_seq_length)
    model = SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), "mean")], device="cpu")
    loss = SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=3)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        save_strategy="no", report_to=[], use_cpu=True, seed=42,
    )  # fmt: skip
    result = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train, loss=loss).train()
    return result.metrics["train_runtime"]


def ours(args: argparse.Namespace, out: Path) -> float:
    from siamese.__main__ import main as siamese_main

    model_dir = siamese_main([
        "--config", args.config, f"model.base_model={args.model}", f"output_dir={out}", "run_name=bench",
        f"model.max_seq_length={args.max_seq_length}", f"train.per_device_train_batch_size={args.batch_size}",
        f"train.max_steps={args.steps}", f"train.save_steps={args.steps}", "data.eval_pairs=0",
        f"data.train_sources=[{{path: '{MNLI}'}}]", "train.max_train_minutes=null",
        f"impl.num_threads={args.threads}", "wandb.mode=disabled",
        # the reference's objective and nothing around it: SoftmaxLoss, no warm start, no checkpoint selection
        "loss.name=softmax", "train.head_init_pairs=0", "train.head_learning_rate=null", "train.select_best=false",
    ])  # fmt: skip
    return json.loads((model_dir / "metrics.json").read_text())["train_runtime_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--model", default=str(REPO_ROOT / "outputs" / "pretrain-cpu-small" / "model"))
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "siamese" / "cpu-small.yaml"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--path", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.path:  # a child: one path, JSON on the last line
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            seconds = (reference if args.path == "reference" else ours)(args, Path(tmp))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"pairs_per_s": args.steps * args.batch_size / seconds, "peak_rss_mb": peak}))
        return

    results = {}
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    for path in ("reference", "ours"):
        child = [sys.executable, "-m", "bench.siamese_throughput", "--path", path, "--model", args.model]
        child += ["--config", args.config, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        child += ["--max-seq-length", str(args.max_seq_length), "--threads", str(args.threads)]
        out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])
        print(f"{path:>9}: {results[path]['pairs_per_s']:.1f} pairs/s, peak RSS {results[path]['peak_rss_mb']:,.0f} MB")
    ratio = results["ours"]["pairs_per_s"] / results["reference"]["pairs_per_s"]
    print(f"ours / reference = {ratio:.2f}x at batch {args.batch_size}, {args.threads} threads; {machine()}")
    if not args.no_record:
        setting = f"{Path(args.model).name if Path(args.model).name != 'model' else Path(args.model).parent.name}, batch {args.batch_size}, {args.steps} steps, {args.threads} threads"
        rows = [f"| {p} | {setting} | {r['pairs_per_s']:.1f} | {r['peak_rss_mb']:,.0f} |" for p, r in results.items()]
        rows.append(f"| **ratio ours/reference** | | **{ratio:.2f}×** | |")
        command = "python -m bench.siamese_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        append_results("Siamese fine-tuning throughput", command, rows, "| path | setting | pairs/s | peak RSS MB |")


if __name__ == "__main__":
    main()
