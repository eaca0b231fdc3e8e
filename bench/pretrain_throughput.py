"""MLM training tokens/s: the reference path a user would write vs ours, on one device, in one run.

(a) reference: BertForMaskedLM in fp32 with eager attention, each document truncated and padded to the
    block size, the full-vocabulary MLM head, DataCollatorForLanguageModeling, plain AdamW.
(b) ours: exactly what `python -m pretrain` trains with (`pretrain.engine.build_training`): packed
    blocks, SDPA, masked-only head, and on CUDA bf16 autocast, torch.compile and fused AdamW.

Each path runs in its own subprocess so peak memory is its own. Tokens counted are real (non-padding)
tokens. Usage (CPU example; on a GPU drop the model overrides):
    python -m bench.pretrain_throughput --batch-size 16 --windows 3 --steps-per-window 2
`--profile N` instead profiles N steps of our path with torch.profiler and prints where a step's time
goes (masking, forward, backward, optimizer) and the operators that take most of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import torch

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
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    torch.manual_seed(0)
    config = BertConfig(
        **dataclasses.asdict(cfg.model), pad_token_id=tokenizer.pad_token_id, attn_implementation="eager"
    )
    model = BertForMaskedLM(config).to(device).train()
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


def ours_step(cfg: PretrainConfig, data, batch_size: int):
    from pretrain.engine import build_training

    engine = build_training(cfg, data.tokenizer)
    generator = torch.Generator().manual_seed(0)

    def step() -> int:
        idx = torch.randint(len(data.train), (batch_size,), generator=generator)
        engine.train_step([data.train[idx]])
        return batch_size * cfg.data.block_size

    return step, engine.device


def shape_label(cfg: PretrainConfig, batch_size: int) -> str:
    m = cfg.model
    return f"L{m.num_hidden_layers}/H{m.hidden_size}/A{m.num_attention_heads}/V{m.vocab_size}, seq {cfg.data.block_size}, batch {batch_size}"


PHASES = ("mask", "forward", "backward", "optimizer")  # the record_function labels in MLMEngine.train_step


def profile_ours(step, steps: int, device: torch.device) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    """Per-phase share of the step time, the top operators by self time (ms per step), and ms per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    events = prof.key_averages()
    on_gpu = device.type == "cuda"

    def total_ms(event) -> float:  # device time where the work runs on the GPU, host time on CPU
        return (event.device_time_total if on_gpu else event.cpu_time_total) / 1e3 / steps

    def self_ms(event) -> float:
        return (event.self_device_time_total if on_gpu else event.self_cpu_time_total) / 1e3 / steps

    phases = {e.key: total_ms(e) for e in events if e.key in PHASES}
    ops = sorted(
        ((e.key, self_ms(e)) for e in events if e.key not in PHASES),
        key=lambda kv: -kv[1],
    )
    return phases, ops[:12], wall_ms


def run_profile(args: argparse.Namespace, cfg: PretrainConfig) -> None:
    from pretrain.blocks import prepare_data

    data = prepare_data(cfg)
    step, device = ours_step(cfg, data, args.batch_size)
    for _ in range(args.warmup):
        step()
    phases, ops, wall_ms = profile_ours(step, args.profile, device)
    shape = shape_label(cfg, args.batch_size)
    print(
        f"{shape}: {wall_ms:.1f} ms per step ({args.batch_size * cfg.data.block_size / wall_ms * 1e3:,.0f} tokens/s under the profiler)"
    )
    rows = [
        f"| phase: {name} | {phases.get(name, 0.0):.1f} | {phases.get(name, 0.0) / wall_ms:.0%} |" for name in PHASES
    ]
    rows += [f"| op: `{name}` (self) | {ms:.1f} | {ms / wall_ms:.0%} |" for name, ms in ops]
    for row in rows:
        print(row)
    if not args.no_record:
        command = "python -m bench.pretrain_throughput " + " ".join(sys.argv[1:])
        title = f"Pretraining step profile (our path, {shape}, {wall_ms:.1f} ms per step)"
        append_results(title, command, rows, "| where | ms per step | share of step |")


def run_one(args: argparse.Namespace) -> dict:
    from pretrain.blocks import prepare_data
    from pretrain.corpus import split_batches

    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides)
    data = prepare_data(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.path == "reference":
        texts = [text for batch in split_batches(cfg.data, "train") for text in batch]
        step = reference_step(cfg, data.tokenizer, texts, args.batch_size, device)
    else:
        step, device = ours_step(cfg, data, args.batch_size)
    rates = timed_windows(
        step, warmup=args.warmup, windows=args.windows, steps_per_window=args.steps_per_window, device=device
    )
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
