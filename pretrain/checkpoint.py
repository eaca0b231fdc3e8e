"""Resumable checkpoints without pickle: safetensors for weights and RNG states, weights-only torch
files for the optimizer, JSON for the loop state (step, best loss, ReduceLROnPlateau, history).

Each checkpoint folder is written with `atomic_dir`, so a folder named `step-N` is always complete:
a run killed while saving leaves only a `.tmp-*` folder that resume ignores.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from common.atomic import atomic_dir
from common.errors import UserError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"  # read back with torch.load(weights_only=True): tensors and plain values only
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"


def checkpoint_dirs(root: Path) -> list[Path]:
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(root: Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def read_state(path: Path) -> dict[str, Any]:
    """The loop state of a checkpoint, read before any weights so a mismatch fails fast."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"checkpoint {path} cannot be resumed: {err}") from None


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
) -> Path:
    target = root / f"step-{step:07d}"
    with atomic_dir(target) as tmp:
        save_model(model, str(tmp / MODEL_FILE))  # handles the tied embedding/decoder weights
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / RNG_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model and optimizer in place; return the loop state and the RNG states."""
    try:
        missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=False, device=str(device))
        if missing or unexpected:
            raise UserError(
                f"{path / MODEL_FILE}: does not match the configured model ({len(missing)} missing, {len(unexpected)} unexpected keys)"
            )
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True))
        rng = load_file(str(path / RNG_FILE))
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"checkpoint {path} cannot be resumed: {str(err).splitlines()[0]}") from None
    return read_state(path), rng


def export_model(target: Path, model: torch.nn.Module, tokenizer: Any, config: Any, metrics: dict[str, Any]) -> None:
    """The final, self-describing model folder, written completely or not at all."""
    from common.config import save_config

    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)  # safetensors + config.json; loads with AutoModelForMaskedLM
        tokenizer.save_pretrained(tmp)
        save_config(config, tmp / "resolved_config.yaml")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
