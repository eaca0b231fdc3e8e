"""Weights & Biases tracking that never stops a run: online, offline or disabled, chosen from config.

mode "auto" means: the WANDB_MODE environment variable if set, else online when WANDB_API_KEY is set,
else offline (a run folder under the output directory that `wandb sync` can upload later).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass
class WandbConfig:
    project: str = "bert-sentence-encoder"
    entity: str | None = None
    run_name: str | None = None  # default: the output folder's name
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    tags: list[str] | None = None


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """A thin wrapper over a wandb run; every call is a no-op when disabled and never raises."""

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
        except Exception as err:  # tracking must not end a training run
            log.warning("W&B log failed (%s); continuing without tracking", err)
            self.run = None

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(metrics)
        except Exception as err:
            log.warning("W&B summary failed (%s)", err)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as err:
            log.warning("W&B finish failed (%s)", err)
        self.run = None


def start_tracking(cfg: WandbConfig, out_dir: str | Path, config: dict[str, Any], job_type: str) -> Tracker:
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return Tracker()
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed; tracking disabled")
        return Tracker()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=cfg.project,
        entity=cfg.entity,
        name=cfg.run_name or out_dir.name,
        config=config,
        job_type=job_type,
        tags=cfg.tags,
        dir=str(out_dir),
        reinit="finish_previous",
    )
    for attempt_mode in dict.fromkeys([mode, "offline"]):
        try:
            run = wandb.init(mode=attempt_mode, settings=wandb.Settings(init_timeout=30, silent=True), **kwargs)
            log.info("W&B run %s (%s) in %s", run.name, attempt_mode, out_dir)
            return Tracker(run)
        except Exception as err:  # unreachable server, bad key: fall back, never fail the run
            log.warning("W&B %s init failed (%s)", attempt_mode, str(err).splitlines()[0] if str(err) else err)
    return Tracker()
