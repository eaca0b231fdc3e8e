"""Which device a run uses and which number format it trains in: `impl.device` and `impl.precision` of either
stage (the device also for evaluation and the app), each resolved once, the same way.

"auto" is CUDA, then Apple silicon's MPS, then the CPU. Ops MPS lacks run on the CPU instead of failing
(PYTORCH_ENABLE_MPS_FALLBACK=1): torch reads that variable when it is imported, so `stagekit/__init__.py` sets it
before any of this project's modules import torch.

The precision is decided per device. `auto` picks what the device runs fast without losing accuracy:

| device | auto | why |
|---|---|---|
| CUDA, compute capability >= 8.0 (A100, L4, RTX 30xx/40xx, H100, H200) | bf16 | bf16 tensor cores; fp32's range, no loss scaling |
| CUDA 7.x (V100 7.0, T4 7.5, RTX 20xx 7.5) | fp16 | fp16 tensor cores and no bf16 ones: autocast with dynamic loss scaling |
| older CUDA (P100 6.0, K80 3.7), Apple MPS, CPU | fp32 | no tensor cores / no fast half precision |

`torch.cuda.is_bf16_supported()` cannot make the bf16 decision: it answers true on a T4 or V100 too (bf16 is
emulated there, at a fraction of fp16's speed), and transformers accepts `bf16=True` on that answer. The
compute capability is what says whether the tensor cores do bf16.

fp16 keeps the weights, the optimizer and the loss in fp32 (autocast casts only the matmul inputs), runs
softmax, layer norm and the loss in fp32 on CUDA (autocast's fp32 op list), and scales the loss so small
gradients do not flush to zero (accelerate's GradScaler: a step whose gradients overflow is skipped and the
scale halved). `StopOnNonFiniteLoss` (stagekit/callbacks.py) asks `skipped_by_loss_scaler` before it calls an
infinite gradient norm a divergence.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

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


Asked = Literal["auto", "bf16", "fp16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
KEY = "impl.precision"
# A loss scale below 1 means the gradients overflow fp16 even unscaled: no later step can succeed.
MIN_LOSS_SCALE = 1.0


@dataclass(frozen=True)
class DeviceInfo:
    """What the decisions read about a device. `capability` is CUDA's (major, minor), None elsewhere;
    `memory_bytes` the device's total memory where torch tells it (CUDA), else None."""

    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    capability: tuple[int, int] | None = None
    memory_bytes: int | None = None

    @property
    def label(self) -> str:
        if self.capability is None:
            return self.name
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]})"


