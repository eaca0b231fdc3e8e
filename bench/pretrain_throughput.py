"""MLM training tokens/s: the reference path a user would write vs ours, on one device, in one run.

(a) reference: the architecture's plain transformers class in fp32 with eager attention, each document
    truncated and padded to the block size, the full-vocabulary MLM head, DataCollatorForLanguageModeling,
    plain AdamW, in a loop of its own.
(b) ours: exactly what `python -m pretrain` trains with — the transformers Trainer built by
    `pretrain.train.build_trainer` (packed memory-mapped blocks, SDPA, the masked-only head inside forward,
    and on CUDA bf16 autocast, torch.compile and fused AdamW), timed at its step ends.

Each path runs in its own subprocess so peak memory is its own. Tokens counted are real (non-padding)
tokens. Usage (CPU example; on a GPU drop the model overrides):
    python -m bench.pretrain_throughput --batch-size 16 --windows 3 --steps-per-window 2
`--profile N` instead profiles N steps of our path with torch.profiler and prints where a step's time
goes: the operators that take most of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import torch
from transformers import TrainerCallback

from bench.harness import (
    append_results,
    machine,
    matmul_peak_tflops,
    median,
    peak_gpu_mb,
    peak_rss_mb,
    sync,
    timed_windows,
)
from common.config import load_config
from pretrain.config import PretrainConfig

DEFAULT_OVERRIDES = [  # the shared stand-in corpus, enough documents for a few hundred batches
    "data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz",
    "data.revision=null",  # a local file has no Hub revision (bert-medium.yaml names one)
    "data.max_documents=4000",
    "wandb.mode=disabled",
]


def model_flops_per_token(cfg: PretrainConfig) -> float:
    """Training FLOPs per token that the model needs (forward + backward = 3× forward).

    Matmuls of the encoder (2·params per token), attention scores and values (2·2·L·seq·d), and the
    MLM head only where a prediction is required (the masked 15%): the same count for both paths, so
    MFU compares useful work.
    """
    m = cfg.model
    d, L, seq = m.hidden_size, m.num_hidden_layers, cfg.data.block_size
    encoder = L * (4 * d * d + 2 * d * m.intermediate_size)
    attention = L * 2 * seq * d
    head = (d * d + d * m.vocab_size) * cfg.train.mlm_probability
    return 3 * 2 * (encoder + attention + head)


def reference_step(cfg: PretrainConfig, tokenizer, docs: list[str], batch_size: int, device: torch.device):
    """What a user would write: the plain transformers class with eager attention, documents truncated and
    padded to the block size, the full-vocabulary head, DataCollatorForLanguageModeling, plain AdamW."""
    from transformers import DataCollatorForLanguageModeling

    from pretrain.model import CLASSES, hf_config

    torch.manual_seed(0)
    config = hf_config(cfg.model, tokenizer)
    config._attn_implementation = "eager"
    model = CLASSES[cfg.model.architecture][1](config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    features = tokenizer(docs, truncation=True, max_length=cfg.data.block_size, padding="max_length")
    rows = [{k: features[k][i] for k in features} for i in range(len(docs))]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.train.mlm_probability)
    position = 0

    def step() -> int:
        nonlocal position
        batch = collator([rows[(position + i) % len(rows)] for i in range(batch_size)])
        position += batch_size
        batch = {k: v.to(device) for k, v in batch.items()}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    return step


def raw_documents(cfg: PretrainConfig) -> list[str]:
    """The first max_documents texts of the (local) corpus, read the plain datasets way."""
    import datasets

    from common.sources import local_files

    files = local_files(cfg.data.source)
    rows = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    return [row[cfg.data.text_column] for _, row in zip(range(cfg.data.max_documents or 10**9), rows, strict=False)]


class StepTimes(TrainerCallback):
    """The clock at the end of every optimizer step (after a device sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter())


def trainer_overrides(args: argparse.Namespace, total_steps: int, out: str) -> list[str]:
    """Our real training path, without evaluation, logging or checkpoints inside the timed steps."""
    never = 10**9
    return [
        f"train.max_steps={total_steps}",
        f"train.per_device_train_batch_size={args.batch_size}",
        f"train.eval_steps={never}",
        f"train.logging_steps={never}",
        f"train.save_steps={never}",
        "train.max_train_minutes=null",
        "train.cloze_sentences=0",
        f"output_dir={out}",
        "run_name=throughput",
    ]


