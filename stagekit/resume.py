"""Resuming, for both stages alike: which checkpoint a run continues, what a resume may change, whether a run
folder's model is finished, and the base model's identity.

Both stages write the Trainer's `checkpoint-N/` folders under `<run_dir>/checkpoints/`, plus
`run_config.json` (the stage's resolved config) in each, so a resume can say what changed:
- started over an existing run without `--resume`: refused in one line naming both choices;
- `--resume` with a changed learning rate, warmup, plateau, step or time setting: applied and logged;
- `--resume` with any other change (model, data, batch size, optimizer, seed ...): refused in one line,
  because the checkpoint's weights, optimizer state or data position would not match it;
- `--resume` on another number of processes: refused in one line naming both counts (`check_world_size`);
- a torchrun restart of the job that started the run continues without `--resume` (torchrun re-runs the same
  command line): `mark_run_folder` records the job's `TORCHELASTIC_RUN_ID`, and `resumes_after_restart` says
  "resume" for a restart (`TORCHELASTIC_RESTART_COUNT` > 0) of that job only, so a first attempt that was
  refused (e.g. a run folder that needed `--resume`) is refused again, not resumed.

Beside the config, `run_config.json` records what the run was, not what it was told: the number of
processes it trained on, its W&B run id, which a resume continues, and the base model it started from, which a
resume must still find (`RECORDED`).

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
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from stagekit.distributed import barrier, restart_count, run_id
from stagekit.errors import ConfigError, UserError
from stagekit.variables import portable
from stagekit.wandb_tracking import active_run_id
from stagekit.weights import damaged_weights

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
RUN_CONFIG = "run_config.json"
STATE = "trainer_state.json"
WORLD_SIZE, WANDB_RUN_ID = "world_size", "wandb_run_id"
BASE_MODEL = "base_model_identity"  # the model fine-tuning started from: `model_identity`
RECORDED = (WORLD_SIZE, WANDB_RUN_ID, BASE_MODEL)  # written beside the config; not settings to compare
MARKER = ".torchelastic_run"  # in the run folder: the TORCHELASTIC_RUN_ID of the job that runs it


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """`checkpoint-N` folders under `root`, oldest first (complete or not)."""
    root = Path(root)
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from, or None when it can.

    The Trainer writes trainer_state.json last, then `SaveRunConfig` adds run_config.json: a folder without both,
    readable, was cut short by a kill. A folder with both whose weights, optimizer or random state cannot be
    opened (a file cut short or emptied by a full disk, a partial copy: stagekit/weights.py) fails the same way
    at every resume, so it counts as cut short too."""
    try:
        json.loads((path / STATE).read_text())
        json.loads((path / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return "was not written completely (killed while saving?)"
    for file, why in damaged_weights(path):
        return f"has a file that cannot be opened: {file.relative_to(path)} ({why})"
    return None


def is_complete(path: Path) -> bool:
    """Whether `path` is a checkpoint a resume can continue from (`checkpoint_problem`)."""
    return checkpoint_problem(path) is None


def newest_checkpoint(root: str | Path) -> Path | None:
    complete = [p for p in checkpoint_dirs(root) if is_complete(p)]
    return complete[-1] if complete else None


def choose_checkpoint(run_dir: Path, resume: bool, *, is_main: bool = True) -> str | None:
    """The checkpoint to resume from (None: a fresh run), or a one-line refusal.

    Without `resume`, a run folder that already holds checkpoints or a final model is refused: a second
    run there would mix with the first (its checkpoint rotation would delete the newer run's files).
    With `resume`, checkpoints a kill left half-written, or whose files cannot be opened (`checkpoint_problem`),
    are removed with a warning saying why (by the main process only) and the newest complete one is returned;
    with none, the run starts from step 0 with a warning.
    A torchrun restart of the job that started this run resumes without `--resume` (`resumes_after_restart`).
    """
    checkpoints = run_dir / "checkpoints"
    existing = checkpoint_dirs(checkpoints)
    resume = resume or resumes_after_restart(run_dir)
    if not resume:
        if existing or (run_dir / "model").is_dir():
            what = existing[-1].name if existing else "a final model"
            raise UserError(
                f"{run_dir} already holds a run ({what}): pass --resume to continue it, or remove {run_dir} "
                "(or set another run_name=) to start over"
            )
        if is_main:
            mark_run_folder(run_dir)
        return None
    if is_main:
        mark_run_folder(run_dir)
    for path in reversed(existing):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        if is_main:
            log.warning("%s %s: removing it, to resume from the checkpoint before it", path, problem)
            shutil.rmtree(path, ignore_errors=True)
    log.warning("--resume: no complete checkpoint under %s; starting from step 0", checkpoints)
    return None


def resumes_after_restart(run_dir: Path) -> bool:
    """True when torchrun restarted the job that started the run in `run_dir`: then it continues from its newest
    complete checkpoint without `--resume` (torchrun re-runs the command line as it was)."""
    if restart_count() == 0 or run_id() is None:
        return False
    try:
        recorded = (Path(run_dir) / MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    if recorded == run_id():
        log.warning(
            "torchrun restart %d of job %s: resuming from the newest complete checkpoint", restart_count(), recorded
        )
        return True
    return False


def mark_run_folder(run_dir: Path) -> None:
    """Record in `run_dir` which torchrun job runs it (main process, after the folder was accepted)."""
    if run_id() is not None:
        (Path(run_dir) / MARKER).write_text(run_id() + "\n", encoding="utf-8")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_settings(
    checkpoint: str,
    config: dict[str, Any],
    changeable: Collection[str],
    renamed: dict[str, str] | None = None,
    implied: dict[str, Any] | None = None,
    *,
    expanded: dict[str, Any] | None = None,
) -> list[str]:
    """Compare the resumed checkpoint's config with this run's; return the applied changes as lines.

    `config` is this run's record as written (`${VAR}` kept, stagekit/config.py `to_dict`), `expanded` the same
    config with its variables expanded: a checkpoint written before configs kept `${VAR}` recorded expanded
    values, and matches either. `changeable` names dotted keys (or section prefixes ending in ".") that may
    change on resume; any other difference is a ConfigError naming the key, its old and its new value. A
    checkpoint written before a key was renamed is read under its new name (`renamed`: {old: new}); one
    written before a key existed counts as having the value it was trained with then (`implied`: {key: value}).
    """
    recorded = read_run_config(checkpoint)
    old = flatten({k: v for k, v in recorded.items() if k not in RECORDED})
    old = {(renamed or {}).get(k, k): v for k, v in old.items()}
    old = {k: v for k, v in (implied or {}).items() if k not in old} | old
    new = flatten({k: v for k, v in config.items() if k not in RECORDED})
    runtime = flatten(expanded or {})
    applied = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key) or (key in runtime and old.get(key) == runtime[key]):
            continue
        if any(key == c or (c.endswith(".") and key.startswith(c)) for c in changeable):
            applied.append(f"{key}: {old.get(key)!r} → {new.get(key)!r}")
            continue
        raise ConfigError(
            f"config key '{key}': {old.get(key)!r} in checkpoint {checkpoint} but {new.get(key)!r} now; a resume "
            "cannot change it (its weights, optimizer state or data position depend on it): keep it, or start a "
            "new run (another run_name=)"
        )
    for line in applied:
        log.warning("resuming with a changed setting, applied from this step on: %s", line)
    return applied


def read_run_config(checkpoint: str | Path) -> dict[str, Any]:
    """What `SaveRunConfig` wrote into `checkpoint`: the stage's config plus the RECORDED facts."""
    path = Path(checkpoint) / RUN_CONFIG
    if not path.is_file():
        raise UserError(f"checkpoint {checkpoint} has no {RUN_CONFIG}; it was not written by this project")
    return json.loads(path.read_text())


def check_world_size(checkpoint: str | Path, world_size: int) -> None:
    """Refuse to resume `checkpoint` on another number of processes, in one line naming both counts.

    The data position a checkpoint keeps is a count of steps, and a step holds N processes' batches: on M
    processes the resumed run would skip or repeat data, and every "tokens seen" / "pairs seen" counter
    (steps × the current world size) would be wrong. Checkpoints from before the count was recorded pass
    with a warning.
    """
    trained_on = read_run_config(checkpoint).get(WORLD_SIZE)
    if trained_on is None:
        log.warning("%s does not record how many processes trained it; assuming %d", checkpoint, world_size)
        return
    if trained_on != world_size:
        raise UserError(
            f"checkpoint {checkpoint} was trained on {trained_on} process(es) but this run has {world_size}: a resume "
            "must keep the number of processes (the data position and the counters depend on it); "
            f"resume it on {trained_on} (torchrun --nproc_per_node={trained_on}, or python -m pipeline --nproc "
            f"{trained_on}), or start a new run (another run_name=)"
        )


def recorded_wandb_id(checkpoint: str | Path | None) -> str | None:
    """The W&B run id the checkpoint's run logged to, for the resumed run to continue (None: none recorded)."""
    return read_run_config(checkpoint).get(WANDB_RUN_ID) if checkpoint else None


class SaveRunConfig(TrainerCallback):
    """Write the stage's resolved config into every checkpoint (main process), for `check_resume_settings`,
    with the RECORDED facts: the processes training and the active W&B run's id.

    Under several processes it waits for every rank first: each writes its own `rng_state_<rank>.pth`, with no
    barrier before rank 0's trainer_state.json, so without the wait a rank killed while saving could leave a
    checkpoint that looks complete (`is_complete`) but lacks its random state."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            if folder.is_dir():
                record = self.config | {WORLD_SIZE: args.world_size, WANDB_RUN_ID: active_run_id()}
                (folder / RUN_CONFIG).write_text(json.dumps(record, indent=1))


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
