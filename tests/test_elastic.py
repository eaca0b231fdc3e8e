"""Several machines and lost workers (stagekit/distributed.py): 2 "nodes" × 1 process on localhost against 1 × 2, a
SIGKILLed worker that torchrun restarts, a rank that raises. gloo on CPU, one thread per process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from stagekit.config import REPO_ROOT
from stagekit.resume import checkpoint_dirs, is_complete, newest_checkpoint
from tests.test_distributed import (
    FINE_TUNING_CURVE_TOLERANCE,
    PRETRAIN_ARGV,
    SIAMESE_ARGV,
    WORKER,
    assert_ranks_agree,
    assert_same_curve,
    launch,
    one_output,
)

pytestmark = pytest.mark.slow

ENV = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "disabled"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(stage: str, out: Path, argv: list[str], env: dict | None = None) -> list[subprocess.Popen]:
    """Two torchrun agents on this machine, one process each, meeting at one c10d endpoint: two "nodes".
    `stage` "pretrain" / "siamese" runs tests/distributed_worker.py, "pipeline" `python -m pipeline`."""
    program = ["-m", "pipeline", *argv] if stage == "pipeline" else ["-m", WORKER, stage, str(out), "--", *argv]
    out.mkdir(parents=True, exist_ok=True)
    port, procs = free_port(), []
    for node in (0, 1):
        command = [*TORCHRUN, "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1", "--rdzv_backend=c10d",
                   f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=test-{port}", "--max-restarts=0"]  # fmt: skip
        log = open(out / f"node{node}.log", "w")  # noqa: SIM115 - the agent writes it until it ends
        procs.append(subprocess.Popen([*command, *program], cwd=REPO_ROOT,
                                      env={**os.environ, **ENV, **(env or {})}, stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    return procs


def wait_nodes(procs: list[subprocess.Popen], out: Path, timeout: float = 600) -> tuple[list[int], str]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            codes.append(None)
    logged = "".join((out / f"node{n}.log").read_text(errors="replace") for n in (0, 1))
    return codes, logged


def final_weights(model_dir: Path) -> dict:
    weights = {}
    for file in sorted(model_dir.rglob("*.safetensors")):
        weights |= {f"{file.relative_to(model_dir)}:{k}": v for k, v in load_file(str(file)).items()}
    assert weights, model_dir
    return weights


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def nothing_half_written(run_dir: Path) -> None:
    assert all(is_complete(p) for p in checkpoint_dirs(run_dir / "checkpoints"))
    assert not list(run_dir.parent.rglob(".tmp-*")) and (run_dir / "model").is_dir()


@pytest.fixture(scope="module")
def pretrain_argv(tmp_path_factory, data_dir) -> list[str]:
    cache = tmp_path_factory.mktemp("elastic-cache")
    return [*PRETRAIN_ARGV, f"data.cache_dir={cache}", f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz",
            "train.per_device_train_batch_size=8", "impl.num_threads=1"]  # fmt: skip


# ---- 1. several nodes --------------------------------------------------------------------------------------------


def test_pretraining_on_two_nodes_matches_one_node_with_two_processes(pretrain_argv, tmp_path):
    launch("pretrain", tmp_path / "one", [*pretrain_argv, f"output_dir={tmp_path / 'one'}"], 2)
    procs = start_nodes("pretrain", tmp_path / "nodes", [*pretrain_argv, f"output_dir={tmp_path / 'nodes'}"])
    codes, logged = wait_nodes(procs, tmp_path / "nodes")
    assert codes == [0, 0], logged[-3000:]
    assert logged.count("building cache") <= 1  # shared storage: one build (or the cache from the first run)
    assert logged.count(" model: ") == 1 and logged.count("done in ") == 1  # logs and outputs: global rank 0 only
    for f in ("node0.log", "node1.log"):
        (tmp_path / "nodes" / f).unlink()
    one_output(tmp_path / "nodes", "pretrain-debug")
    assert_ranks_agree(tmp_path / "nodes")
    assert_same_curve(tmp_path / "one" / "pretrain-debug", tmp_path / "nodes" / "pretrain-debug")


def test_fine_tuning_on_two_nodes_matches_one_node_with_two_processes(tiny_bert_for_distributed, tmp_path):
    argv = [
        *SIAMESE_ARGV,
        f"model.base_model={tiny_bert_for_distributed}",
        "train.per_device_train_batch_size=8",
        "impl.num_threads=1",
    ]
    launch("siamese", tmp_path / "one", [*argv, f"output_dir={tmp_path / 'one'}"], 2)
    codes, logged = wait_nodes(start_nodes("siamese", tmp_path / "nodes", [*argv, f"output_dir={tmp_path / 'nodes'}"]),
                               tmp_path / "nodes")  # fmt: skip
    assert codes == [0, 0], logged[-3000:]
    for f in ("node0.log", "node1.log"):
        (tmp_path / "nodes" / f).unlink()
    one_output(tmp_path / "nodes", "siamese-debug")
    assert_ranks_agree(tmp_path / "nodes")
    assert_same_curve(
        tmp_path / "one" / "siamese-debug", tmp_path / "nodes" / "siamese-debug", FINE_TUNING_CURVE_TOLERANCE
    )


def test_the_pipeline_on_two_nodes_trains_both_stages_once_and_evaluates_on_rank_0(tmp_path):
    configs, out = REPO_ROOT / "configs", tmp_path / "outputs"
    argv = ["--pretrain-config", str(configs / "pretrain/debug.yaml"), "--siamese-config",
            str(configs / "siamese/debug.yaml"), "--output-dir", str(out), "--no-app", "eval.baseline=null",
            "eval.limit=12"]  # fmt: skip
    env = {"BERT_DATA_DIR": os.environ["BERT_DATA_DIR"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    procs = start_nodes("pipeline", tmp_path, argv, env=env)
    codes, logged = wait_nodes(procs, tmp_path)
    assert codes == [0, 0], logged[-3000:]
    assert logged.count("; report in ") == 1 and logged.count("3/3 evaluation") == 1  # global rank 0 alone
    assert sorted(p.name for p in out.iterdir()) == ["pretrain-debug", "siamese-debug"]
    assert json.loads((out / "pretrain-debug/model/metrics.json").read_text())["processes"] == 2
    assert json.loads((out / "siamese-debug/model/metrics.json").read_text())["processes"] == 2
    assert (out / "siamese-debug/model/report.md").is_file() and not list(out.rglob(".tmp-*"))


def test_accelerate_launch_on_two_machines_with_the_example_config(pretrain_argv, tmp_path):
    port = free_port()
    flags = ["--config_file", str(REPO_ROOT / "examples/accelerate-two-machines.yaml"), "--num_processes=2",
             "--main_process_ip=127.0.0.1", f"--main_process_port={port}"]  # fmt: skip
    argv = [*pretrain_argv, f"output_dir={tmp_path}"]
    procs = []
    for machine in (0, 1):  # the first machine hosts the rendezvous; accelerate refuses a port already taken
        command = [sys.executable, "-m", "accelerate.commands.launch", *flags, f"--machine_rank={machine}"]
        with open(tmp_path / f"node{machine}.log", "w") as log:
            procs.append(subprocess.Popen([*command, "-m", "pretrain", *argv], cwd=REPO_ROOT,
                                          env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        deadline = time.monotonic() + 60
        while machine == 0 and time.monotonic() < deadline and procs[0].poll() is None:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            time.sleep(0.2)
    codes, logged = wait_nodes(procs, tmp_path)
    assert codes == [0, 0], logged[-3000:]
    metrics = json.loads((tmp_path / "pretrain-debug" / "model" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and logged.count("done in ") == 1


# ---- 2. a lost worker --------------------------------------------------------------------------------------------


def kill_a_worker_once(command: list[str], ready, log: Path, timeout: float = 600) -> tuple[int, str]:
    """Start torchrun (`--max-restarts=1`), SIGKILL its local rank 1 once `ready()`, wait for the end."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT)
    deadline, killed = time.monotonic() + timeout, False
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if not killed and ready():
                for child in psutil.Process(proc.pid).children():
                    if child.environ().get("LOCAL_RANK") == "1":
                        child.kill()
                        killed = True
            time.sleep(0.02)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, "the run ended before a worker could be killed"
    return code, log.read_text(errors="replace")


