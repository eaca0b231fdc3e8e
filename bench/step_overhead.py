"""What a pretraining step costs besides the model, measured on any machine (a CPU too):

1. the data path, per loader worker: blocks read from the memory-mapped cache and masked
   (`MaskedBlocks.__getitem__`, what each of `impl.dataloader_num_workers` processes runs), batched by
   `stack`; the sampler's indices (`BlockOrder`, which runs in the main process); and, for comparison, one
   `DataCollatorForLanguageModeling` call masking a whole batch at once (a candidate, not our path).
   Printed as tokens/s per worker and the workers needed to feed `--target` tokens/s.
2. the Trainer's own per-step work against bare loops on the same model and batches (bench/bare_loop.py):
   bare (pre-masked batches on the device), + gradient clipping, + a DataLoader over `MaskedBlocks`
   (same sampler, collate and worker count as the Trainer), and `pretrain.train.mlm_trainer`'s Trainer.
   The variants run in turns, `--rounds` times, in this one process, so a shared machine's load falls on
   all of them alike; the ms per step of each is the median over rounds and windows.

Usage (a tiny model, where per-step overhead shows most):
    OMP_NUM_THREADS=1 python -m bench.step_overhead --config configs/pretrain/debug.yaml impl.num_threads=1
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch.utils.data import DataLoader

from bench.bare_loop import BareLoop
from bench.harness import append_results, machine, median, sync
from pretrain.blocks import BlockOrder
from pretrain.config import PretrainConfig
from pretrain.masking import BlockMasker, MaskedBlocks, stack
from stagekit.cli import doc_summary
from stagekit.config import load_config

TARGET_TOKENS_PER_S = 1.5e6  # the throughput goal for bert-medium on one H200: what the loader must feed


def loader_rates(cfg: PretrainConfig, data, batch_size: int, seconds: float) -> dict[str, tuple[float, float]]:
    """{part: (tokens per wall second, tokens per CPU second)} of one process doing each part of the data
    path for about `seconds` each. The CPU-second figure is what one core of its own gives a worker."""
    t = cfg.train
    masker = BlockMasker(data.tokenizer, t.mlm_probability, t.mask_replace_prob, t.random_replace_prob)
    dataset = MaskedBlocks(data.train, masker, t.seed)
    order = BlockOrder(len(dataset), t.seed)
    tokens_per_block = cfg.data.block_size

    def rate(work) -> tuple[float, float]:
        work()  # warm
        done, start, start_cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            done += work()
        return done / (time.perf_counter() - start), done / max(time.process_time() - start_cpu, 1e-9)

    indices = iter(())

    def next_indices() -> list[int]:
        nonlocal indices
        batch = [i for _, i in zip(range(batch_size), indices, strict=False)]
        if len(batch) < batch_size:
            order.set_epoch(order.epoch + 1)
            indices = iter(order)
            batch = [i for _, i in zip(range(batch_size), indices, strict=False)]
        return batch

    def worker_batch() -> int:  # one worker's job per batch: __getitem__ for each index, then the collate
        batch = stack([dataset[i] for i in next_indices()])
        return batch["input_ids"].numel()

    def sampler_only() -> int:
        return len(next_indices()) * tokens_per_block

    def read_only() -> int:
        blocks = [torch.as_tensor(data.train[i], dtype=torch.long) for i in next_indices()]
        return sum(b.numel() for b in blocks)

    batched = masker.collator
    generator = torch.Generator().manual_seed(t.seed)

    def batch_masking() -> int:  # the candidate: one collator call over the whole (batch, block) tensor
        ids = torch.stack([torch.as_tensor(data.train[i], dtype=torch.long) for i in next_indices()])
        batched.generator = generator
        specials = torch.isin(ids, masker.special_ids)
        batched.torch_mask_tokens(ids, special_tokens_mask=specials)
        return ids.numel()

    return {
        "blocks + masking + stack (one worker)": rate(worker_batch),
        "blocks read only (no masking)": rate(read_only),
        "sampler indices (main process)": rate(sampler_only),
        "candidate: one collator call per batch": rate(batch_masking),
    }


class LoaderLoop(BareLoop):
    """The bare loop fed as the Trainer is fed: a DataLoader over `MaskedBlocks` (BlockOrder, `stack`,
    impl.dataloader_num_workers), each batch copied to the device (pinned and non-blocking on CUDA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        t, cuda = self.cfg.train, self.device.type == "cuda"
        masker = BlockMasker(self.data.tokenizer, t.mlm_probability, t.mask_replace_prob, t.random_replace_prob)
        dataset = MaskedBlocks(self.data.train, masker, t.seed)
        workers = self.cfg.impl.dataloader_num_workers
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=BlockOrder(len(dataset), t.seed),
            collate_fn=stack,
            drop_last=True,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0,
        )
        self.iterator = iter(self.loader)
        self.settings["batches"] = f"DataLoader over MaskedBlocks, {workers} workers"

    def __call__(self) -> int:
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        cuda = self.device.type == "cuda"
        self.batches = [{k: v.to(self.device, non_blocking=cuda) for k, v in batch.items()}]
        self.position = 0
        return super().__call__()


