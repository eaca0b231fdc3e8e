"""Training throughput on 1 and on N processes (torchrun --standalone, one torch thread each), both stages.

Each run is the stage's real command under torchrun with the same per-process batch (so N processes train
N× the pairs or tokens per step); the figure is the median of the `tokens_per_s` / `pairs_per_s` the
Trainer logs, counted over all ranks. On a machine with fewer cores than processes × threads the
processes share cores, and the figure shows it.

    python -m bench.processes_throughput --processes 2 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import append_results, machine
from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT


def run_stage(stage: str, processes: int, argv: list[str]) -> float:
    """Median logged units/s of one torchrun of `stage` (its final checkpoint's log history)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run([*command, "-m", stage, *argv], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        sys.exit(f"{stage} on {processes} processes failed:\n{done.stderr[-3000:]}")
    out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")))
    states = sorted(out.rglob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"]
    key = "tokens_per_s" if stage == "pretrain" else "pairs_per_s"
    rates = sorted(h[key] for h in history if key in h)[1:]  # the first window holds start-up costs
    return rates[len(rates) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pretrain-config", default=str(REPO_ROOT / "configs/pretrain/cpu-small.yaml"))
    parser.add_argument("--siamese-model", default="all-MiniLM-L6-v2", help="base model of the siamese runs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, dict[int, float]] = {"pretrain": {}, "siamese": {}}
    with tempfile.TemporaryDirectory(prefix="processes-") as tmp:
        for n in (1, args.processes):
            pretrain = [
                "--config", args.pretrain_config, f"output_dir={tmp}/p{n}", "data.max_documents=4000",
                f"data.cache_dir={tmp}/cache", f"train.max_steps={args.steps}", "train.logging_steps=5",
                f"train.eval_steps={args.steps}", f"train.save_steps={args.steps}", "train.max_train_minutes=null",
                "train.cloze_sentences=0", "wandb.mode=disabled",
            ]  # fmt: skip
            results["pretrain"][n] = run_stage("pretrain", n, pretrain)
            siamese = [
                "--config", str(REPO_ROOT / "configs/siamese/cpu-small.yaml"), f"output_dir={tmp}/s{n}",
                f"model.base_model={args.siamese_model}", f"train.max_steps={args.steps}", "train.logging_steps=5",
                f"train.save_steps={args.steps}", "data.eval_pairs=0", "train.max_train_minutes=null",
                "train.select_best=false", "train.head_init_pairs=0", "wandb.mode=disabled",
            ]  # fmt: skip
            results["siamese"][n] = run_stage("siamese", n, siamese)
            print(f"{n} process(es): pretraining {results['pretrain'][n]:,.0f} tokens/s, "
                  f"fine-tuning {results['siamese'][n]:,.1f} pairs/s")  # fmt: skip
    rows = []
    for stage, unit in (("pretrain", "tokens/s"), ("siamese", "pairs/s")):
        one, many = results[stage][1], results[stage][args.processes]
        rows.append(f"| {stage} | {unit} | {one:,.1f} | {many:,.1f} | {many / one:.2f}× |")
    print("\n".join(rows) + f"\n{machine()}")
    if not args.no_record:
        command = "python -m bench.processes_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        header = f"| stage | unit | 1 process | {args.processes} processes | ratio |"
        append_results(f"1 vs {args.processes} processes (one thread each)", command, rows, header)


if __name__ == "__main__":
    main()
