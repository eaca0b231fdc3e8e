"""Which checkpoint a stage resumes from, and what a resume may change, for both stages alike.

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
resume must still find (stagekit/finished.py) (`RECORDED`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from stagekit.distributed import barrier, restart_count, run_id
from stagekit.errors import ConfigError, UserError
from stagekit.tracking import active_run_id
from stagekit.weights import damaged_weights

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
RUN_CONFIG = "run_config.json"
STATE = "trainer_state.json"
WORLD_SIZE, WANDB_RUN_ID = "world_size", "wandb_run_id"
BASE_MODEL = "base_model_identity"  # the model fine-tuning started from: stagekit/finished.py `model_identity`
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
