"""Which device a run uses: `impl.device` of either stage, resolved once, the same way."""

from __future__ import annotations

import torch

from common.errors import ConfigError


def resolve_device(name: str) -> str:
    """ "auto" → cuda when available, else cpu; asking for cuda without one is a one-line ConfigError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'impl.device': cuda was asked for but no CUDA device is available")
    return name
