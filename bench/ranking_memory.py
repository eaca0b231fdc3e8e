"""Cached negatives (impl.mini_batch_size) against the plain ranking loss: peak memory and time of a training step.

For each ranking loss, one per-device batch B of MNLI pairs (`both`) or triplets (`mnrl`) is trained on three
ways, each in its own process so that each peak is its own: the plain loss at B (the reference), the cached loss
(GradCache, siamese/losses.py) at B with each `--mini` mini-batch size, and the plain loss at B/k with k
accumulation steps (`--accumulation`, what a smaller batch would do: each pair then ranks against its micro-batch
only). A step is a bare loop over the losses `python -m siamese` builds (siamese/losses.py, build_loss): zero the
gradients, loss and backward per (micro-)batch, AdamW. Per path: the in-batch negatives each ranked pair sees,
the peak RSS above the loaded model (model, loss, optimizer and tokenized batch in memory; AdamW's moments and
every activation above), and the median seconds (wall and CPU) per optimizer step after one warm-up step.

    python -m bench.ranking_memory                                  # both, B 128, mini-batches 32 and 8, 4 × 32
    python -m bench.ranking_memory --losses both mnrl --batch 256 --mini 64 16 --steps 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stagekit.cli import doc_summary

REPO = Path(__file__).resolve().parents[1]


def rss_kib() -> dict[str, int]:
    """This process's resident set now (VmRSS) and its peak since start or the last reset (VmHWM), in KiB."""
    text = Path("/proc/self/status").read_text()
    return {name: int(re.search(rf"^{name}:\s+(\d+)", text, re.M).group(1)) for name in ("VmRSS", "VmHWM")}


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so that loading's own transient peak is not counted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> None:
    """Train `spec["steps"] + 1` optimizer steps on one path in this process; print its figures as one RESULT line."""
    import torch

    from siamese.config import ImplConfig, LossConfig, ModelConfig
    from siamese.losses import build_loss
    from siamese.model import build_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(base_model=spec["model"], max_seq_length=spec["max_seq_length"]),
                        ImplConfig(device="cpu"))  # fmt: skip
    model.train()
    loss = build_loss(model, LossConfig(name=spec["loss"]), mini_batch_size=spec["mini"])
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=2.0e-5)
    rows = json.loads(Path(spec["batch_file"]).read_text())
    columns, labels = rows["columns"], torch.tensor(rows["labels"])
    per_device, accumulation = spec["per_device"], spec["accumulation"]
    micro_batches = [  # tokenized as the collator does, each micro-batch padded to its own longest sentence
        ([dict(model.tokenize(column[i : i + per_device])) for column in columns], labels[i : i + per_device])
        for i in range(0, per_device * accumulation, per_device)
    ]
    gc.collect()
    exact = reset_peak_rss()
    loaded_kib = rss_kib()["VmRSS"]
    walls, cpus = [], []
    for _ in range(spec["steps"] + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        for features, batch_labels in micro_batches:
            out = loss([dict(f) for f in features], batch_labels)
            value = sum(out.values()) if isinstance(out, dict) else out  # `both` returns its two parts
            (value / accumulation).backward()  # as the Trainer scales the loss for accumulation
        optimizer.step()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    peak_kib = rss_kib()["VmHWM"] if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({
        "loaded_mib": loaded_kib / 1024, "peak_mib": peak_kib / 1024, "above_mib": (peak_kib - loaded_kib) / 1024,
        "wall_s": statistics.median(walls[1:]), "cpu_s": statistics.median(cpus[1:]), "warmup_s": walls[0],
    }))  # fmt: skip


def select(pairs: dict[str, list], loss: str, batch: int, how: str, seed: int) -> dict:
    """B rows of one loss's columns (premise, hypothesis + labels; or anchor, positive, negative), kept in file
    order: the longest by characters (so memory is the worst case real text gives) or a seeded random sample."""
    from siamese.nli_data import triplets_of

    if loss == "mnrl":
        table = triplets_of(pairs, window=50_000)  # data.triplet_window's default
        names = ["anchor", "positive", "negative"]
    else:
        table, names = pairs, ["premise", "hypothesis"]
    n = len(table[names[0]])
    if n < batch:
        sys.exit(f"--batch {batch}: the data hold only {n} rows for loss {loss}")
    if how == "longest":
        lengths = [sum(len(table[name][i]) for name in names) for i in range(n)]
        keep = sorted(sorted(range(n), key=lambda i: -lengths[i])[:batch])
    else:
        keep = sorted(random.Random(seed).sample(range(n), batch))
    labels = [table["label"][i] for i in keep] if loss == "both" else [0] * batch
    return {"columns": [[table[name][i] for i in keep] for name in names], "labels": labels}


