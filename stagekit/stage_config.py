"""The `train` and `impl` keys both stages share, under TrainingArguments' names, the TrainingArguments built
from them (`training_arguments`), and the `wandb` keys.

Each stage's config subclasses these sections, adds its own keys and changes defaults where its recipe
differs (a subclass that only changes a default keeps the key's help: stagekit/config.py `describe_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from stagekit.config import key, require
from stagekit.variables import as_written

# The old boolean impl.bf16: naming it is a one-line error (`SharedImplConfig.removed`).
RETIRED_BF16 = (
    "is gone: use impl.precision (auto | bf16 | fp16 | fp32); auto picks bf16 on GPUs with bf16 tensor cores, "
    "fp16 with loss scaling on T4 / V100, fp32 on CPU (bf16: true → impl.precision=bf16, false → fp32)"
)

Scheduler = Literal["linear", "cosine", "constant_with_warmup", "reduce_lr_on_plateau"]


@dataclass
class SharedTrainConfig:
    """Optimisation and step settings, named as in `transformers.TrainingArguments`."""

    renamed: ClassVar[dict[str, str]] = {
        "batch_size": "per_device_train_batch_size",
        "lr_scheduler": "lr_scheduler_type",
    }

    learning_rate: float = key(5.0e-5, "peak learning rate of AdamW (after warmup)", resumable=True)
    weight_decay: float = key(0.01, "AdamW weight decay; the Trainer exempts biases and LayerNorm weights")
    adam_beta1: float = key(0.9, "AdamW β1")
    adam_beta2: float = key(0.999, "AdamW β2")
    adam_epsilon: float = key(1.0e-8, "AdamW ε")
    max_grad_norm: float = key(1.0, "gradient clipping: the global gradient norm is scaled down to this")
    warmup_steps: float = key(
        0, "linear warmup from 0 to learning_rate over this many steps; a value < 1 is a fraction of max_steps",
        resumable=True,
    )  # fmt: skip
    lr_scheduler_type: Scheduler = key(
        "linear",
        "the schedule after warmup: linear / cosine decay to 0, constant, or reduce_lr_on_plateau (multiply by "
        "plateau_factor when the validation loss stalls for plateau_patience evaluations; stagekit/schedule.py)",
    )
    plateau_factor: float = key(0.5, "reduce_lr_on_plateau: the factor the rate is multiplied by", resumable=True)
    plateau_patience: int = key(
        2, "reduce_lr_on_plateau: evaluations without improvement before the rate drops", resumable=True
    )
    plateau_threshold: float = key(
        1.0e-3, "reduce_lr_on_plateau: a relative improvement below this counts as none", resumable=True
    )
    min_lr: float = key(0.0, "reduce_lr_on_plateau: the rate never drops below this", resumable=True)
    per_device_train_batch_size: int = key(16, "training examples per process and forward pass")
    per_device_eval_batch_size: int | None = key(
        None, "evaluation examples per process and batch; null: the training batch size"
    )
    gradient_accumulation_steps: int = key(
        1, "forward passes per optimizer step; global batch = per-device batch × this × processes"
    )
    max_steps: int | None = key(1000, "optimizer steps to train for", resumable=True)
    max_train_minutes: float | None = key(
        None, "also stop (evaluate, save) once training took this long: a cap for slow or busy machines; null: none",
        resumable=True,
    )  # fmt: skip
    logging_steps: int = key(50, "log loss, learning rate and throughput every this many steps", resumable=True)
    eval_steps: int = key(500, "evaluate on the held-out set every this many steps", resumable=True)
    save_steps: int = key(500, "write a checkpoint (resumable with --resume) every this many steps", resumable=True)
    save_total_limit: int = key(2, "checkpoints kept; older ones are deleted", resumable=True)
    seed: int = key(42, "seed of initialisation, data order, masking and dropout")

    def check(self) -> None:
        require(self.learning_rate > 0, "learning_rate", "must be positive")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1", "betas must be in [0, 1)")
        require(self.adam_epsilon > 0, "adam_epsilon", "must be positive")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be positive")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(
            self.warmup_steps >= 1 or self.warmup_steps == 0 or self.max_steps is not None,
            "warmup_steps",
            "a fraction of max_steps needs max_steps set; give a number of steps instead",
        )
        require(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        require(self.plateau_patience >= 0, "plateau_patience", "must be >= 0")
        require(self.plateau_threshold >= 0, "plateau_threshold", "must be >= 0")
        require(0 <= self.min_lr <= self.learning_rate, "min_lr", "must be in [0, learning_rate]")
        require(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be at least 1")
        require(
            self.per_device_eval_batch_size is None or self.per_device_eval_batch_size >= 1,
            "per_device_eval_batch_size",
            "must be at least 1 or null",
        )
        require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be at least 1")
        require(self.max_steps is None or self.max_steps > 0, "max_steps", "must be positive or null")
        require(
            self.max_train_minutes is None or self.max_train_minutes > 0, "max_train_minutes", "must be > 0 or null"
        )
        for name in ("logging_steps", "eval_steps", "save_steps", "save_total_limit"):
            require(getattr(self, name) >= 1, name, "must be at least 1")

    @property
    def plateau(self) -> bool:
        return self.lr_scheduler_type == "reduce_lr_on_plateau"

    def warmup_step_count(self) -> int:
        """Warmup in steps: a value below 1 is a fraction of max_steps, as in TrainingArguments."""
        if 0 < self.warmup_steps < 1:
            return int(self.warmup_steps * (self.max_steps or 0))
        return int(self.warmup_steps)

    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size or self.per_device_train_batch_size


@dataclass
class SharedImplConfig:
    """Settings that change speed, not results (cramming's `impl`): `--resume` may change any of them."""

    resumable_section: ClassVar[bool] = True
    removed: ClassVar[dict[str, str]] = {
        "stop_on_nonfinite_loss": "was removed: a NaN or infinite loss always stops the run (stagekit/callbacks.py "
        "StopOnNonFiniteLoss); delete it from your config",
        "bf16": RETIRED_BF16,
    }

    device: Literal["auto", "cpu", "cuda", "mps"] = key(
        "auto", "auto: cuda, then mps (Apple silicon), then cpu (stagekit/device.py)"
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = key(
        "auto",
        "auto: bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0), fp16 with loss scaling on 7.x "
        "(T4, V100), fp32 elsewhere and on CPU / MPS (stagekit/device.py)",
    )
    fit_batch: bool = key(
        False,
        "before training, find the largest per-device batch that fits in GPU memory and raise "
        "gradient_accumulation_steps so the batch per optimizer step stays the same (stagekit/batch_fit.py)",
    )
    num_threads: int | None = key(
        None, "torch CPU threads; null: torch's default. On a CPU shared with other jobs 1 can be several times faster"
    )
    dataloader_num_workers: int = key(
        0, "processes that read and collate batches ahead of the training step (0: in the training process)"
    )
    dataloader_pin_memory: bool = key(True, "pinned host memory for batches; CUDA only")

    def check(self) -> None:
        require(self.num_threads is None or self.num_threads >= 1, "num_threads", "must be >= 1 or null")
        require(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")


def training_arguments(
    arguments_class: type, cfg: Any, device: str, report_to: list[str], **stage_arguments: Any
) -> Any:
    """`arguments_class` (TrainingArguments or SentenceTransformerTrainingArguments) from a stage config's
    shared `train` / `impl` keys (above); `stage_arguments` add or replace the stage's own.

    With train.lr_scheduler_type=reduce_lr_on_plateau the Trainer runs a constant schedule that
    `ScheduleMixin` replaces by stagekit/schedule.py's warmup → plateau (`plateau_settings`).
    """
    from stagekit.device import run_precision  # torch: only where arguments are built, never to read a config

    t, impl = cfg.train, cfg.impl
    arguments: dict[str, Any] = {
        "output_dir": str(cfg.run_dir / "checkpoints"),
        "run_name": as_written(cfg.wandb.run_name or cfg.run_name),  # W&B's config logs it: `${VAR}`s as written
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.eval_batch_size(),
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,  # the Trainer exempts biases and LayerNorm weights
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "max_grad_norm": t.max_grad_norm,
        "optim": "adamw_torch_fused" if device == "cuda" else "adamw_torch",
        "warmup_steps": 0 if t.plateau else t.warmup_step_count(),
        "lr_scheduler_type": "constant" if t.plateau else t.lr_scheduler_type,
        "logging_steps": t.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": t.eval_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "dataloader_num_workers": impl.dataloader_num_workers,
        "dataloader_pin_memory": impl.dataloader_pin_memory and device == "cuda",
        "seed": t.seed,
        "use_cpu": device == "cpu",
        **run_precision(device, impl.precision).trainer_flags(),
        "report_to": report_to,
        "logging_nan_inf_filter": False,  # StopOnNonFiniteLoss must see a NaN, not the running mean
        "logging_first_step": True,
        "ddp_find_unused_parameters": False,
        "log_on_each_node": False,  # on several machines, the Trainer's logs too come from global rank 0 only
        # Each rank reads its own rows; dispatching would concatenate batches padded to different lengths.
        "accelerator_config": {"dispatch_batches": False},
        "disable_tqdm": False,
    }
    return arguments_class(**(arguments | stage_arguments))


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
        "checkpoint's weights; offline runs stage it for `wandb sync`): stagekit/wandb_tracking.py",
    )
