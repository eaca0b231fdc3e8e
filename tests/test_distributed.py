"""Both stages on two processes (torchrun, gloo on CPU) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from stagekit.config import REPO_ROOT
from stagekit.resume import newest_checkpoint

pytestmark = pytest.mark.slow

WORKER = "tests.distributed_worker"
# Losses of 1 × 16 and 2 × 8 differ only by float summation order: the masks, blocks, pairs and the
# token-weighted normalisation are the same. Measured differences are below 1e-6; 1e-4 leaves room.
CURVE_TOLERANCE = 1e-4
# Fine-tuning fits its head on features of padded pairs (1 × 32 vs 2 × 16 pairs pad differently) and then
# trains it at lr 1e-2, which amplifies the same float differences: on a 2-core Intel Xeon, five runs gave
# 1.2e-4 to 3.2e-4. A real fault changes the losses (1.1-1.6) themselves, not their fourth decimal: ranks
# training on the same pairs average other pairs, and a head that drifts between ranks fails assert_ranks_agree.
FINE_TUNING_CURVE_TOLERANCE = 2e-3


def launch(stage: str, out: Path, argv: list[str], processes: int) -> str:
    """Run the stage on `processes` processes; returns what they logged."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    # As a module (-m), so the checkout comes first on sys.path: run as a script, tests/ would come first and its
    # `stagekit` / `siamese` test packages would hide the project's, leaving an installed copy to answer.
    done = subprocess.run(
        [*command, "-m", WORKER, stage, str(out), "--", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def losses(run_dir: Path) -> list[tuple[int, str, float]]:
    state = json.loads((newest_checkpoint(run_dir / "checkpoints") / "trainer_state.json").read_text())
    keys = ("loss", "eval_loss")
    return [(h["step"], k, h[k]) for h in state["log_history"] for k in keys if k in h]


def assert_same_curve(one: Path, two: Path, tolerance: float = CURVE_TOLERANCE) -> None:
    a, b = losses(one), losses(two)
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    for (step, key, x), (_, _, y) in zip(a, b, strict=True):
        assert abs(x - y) < tolerance, (step, key, x, y)


def assert_ranks_agree(out: Path) -> None:
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert (rank0[key] == rank1[key]).all(), key


def one_output(out: Path, run: str) -> None:
    """Exactly one final model folder and one metrics file: only rank 0 writes them."""
    assert [p.name for p in out.iterdir() if p.is_dir()] == [run]
    assert len(list(out.rglob("metrics.json"))) == 1  # the model folder's
    assert not list(out.rglob(".tmp-*")) and (out / run / "model").is_dir()


PRETRAIN_ARGV = [
    "--config", str(REPO_ROOT / "configs/pretrain/debug.yaml"), "data.max_documents=300", "train.max_steps=8",
    "train.eval_steps=4", "train.logging_steps=1",
    "model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0",  # dropout masks are per rank
]  # fmt: skip
SIAMESE_ARGV = [
    "--config", str(REPO_ROOT / "configs/siamese/debug.yaml"), "train.max_steps=6", "train.eval_steps=3",
    "train.save_steps=3", "train.logging_steps=1", "data.eval_pairs=16", "model.max_seq_length=32",
    "model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0",  # dropout masks are per rank
    "train.head_init_pairs=32", "train.head_learning_rate=1.0e-2",  # one fitted head, its own groups, every rank
]  # fmt: skip


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory, data_dir):
    """The debug pretraining on two processes × 8 blocks: (the folder holding its run, its argv, the log)."""
    root = tmp_path_factory.mktemp("pretrain-two")
    argv = [*PRETRAIN_ARGV, f"data.cache_dir={root / 'cache'}", f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz"]
    two = [*argv, f"output_dir={root / 'two'}", "train.per_device_train_batch_size=8"]
    return root, argv, launch("pretrain", root / "two", two, 2)


@pytest.fixture(scope="module")
def fine_tuning(tmp_path_factory, tiny_bert_for_distributed):
    """The debug fine-tuning on two processes × 4 pairs × 2 accumulation steps: (the folder holding its run, its
    argv). Its length buckets are the global batch of 16, so it trains the pairs of one process × 16 in each step."""
    root = tmp_path_factory.mktemp("siamese-two")
    argv = [*SIAMESE_ARGV, f"model.base_model={tiny_bert_for_distributed}"]
    split = ["train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2"]
    launch("siamese", root / "two", [*argv, f"output_dir={root / 'two'}", *split], 2)
    return root, argv


def test_pretraining_on_two_processes_matches_one(pretraining):
    root, argv, logged = pretraining
    assert logged.count("building cache") == 1  # the main process built it; the other rank waited, then read it
    launch("pretrain", root / "one", [*argv, f"output_dir={root / 'one'}", "train.per_device_train_batch_size=16"], 1)
    one_output(root / "two", "pretrain-debug")
    assert_ranks_agree(root / "two")
    assert_same_curve(root / "one" / "pretrain-debug", root / "two" / "pretrain-debug")
    metrics = json.loads((root / "two" / "pretrain-debug" / "model" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["tokens_seen"] == 8 * 16 * 128  # counted over both ranks


def test_fine_tuning_on_two_processes_matches_one(fine_tuning):
    root, argv = fine_tuning
    launch("siamese", root / "one", [*argv, f"output_dir={root / 'one'}", "train.per_device_train_batch_size=16"], 1)
    one_output(root / "two", "siamese-debug")
    assert_ranks_agree(root / "two")  # the NLI head too: it lives outside DDP's module
    assert_same_curve(root / "one" / "siamese-debug", root / "two" / "siamese-debug", FINE_TUNING_CURVE_TOLERANCE)
    info = json.loads((root / "two" / "siamese-debug" / "model" / "run_info.json").read_text())
    assert info["pairs_seen"] == 6 * 16


def test_cached_ranking_on_two_processes_matches_one_plain_process(tmp_path, tiny_bert_for_distributed):
    # loss.name=both with GradCache mini-batches of 2 on each of two ranks: the ranking still runs over the global
    # batch of 16 (siamese/losses.py inside the cached loss), the head averaged across ranks, the encoder through DDP.
    argv = [*SIAMESE_ARGV, f"model.base_model={tiny_bert_for_distributed}", "loss.name=both"]
    two = [*argv, f"output_dir={tmp_path / 'two'}", "train.per_device_train_batch_size=8", "impl.mini_batch_size=2"]
    launch("siamese", tmp_path / "two", two, 2)
    launch(
        "siamese",
        tmp_path / "one",
        [*argv, f"output_dir={tmp_path / 'one'}", "train.per_device_train_batch_size=16"],
        1,
    )
    assert_ranks_agree(tmp_path / "two")
    assert_same_curve(
        tmp_path / "one" / "siamese-debug", tmp_path / "two" / "siamese-debug", FINE_TUNING_CURVE_TOLERANCE
    )


def copy_run(root: Path, run: str, target: Path) -> Path:
    """The two-process run's checkpoints in a fresh output folder, as a kill before its final model leaves them."""
    shutil.copytree(root / "two" / run / "checkpoints", target / run / "checkpoints")
    return target


def refused_on_other_process_count(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trained on 2 process(es) but this run has 1" in err, err
    return err


# a two-process run resumed on one process went on at the wrong data position with wrong counters.
def test_a_two_process_pretraining_resumed_on_one_process_is_refused(pretraining, tmp_path, capsys):
    from pretrain.__main__ import main
    from stagekit.cli import run_cli

    root, argv, _ = pretraining
    out = copy_run(root, "pretrain-debug", tmp_path)
    assert run_cli(main, [*argv, f"output_dir={out}", "train.per_device_train_batch_size=8", "train.max_steps=12",
                          "--resume"]) == 2  # fmt: skip
    assert "torchrun --nproc_per_node=2" in refused_on_other_process_count(capsys)
    assert not (out / "pretrain-debug" / "model").exists()


def test_a_two_process_fine_tuning_resumed_on_one_process_is_refused(fine_tuning, tmp_path, capsys):
    from siamese.__main__ import main
    from stagekit.cli import run_cli

    root, argv = fine_tuning
    out = copy_run(root, "siamese-debug", tmp_path)
    split = ["train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2"]  # as the run was
    assert run_cli(main, [*argv, f"output_dir={out}", *split, "train.max_steps=9", "--resume"]) == 2
    refused_on_other_process_count(capsys)
    assert not (out / "siamese-debug" / "model").exists()


# the pipeline resumes by itself, so re-running it without --nproc after a two-process kill took that path.
def test_the_pipeline_refuses_to_resume_a_two_process_stage_on_one(tmp_path, capsys, monkeypatch):
    from pipeline.__main__ import main
    from stagekit.cli import run_cli

    out, configs = tmp_path / "outputs", REPO_ROOT / "configs"
    # The pipeline's pretraining stage on two processes, as if killed after its checkpoint at step 10.
    stage = ["--config", str(configs / "pretrain/debug.yaml"), f"output_dir={out}", "train.max_steps=10",
             f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    launch("pretrain", out, stage, 2)
    shutil.rmtree(out / "pretrain-debug" / "model")
    monkeypatch.chdir(tmp_path)
    argv = ["--pretrain-config", str(configs / "pretrain/debug.yaml"), "--siamese-config",
            str(configs / "siamese/debug.yaml"), "--output-dir", str(out), "--no-app", "eval.baseline=null",
            "eval.limit=12"]  # fmt: skip
    assert run_cli(main, argv) == 2
    assert "python -m pipeline --nproc 2" in refused_on_other_process_count(capsys)
    assert not (tmp_path / ".cache").exists() and not (out / "siamese-debug" / "checkpoints").exists()


# under torchrun, the busy folder must stop every rank with one line, none left waiting for another.
def test_a_busy_run_folder_stops_every_rank_of_a_two_process_run(pretraining, tmp_path):
    from tests.processes import kill, start_until

    root, argv, _ = pretraining
    long = ("train.max_steps=100000", "train.save_steps=100000", "train.eval_steps=100000", "impl.num_threads=1")
    first = start_until("pretrain", [*argv, f"output_dir={tmp_path}", *long], " model: ", tmp_path / "first.log")
    try:
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        done = subprocess.run([*command, "-m", "pretrain", *argv, f"output_dir={tmp_path}"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        logged = done.stdout + done.stderr
        # rank 0 names the holder; rank 1 learnt of it in the same all-reduce: both end with one error line
        assert done.returncode != 0 and "in use by another run" in logged, logged[-3000:]
        assert logged.count("error: ") >= 2, logged[-3000:]
        assert first.poll() is None
    finally:
        kill(first)


# `python -m pipeline --nproc 2` starts torchrun once for the whole pipeline: both stages on two processes, one
# evaluation, one model folder per stage.
def test_the_pipeline_on_two_processes_trains_both_stages_once_and_evaluates_once(tmp_path):
    out, configs = tmp_path / "outputs", REPO_ROOT / "configs"
    argv = ["--pretrain-config", str(configs / "pretrain/debug.yaml"), "--siamese-config",
            str(configs / "siamese/debug.yaml"), "--output-dir", str(out), "--nproc", "2", "--no-app",
            "eval.baseline=null", "eval.limit=12", f"pretrain.data.cache_dir={tmp_path / 'cache'}",
            "pretrain.impl.num_threads=1", "siamese.impl.num_threads=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    logged = done.stdout + done.stderr
    assert done.returncode == 0, logged[-3000:]
    for run in ("pretrain-debug", "siamese-debug"):
        assert json.loads((out / run / "model" / "metrics.json").read_text())["processes"] == 2
    assert (
        json.loads((out / "siamese-debug" / "model" / "report.json").read_text())["mnli_validation_matched"]["n"] == 12
    )
    assert logged.count("3/3 evaluation") == 1  # global rank 0 alone