def negatives(loss: str, labels: list[int], per_device: int) -> float:
    """In-batch negatives per ranked pair, averaged over the ranked pairs (siamese/losses.py; sentence-transformers'
    MultipleNegativesRankingLoss, query to document). `mnrl`: each anchor ranks against every positive and
    negative of its batch, 2B - 1. `both`: each entailment premise against the batch's entailment and
    contradiction hypotheses, E + C - 1; neutral pairs are not ranked."""
    chunks = [labels[i : i + per_device] for i in range(0, len(labels), per_device)]
    if loss == "mnrl":
        return 2 * per_device - 1.0
    ranked = sum(chunk.count(0) for chunk in chunks)
    return sum(chunk.count(0) * (chunk.count(0) + chunk.count(2) - 1) for chunk in chunks) / max(ranked, 1)


def measure(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "bench.ranking_memory", "--child", json.dumps(spec)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{spec['loss']} {spec['path']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def paths(batch: int, minis: list[int], accumulation: int) -> list[tuple[str, int, int, int | None]]:
    """(name, per-device batch, accumulation steps, mini-batch size) of each path, the reference first."""
    out = [("plain (reference)", batch, 1, None)]
    out += [(f"cached, mini-batch {m}", batch, 1, m) for m in minis]
    out.append((f"plain, {accumulation} accumulation steps", batch // accumulation, accumulation, None))
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--model", default="outputs/pretrain-cpu-small/model", help="base model folder")
    parser.add_argument("--data", help="NLI pairs (default: ${BERT_DATA_DIR}/mnli/train.jsonl.gz)")
    parser.add_argument("--losses", nargs="+", choices=["both", "mnrl"], default=["both"])
    parser.add_argument("--batch", type=int, default=128, help="per-device batch B (pairs or triplets)")
    parser.add_argument("--mini", type=int, nargs="+", default=[32, 8], help="impl.mini_batch_size values")
    parser.add_argument("--accumulation", type=int, default=4, help="k of the B/k × k path")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per path, after one warm-up")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--select", choices=["longest", "random"], default="longest")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measured process")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    if args.batch % args.accumulation or any(not 1 <= m < args.batch for m in args.mini) or args.steps < 1:
        parser.error("--batch must divide by --accumulation, each --mini lie in [1, --batch), --steps be >= 1")
    model = Path(args.model).expanduser()
    if not model.is_dir():
        parser.error(
            f"--model {args.model}: no such folder (python -m pretrain --config configs/pretrain/cpu-small.yaml)"
        )
    data_dir = Path(os.environ.get("BERT_DATA_DIR", REPO.parent / "shared" / "data"))
    data = Path(args.data) if args.data else data_dir / "mnli" / "train.jsonl.gz"

    from siamese.nli_data import read_pairs
    from stagekit.sources import SourceConfig

    pairs = read_pairs(SourceConfig(path=str(data)), None)
    header = ("| loss | path | batch × accumulation | mini-batch | negatives per pair | peak RSS above the model, MiB "
              "| s per step | CPU s per step |")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="ranking-memory-") as tmp:
        for loss in args.losses:
            chosen = select(pairs, loss, args.batch, args.select, seed=0)
            batch_file = Path(tmp) / f"{loss}.json"
            batch_file.write_text(json.dumps(chosen))
            reference = None
            for name, per_device, accumulation, mini in paths(args.batch, args.mini, args.accumulation):
                spec = {"model": str(model.resolve()), "loss": loss, "path": name, "batch_file": str(batch_file),
                        "per_device": per_device, "accumulation": accumulation, "mini": mini, "steps": args.steps,
                        "max_seq_length": args.max_seq_length, "threads": args.threads}  # fmt: skip
                r = measure(spec)
                reference = reference or r
                print(f"{loss} {name}: {json.dumps(r)}", file=sys.stderr)
                rows.append(
                    f"| {loss} | {name} | {per_device} × {accumulation} | {mini or '–'} "
                    f"| {negatives(loss, chosen['labels'], per_device):.1f} "
                    f"| {r['above_mib']:,.1f} ({r['above_mib'] / reference['above_mib']:.2f}×) "
                    f"| {r['wall_s']:.2f} ({r['wall_s'] / reference['wall_s']:.2f}×) "
                    f"| {r['cpu_s']:.2f} ({r['cpu_s'] / reference['cpu_s']:.2f}×) |"
                )
    import torch

    from bench.harness import append_results, machine

    torch.set_num_threads(args.threads)  # the machine line names the threads the measured processes use
    print(f"model: {args.model}; {args.select} {args.batch} rows of {data.name}, max_seq_length {args.max_seq_length}, "
          f"{args.threads} thread(s), median of {args.steps} steps after one warm-up; {machine()}")  # fmt: skip
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))
    if args.record:
        command = "python -m bench.ranking_memory " + " ".join(sys.argv[1:])
        append_results("Cached negatives: memory and time of a ranking step", command, rows, header)


if __name__ == "__main__":
    main()
