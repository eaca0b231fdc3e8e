"""Whether a run folder's model is finished, and what happens to a finished model that is trained on.

A stage run again on a folder whose model exists (`--resume`, or the pipeline) does not simply continue from
the last checkpoint — the final step's — which would train a step past the end and replace the model, its
metrics and, for fine-tuning, the evaluation written into the model folder. The model's own record decides:

- **finished**: the config the model was trained with (its resolved_config.yaml) asks for at least as many
  steps, epochs and minutes as this one → nothing is trained; the stage says so and returns the model as it is;
- **asks for more** (e.g. `train.max_steps` raised, a time budget raised or lifted) → the run continues from
  its newest complete checkpoint, and the model it replaces moves aside to `model-step-N/` with everything
  added to it since (report.md, plots, an ONNX export): nothing is deleted.

A stage that starts from a base model (fine-tuning) records which one (`model_identity`: its name, the sha256 of
its weights, its step) in every checkpoint's run_config.json and in the model's run_info.json. A base that
changed since (e.g. pretraining trained on) makes its fine-tuned model not finished and its checkpoints not
resumable, whatever the lengths say: the stage says so in one line naming both, moves the checkpoints aside to
`checkpoints-step-N/` and trains again from step 0; the previous model moves aside when the new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stagekit.checkpoints import BASE_MODEL, STATE, read_run_config
from stagekit.variables import portable

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


def finished_model(model_dir: Path, cfg: Any, base: dict[str, Any] | None = None) -> FinishedModel | None:
    """A FinishedModel when `model_dir` holds a model that `cfg` asks for no more training of; None when there
    is no model, `cfg` asks for more, or the model was trained from another base model than `base`
    (`model_identity` of the base now; then the run trains again; the reason is logged)."""
    if not model_dir.is_dir():
        return None
    recorded = (_read(model_dir / "run_info.json", json.loads) or {}).get(BASE_MODEL)
    if base_changed(recorded, base):
        log.warning(
            "%s was fine-tuned from %s, but that base model is now %s: it is not finished; training again from the "
            "new base (the previous model moves aside to %s-step-N/ when the new one is written)",
            model_dir, describe_identity(recorded), describe_identity(base), model_dir.name,
        )  # fmt: skip
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
    target = set_aside(model_dir, step)
    log.info("the previous model (step %s) and everything added to it are kept in %s", step, target)
    return target


def set_aside(folder: Path, step: Any) -> Path:
    """Rename `folder` to `<name>-step-<step>` (`-2`, `-3` … after it when taken); returns the new path."""
    target = folder.with_name(f"{folder.name}-step-{step}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}-step-{step}-{n}")
    os.replace(folder, target)
    return target


WEIGHT_FILES = ("*.safetensors", "*.bin")  # the first pattern that matches names a folder's weights


def weights_sha256(folder: Path) -> str | None:
    """The sha256 (hex) over the weight files directly in `folder` (`*.safetensors`, else `*.bin`: each file's
    name and bytes, in name order), read in 1 MiB chunks; None when it holds none."""
    for pattern in WEIGHT_FILES:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            digest = hashlib.sha256()
            for path in files:
                digest.update(path.name.encode() + b"\0")
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
            return digest.hexdigest()
    return None


def model_identity(name: str | None, run_dir: Path) -> dict[str, Any] | None:
    """What identifies the model a stage starts from (None: it starts from nothing): `model`, its name as the
    run's files give it (stagekit/variables.py `portable`, relative to `run_dir`); for a local folder also
    `sha256` (`weights_sha256`) and `step` (its metrics.json's, for a pretraining output); a Hub id by name."""
    if not name:
        return None
    identity: dict[str, Any] = {"model": portable(name, run_dir)}
    folder = Path(name).expanduser()
    if folder.is_dir():
        identity["model"] = portable(str(folder.resolve()), run_dir)
        identity["sha256"] = weights_sha256(folder)
        identity["step"] = (_read(folder / "metrics.json", json.loads) or {}).get("step")
    return identity


def base_changed(recorded: Any, current: dict[str, Any] | None) -> bool:
    """Whether the base model `recorded` by a checkpoint or model (`model_identity` then) differs from `current`:
    by the weights' sha256 when both have one, else by name. A record that names no base model cannot tell, and
    counts as unchanged."""
    if not isinstance(recorded, dict) or current is None:
        return False
    if recorded.get("sha256") and current.get("sha256"):
        return recorded["sha256"] != current["sha256"]
    return recorded.get("model") != current.get("model")


def describe_identity(identity: dict[str, Any] | None) -> str:
    """ "../pretrain-debug/model (step 30, sha256 1a2b3c4d)"; the name alone for a Hub id."""
    if not identity:
        return "an unrecorded model"
    facts = [f"step {identity['step']}"] if identity.get("step") is not None else []
    facts += [f"sha256 {identity['sha256'][:8]}"] if identity.get("sha256") else []
    return f"{identity.get('model')}" + (f" ({', '.join(facts)})" if facts else "")


def stale_checkpoint(checkpoint: str | None, base: dict[str, Any] | None) -> str | None:
    """One line when `checkpoint` was trained from another base model than `base` (`base_changed`), else None."""
    if checkpoint is None:
        return None
    recorded = read_run_config(checkpoint).get(BASE_MODEL)
    if not base_changed(recorded, base):
        return None
    return (
        f"checkpoint {checkpoint} was trained from {describe_identity(recorded)}, but that base model is now "
        f"{describe_identity(base)}: its checkpoints are set aside and training starts again at step 0 from the "
        "new base"
    )


def set_aside_checkpoints(checkpoint: str) -> Path:
    """Move the checkpoints folder holding `checkpoint` to `checkpoints-step-N` (N: `checkpoint`'s step)."""
    step = (_read(Path(checkpoint) / STATE, json.loads) or {}).get("global_step", "unknown")
    target = set_aside(Path(checkpoint).parent, step)
    log.info("the checkpoints trained from the previous base model are kept in %s", target)
    return target