def restarted_after_a_kill(stage: str, argv: list[str], tmp_path: Path) -> tuple[Path, str]:
    """Train `stage` straight on 2 processes, then again under `--max-restarts=1` with local rank 1 SIGKILLed
    once a checkpoint is complete; returns the killed run's folder and its log, after checking that torchrun
    restarted the group, the run ended well and nothing is left half-written."""
    launch(stage, tmp_path / "straight", [*argv, f"output_dir={tmp_path / 'straight'}"], 2)
    run = tmp_path / "killed" / f"{stage}-debug"
    command = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=1", "-m", stage, *argv,
               f"output_dir={tmp_path / 'killed'}"]  # fmt: skip

    def ready() -> bool:
        return newest_checkpoint(run / "checkpoints") is not None

    code, logged = kill_a_worker_once(command, ready, tmp_path / "killed.log")
    assert code == 0, logged[-3000:]
    assert "torchrun restart 1" in logged
    nothing_half_written(run)
    return run, logged


# The restarted group accepts its own run folder (no "already holds a run (checkpoint-4): pass --resume") and
# forms again ("Gloo connectFullMesh failed … timed out connecting" would be the failure); it ends with a model.
def test_a_killed_pretraining_worker_is_restarted_and_resumes_by_itself(pretrain_argv, tmp_path):
    argv = [*pretrain_argv, "train.max_steps=24", "train.save_steps=4", "train.eval_steps=12"]
    run, logged = restarted_after_a_kill("pretrain", argv, tmp_path)
    assert "resuming" in logged
    assert_same_weights(final_weights(tmp_path / "straight/pretrain-debug/model"), final_weights(run / "model"), 0)


