"""The pretraining benchmarks run end to end on CPU at the debug shape: the bare-loop anchor beside the
reference and our Trainer (ratios and MFU come back), the step profile's phases, and the per-step overhead
and data-path figures (checked for shape and consistency, not speed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pretrain.config import PretrainConfig
from stagekit.config import REPO_ROOT, load_config

DEBUG = str(REPO_ROOT / "configs" / "pretrain" / "debug.yaml")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> list[str]:
    cache = tmp_path_factory.mktemp("bench-cache")
    return [
        f"data.cache_dir={cache}",
        f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz",
        "data.max_documents=300",
        "impl.num_threads=1",
    ]


@pytest.fixture(scope="module")
def tiny(overrides: list[str]):
    from bench.pretrain_throughput import DEFAULT_OVERRIDES
    from pretrain.blocks import prepare_data

    cfg = load_config(PretrainConfig, DEBUG, DEFAULT_OVERRIDES + overrides)
    return cfg, prepare_data(cfg)


def test_throughput_bench_reports_ours_over_anchor_and_reference(overrides, capsys):
    from bench.pretrain_throughput import main

    argv = ["--config", DEBUG, "--batch-size", "8", "--warmup", "1", "--windows", "1", "--steps-per-window", "2"]
    summary = main([*argv, "--profile-after", "2", "--no-record", *overrides])
    results = summary["results"]
    assert set(results) == {"reference", "ours", "anchor"}
    for name in ("reference", "anchor"):
        expected = results["ours"]["tokens_per_s"] / results[name]["tokens_per_s"]
        assert summary[f"ours_over_{name}"] == pytest.approx(expected) and expected > 0
        cpu = results["ours"]["tokens_per_cpu_s"] / results[name]["tokens_per_cpu_s"]
        assert summary[f"ours_over_{name}_cpu"] == pytest.approx(cpu) and cpu > 0
    # one FLOP count and one peak for every path: MFU is proportional to tokens/s
    for name, r in results.items():
        mfu = r["tokens_per_s"] * summary["flops_per_token"] / (summary["peak_tflops"] * 1e12)
        assert summary["mfu"][name] == pytest.approx(mfu) and 0 < mfu < 1
    settings = results["anchor"]["settings"]
    assert settings["attention"] == "sdpa" and settings["masked-only head"] is True
    assert settings["compile"] is False and settings["bf16 autocast"] is False and settings["AdamW"] == "foreach"
    assert any(r.startswith("| phase: forward (host) |") for r in summary["profile_rows"])
    out = capsys.readouterr().out
    assert "ours / reference = " in out and "ours / anchor = " in out and "MFU = tokens/s × " in out
    assert "ms per step under the profiler (2 steps)" in out and "per CPU second of each main process" in out


def test_throughput_bench_refuses_paths_without_ours(overrides):
    from bench.pretrain_throughput import main

    with pytest.raises(SystemExit, match="--paths reference,anchor"):
        main(["--config", DEBUG, "--paths", "reference,anchor", "--no-record", *overrides])


def test_anchor_trains_on_premasked_batches_with_the_trainers_decay_groups(tiny):
    from bench.bare_loop import BareLoop, decay_groups

    cfg, data = tiny
    loop = BareLoop(cfg, data, batch_size=4, device=torch.device("cpu"))
    batch = loop.batches[0]
    assert batch["input_ids"].shape == (4, cfg.data.block_size)
    masked = (batch["labels"] != -100).float().mean().item()
    assert 0.05 < masked < 0.3  # train.mlm_probability 0.15 of the non-special tokens
    assert not torch.equal(loop.batches[0]["input_ids"], loop.batches[1]["input_ids"])
    before = [p.detach().clone() for p in loop.model.parameters()]
    assert loop() == 4 * cfg.data.block_size
    assert any(not torch.equal(a, p) for a, p in zip(before, loop.model.parameters(), strict=True))
    groups = decay_groups(loop.model, 0.01)
    names = {id(p): n for n, p in loop.model.named_parameters()}
    no_decay = [names[id(p)] for p in groups[1]["params"]]
    assert no_decay and all("bias" in n or "LayerNorm" in n for n in no_decay)
    assert all("bias" not in names[id(p)] for p in groups[0]["params"])


def test_profile_names_the_phases_of_a_trainer_step(overrides):
    from bench.pretrain_throughput import main

    rows = main(["--config", DEBUG, "--batch-size", "8", "--warmup", "1", "--profile", "2", "--no-record", *overrides])[
        "rows"
    ]
    text = "\n".join(rows)
    for phase in ("next batch", "forward", "backward + clip", "optimizer", "Trainer after the step"):
        assert f"| phase: {phase} (host) |" in text
    shares = [float(r.split("|")[3].strip().rstrip("%")) for r in rows if r.startswith("| phase: ")]
    assert 50 <= sum(shares) <= 105  # the phases cover the step (rounded shares; the rest is the clock)


def test_step_overhead_reports_loader_and_variants(overrides, capsys):
    from bench.step_overhead import TRAINER, main

    argv = ["--config", DEBUG, "--rounds", "1", "--warmup", "1", "--windows", "1", "--steps-per-window", "2"]
    result = main([*argv, "--loader-seconds", "0.2", "--target", "1e6", "--no-record", *overrides])
    per_worker = result["loader"]["blocks + masking + stack (one worker)"][1]
    assert result["workers_needed"] == math.ceil(1e6 / per_worker)
    assert len(result["step_ms"]) == 4 and TRAINER in result["step_ms"]
    assert all(v > 0 for v in result["step_cpu_ms"].values())
    assert result["trainer_overhead_ms"] == pytest.approx(
        result["step_ms"][TRAINER] - result["step_ms"]["bare loop + clipping + DataLoader"]
    )
    assert "Trainer − bare loop with clipping and DataLoader" in capsys.readouterr().out


def test_step_clock_marks_only_the_window_ends():
    """The bench's clock must not sync the device every step (that stops the host from running ahead)."""
    from types import SimpleNamespace

    from bench.pretrain_throughput import StepTimes

    clock = StepTimes(torch.device("cpu"), marks={0, 3, 5})
    clock.on_train_begin(None, SimpleNamespace(global_step=0), None)
    for step in range(1, 7):
        clock.on_step_end(None, SimpleNamespace(global_step=step), None)
    assert sorted(clock.times) == sorted(clock.cpu_times) == [0, 3, 5]
    assert clock.times[0] <= clock.times[3] <= clock.times[5]


def test_timed_windows_reports_cpu_rates_when_asked():
    from bench.harness import timed_windows

    def step() -> int:  # some CPU work, 10 units
        sum(i * i for i in range(20_000))
        return 10

    cpu: list[float] = []
    rates = timed_windows(step, warmup=1, windows=3, steps_per_window=5, device="cpu", cpu_rates=cpu)
    assert len(rates) == len(cpu) == 3 and all(r > 0 for r in rates + cpu)
