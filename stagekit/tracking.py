"""Weights & Biases for every run: online, offline or disabled, chosen from config, never stopping a run.

mode "auto" means: the WANDB_MODE environment variable if set, else online when WANDB_API_KEY is set,
else offline (a run folder under the output directory that `wandb sync` can upload later).

Training stages log through the Trainer's `report_to=["wandb"]` alone: `trainer_report_to` starts the
run first (on the main process only), with the project, entity, tags and folder from the config and a
fall-back to offline, then to no tracking, so a W&B failure never stops training; transformers'
WandbCallback then logs into that run. Evaluation, which has no Trainer, logs through `Tracker`.

Runs of one pipeline share a W&B group (`wandb.group`); each stage logs its model folder as an artifact and
declares the model it started from as an input (stagekit/lineage.py).

A resumed stage continues its W&B run: each checkpoint records the run's id (stagekit/checkpoints.py), and
`start_run(resume_id=...)` opens that id again with `resume="allow"`, online or offline.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from stagekit.atomic import atomic_write_text
from stagekit.config import key
from stagekit.variables import portable

log = logging.getLogger(__name__)


@dataclass
class WandbConfig:
    """Tracking only: `--resume` may change any of it."""

    resumable_section: ClassVar[bool] = True
    project: str = key("bert-sentence-encoder", "the W&B project runs log to")
    entity: str | None = key(None, "the W&B team or user; null: your default entity")
    run_name: str | None = key(None, "the W&B run's name; null: the run folder's name")
    mode: Literal["auto", "online", "offline", "disabled"] = key(
        "auto", "auto: WANDB_MODE if set, else online with WANDB_API_KEY, else offline (`wandb sync` uploads later)"
    )
    tags: list[str] | None = key(None, "W&B tags of the run")
    group: str | None = key(
        None, "the W&B group the run joins; null: WANDB_RUN_GROUP if set (a pipeline names one for all its runs)"
    )
    log_model: Literal["end", "checkpoint", "never"] = key(
        "end",
        "a training stage logs its finished model folder as a W&B artifact of type model (checkpoint: also each "
        "checkpoint's weights; offline runs stage it for `wandb sync`): stagekit/lineage.py",
    )


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def start_run(
    cfg: WandbConfig,
    out_dir: str | Path,
    config: dict[str, Any],
    job_type: str,
    name: str | None = None,
    resume_id: str | None = None,
):
    """A wandb run (or None when disabled or when even offline fails); never raises. With `resume_id`, the run
    of that id continues (created if the server or the offline folder has none). `config` goes to W&B with its
    absolute paths named as in the run's own files (stagekit/variables.py `portable`, relative to `out_dir`): a
    run's config leaves the machine once synced."""
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed; tracking disabled")
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=cfg.project,
        entity=cfg.entity,
        name=name or cfg.run_name or out_dir.name,
        config=portable(config, out_dir),
        job_type=job_type,
        tags=cfg.tags,
        group=cfg.group,  # None: wandb reads WANDB_RUN_GROUP
        dir=str(out_dir),
        reinit="finish_previous",
    )
    if resume_id:
        kwargs |= {"id": resume_id, "resume": "allow"}
    for attempt_mode in dict.fromkeys([mode, "offline"]):
        try:
            run = wandb.init(mode=attempt_mode, settings=wandb.Settings(init_timeout=30, silent=True), **kwargs)
            resumed = f", continuing id {resume_id}" if resume_id else ""
            log.info("W&B run %s (%s%s) in %s", run.name, attempt_mode, resumed, out_dir)
            return run
        except Exception as err:  # unreachable server, bad key: fall back, never fail the run
            log.warning("W&B %s init failed (%s)", attempt_mode, str(err).splitlines()[0] if str(err) else err)
    return None


def trainer_report_to(
    cfg: WandbConfig,
    out_dir: Path,
    config: dict[str, Any],
    job_type: str,
    *,
    is_main: bool,
    resume_id: str | None = None,
) -> list[str]:
    """`report_to` for the Trainer: ["wandb"] with the run already started on the main process, else [].
    `resume_id`: the W&B run a resumed stage continues (its checkpoint's record)."""
    if resolve_mode(cfg.mode) == "disabled":
        return []
    if not is_main:
        return ["wandb"]  # transformers' WandbCallback logs on the main process only
    return ["wandb"] if start_run(cfg, out_dir, config, job_type, resume_id=resume_id) is not None else []


def active_run_id() -> str | None:
    """The id of this process's active W&B run, if any (wandb is never imported for it)."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    return getattr(run, "id", None) if run is not None else None


def finish_run(summary: dict[str, Any] | None = None) -> None:
    """Add `summary` to the active run (if any) and close it; never raises."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    try:
        if summary:
            wandb.run.summary.update(summary)
        wandb.finish()
    except Exception as err:
        log.warning("W&B finish failed (%s)", err)


class Tracker:
    """A thin wrapper over a wandb run for code without a Trainer; every call is a no-op when disabled."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as err:  # tracking must not end a run
            log.warning("W&B log failed (%s); continuing without tracking", err)
            self.run = None

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self.run is not None:
            finish_run(summary)
            self.run = None


def run_wandb_config(model_dir: str | Path) -> WandbConfig:
    """The W&B settings of the run that wrote `model_dir` (its resolved_config.yaml), so follow-up jobs such
    as evaluation log into the same project, entity and mode; the defaults when the folder has none."""
    import yaml

    from stagekit.config import _build

    path = Path(model_dir) / "resolved_config.yaml"
    try:
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("wandb") or {}
        cfg = _build(WandbConfig, dict(section), prefix="wandb.")
    except Exception as err:  # a folder from elsewhere, or an older format: track with the defaults
        if path.is_file():
            log.warning("%s: no usable wandb section (%s); W&B defaults apply", path, str(err).splitlines()[0])
        return WandbConfig()
    return cfg


GROUP_FILE = "wandb_group.txt"


def pipeline_group(wandb_sections: list[WandbConfig], folder: Path) -> str | None:
    """The one W&B group of a pipeline's runs, set on every section: the one a section names, else
    WANDB_RUN_GROUP, else the one `folder` stored (a resumed pipeline keeps its group), else a new
    `pipeline-<date>-<time>`; stored in `folder`. None (nothing set or stored) when tracking is disabled in all."""
    if all(resolve_mode(cfg.mode) == "disabled" for cfg in wandb_sections):
        return None
    path = Path(folder) / GROUP_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except OSError:
        stored = ""
    given = next((cfg.group for cfg in wandb_sections if cfg.group), None)
    group = given or os.environ.get("WANDB_RUN_GROUP") or stored or time.strftime("pipeline-%Y%m%d-%H%M%S")
    for cfg in wandb_sections:
        cfg.group = group
    if group != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, group + "\n")
    return group


def start_tracking(
    cfg: WandbConfig, out_dir: str | Path, config: dict[str, Any], job_type: str, name: str | None = None
) -> Tracker:
    return Tracker(start_run(cfg, out_dir, config, job_type, name))
