"""The warmup → plateau schedule both stages use: the only writer of the learning rate."""

from __future__ import annotations

import pytest
import torch

from stagekit.schedule import WarmupPlateauSchedule


def make(lr: float = 1.0e-3, **overrides) -> tuple[torch.optim.Optimizer, WarmupPlateauSchedule]:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 10 * lr}], lr=lr)
    settings = {"warmup_steps": 4, "factor": 0.5, "patience": 1, "threshold": 1e-3, "min_lr": 1e-5} | overrides
    return optimizer, WarmupPlateauSchedule(optimizer, **settings)


def step(optimizer, schedule, n: int = 1) -> None:
    for _ in range(n):
        optimizer.step()
        schedule.step()


def test_warmup_then_plateau_lowers_every_group_and_stops_at_min_lr():
    optimizer, schedule = make()
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        step(optimizer, schedule)
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-2)  # each group keeps its own base rate
    assert not schedule.observe(5.0) and not schedule.observe(4.0)  # improving: lr holds
    assert not schedule.observe(4.0)  # one evaluation without improvement: patience 1 tolerates it
    assert schedule.observe(4.0)  # two: halve
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-3])
    for _ in range(40):
        schedule.observe(4.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # never below min_lr
    step(optimizer, schedule)
    assert schedule.get_last_lr()[0] == pytest.approx(1e-5)


def test_plateaus_are_not_judged_during_warmup():
    optimizer, schedule = make(patience=0)
    step(optimizer, schedule, 2)
    for _ in range(5):
        assert not schedule.observe(9.0)
    assert schedule.scale == 1.0


def test_resume_keeps_the_plateau_state_but_takes_the_rates_from_the_new_config():
    optimizer, schedule = make(lr=1.0e-3, patience=0)
    step(optimizer, schedule, 5)
    schedule.observe(4.0)
    schedule.observe(4.0)  # halved
    saved_optimizer, saved_schedule = optimizer.state_dict(), schedule.state_dict()
    assert "base_lrs" not in saved_schedule and "configured" not in saved_schedule  # no rate in the checkpoint

    new_optimizer, new_schedule = make(lr=4.0e-4, patience=0)  # the user lowered train.learning_rate
    new_optimizer.load_state_dict(saved_optimizer)  # as the Trainer does: the old rates come back with it...
    new_schedule.load_state_dict(saved_schedule)  # ...and the schedule rewrites them from the config
    assert new_schedule.scale == 0.5 and new_schedule.best == 4.0
    assert [g["lr"] for g in new_optimizer.param_groups] == pytest.approx([2e-4, 2e-3])
    step(new_optimizer, new_schedule)
    assert new_schedule.get_last_lr() == pytest.approx([2e-4, 2e-3])


def test_the_progress_bar_shows_the_steps_the_time_budget_leaves(monkeypatch):
    """3,000 steps with a 13-minute cap that ends near step 1,100: the bar's total follows the budget, not
    max_steps, so its remaining time is the time left to the cap."""
    from types import SimpleNamespace

    from stagekit import callbacks
    from stagekit.callbacks import TimeBudget, TimeCappedProgress

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    budget = TimeBudget(minutes=13)
    bar = TimeCappedProgress(budget)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=3000, global_step=0)
    args = SimpleNamespace(logging_steps=10)
    budget.on_train_begin(args, state, None)
    bar.on_train_begin(args, state, None)
    assert bar.training_bar.total == 3000 and "13" in bar.training_bar.desc
    for step in range(1, 101):  # 0.7 s a step: 780 s / 0.7 = ~1,114 steps, the budget stops at step 1,120
        clock[0] += 0.7
        state.global_step = step
        bar.on_step_end(args, state, None)
    assert bar.training_bar.total == 1120, bar.training_bar.total
    for step in range(101, 1121):  # past the budget the bar never counts beyond its total (tqdm drops it then)
        clock[0] += 0.7
        state.global_step = step
        bar.on_step_end(args, state, None)
        assert step <= bar.training_bar.total
    assert bar.training_bar.total == 1120
    bar.training_bar.close()
