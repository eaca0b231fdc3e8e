"""Which device a run uses: `impl.device` of either stage (and evaluation, the app), resolved once, the same way.

"auto" is CUDA, then Apple silicon's MPS, then the CPU. Ops MPS lacks run on the CPU instead of failing
(PYTORCH_ENABLE_MPS_FALLBACK=1): torch reads that variable when it is imported, so `stagekit/__init__.py` sets it
before any of this project's modules import torch.
"""

from __future__ import annotations

import logging
import os

import torch

import stagekit
from stagekit.errors import ConfigError

log = logging.getLogger(__name__)
MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> str:
    """ "auto" → cuda, else mps, else cpu; asking for cuda or mps without one is a one-line ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'impl.device': cuda was asked for but no CUDA device is available")
    elif name == "mps" and not mps_available():
        raise ConfigError(
            "config key 'impl.device': mps was asked for but this torch has no MPS device (Apple silicon)"
        )
    if name == "mps":
        note_mps_fallback()
    return name


def mps_fallback_line(at_import: bool, now: str | None) -> str:
    """The one line a run on MPS prints about the CPU fallback of ops MPS lacks: `at_import` says whether
    torch was imported with the variable at 1, `now` is its value now."""
    if not at_import or now != "1":
        return (
            f"device: mps; ops MPS lacks will fail: {MPS_FALLBACK}=1 was not set when torch was imported "
            f"(set it in the environment before starting Python)"
        )
    return f"device: mps; any op MPS lacks runs on the CPU instead ({MPS_FALLBACK}=1)"


_noted = False


def note_mps_fallback() -> None:
    global _noted
    if not _noted:
        _noted = True
        log.info("%s", mps_fallback_line(stagekit.MPS_FALLBACK_AT_TORCH_IMPORT, os.environ.get(MPS_FALLBACK)))
