"""Whether a run folder's model is finished, and what happens to a finished model that is trained on.

A stage run again on a folder whose model exists (`--resume`, or the pipeline) used to continue from the last
checkpoint — the final step's — and train a step past the end, replacing the model, its metrics and, for
fine-tuning, the evaluation written into the model folder. Now the model's own record decides:

- **finished**: the config the model was trained with (its resolved_config.yaml) asks for at least as many
  steps, epochs and minutes as this one → nothing is trained; the stage says so and returns the model as it is;
- **asks for more** (e.g. `train.max_steps` raised, a time budget raised or lifted) → the run continues from
  its newest complete checkpoint, and the model it replaces moves aside to `model-step-N/` with everything
  added to it since (report.md, plots, an ONNX export): nothing is deleted.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

# The `train` keys that bound how long a run trains: a larger value (or null: no bound) asks for more training.
LENGTH_KEYS = ("max_steps", "num_train_epochs", "max_train_minutes")


@dataclass(frozen=True)
class FinishedModel:
    metrics: dict[str, Any]  # the model's metrics.json ({} if unreadable)
    line: str  # what the stage says instead of training


def _read(path: Path, parse: Any) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def asks_for_more(recorded_train: dict[str, Any], train: Any) -> list[str]:
    """The length keys of `train` (a stage's `train` section) that ask for more training than `recorded_train`
    (the same section as the model's resolved_config.yaml holds), as "key: old → new" lines."""
    more = []
    for name in LENGTH_KEYS:
        if not hasattr(train, name):
            continue
        old, new = recorded_train.get(name), getattr(train, name)
        if new == old:
            continue
        if new is None or new == 0 or (old is not None and old != 0 and new > old):
            more.append(f"train.{name}: {old} → {new}")
    return more


def finished_model(model_dir: Path, cfg: Any) -> FinishedModel | None:
    """A FinishedModel when `model_dir` holds a model that `cfg` asks for no more training of; None when there
    is no model, or `cfg` asks for more (then the run continues; the reason is logged)."""
    if not model_dir.is_dir():
        return None
    metrics = _read(model_dir / "metrics.json", json.loads) or {}
    recorded = _read(model_dir / "resolved_config.yaml", yaml.safe_load)
    step = metrics.get("step", "?")
    stopped = metrics.get("stop_reason", "reason not recorded")
    run_dir = model_dir.parent
    if not isinstance(recorded, dict) or not isinstance(recorded.get("train"), dict):
        line = (
            f"{model_dir} exists but its resolved_config.yaml cannot be read, so it is left as it is: remove "
            f"{model_dir} to train again from the newest checkpoint, or set another run_name= to start over"
        )
        return FinishedModel(metrics, line)
    more = asks_for_more(recorded["train"], cfg.train)
    if more:
        log.info("%s (step %s) is trained on: %s", model_dir, step, "; ".join(more))
        return None
    line = (
        f"{model_dir} is finished (step {step}, {stopped}); nothing to train. To train it on, raise "
        f"train.max_steps or train.max_train_minutes; to start over, remove {run_dir} or set another run_name="
    )
    return FinishedModel(metrics, line)


def keep_previous_model(model_dir: Path) -> Path | None:
    """Move an existing `model_dir` aside to `model-step-N` (N: its metrics.json step), with whatever was added
    to it after training (an evaluation, an export), before a new model takes its place. Returns where it went."""
    if not model_dir.is_dir():
        return None
    step = (_read(model_dir / "metrics.json", json.loads) or {}).get("step", "unknown")
    target = model_dir.with_name(f"{model_dir.name}-step-{step}")
    n = 1
    while target.exists():
        n += 1
        target = model_dir.with_name(f"{model_dir.name}-step-{step}-{n}")
    os.replace(model_dir, target)
    log.info("the previous model (step %s) and everything added to it are kept in %s", step, target)
    return target