def timed_steps(step, *, warmup: int, windows: int, steps_per_window: int, device: torch.device):
    """(wall ms, CPU ms of this process) per step for each window of `step`, after `warmup` steps."""
    for _ in range(warmup):
        step()
    sync(device)
    wall, cpu = [], []
    for _ in range(windows):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps_per_window):
            step()
        sync(device)
        wall.append((time.perf_counter() - start) * 1e3 / steps_per_window)
        cpu.append((time.process_time() - start_cpu) * 1e3 / steps_per_window)
    return wall, cpu


TRAINER = "Trainer (python -m pretrain)"


def step_overheads(args: argparse.Namespace, cfg: PretrainConfig, device: torch.device):
    """({variant: wall ms per step}, {variant: CPU ms per step}), every window of every round, the
    variants in turns."""
    from bench.pretrain_throughput import ours_rates

    clip = cfg.train.max_grad_norm
    variants = {
        "bare loop (pre-masked batches on the device)": lambda: BareLoop(cfg, args.data, args.batch_size, device),
        "bare loop + gradient clipping": lambda: BareLoop(cfg, args.data, args.batch_size, device, clip_norm=clip),
        "bare loop + clipping + DataLoader": lambda: LoaderLoop(
            cfg, args.data, args.batch_size, device, clip_norm=clip
        ),
    }
    tokens = args.batch_size * cfg.data.block_size
    names = [*variants, TRAINER]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, make in variants.items():
            step = make()
            w, c = timed_steps(
                step, warmup=args.warmup, windows=args.windows, steps_per_window=args.steps_per_window, device=device
            )
            wall[name] += w
            cpu[name] += c
            del step
        run = ours_rates(args, args.data)
        wall[TRAINER] += [tokens / r * 1e3 for r in run.rates]
        cpu[TRAINER] += [tokens / r * 1e3 for r in run.cpu_rates]
    return wall, cpu


