"""The pretraining config schema: data → tokenizer → model → train, plus speed-only `impl` and `wandb`.

YAML files under configs/pretrain/ are only data for these dataclasses; every key is type-checked
and validated by `common.config.load_config` before any data are touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from common.config import RunConfig, require
from common.precision import RETIRED_BF16
from common.sources import hub_only_setting
from common.tracking import WandbConfig

LOCAL_CORPUS_HINT = "data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz (or configs/pretrain/cpu-small.yaml)"


@dataclass
class DataConfig:
    # A Hub dataset id, or a local .txt/.jsonl/.jsonl.gz/.parquet file, glob or folder.
    source: str = "Skylion007/openwebtext"
    revision: str | None = "refs/convert/parquet"  # datasets >= 4 cannot run loading scripts: use parquet
    config_name: str | None = None
    split: str = "train"
    text_column: str = "text"
    # Speed only: stream the source (a Hub dataset is never downloaded whole) or, false, convert it to a
    # local Arrow cache first; both give the same blocks (tests/pretrain/test_data.py).
    streaming: bool = True
    max_documents: int | None = 100_000  # the first N documents of the source; null: all of them
    min_chars: int = 64  # documents shorter than this after cleaning are dropped
    validation_fraction: float = 0.01  # document-level split
    split_seed: int = 42  # the split stays fixed when train.seed changes
    block_size: int = 128  # tokens per packed block, [CLS] and [SEP] included
    # Speed only (not in the cache key; the blocks are the same for any value): worker processes that
    # clean and tokenize, and the documents per chunk handed to one of them (memory per chunk in flight).
    num_proc: int = 2
    chunk_documents: int = 1000
    cache_dir: str = ".cache/pretrain"  # packed blocks + tokenizer, keyed by a hash of what determines them

    def check(self) -> None:
        require(bool(self.source.strip()), "source", "must name a Hub dataset or a local file")
        require(self.max_documents is None or self.max_documents > 0, "max_documents", "must be positive or null")
        require(self.min_chars >= 1, "min_chars", "must be at least 1")
        require(0.0 < self.validation_fraction < 0.5, "validation_fraction", "must be in (0, 0.5)")
        require(self.block_size >= 8, "block_size", "must be at least 8")
        require(self.num_proc >= 1, "num_proc", "must be at least 1")
        require(self.chunk_documents >= 1, "chunk_documents", "must be at least 1")
        ignored = hub_only_setting(self.source, config_name=self.config_name, revision=self.revision)
        if ignored is not None:
            value = getattr(self, ignored)
            require(
                False, ignored, f"{value!r} is for Hub datasets, and {self.source} is local: set data.{ignored}=null"
            )


@dataclass
class TokenizerConfig:
    # The vocabulary size is model.vocab_size, so tokenizer and model cannot disagree.
    lowercase: bool = True
    min_frequency: int = 2
    limit_alphabet: int = 1000
    # The WordPiece vocabulary is learnt from the first N cleaned training documents, streamed (only word
    # counts are held): bounded time and memory at any corpus size. 10k is what run_mlm-style recipes use;
    # a 30k vocabulary from 10k IMDB reviews (13 MB) took 4-9 s on the shared 2-core development machine.
    max_training_documents: int = 10_000

    def check(self) -> None:
        require(self.min_frequency >= 1, "min_frequency", "must be at least 1")
        require(self.limit_alphabet >= 1, "limit_alphabet", "must be at least 1")
        require(self.max_training_documents > 0, "max_training_documents", "must be positive")


def _require_activation(name: str, key: str) -> None:
    from transformers.activations import ACT2FN

    require(name in ACT2FN, key, f"{name!r} is not an activation transformers knows (e.g. gelu, relu, silu)")


@dataclass
class EncoderShape:
    """The fields every architecture has, under the names all three Hugging Face configs use."""

    vocab_size: int = 30_528
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 512
    initializer_range: float = 0.02

    def check(self) -> None:
        require(self.vocab_size >= 128, "vocab_size", "must be at least 128")
        require(self.vocab_size % 64 == 0, "vocab_size", "must be a multiple of 64 (fast matmuls on GPU)")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            require(getattr(self, key) > 0, key, "must be positive")
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", "must divide hidden_size")
        require(self.max_position_embeddings > 0, "max_position_embeddings", "must be positive")
        require(0 < self.initializer_range < 1, "initializer_range", "must be in (0, 1)")
        for key in self.dropout_keys():
            require(0.0 <= getattr(self, key) < 1.0, key, "must be in [0, 1)")

    def dropout_keys(self) -> tuple[str, ...]:
        return ()


@dataclass
class BertModelConfig(EncoderShape):
    """`transformers.BertConfig` fields: post-LayerNorm blocks, learned absolute positions, GELU FFN."""

    architecture: Literal["bert"] = "bert"
    hidden_act: str = "gelu"
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1.0e-12

    def dropout_keys(self) -> tuple[str, ...]:
        return ("hidden_dropout_prob", "attention_probs_dropout_prob")

    def check(self) -> None:
        super().check()
        _require_activation(self.hidden_act, "hidden_act")


@dataclass
class NomicBertModelConfig(EncoderShape):
    """`transformers.NomicBertConfig` fields: BERT's post-LayerNorm layout with rotary positions (θ =
    rope_theta) and a gated FFN (act(x·W_gate) ⊙ x·W_up); `intermediate_size` ≈ 2/3 of a GELU FFN's keeps
    the parameter count."""

    architecture: Literal["nomic_bert"] = "nomic_bert"
    intermediate_size: int = 1365
    hidden_act: str = "silu"
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1.0e-12
    rope_theta: float = 1000.0  # NomicBertConfig's default θ; stored as rope_parameters in config.json

    def dropout_keys(self) -> tuple[str, ...]:
        return ("hidden_dropout_prob", "attention_probs_dropout_prob")

    def check(self) -> None:
        super().check()
        _require_activation(self.hidden_act, "hidden_act")
        require(self.rope_theta > 0, "rope_theta", "must be positive")


@dataclass
class ModernBertModelConfig(EncoderShape):
    """`transformers.ModernBertConfig` fields: pre-LayerNorm blocks, rotary positions, gated FFN. Every layer
    attends globally (ModernBERT's 128-token sliding windows would not cover a 128-token block)."""

    architecture: Literal["modernbert"] = "modernbert"
    intermediate_size: int = 1365
    hidden_activation: str = "gelu"
    norm_eps: float = 1.0e-5
    norm_bias: bool = False
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    global_rope_theta: float = 160_000.0  # ModernBertConfig's default θ for global layers

    def dropout_keys(self) -> tuple[str, ...]:
        return ("embedding_dropout", "attention_dropout", "mlp_dropout")

    def check(self) -> None:
        super().check()
        _require_activation(self.hidden_activation, "hidden_activation")
        require(self.global_rope_theta > 0, "global_rope_theta", "must be positive")


ModelConfig = BertModelConfig | NomicBertModelConfig | ModernBertModelConfig


@dataclass
class TrainConfig:
    """TrainingArguments names where TrainingArguments has the setting (DataCollatorForLanguageModeling's for
    the masking)."""

    learning_rate: float = 5.0e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1.0e-6
    max_grad_norm: float = 1.0
    warmup_steps: int = 1000
    per_device_train_batch_size: int = 256
    per_device_eval_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    max_steps: int | None = 20_000  # null: num_train_epochs passes over the training blocks
    num_train_epochs: float = 1.0
    max_train_minutes: float | None = None  # also stop (with a checkpoint) once training took this long
    # Masking: the share of (non-special) tokens selected, and how a selected token is corrupted:
    # [MASK] with mask_replace_prob, a random token with random_replace_prob, else left as it is.
    # BERT: 0.15 / 0.8 / 0.1. Validation is also always scored at BERT's setting, so runs compare.
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    # A short-block warm-up (cramming's sequence-length curriculum): for the first short_block_steps
    # steps each block is cut into pieces of short_block_size tokens (same tokens per step).
    short_block_steps: int = 0
    short_block_size: int = 32
    # "zero": transformers' own start. "unigram": the MLM head's bias starts at the log token frequencies of
    # the training blocks, so the loss starts at the unigram entropy instead of ln(vocab) — but a rotary
    # model then left the plateau ~200 steps later (docs/cpu-recipe-experiments.md), so it is not the default.
    output_bias_init: Literal["unigram", "zero"] = "zero"
    logging_steps: int = 50
    eval_steps: int = 500
    max_eval_batches: int | None = 20  # evaluate on a fixed, pre-masked prefix of the validation blocks
    cloze_sentences: int = 500  # held-out sentences with one content word masked, scored at the end
    save_steps: int = 1000
    save_total_limit: int = 2
    plateau_factor: float = 0.5  # ReduceLROnPlateau on validation loss, after warmup
    plateau_patience: int = 2  # evaluations without improvement before the lr drops
    plateau_threshold: float = 1.0e-3
    min_lr: float = 1.0e-6
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    seed: int = 0

    def check(self) -> None:
        require(self.learning_rate > 0, "learning_rate", "must be positive")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1", "betas must be in [0, 1)")
        require(self.adam_epsilon > 0, "adam_epsilon", "must be positive")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be positive")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        require(self.max_steps is None or self.max_steps > 0, "max_steps", "must be positive or null")
        require(self.num_train_epochs > 0, "num_train_epochs", "must be positive")
        require(
            self.max_train_minutes is None or self.max_train_minutes > 0, "max_train_minutes", "must be > 0 or null"
        )
        require(0.0 < self.mlm_probability < 1.0, "mlm_probability", "must be in (0, 1)")
        for key in ("mask_replace_prob", "random_replace_prob"):
            require(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        require(
            self.mask_replace_prob + self.random_replace_prob <= 1.0,
            "random_replace_prob",
            "mask_replace_prob + random_replace_prob must not exceed 1 (the rest is left unchanged)",
        )
        require(self.short_block_steps >= 0, "short_block_steps", "must be >= 0")
        require(self.short_block_size >= 4, "short_block_size", "must be at least 4")
        for key in ("logging_steps", "eval_steps", "save_steps", "save_total_limit"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        require(self.max_eval_batches is None or self.max_eval_batches >= 1, "max_eval_batches", "must be >= 1 or null")
        require(self.cloze_sentences >= 0, "cloze_sentences", "must be >= 0")
        require(0.0 < self.plateau_factor < 1.0, "plateau_factor", "must be in (0, 1)")
        require(self.plateau_patience >= 0, "plateau_patience", "must be >= 0")
        require(self.plateau_threshold >= 0, "plateau_threshold", "must be >= 0")
        require(0 <= self.min_lr <= self.learning_rate, "min_lr", "must be in [0, learning_rate]")
        require(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "early_stopping_patience",
            "must be >= 1 or null",
        )


# What `--resume` may change (applied from the resumed step on); anything else must match the checkpoint.
RESUMABLE_KEYS = (
    "train.learning_rate",
    "train.min_lr",
    "train.warmup_steps",
    "train.plateau_factor",
    "train.plateau_patience",
    "train.plateau_threshold",
    "train.max_steps",
    "train.num_train_epochs",
    "train.max_train_minutes",
    "train.early_stopping_patience",
    "train.logging_steps",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.cloze_sentences",
    "impl.",
    "wandb.",
    "output_dir",
    "data.num_proc",
    "data.chunk_documents",
    "data.streaming",
    "data.cache_dir",
)


@dataclass
class ImplConfig:
    """Settings that change speed, not results (cramming's `impl`): benchmarks may flip them."""

    RETIRED: ClassVar[dict[str, str]] = {"bf16": RETIRED_BF16}

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, then mps, then cpu (common/device.py)
    # auto: bf16 on GPUs with bf16 tensor cores, fp16 + loss scaling on T4 / V100, else fp32 (common/precision.py)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Before training, find the largest per-device batch that fits (halving it) and raise
    # gradient_accumulation_steps so the batch per optimizer step stays the same (common/batch_fit.py).
    fit_batch: bool = False
    compile: bool = True  # torch.compile; only used on CUDA (minutes of compile time on CPU)
    masked_only_head: bool = True  # run the MLM head only where labels != -100 (same loss, less work)
    tf32: bool = True
    num_threads: int | None = None  # torch CPU threads; null: torch's default
    # Processes that read and mask blocks ahead of the GPU (0: in the training process, fine on a CPU).
    dataloader_num_workers: int = 0

    def check(self) -> None:
        require(self.num_threads is None or self.num_threads >= 1, "num_threads", "must be >= 1 or null")
        require(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")


@dataclass
class PretrainConfig(RunConfig):
    run_name: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=BertModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def check(self) -> None:
        super().check()
        require(
            self.model.max_position_embeddings >= self.data.block_size,
            "model.max_position_embeddings",
            f"must be >= data.block_size ({self.data.block_size})",
        )
        require(
            self.train.short_block_steps == 0 or self.train.short_block_size < self.data.block_size,
            "train.short_block_size",
            f"must be < data.block_size ({self.data.block_size}) for a short-block warm-up",
        )
