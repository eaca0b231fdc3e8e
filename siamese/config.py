"""The Siamese stage's config schema: YAML data → typed sections, each handed to the part that uses it.

Sections mirror the pretraining stage: `model` (what to fine-tune), `data` (what to read), `loss`
(which objective), `train` (SentenceTransformerTrainingArguments names), `impl` (speed-only settings
that must not change results), `wandb` (tracking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from common.config import RunConfig, require
from common.precision import RETIRED_BF16
from common.sources import hub_only_setting
from common.tracking import WandbConfig


@dataclass
class ModelConfig:
    # A pretraining output (any `from_pretrained` BERT folder) or a SentenceTransformer folder / Hub id.
    base_model: str = "outputs/pretrain-cpu-small/model"
    max_seq_length: int = 128
    pooling: Literal["mean", "cls", "max"] = "mean"
    # BertConfig dropout fields, applied on top of the base model's config (null: keep the base's).
    hidden_dropout_prob: float | None = None
    attention_probs_dropout_prob: float | None = None

    def check(self) -> None:
        require(bool(self.base_model.strip()), "base_model", "must name a model folder or Hub id")
        require(8 <= self.max_seq_length <= 512, "max_seq_length", "must be between 8 and 512")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            require(value is None or 0.0 <= value < 1.0, name, "must be in [0, 1)")


@dataclass
class SourceConfig:
    """One NLI source: a local file/glob/dir, or a Hub dataset id with its config and split."""

    path: str = "nyu-mll/glue"
    config_name: str | None = "mnli"
    split: str = "train"
    revision: str | None = None
    # Relative share when several training sources are interleaved (ignored for evaluation).
    weight: float = 1.0

    def check(self) -> None:
        require(bool(self.path.strip()), "path", "must name a file or Hub dataset")
        require(self.weight > 0, "weight", "must be > 0")
        ignored = hub_only_setting(self.path, config_name=self.config_name, revision=self.revision)
        if ignored is not None:  # config_name defaults to the Hub's "mnli": a local file must say null
            value = getattr(self, ignored)
            require(False, ignored, f"{value!r} is for Hub datasets, and {self.path} is local: set {ignored}: null")


def _default_train_sources() -> list[SourceConfig]:
    return [SourceConfig()]


def _default_eval_sources() -> list[SourceConfig]:
    return [SourceConfig(split="validation_matched")]


@dataclass
class DataConfig:
    train_sources: list[SourceConfig] = field(default_factory=_default_train_sources)
    # Held-out pairs the trainer scores during training (eval loss drives ReduceLROnPlateau).
    eval_sources: list[SourceConfig] = field(default_factory=_default_eval_sources)
    eval_pairs: int = 1000
    shuffle_buffer: int = 10_000
    max_train_pairs: int | None = None  # null: the whole stream (cycled until max_steps)
    # Premises remembered while looking for an entailment + contradiction pair (MNRL triplets).
    triplet_window: int = 50_000

    def check(self) -> None:
        require(len(self.train_sources) > 0, "train_sources", "needs at least one source")
        require(self.eval_pairs >= 0, "eval_pairs", "must be >= 0")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1 (1 disables shuffling)")
        require(self.max_train_pairs is None or self.max_train_pairs > 0, "max_train_pairs", "must be > 0 or null")
        require(self.triplet_window >= 1, "triplet_window", "must be >= 1")


@dataclass
class LossConfig:
    # softmax: SBERT's classifier over (u, v, |u-v|); mnrl: in-batch ranking of (premise, entailment,
    # contradiction) triplets; both: the two on the same pairs, weighted.
    name: Literal["softmax", "mnrl", "both"] = "softmax"
    softmax_weight: float = 1.0
    mnrl_weight: float = 1.0
    mnrl_scale: float = 20.0

    def check(self) -> None:
        require(self.softmax_weight >= 0, "softmax_weight", "must be >= 0")
        require(self.mnrl_weight >= 0, "mnrl_weight", "must be >= 0")
        require(self.mnrl_scale > 0, "mnrl_scale", "must be > 0")


@dataclass
class TrainConfig:
    learning_rate: float = 2.0e-5
    weight_decay: float = 0.01
    warmup_steps: float = 0.1  # a float < 1 is a fraction of max_steps, as in TrainingArguments
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 2000
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup", "reduce_lr_on_plateau"] = "linear"
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    eval_steps: int = 500
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 50
    # Stop (and save) after this many minutes even if max_steps is not reached: a cap for busy machines.
    max_train_minutes: float | None = None
    seed: int = 42
    # The NLI head (the loss's classifier) in its own AdamW parameter group at this rate (null: the encoder's).
    # Unit-norm embeddings (all-MiniLM-L6-v2 ends in Normalize) feed the head features of ~0.05: at the
    # encoder's rate its logits barely move in a short run while the encoder is trained through it (README, "Siamese fine-tuning").
    head_learning_rate: float | None = None
    # Fit the head on the frozen encoder's features of this many training pairs before fine-tuning (0: off;
    # siamese/head_init.py), so the encoder is never trained through a random head.
    head_init_pairs: int = 0
    # Keep the checkpoint that scores best on the held-out NLI pairs (eval loss for mnrl), never on STS.
    select_best: bool = False

    def check(self) -> None:
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(self.batch_size >= 2, "batch_size", "must be >= 2 (ranking losses need in-batch negatives)")
        require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        require(self.max_steps >= 1, "max_steps", "must be >= 1 (a stream has no length, so steps bound the run)")
        require(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        require(self.plateau_patience >= 0, "plateau_patience", "must be >= 0")
        for name in ("eval_steps", "save_steps", "logging_steps"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(self.save_total_limit >= 1, "save_total_limit", "must be >= 1")
        require(self.max_train_minutes is None or self.max_train_minutes > 0, "max_train_minutes", "must be > 0")
        require(self.head_learning_rate is None or self.head_learning_rate > 0, "head_learning_rate", "must be > 0")
        require(self.head_init_pairs >= 0, "head_init_pairs", "must be >= 0 (0: no warm start)")
        require(
            not self.select_best or self.save_steps % self.eval_steps == 0,
            "save_steps",
            f"must be a multiple of eval_steps ({self.eval_steps}) with select_best: only evaluated checkpoints "
            "can be chosen",
        )

    def warmup_step_count(self) -> int:
        return int(self.warmup_steps * self.max_steps) if self.warmup_steps < 1 else int(self.warmup_steps)


@dataclass
class ImplConfig:
    """Speed-only settings: they may change how fast a run goes, not what it learns (up to float noise)."""

    RETIRED: ClassVar[dict[str, str]] = {"bf16": RETIRED_BF16}

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, then mps, then cpu (common/device.py)
    # auto: bf16 on GPUs with bf16 tensor cores, fp16 + loss scaling on T4 / V100, else fp32 (common/precision.py)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Before training, find the largest per-device batch that fits (halving it) and raise
    # gradient_accumulation_steps so the batch per optimizer step stays the same (common/batch_fit.py).
    fit_batch: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # Embed premise and hypothesis in one forward pass (GPU: fewer kernel launches; CPU: more padding).
    merge_pair_forward: bool = False
    # Sort pairs by length inside windows of this many batches so each batch pads little (0: off).
    length_bucket_batches: int = 32
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = False
    # CPU threads for torch (null: torch's default, one per core). On a CPU shared with other jobs, 1 can be
    # several times faster than 2: OpenMP threads that are descheduled make every barrier wait.
    num_threads: int | None = None
    # Raise at once when the loss turns NaN/inf, so the last good checkpoint stays the newest one.
    stop_on_nonfinite_loss: bool = True

    def check(self) -> None:
        require(self.length_bucket_batches >= 0, "length_bucket_batches", "must be >= 0")
        require(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")
        require(self.num_threads is None or self.num_threads >= 1, "num_threads", "must be >= 1 or null")


def _default_selection_source() -> SourceConfig:
    return SourceConfig(path="sentence-transformers/stsb", config_name=None, split="validation")


@dataclass
class PostprocessConfig:
    """Post-processing fitted after training and saved in the model (siamese/postprocess.py)."""

    # auto: none / centre / whiten (and whiten to `dims`), whichever scores the best STS-B validation Spearman
    # ("none" wins a tie); or one method, fitted without selection.
    method: Literal["auto", "none", "centre", "whiten"] = "auto"
    dims: int | None = None  # whitening to this many dimensions (auto: an extra candidate); null = all
    # Training sentences (premises and hypotheses of the first training pairs, each once) the transform and the
    # random-pair reference are fitted on.
    fit_sentences: int = 20_000
    # STS-B validation, never test: what `auto` selects on (a local file or the Hub's sentence-transformers/stsb).
    selection_source: SourceConfig = field(default_factory=_default_selection_source)
    reference_pairs: int = 5_000  # random sentence pairs whose cosines the app compares a pair's cosine with

    def check(self) -> None:
        require(self.dims is None or self.dims >= 1, "dims", "must be >= 1 or null")
        require(self.fit_sentences >= 2, "fit_sentences", "must be >= 2")
        require(self.reference_pairs >= 100, "reference_pairs", "must be >= 100 (its percentiles are shown)")


# What `--resume` may change (applied from the resumed step on); anything else must match the checkpoint.
RESUMABLE_KEYS = (
    "train.learning_rate",
    "train.head_learning_rate",  # its value only: null ↔ a rate changes the optimizer's groups (siamese/train.py)
    "train.warmup_steps",
    "train.max_steps",
    "train.plateau_factor",
    "train.plateau_patience",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.max_train_minutes",
    "data.eval_sources",
    "data.eval_pairs",
    "postprocess.",  # fitted after training: nothing in a checkpoint depends on it
    "impl.",
    "wandb.",
    "output_dir",
)


@dataclass
class SiameseConfig(RunConfig):
    run_name: str = "siamese"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def check(self) -> None:
        super().check()
        require(
            self.train.lr_scheduler != "reduce_lr_on_plateau" or self.data.eval_pairs > 0,
            "train.lr_scheduler",
            "reduce_lr_on_plateau steps on the eval loss: set data.eval_pairs > 0",
        )
        require(
            not self.train.select_best or self.data.eval_pairs > 0,
            "train.select_best",
            "chooses a checkpoint by its score on held-out pairs: set data.eval_pairs > 0",
        )
        for key in ("head_learning_rate", "head_init_pairs"):
            require(
                self.loss.name != "mnrl" or getattr(self.train, key) in (None, 0),
                f"train.{key}",
                "loss.name=mnrl trains no NLI head: leave it unset, or use loss.name=softmax or both",
            )
