"""MLM training tokens/s: the reference path a user would write vs ours, on one device, in one run.

(a) reference: the architecture's plain transformers class in fp32 with eager attention, each document
    truncated and padded to the block size, the full-vocabulary MLM head, DataCollatorForLanguageModeling,
    plain AdamW, in a loop of its own.
(b) ours: exactly what `python -m pretrain` trains with — the transformers Trainer built by
    `pretrain.train.mlm_trainer` (packed memory-mapped blocks, SDPA, the masked-only head inside forward,
    and on CUDA bf16 autocast, torch.compile and fused AdamW), timed at its step ends.

(c) anchor: a bare loop over our model class (bench/bare_loop.py: SDPA, masked-only head, and on CUDA
    torch.compile, bf16 autocast and fused AdamW; pre-masked batches already on the device, no Trainer,
    no data loader) — the ceiling our path should reach; ours / anchor says how much the Trainer and the
    data loader cost.

Each path runs in its own subprocess so peak memory is its own. Tokens counted are real (non-padding)
tokens. Usage (CPU example; on a GPU drop the model overrides):
    python -m bench.pretrain_throughput --batch-size 16 --windows 3 --steps-per-window 2
MFU is reported for every path under one FLOP count (`model_flops_per_token`, printed) against a
measured matmul peak: bf16 on CUDA, fp32 with torch's threads on a CPU.
`--profile N` instead profiles N steps of our path with torch.profiler and prints where a step's time
goes: the phases of a Trainer step (forward, backward, optimizer, the Trainer's own work, waiting for
the next batch), the calls that make the host wait for the device, and the operators that take most.
`--profile-after N` profiles N steps of ours after its timed windows, in the same run (on a GPU: one
compile less than a separate `--profile` run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
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
from pretrain.config import PretrainConfig
from stagekit.cli import doc_summary
from stagekit.config import load_config

DEFAULT_OVERRIDES = [  # the shared stand-in corpus, enough documents for a few hundred batches
    "data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz",  # a path alone: no Hub revision
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

    from stagekit.sources import local_files

    files = local_files(cfg.data.source.path)
    rows = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    return [row[cfg.data.text_column] for _, row in zip(range(cfg.data.max_documents or 10**9), rows, strict=False)]


class StepTimes(TrainerCallback):
    """The clock (after a device sync) at the start of training and at the end of the optimizer steps in
    `marks` only: syncing every step would stop the host from queueing the next step while the device
    works, which `python -m pretrain` never does."""

    def __init__(self, device: torch.device, marks: set[int]) -> None:
        self.device, self.marks, self.times, self.cpu_times = device, marks, {}, {}

    def _mark(self, step: int) -> None:
        sync(self.device)
        self.times[step] = time.perf_counter()
        self.cpu_times[step] = time.process_time()  # this process's CPU seconds: steadier on a shared machine

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 in self.marks:
            self._mark(0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.marks:
            self._mark(state.global_step)


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


@dataclass
class OursRun:
    """What one timed run of our path gives: tokens/s and tokens per CPU second of this process per window,
    the device, and with profiled steps the profiler and the wall ms per profiled step."""

    rates: list[float]
    cpu_rates: list[float]
    device: torch.device
    profiler: Any = None
    profile_ms: float = 0.0


def ours_rates(args: argparse.Namespace, data, profile_steps: int = 0, profile_only: bool = True) -> OursRun:
    """Time `python -m pretrain`'s Trainer (pretrain.train.mlm_trainer) on `data`: `args.windows` windows
    of `args.steps_per_window` steps after `args.warmup`, then `profile_steps` steps under torch.profiler —
    or, with `profile_only`, only the profiled steps right after the warm-up."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile, schedule

    from pretrain.train import mlm_trainer

    spw = args.steps_per_window
    timed = 0 if profile_steps and profile_only else args.windows * spw
    marks = [args.warmup + i * spw for i in range(timed // spw + 1)] if timed else [args.warmup]
    if profile_steps:
        marks.append(marks[-1] + profile_steps)
    with tempfile.TemporaryDirectory(prefix="throughput-") as out:
        total = args.warmup + timed + profile_steps
        overrides = DEFAULT_OVERRIDES + args.overrides + trainer_overrides(args, total, out)
        cfg = load_config(PretrainConfig, args.config, overrides)
        trainer = mlm_trainer(cfg, data, report_to=[], fresh=True)
        times = StepTimes(trainer.args.device, set(marks))
        trainer.add_callback(times)
        profiler = None
        if profile_steps:
            cuda = trainer.args.device.type == "cuda"
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            wait = args.warmup + timed
            profiler = profile(activities=activities, schedule=schedule(wait=wait, warmup=0, active=profile_steps))
            trainer.add_callback(ProfilerStep(profiler))
            phases = StepPhases(trainer.model)
            phases.wrap_batches(trainer)
            trainer.add_callback(phases)
            with profiler:
                trainer.train()
            phases.close()
        else:
            trainer.train()
    tokens = args.batch_size * cfg.data.block_size
    timed_marks = marks[:-1] if profile_steps else marks
    windows = list(zip(timed_marks, timed_marks[1:], strict=False)) if timed else []
    rates = [spw * tokens / (times.times[b] - times.times[a]) for a, b in windows]
    cpu_rates = [spw * tokens / max(times.cpu_times[b] - times.cpu_times[a], 1e-9) for a, b in windows]
    profile_ms = (times.times[marks[-1]] - times.times[marks[-2]]) * 1e3 / profile_steps if profile_steps else 0.0
    return OursRun(rates, cpu_rates, trainer.args.device, profiler, profile_ms)


class ProfilerStep(TrainerCallback):
    def __init__(self, profiler) -> None:
        self.profiler = profiler

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.step()


PHASES = {  # profiler range → what it holds, in the order a Trainer step runs them
    "phase: next batch": "the Trainer fetching the next batch: loader workers' blocks + masking, the copy to "
    "the device, counting its masked tokens",
    "phase: forward": "the model's forward (encoder, masked-only head, loss)",
    "phase: backward + clip": "backward, then the Trainer's gradient clipping and norm",
    "phase: optimizer": "AdamW's step",
    "phase: Trainer after the step": "learning-rate schedule, zero_grad, callbacks, the log/save/evaluate checks",
}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync")
SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::is_nonzero")  # ops that wait for a result on the host


class StepPhases(TrainerCallback):
    """Profiler ranges around the phases of a Trainer step (PHASES): the model's forward through module
    hooks, the rest from the Trainer's callback events, the batch fetch by wrapping `get_batch_samples`."""

    def __init__(self, model: torch.nn.Module) -> None:
        from torch.profiler import record_function

        self.record_function, self.open = record_function, None
        self.hooks = [
            model.register_forward_pre_hook(lambda *_: self._switch("phase: forward")),
            model.register_forward_hook(lambda *_: self._switch("phase: backward + clip")),
        ]

    def wrap_batches(self, trainer) -> None:
        fetch = trainer.get_batch_samples

        def get_batch_samples(*args, **kwargs):
            self._switch("phase: next batch")
            try:
                return fetch(*args, **kwargs)
            finally:
                self._switch(None)

        trainer.get_batch_samples = get_batch_samples

    def _switch(self, name: str | None) -> None:
        if self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None
        if name is not None:
            self.open = self.record_function(name)
            self.open.__enter__()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._switch("phase: optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._switch("phase: Trainer after the step")

    def on_step_end(self, args, state, control, **kwargs):
        self._switch(None)

    def close(self) -> None:
        self._switch(None)
        for hook in self.hooks:
            hook.remove()


def shape_label(cfg: PretrainConfig, batch_size: int) -> str:
    m = cfg.model
    return (
        f"{m.architecture} L{m.num_hidden_layers}/H{m.hidden_size}/A{m.num_attention_heads}/V{m.vocab_size}, "
        f"seq {cfg.data.block_size}, batch {batch_size}"
    )


def profile_rows(run: OursRun, steps: int) -> list[str]:
    """Where a step of our path spends its time, in ms per step: the phases (PHASES; host time, and on CUDA
    the device time of the kernels each launched), the calls that make the host wait for the device, the
    device's busy share, and the operators (CPU: host self time) or kernels (CUDA: device time) that take
    most. The profiler lists a range twice on CUDA (host side and device side, key_averages keeps them
    apart by device type): phases and waits are read from the host-side entries, busy time and the
    kernel rows from the device-side ones, so nothing is counted twice."""
    from torch.autograd import DeviceType

    wall_ms, on_gpu, n = run.profile_ms, run.device.type == "cuda", steps
    events = run.profiler.key_averages()
    host = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]

    rows = []
    by_key = {e.key: e for e in host}
    for name, what in PHASES.items():
        if name in by_key:
            e = by_key[name]
            gpu = f"; device {e.device_time_total / 1e3 / n:.1f}" if on_gpu else ""
            rows.append(
                f"| {name} (host{'; device' if on_gpu else ''}) | {e.cpu_time_total / 1e3 / n:.1f}{gpu} | "
                f"{e.cpu_time_total / 1e3 / n / wall_ms:.0%} | {what} |"
            )
    for key in SYNC_CALLS + SYNC_OPS if on_gpu else ():  # on a CPU nothing waits for a device
        if key in by_key:
            e = by_key[key]
            rows.append(
                f"| wait: `{key}` ({e.count / n:.1f} calls) | {e.self_cpu_time_total / 1e3 / n:.1f} | "
                f"{e.self_cpu_time_total / 1e3 / n / wall_ms:.0%} | host time in the call |"
            )
    if on_gpu:
        busy = sum(e.self_device_time_total for e in kernels) / 1e3 / n
        rows.append(f"| device busy (all kernels and copies) | {busy:.1f} | {busy / wall_ms:.0%} | idle the rest |")
        top = sorted(((e.key, e.self_device_time_total / 1e3 / n) for e in kernels), key=lambda kv: -kv[1])
        rows += [f"| kernel: `{name[:80]}` | {ms:.1f} | {ms / wall_ms:.0%} | |" for name, ms in top[:12]]
    else:
        skip = ("ProfilerStep", "phase: ")
        ops = [(e.key, e.self_cpu_time_total / 1e3 / n) for e in host if not e.key.startswith(skip)]
        ops.sort(key=lambda kv: -kv[1])
        rows += [f"| op: `{name}` (self) | {ms:.1f} | {ms / wall_ms:.0%} | |" for name, ms in ops[:12]]
    return rows


def record_profile(args: argparse.Namespace, cfg: PretrainConfig, rows: list[str], wall_ms: float, steps: int) -> None:
    shape = shape_label(cfg, args.batch_size)
    print(f"{shape}: {wall_ms:.1f} ms per step under the profiler ({steps} steps); {machine()}")
    for row in rows:
        print(row)
    if not args.no_record:
        command = "python -m bench.pretrain_throughput " + " ".join(args.argv)
        title = f"Pretraining step profile (our path, {shape}, {wall_ms:.1f} ms per step)"
        append_results(title, command, rows, "| where | ms per step | share of step | what |")


def run_profile(args: argparse.Namespace, cfg: PretrainConfig) -> list[str]:
    """`--profile N`: profile N steps of our path right after the warm-up; returns the table's rows."""
    from pretrain.blocks import prepare_data

    run = ours_rates(args, prepare_data(cfg), profile_steps=args.profile)
    rows = profile_rows(run, args.profile)
    record_profile(args, cfg, rows, run.profile_ms, args.profile)
    return rows


def run_one(args: argparse.Namespace) -> dict:
    from bench.bare_loop import BareLoop
    from pretrain.blocks import prepare_data

    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides)
    data = prepare_data(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = {}
    if args.path in ("reference", "anchor"):
        if args.path == "reference":
            step = reference_step(cfg, data.tokenizer, raw_documents(cfg), args.batch_size, device)
        else:
            step = BareLoop(cfg, data, args.batch_size, device)
            settings = step.settings
        cpu_rates: list[float] = []
        rates = timed_windows(
            step,
            warmup=args.warmup,
            windows=args.windows,
            steps_per_window=args.steps_per_window,
            device=device,
            cpu_rates=cpu_rates,
        )
    else:
        run = ours_rates(args, data, profile_steps=args.profile_after, profile_only=False)
        rates, cpu_rates = run.rates, run.cpu_rates
        if args.profile_after:  # profiled after the timed windows, which the profiler does not slow
            settings = {"profile_rows": profile_rows(run, args.profile_after), "profile_ms": run.profile_ms}
    return {
        "tokens_per_s": median(rates),
        "windows": rates,
        "tokens_per_cpu_s": median(cpu_rates),  # this process's CPU seconds: the steadier figure on a shared CPU
        "peak_gpu_mb": peak_gpu_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "settings": settings,
    }


PATHS = ("reference", "ours", "anchor")


def main(argv: list[str] | None = None) -> dict:
    """Compare the paths (or profile ours); returns {"results": {path: child JSON}, "ours_over_reference",
    "ours_over_anchor", "flops_per_token", "peak_tflops", "mfu": {path: share}, with --profile-after
    "profile_rows"} (with --profile: {"rows"})."""
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument(
        "--config", default="configs/pretrain/bert-medium.yaml", help="model shape and training settings"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.per_device_train_batch_size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps-per-window", type=int, default=10)
    parser.add_argument("--profile", type=int, metavar="N", help="profile N steps of our path instead of comparing")
    parser.add_argument(
        "--profile-after", type=int, default=0, metavar="N", help="also profile N steps of ours after its windows"
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="which paths to compare (default: all three)")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="pretrain config overrides")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides)
    args.batch_size = args.batch_size or cfg.train.per_device_train_batch_size
    if args.profile:
        return {"rows": run_profile(args, cfg)}
    if args.path:  # a child: measure one path, print JSON on the last line
        result = run_one(args)
        print(json.dumps(result))
        return result
    paths = [p for p in PATHS if p in args.paths.split(",")]
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown or "ours" not in paths:
        raise SystemExit(f"--paths {args.paths}: name ours and any of reference, anchor")

    results = {}
    for path in paths:
        child = [sys.executable, "-m", "bench.pretrain_throughput", "--path", path, "--config", args.config]
        child += ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup)]
        child += ["--windows", str(args.windows), "--steps-per-window", str(args.steps_per_window)]
        child += ["--profile-after", str(args.profile_after if path == "ours" else 0), *args.overrides]
        out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])
        print(
            f"{path:>9}: {results[path]['tokens_per_s']:,.0f} tokens/s (windows {[round(r) for r in results[path]['windows']]})"
        )
    if "anchor" in results:
        print("anchor settings: " + ", ".join(f"{k} {v}" for k, v in results["anchor"]["settings"].items()))

    summary: dict[str, Any] = {"results": results}
    if args.profile_after:
        profiled = results["ours"]["settings"]
        summary["profile_rows"] = profiled["profile_rows"]
        record_profile(args, cfg, profiled["profile_rows"], profiled["profile_ms"], args.profile_after)
    ours = results["ours"]["tokens_per_s"]
    for other in ("reference", "anchor"):
        if other in results:
            summary[f"ours_over_{other}"] = ours / results[other]["tokens_per_s"]
            cpu = results["ours"]["tokens_per_cpu_s"] / results[other]["tokens_per_cpu_s"]
            summary[f"ours_over_{other}_cpu"] = cpu
    flops = model_flops_per_token(cfg)
    peak = matmul_peak_tflops()
    unit = "bf16" if torch.cuda.is_available() else f"fp32, {torch.get_num_threads()} threads"
    mfu = {path: r["tokens_per_s"] * flops / (peak * 1e12) for path, r in results.items()}
    summary |= {"flops_per_token": flops, "peak_tflops": peak, "mfu": mfu}
    print(
        f"MFU = tokens/s × {flops / 1e6:.1f} MFLOP per token (model_flops_per_token: 6 × encoder matmul params + "
        f"attention + head at the masked share) / measured {unit} matmul peak {peak:.3g} TFLOP/s: "
        + ", ".join(f"{path} {m:.1%}" for path, m in mfu.items())
    )
    if not torch.cuda.is_available():  # on a GPU the host's CPU seconds say nothing about the work
        print(
            "per CPU second of each main process (steadier on a shared machine; loader workers not counted): "
            + "; ".join(
                f"ours / {o} = {summary[f'ours_over_{o}_cpu']:.2f}x" for o in ("reference", "anchor") if o in results
            )
        )
    memory = "peak_gpu_mb" if torch.cuda.is_available() else "peak_rss_mb"
    shape = shape_label(cfg, args.batch_size)
    ratios = "; ".join(
        f"ours / {o} = {summary[f'ours_over_{o}']:.2f}x" for o in ("reference", "anchor") if o in results
    )
    print(
        f"{shape}; {ratios}; peak memory ({memory}) "
        + ", ".join(f"{path} {r[memory]:,.0f} MB" for path, r in results.items())
        + f"; {machine()}"
    )
    if not args.no_record:
        rows = [
            f"| {path} | {shape} | {r['tokens_per_s']:,.0f} | {r[memory]:,.0f} | {mfu[path]:.1%} |"
            for path, r in results.items()
        ]
        for other in ("reference", "anchor"):
            if other in results:
                cpu = "" if torch.cuda.is_available() else f" (per CPU second {summary[f'ours_over_{other}_cpu']:.2f}×)"
                rows.append(f"| **ratio ours/{other}** | | **{summary[f'ours_over_{other}']:.2f}×**{cpu} | | |")
        command = "python -m bench.pretrain_throughput " + " ".join(args.argv)
        header = f"| path | shape | tokens/s | {memory} | MFU ({flops / 1e6:.1f} MFLOP/token, {unit} peak {peak:.3g} TFLOP/s) |"
        append_results("Pretraining throughput", command, rows, header)
    return summary


if __name__ == "__main__":
    main()
