"""The pretraining config schema: data → tokenizer → model → train, plus speed-only `impl` and `wandb`.

YAML files under configs/pretrain/ are only data for these dataclasses; every key is type-checked
and validated by `common.config.load_config` before any data are touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.config import RunConfig, require
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


@dataclass
class ModelConfig:
    """`transformers.BertConfig` fields, passed through as they are."""

    vocab_size: int = 30_528
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1.0e-12

    def check(self) -> None:
        require(self.vocab_size >= 128, "vocab_size", "must be at least 128")
        require(self.vocab_size % 64 == 0, "vocab_size", "must be a multiple of 64 (fast matmuls on GPU)")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            require(getattr(self, key) > 0, key, "must be positive")
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", "must divide hidden_size")
        require(self.max_position_embeddings > 0, "max_position_embeddings", "must be positive")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            require(0.0 <= getattr(self, key) < 1.0, key, "must be in [0, 1)")
        require(
            self.hidden_act in ("gelu", "relu", "gelu_new", "silu"), "hidden_act", "must be gelu/relu/gelu_new/silu"
        )


@dataclass
class TrainConfig:
    """TrainingArguments-style names where TrainingArguments has the setting."""

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
    mlm_probability: float = 0.15
    # "unigram": the MLM head's bias starts at the log token frequencies of the training blocks, so the
    # first steps learn context instead of the vocabulary's frequencies (~150 steps of cpu-small saved).
    output_bias_init: Literal["unigram", "zero"] = "unigram"
    logging_steps: int = 50
    eval_steps: int = 500
    max_eval_batches: int | None = 20  # evaluate on a fixed, pre-masked prefix of the validation blocks
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
        for key in ("logging_steps", "eval_steps", "save_steps", "save_total_limit"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        require(self.max_eval_batches is None or self.max_eval_batches >= 1, "max_eval_batches", "must be >= 1 or null")
        require(0.0 < self.plateau_factor < 1.0, "plateau_factor", "must be in (0, 1)")
        require(self.plateau_patience >= 0, "plateau_patience", "must be >= 0")
        require(self.plateau_threshold >= 0, "plateau_threshold", "must be >= 0")
        require(0 <= self.min_lr <= self.learning_rate, "min_lr", "must be in [0, learning_rate]")
        require(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "early_stopping_patience",
            "must be >= 1 or null",
        )


@dataclass
class ImplConfig:
    """Settings that change speed, not results (cramming's `impl`): benchmarks may flip them."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # autocast; only used on CUDA (this CPU has no fast bf16)
    compile: bool = True  # torch.compile; only used on CUDA (minutes of compile time on CPU)
    masked_only_head: bool = True  # run the MLM head only where labels != -100 (same loss, less work)
    tf32: bool = True
    num_threads: int | None = None  # torch CPU threads; null: torch's default


@dataclass
class PretrainConfig(RunConfig):
    run_name: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
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