def ours_rates(args: argparse.Namespace, data, profile_steps: int = 0) -> tuple[list[float], torch.device, Any]:
    """Tokens/s per window of `python -m pretrain`'s Trainer (pretrain.train.build_trainer) on `data`, and
    with `profile_steps` a torch.profiler trace of that many steps after the warm-up."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile, schedule

    from pretrain.train import build_trainer

    timed = profile_steps or args.windows * args.steps_per_window
    with tempfile.TemporaryDirectory(prefix="throughput-") as out:
        overrides = DEFAULT_OVERRIDES + args.overrides + trainer_overrides(args, args.warmup + timed, out)
        cfg = load_config(PretrainConfig, args.config, overrides)
        trainer = build_trainer(cfg, data, report_to=[], fresh=True)
        times = StepTimes(trainer.args.device)
        trainer.add_callback(times)
        profiler = None
        if profile_steps:
            cuda = trainer.args.device.type == "cuda"
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            profiler = profile(activities=activities, schedule=schedule(wait=args.warmup, warmup=0, active=timed))
            trainer.add_callback(ProfilerStep(profiler))
            with profiler:
                trainer.train()
        else:
            trainer.train()
    tokens = args.batch_size * cfg.data.block_size
    marks = times.times[args.warmup - 1 :] if args.warmup else [times.times[0], *times.times]
    spw = args.steps_per_window if not profile_steps else timed
    rates = [spw * tokens / (marks[(i + 1) * spw] - marks[i * spw]) for i in range(len(marks) // spw)]
    return rates, trainer.args.device, profiler


class ProfilerStep(TrainerCallback):
    def __init__(self, profiler) -> None:
        self.profiler = profiler

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.step()


def shape_label(cfg: PretrainConfig, batch_size: int) -> str:
    m = cfg.model
    return (
        f"{m.architecture} L{m.num_hidden_layers}/H{m.hidden_size}/A{m.num_attention_heads}/V{m.vocab_size}, "
        f"seq {cfg.data.block_size}, batch {batch_size}"
    )


def run_profile(args: argparse.Namespace, cfg: PretrainConfig) -> None:
    """Where a step of our path spends its time: the operators with the most self time, in ms per step."""
    from pretrain.blocks import prepare_data

    data = prepare_data(cfg)
    rates, device, profiler = ours_rates(args, data, profile_steps=args.profile)
    wall_ms = args.batch_size * cfg.data.block_size / rates[0] * 1e3
    on_gpu = device.type == "cuda"
    events = profiler.key_averages()

    def self_ms(event) -> float:  # device time where the work runs on the GPU, host time on CPU
        return (event.self_device_time_total if on_gpu else event.self_cpu_time_total) / 1e3 / args.profile

    ops = sorted(((e.key, self_ms(e)) for e in events if not e.key.startswith("ProfilerStep")), key=lambda kv: -kv[1])
    shape = shape_label(cfg, args.batch_size)
    print(f"{shape}: {wall_ms:.1f} ms per step under the profiler")
    rows = [f"| op: `{name}` (self) | {ms:.1f} | {ms / wall_ms:.0%} |" for name, ms in ops[:14]]
    for row in rows:
        print(row)
    if not args.no_record:
        command = "python -m bench.pretrain_throughput " + " ".join(sys.argv[1:])
        title = f"Pretraining step profile (our path, {shape}, {wall_ms:.1f} ms per step)"
        append_results(title, command, rows, "| where | ms per step | share of step |")


def run_one(args: argparse.Namespace) -> dict:
    from pretrain.blocks import prepare_data

    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides)
    data = prepare_data(cfg)
    if args.path == "reference":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        step = reference_step(cfg, data.tokenizer, raw_documents(cfg), args.batch_size, device)
        rates = timed_windows(
            step, warmup=args.warmup, windows=args.windows, steps_per_window=args.steps_per_window, device=device
        )
    else:
        rates, _, _ = ours_rates(args, data)
    return {"tokens_per_s": median(rates), "windows": rates, "peak_gpu_mb": peak_gpu_mb(), "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="configs/pretrain/bert-medium.yaml", help="model shape and training settings"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.per_device_train_batch_size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps-per-window", type=int, default=10)
    parser.add_argument("--profile", type=int, metavar="N", help="profile N steps of our path instead of comparing")
    parser.add_argument("--path", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="pretrain config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides)
    args.batch_size = args.batch_size or cfg.train.per_device_train_batch_size
    if args.profile:
        run_profile(args, cfg)
        return
    if args.path:  # a child: measure one path, print JSON on the last line
        print(json.dumps(run_one(args)))
        return

    results = {}
    for path in ("reference", "ours"):
        child = [sys.executable, "-m", "bench.pretrain_throughput", "--path", path, "--config", args.config]
        child += ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup)]
        child += ["--windows", str(args.windows), "--steps-per-window", str(args.steps_per_window), *args.overrides]
        out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])
        print(
            f"{path:>9}: {results[path]['tokens_per_s']:,.0f} tokens/s (windows {[round(r) for r in results[path]['windows']]})"
        )

    ratio = results["ours"]["tokens_per_s"] / results["reference"]["tokens_per_s"]
    shape = shape_label(cfg, args.batch_size)
    mfu = {}
    if torch.cuda.is_available():
        peak = matmul_peak_tflops()
        for path, r in results.items():
            mfu[path] = r["tokens_per_s"] * model_flops_per_token(cfg) / (peak * 1e12)
        print(
            f"measured bf16 matmul peak {peak:.0f} TFLOP/s; MFU reference {mfu['reference']:.1%}, ours {mfu['ours']:.1%}"
        )
    memory = "peak_gpu_mb" if torch.cuda.is_available() else "peak_rss_mb"
    print(
        f"{shape}; ours / reference = {ratio:.2f}x; peak memory ({memory}) "
        f"reference {results['reference'][memory]:,.0f} MB, ours {results['ours'][memory]:,.0f} MB; {machine()}"
    )
    if not args.no_record:
        rows = [
            f"| {path} | {shape} | {r['tokens_per_s']:,.0f} | {r[memory]:,.0f} | {f'{mfu[path]:.1%}' if path in mfu else '– (CPU)'} |"
            for path, r in results.items()
        ]
        rows.append(f"| **ratio ours/reference** | | **{ratio:.2f}×** | | |")
        command = "python -m bench.pretrain_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        append_results("Pretraining throughput", command, rows, f"| path | shape | tokens/s | {memory} | MFU |")


if __name__ == "__main__":
    main()
