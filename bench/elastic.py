"""Several machines and a lost worker, measured on one machine (gloo, one torch thread per process).

`nodes`: training throughput of 2 "nodes" × 1 process (two torchrun agents meeting at a localhost c10d endpoint)
against 1 node × 2 processes (`torchrun --standalone`), both stages, the same per-process batch; the figure is the
median of the `tokens_per_s` / `pairs_per_s` the Trainer logs (all ranks), the first window left out.

`restart`: pretraining on 2 processes under `torchrun --max-restarts=1`; local rank 1 is SIGKILLed after
`--kill-at` logged steps. Reported: seconds from the kill to the restarted group's first training step, the
steps lost (done before the kill, minus the checkpoint resumed from: at most `--save-steps`), and the run's end.

    python -m bench.elastic nodes --steps 40
    python -m bench.elastic restart --kill-at 25 --save-steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.harness import append_results, machine
from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "WANDB_MODE": "disabled"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(stage: str, layout: str, argv: list[str]) -> float:
    """Median logged units/s of `stage` on `layout` ("1x2": one node, two processes; "2x1": two nodes)."""
    if layout == "1x2":
        commands = [[*TORCHRUN, "--standalone", "--nproc_per_node=2"]]
    else:
        port = free_port()
        commands = [[*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                     f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=bench-{port}"] for _ in (0, 1)]  # fmt: skip
    procs = [subprocess.Popen([*c, "-m", stage, *argv], env=ENV, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in commands]  # fmt: skip
    logs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"{stage} on {layout} failed:\n{logs[0][-3000:]}")
    out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")))
    states = sorted(out.rglob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    key = "tokens_per_s" if stage == "pretrain" else "pairs_per_s"
    rates = sorted(h[key] for h in json.loads(states[-1].read_text())["log_history"] if key in h)[1:]
    return rates[len(rates) // 2]


def pretrain_argv(out: str, cache: str, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "--config", str(REPO_ROOT / "configs/pretrain/cpu-small.yaml"), f"output_dir={out}", "data.max_documents=4000",
        f"data.cache_dir={cache}", f"train.max_steps={steps}", "train.logging_steps=5", f"train.eval_steps={steps}",
        f"train.save_steps={steps}", "train.max_train_minutes=null", "train.cloze_sentences=0", "wandb.mode=disabled",
        "train.per_device_train_batch_size=16", "impl.num_threads=1", *extra,
    ]  # fmt: skip


def nodes(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, float]] = {"pretrain": {}, "siamese": {}}
    with tempfile.TemporaryDirectory(prefix="elastic-") as tmp:
        for layout in ("1x2", "2x1"):
            results["pretrain"][layout] = run(
                "pretrain", layout, pretrain_argv(f"{tmp}/p{layout}", f"{tmp}/cache", args.steps)
            )
            siamese = [
                "--config", str(REPO_ROOT / "configs/siamese/cpu-small.yaml"), f"output_dir={tmp}/s{layout}",
                f"model.base_model={tmp}/p1x2/pretrain-cpu-small/model", f"train.max_steps={args.steps}",
                "train.logging_steps=5", f"train.save_steps={args.steps}", "data.eval_pairs=0", "train.per_device_train_batch_size=16",
                "train.max_train_minutes=null", "train.select_best=false", "train.head_init_pairs=0",
                "wandb.mode=disabled", "impl.num_threads=1",
            ]  # fmt: skip
            results["siamese"][layout] = run("siamese", layout, siamese)
            print(f"{layout}: {results['pretrain'][layout]:,.0f} tokens/s, {results['siamese'][layout]:,.1f} pairs/s")
    rows = [
        f"| {stage} | {unit} | {results[stage]['1x2']:,.1f} | {results[stage]['2x1']:,.1f} | "
        f"{results[stage]['2x1'] / results[stage]['1x2']:.2f}× |"
        for stage, unit in (("pretrain", "tokens/s"), ("siamese", "pairs/s"))
    ]
    print("\n".join(rows) + f"\n{machine()}")
    if not args.no_record:
        header = "| stage | unit | 1 node × 2 processes | 2 nodes × 1 process | ratio |"
        append_results("2 localhost nodes vs 1 node, 2 processes (gloo, one thread each)",
                       "python -m bench.elastic " + " ".join(sys.argv[1:]), rows, header)  # fmt: skip


def restart(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="elastic-") as tmp:
        extra = (f"train.save_steps={args.save_steps}", "train.logging_steps=1")
        argv = pretrain_argv(f"{tmp}/run", f"{tmp}/cache", args.steps, extra)
        command = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=1", "-m", "pretrain", *argv]
        proc = subprocess.Popen(command, env=ENV, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        steps_before, killed_at, first_after, resumed_from, buffer = 0, None, None, None, b""
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in lines:
                text = line.decode(errors="replace")
                if "'loss'" in text:
                    if killed_at is None:
                        steps_before += 1
                    elif first_after is None and resumed_from is not None:
                        first_after = time.monotonic()
                if match := re.search(r"resuming from \S*checkpoint-(\d+)", text):
                    resumed_from = int(match.group(1))
            if killed_at is None and steps_before >= args.kill_at:
                for child in psutil.Process(proc.pid).children():
                    if child.environ().get("LOCAL_RANK") == "1":
                        child.kill()
                        killed_at = time.monotonic()
        proc.wait()
        done = (Path(tmp) / "run/pretrain-cpu-small/model").is_dir()
    if killed_at is None or first_after is None or resumed_from is None:
        sys.exit(f"no kill-and-resume observed (killed: {killed_at is not None}, resumed: {resumed_from})")
    # logging_steps=1: one logged loss per step, so `steps_before` is the last step seen before the kill
    row = (f"| {steps_before} | {args.save_steps} | {resumed_from} | {steps_before - resumed_from} | "
           f"{first_after - killed_at:.1f} | {'yes' if done and proc.returncode == 0 else 'no'} |")  # fmt: skip
    print(row + f"\n{machine()}")
    if not args.no_record:
        header = "| killed after step | save_steps | resumed from | steps lost | s from kill to next step | model |"
        append_results("A SIGKILLed worker under torchrun --max-restarts=1 (pretraining, 2 processes)",
                       "python -m bench.elastic " + " ".join(sys.argv[1:]), [row], header)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("what", choices=["nodes", "restart"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kill-at", type=int, default=25, help="restart: logged steps before the kill")
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    nodes(args) if args.what == "nodes" else restart(args)


if __name__ == "__main__":
    main()