def device_info(kind: str) -> DeviceInfo:
    """The current device of `kind` ("cuda", "mps" or "cpu", as `stagekit.device.resolve_device` returns it)."""
    if kind == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo("cuda", props.name, tuple(torch.cuda.get_device_capability(index)), props.total_memory)
    if kind == "mps":
        return DeviceInfo("mps", "Apple GPU (MPS)")
    return DeviceInfo("cpu", "CPU")


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "bf16" | "fp16" | "fp32"
    reason: str

    def trainer_flags(self) -> dict[str, bool]:
        """TrainingArguments' `bf16` / `fp16` (accelerate then runs autocast, and for fp16 the GradScaler)."""
        return {"bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}

    def as_metrics(self) -> dict[str, Any]:
        return {"precision": self.precision, "precision_reason": self.reason}

    @property
    def line(self) -> str:
        return f"precision: {self.precision} ({self.reason})"


def choose_precision(device: DeviceInfo, asked: str) -> PrecisionChoice:
    """The precision for `asked` on `device`, with the reason in words.

    Raises ConfigError (one line naming impl.precision and what to ask for instead) for a precision the device
    cannot run fast or at all: bf16 on a GPU without bf16 tensor cores (names fp16), bf16 on MPS, half
    precision on the CPU (where accelerate would silently train in fp32), an unknown name.
    """
    if asked not in PRECISIONS:
        raise ConfigError(f"config key '{KEY}': {asked!r} is not one of {list(PRECISIONS)}")
    where = device.label
    if device.kind == "cuda":
        major = device.capability[0] if device.capability else 0
        if asked == "auto":
            if major >= 8:
                return PrecisionChoice("bf16", f"auto: {where} has bf16 tensor cores")
            if major == 7:
                return PrecisionChoice("fp16", f"auto: {where} has fp16 tensor cores but no bf16 ones; loss scaling on")
            return PrecisionChoice("fp32", f"auto: {where} has no tensor cores")
        if asked == "bf16" and major < 8:
            raise ConfigError(
                f"config key '{KEY}': bf16 was asked for, but {where} has no bf16 tensor cores (torch would emulate "
                f"it, several times slower than fp16): use {KEY}=fp16 (or auto)"
            )
        note = "; loss scaling on" if asked == "fp16" else ""
        return PrecisionChoice(asked, f"asked for, on {where}{note}")
    if device.kind == "mps":
        if asked in ("auto", "fp32"):
            return PrecisionChoice("fp32", f"{'auto' if asked == 'auto' else 'asked for'}: {where} trains in fp32")
        if asked == "bf16":
            raise ConfigError(
                f"config key '{KEY}': bf16 on {where} depends on the chip and macOS version: use {KEY}=fp16 "
                "(autocast with loss scaling, torch >= 2.8) or fp32"
            )
        if torch_version() < (2, 8):
            raise ConfigError(
                f"config key '{KEY}': fp16 on MPS needs torch >= 2.8 for loss scaling (this is {'.'.join(map(str, torch_version()))}): "
                f"use {KEY}=fp32"
            )
        return PrecisionChoice("fp16", f"asked for, on {where}; loss scaling on")
    if asked in ("bf16", "fp16"):
        raise ConfigError(
            f"config key '{KEY}': {asked} needs a GPU, and this run is on the CPU (no fast half precision, and "
            f"accelerate would train in fp32 anyway): use {KEY}=fp32 (or auto)"
        )
    return PrecisionChoice("fp32", f"{'auto' if asked == 'auto' else 'asked for'}: {where}")


def choose_compile(device: DeviceInfo, asked: bool) -> tuple[bool, str]:
    """Whether `impl.compile` applies on `device`, and why not when it does not: CUDA only (minutes of compile
    time on a CPU, experimental on MPS), and Triton, torch.compile's GPU backend, needs compute capability >= 7.0
    (a P100 fails at the first step)."""
    if not asked:
        return False, "impl.compile=false"
    if device.kind != "cuda":
        return False, f"torch.compile is used on CUDA only, not on {device.kind}"
    if device.capability is not None and device.capability[0] < 7:
        return False, f"torch.compile off: {device.label} is older than Triton supports (7.0)"
    return True, "torch.compile on"


def choose_tf32(device: DeviceInfo, asked: bool) -> bool | None:
    """TrainingArguments' `tf32` for `impl.tf32`: None (torch's default) off CUDA and below compute capability
    8.0, where TF32 does not exist and transformers refuses `tf32=True` (ValueError) before any step."""
    if device.kind != "cuda" or device.capability is None or device.capability[0] < 8:
        return None
    return asked


def torch_version() -> tuple[int, int]:
    major, minor, *_ = torch.__version__.split("+")[0].split(".")
    return int(major), int(minor)


_CHOSEN: dict[tuple[str, str], PrecisionChoice] = {}


def run_precision(device: str, asked: str) -> PrecisionChoice:
    """`choose_precision` for this process's `device`, logged the first time it is asked (a stage asks for it
    when it starts, to fail before any data are read, again for its TrainingArguments and for its metrics)."""
    key = (device, asked)
    if key not in _CHOSEN:
        _CHOSEN[key] = choose_precision(device_info(device), asked)
        log.info("%s", _CHOSEN[key].line)
    return _CHOSEN[key]


def skipped_by_loss_scaler(key: str, optimizer: Any) -> bool:
    """True when a non-finite `key` in the training logs is a step that fp16's loss scaler skipped, not a
    divergence: the gradient norm (never the loss) of a run with an active GradScaler whose scale is still
    >= MIN_LOSS_SCALE. Such a step leaves the weights untouched and halves the scale; a scale that keeps
    falling below MIN_LOSS_SCALE is a divergence. `optimizer` is what the Trainer hands its callbacks
    (accelerate's AcceleratedOptimizer keeps the scaler as `.scaler`)."""
    scaler = getattr(optimizer, "scaler", None)
    if key != "grad_norm" or scaler is None or not scaler.is_enabled():
        return False
    return float(scaler.get_scale()) >= MIN_LOSS_SCALE