def test_a_killed_fine_tuning_worker_is_restarted_and_resumes_by_itself(tiny_bert_for_distributed, tmp_path):
    argv = [*SIAMESE_ARGV, f"model.base_model={tiny_bert_for_distributed}", "train.per_device_train_batch_size=8",
            "impl.num_threads=1", "train.max_steps=12"]  # fmt: skip
    run, _ = restarted_after_a_kill("siamese", argv, tmp_path)
    info = json.loads((run / "model" / "metrics.json").read_text())
    assert info["step"] == 12
    # the siamese stage's resume tolerance (tests/siamese/test_train.py)
    assert_same_weights(final_weights(tmp_path / "straight/siamese-debug/model"), final_weights(run / "model"), 1e-6)


# The rank on the other "node" stops within seconds, instead of waiting in its next all-reduce for gloo's
# 30-minute timeout.
@pytest.mark.parametrize("stage", ["pretrain", "siamese"])
def test_a_rank_that_raises_stops_every_node_within_seconds(stage, pretrain_argv, tiny_bert_for_distributed, tmp_path):
    if stage == "pretrain":
        argv = [*pretrain_argv, "train.max_steps=400", f"output_dir={tmp_path}"]
    else:
        argv = [*SIAMESE_ARGV, f"model.base_model={tiny_bert_for_distributed}", "train.max_steps=400",
                "impl.num_threads=1", f"output_dir={tmp_path}"]  # fmt: skip
    procs = start_nodes(stage, tmp_path, argv, env={"BERT_TEST_FAIL": "1:3"})
    start = time.monotonic()
    codes, logged = wait_nodes(procs, tmp_path, timeout=240)
    assert None not in codes, f"a node was still running after {time.monotonic() - start:.0f} s:\n{logged[-3000:]}"
    assert all(code != 0 for code in codes)
    lines = re.findall(r"error: rank 1 of 2 .*", logged)  # (a progress bar may stand before it on the line)
    assert lines and all("RuntimeError: injected failure at step 3" in line for line in lines), logged[-3000:]
    assert any("rank 0 stops too" in line for line in lines), logged[-3000:]
    assert not (tmp_path / f"{stage}-debug" / "model").exists()


# ---- 3. ranking loss across devices ------------------------------------------------------------------------------


# Each rank ranks its premises among all 16 pairs: 2 × 8 trains the same objective as 1 × 16, not one over 8.
def test_the_ranking_loss_on_two_processes_follows_the_one_process_curve(tiny_bert_for_distributed, tmp_path):
    argv = [*SIAMESE_ARGV, f"model.base_model={tiny_bert_for_distributed}", "loss.name=both", "impl.num_threads=1"]
    launch(
        "siamese",
        tmp_path / "one",
        [*argv, f"output_dir={tmp_path / 'one'}", "train.per_device_train_batch_size=16"],
        1,
    )
    launch(
        "siamese", tmp_path / "two", [*argv, f"output_dir={tmp_path / 'two'}", "train.per_device_train_batch_size=8"], 2
    )
    assert_ranks_agree(tmp_path / "two")
    assert_same_curve(
        tmp_path / "one" / "siamese-debug", tmp_path / "two" / "siamese-debug", FINE_TUNING_CURVE_TOLERANCE
    )