def main(argv: list[str] | None = None) -> dict:
    """Returns {"loader": {part: tokens/s}, "workers_needed", "step_ms": {variant: median ms},
    "trainer_overhead_ms", "trainer_over_loader_loop"}."""
    from pretrain.blocks import prepare_data

    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="configs/pretrain/debug.yaml", help="model shape and training settings")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.per_device_train_batch_size")
    parser.add_argument("--loader-batch-size", type=int, default=256, help="batch of the data-path figures")
    parser.add_argument("--loader-seconds", type=float, default=5.0, help="seconds per data-path figure")
    parser.add_argument("--target", type=float, default=TARGET_TOKENS_PER_S, help="tokens/s the loader must feed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps-per-window", type=int, default=20)
    parser.add_argument("--loader-only", action="store_true", help="only the data path (part 1)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="pretrain config overrides")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    from bench.pretrain_throughput import DEFAULT_OVERRIDES, shape_label

    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides)
    if cfg.impl.num_threads:
        torch.set_num_threads(cfg.impl.num_threads)
    args.batch_size = args.batch_size or cfg.train.per_device_train_batch_size
    args.data = data = prepare_data(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    loader = loader_rates(cfg, data, args.loader_batch_size, args.loader_seconds)
    per_worker = loader["blocks + masking + stack (one worker)"][1]
    needed = math.ceil(args.target / per_worker)
    print(f"data path, one process, batch {args.loader_batch_size} × {cfg.data.block_size}; {machine()}")
    for part, (r, r_cpu) in loader.items():
        print(f"  {part}: {r:,.0f} tokens/s, {r_cpu:,.0f} tokens per CPU second")
    print(
        f"  → {needed} workers with a core each feed {args.target:,.0f} tokens/s "
        f"(config: impl.dataloader_num_workers={cfg.impl.dataloader_num_workers})"
    )

    result: dict = {"loader": loader, "workers_needed": needed}
    command = "python -m bench.step_overhead " + " ".join(argv)
    if not args.no_record:
        rows = [f"| {part} | {r:,.0f} | {c:,.0f} | {args.target / c:.2f} |" for part, (r, c) in loader.items()]
        header = (
            f"| data path (one process, batch {args.loader_batch_size} × {cfg.data.block_size}) | tokens/s (wall) | "
            f"tokens per CPU second | cores for {args.target / 1e6:g}M tokens/s |"
        )
        append_results("Data path per loader worker", command, rows, header)
    if args.loader_only:
        return result

    wall, cpu = step_overheads(args, cfg, device)
    shape = shape_label(cfg, args.batch_size)
    step_ms = {name: median(v) for name, v in wall.items()}
    cpu_ms = {name: median(v) for name, v in cpu.items()}
    loop = "bare loop + clipping + DataLoader"
    print(f"ms per optimizer step, {shape}, median of {args.rounds} rounds × {args.windows} windows (wall; CPU):")
    for name in step_ms:
        print(
            f"  {name}: {step_ms[name]:.2f} ms (windows {min(wall[name]):.1f}–{max(wall[name]):.1f}); "
            f"CPU {cpu_ms[name]:.2f} ms (windows {min(cpu[name]):.1f}–{max(cpu[name]):.1f})"
        )
    overhead, overhead_cpu = step_ms[TRAINER] - step_ms[loop], cpu_ms[TRAINER] - cpu_ms[loop]
    print(
        f"  Trainer − bare loop with clipping and DataLoader: {overhead:+.2f} ms wall "
        f"({step_ms[TRAINER] / step_ms[loop]:.2f}×), {overhead_cpu:+.2f} ms CPU ({cpu_ms[TRAINER] / cpu_ms[loop]:.2f}×)"
    )
    result |= {
        "step_ms": step_ms,
        "step_cpu_ms": cpu_ms,
        "trainer_overhead_ms": overhead,
        "trainer_overhead_cpu_ms": overhead_cpu,
        "trainer_over_loader_loop": step_ms[TRAINER] / step_ms[loop],
    }
    if not args.no_record:
        bare = "bare loop (pre-masked batches on the device)"
        rows = [
            f"| {name} | {step_ms[name]:.2f} | {step_ms[name] / step_ms[bare]:.2f}× | {cpu_ms[name]:.2f} | "
            f"{cpu_ms[name] / cpu_ms[bare]:.2f}× | {cpu_ms[name] - cpu_ms[bare]:+.2f} |"
            for name in step_ms
        ]
        header = (
            f"| variant ({shape}; median of {args.rounds} rounds × {args.windows} windows of "
            f"{args.steps_per_window} steps) | wall ms per step | × bare | CPU ms per step | × bare | CPU ms over bare |"
        )
        append_results("Trainer per-step overhead against bare loops", command, rows, header)
    return result


if __name__ == "__main__":
    main()
