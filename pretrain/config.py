"""The pretraining config schema: data → tokenizer → model → train, plus speed-only `impl` and `wandb`.

YAML files under configs/pretrain/ are only data for these dataclasses; every key is type-checked
and validated by `stagekit.config.load_config` before any data are touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from stagekit.config import RunConfig, key, require
from stagekit.sources import SourceConfig
from stagekit.stage_config import Scheduler, SharedImplConfig, SharedTrainConfig, WandbConfig

LOCAL_CORPUS_HINT = "data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz (or configs/pretrain/cpu-small.yaml)"


def _default_source() -> SourceConfig:
    # datasets >= 4 cannot run loading scripts: the Hub's parquet conversion of OpenWebText
    return SourceConfig(path="Skylion007/openwebtext", revision="refs/convert/parquet")


@dataclass
class DataConfig:
    # The flat keys before the source became a section (stagekit.sources.SourceConfig, shared with fine-tuning).
    renamed: ClassVar[dict[str, str]] = {
        "source": "source.path",
        "revision": "source.revision",
        "config_name": "source.config_name",
        "split": "source.split",
    }
    source: SourceConfig = key(
        help="the corpus: a Hub dataset or a local .txt / .jsonl / .jsonl.gz / .parquet file, glob or folder (a plain "
        "string is its path)",
        factory=_default_source,
    )
    text_column: str = key("text", "the column holding each document's text")
    streaming: bool = key(
        True,
        "speed only: stream the source (a Hub dataset is never downloaded whole) or, false, convert it to a "
        "local Arrow cache first; both give the same blocks (tests/pretrain/test_data.py). Local JSON Lines are "
        "read line by line either way",
        resumable=True,
    )
    max_documents: int | None = key(100_000, "the first N documents of the source; null: all of them")
    min_chars: int = key(64, "documents shorter than this (characters, after cleaning) are dropped")
    validation_fraction: float = key(0.01, "share of documents held out for validation (a document-level split)")
    split_seed: int = key(42, "seed of the train/validation split; it stays fixed when train.seed changes")
    block_size: int = key(128, "tokens per packed block, [CLS] and [SEP] included")
    num_proc: int = key(
        2, "speed only: worker processes that clean and tokenize (not in the cache key)", resumable=True
    )
    chunk_documents: int = key(
        1000, "speed only: documents per chunk handed to one worker (memory per chunk in flight)", resumable=True
    )
    cache_dir: str = key(
        ".cache/pretrain", "packed blocks + tokenizer, in a folder keyed by a hash of what determines them",
        resumable=True,
    )  # fmt: skip

    def check(self) -> None:
        require(self.max_documents is None or self.max_documents > 0, "max_documents", "must be positive or null")
        require(self.min_chars >= 1, "min_chars", "must be at least 1")
        require(0.0 < self.validation_fraction < 0.5, "validation_fraction", "must be in (0, 0.5)")
        require(self.block_size >= 8, "block_size", "must be at least 8")
        require(self.num_proc >= 1, "num_proc", "must be at least 1")
        require(self.chunk_documents >= 1, "chunk_documents", "must be at least 1")


@dataclass
class TokenizerConfig:
    """The WordPiece tokenizer trained on the corpus; its vocabulary size is model.vocab_size, so tokenizer
    and model cannot disagree."""

    lowercase: bool = key(True, "lowercase and strip accents before tokenizing (BERT uncased)")
    min_frequency: int = key(2, "a word piece must occur this often to enter the vocabulary")
    limit_alphabet: int = key(1000, "the most frequent characters kept as the base alphabet")
    # 10k is what run_mlm-style recipes use; a 30k vocabulary from 10k IMDB reviews (13 MB) took 4-9 s on the
    # shared 2-core development machine.
    max_training_documents: int = key(
        10_000,
        "the vocabulary is learnt from the first N cleaned training documents, streamed (only word counts are held)",
    )

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

    vocab_size: int = key(
        30_528, "WordPiece vocabulary size, also the tokenizer's (a multiple of 64: fast matmuls on GPU)"
    )
    hidden_size: int = key(512, "width of every layer")
    num_hidden_layers: int = key(8, "transformer layers")
    num_attention_heads: int = key(8, "attention heads per layer (must divide hidden_size)")
    intermediate_size: int = key(2048, "width of each layer's feed-forward network")
    max_position_embeddings: int = key(512, "longest sequence the model accepts (>= data.block_size)")
    initializer_range: float = key(0.02, "standard deviation of the initial weights")

    def check(self) -> None:
        require(self.vocab_size >= 128, "vocab_size", "must be at least 128")
        require(self.vocab_size % 64 == 0, "vocab_size", "must be a multiple of 64 (fast matmuls on GPU)")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            require(getattr(self, name) > 0, name, "must be positive")
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", "must divide hidden_size")
        require(self.max_position_embeddings > 0, "max_position_embeddings", "must be positive")
        require(0 < self.initializer_range < 1, "initializer_range", "must be in (0, 1)")
        for name in self.dropout_keys():
            require(0.0 <= getattr(self, name) < 1.0, name, "must be in [0, 1)")

    def dropout_keys(self) -> tuple[str, ...]:
        return ()


@dataclass
class BertModelConfig(EncoderShape):
    """`transformers.BertConfig` fields: post-LayerNorm blocks, learned absolute positions, GELU FFN."""

    architecture: Literal["bert"] = key(
        "bert", "bert (BertForMaskedLM), nomic_bert (rotary positions, gated FFN) or modernbert (pre-LayerNorm, rotary)"
    )
    hidden_act: str = key("gelu", "the feed-forward activation (a name transformers knows: gelu, relu, silu ...)")
    type_vocab_size: int = key(2, "segment (token type) embeddings")
    hidden_dropout_prob: float = key(0.1, "dropout on embeddings and every layer's outputs")
    attention_probs_dropout_prob: float = key(0.1, "dropout on the attention probabilities")
    layer_norm_eps: float = key(1.0e-12, "LayerNorm ε")

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
    rope_theta: float = key(1000.0, "nomic_bert: rotary base θ (NomicBertConfig's default; saved as rope_parameters)")

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
    hidden_activation: str = key("gelu", "modernbert: the gated FFN's activation")
    norm_eps: float = key(1.0e-5, "modernbert: LayerNorm ε")
    norm_bias: bool = key(False, "modernbert: LayerNorm with a bias")
    embedding_dropout: float = key(0.0, "modernbert: dropout on the embeddings")
    attention_dropout: float = key(0.0, "modernbert: dropout on the attention probabilities")
    mlp_dropout: float = key(0.0, "modernbert: dropout in the feed-forward network")
    global_rope_theta: float = key(
        160_000.0, "modernbert: rotary base θ of the global layers (ModernBertConfig's default)"
    )

    def dropout_keys(self) -> tuple[str, ...]:
        return ("embedding_dropout", "attention_dropout", "mlp_dropout")

    def check(self) -> None:
        super().check()
        _require_activation(self.hidden_activation, "hidden_activation")
        require(self.global_rope_theta > 0, "global_rope_theta", "must be positive")


ModelConfig = BertModelConfig | NomicBertModelConfig | ModernBertModelConfig


@dataclass
class TrainConfig(SharedTrainConfig):
    """The shared optimisation keys (stagekit/stage_config.py) with pretraining's defaults, plus the masking
    (DataCollatorForLanguageModeling's names), a short-block warm-up and MLM evaluation."""

    learning_rate: float = 5.0e-4
    adam_beta2: float = 0.98
    adam_epsilon: float = 1.0e-6
    warmup_steps: float = 1000
    lr_scheduler_type: Scheduler = "reduce_lr_on_plateau"
    min_lr: float = 1.0e-6
    per_device_train_batch_size: int = 256
    per_device_eval_batch_size: int | None = 256
    max_steps: int | None = key(
        20_000, "optimizer steps to train for; null: num_train_epochs passes over the blocks", resumable=True
    )
    num_train_epochs: float = key(1.0, "passes over the training blocks when max_steps is null", resumable=True)
    save_steps: int = 1000
    seed: int = 0
    mlm_probability: float = key(
        0.15,
        "share of (non-special) tokens selected for prediction; validation is also scored at BERT's 15 % / 80-10-10",
    )
    mask_replace_prob: float = key(0.8, "a selected token becomes [MASK] with this probability")
    random_replace_prob: float = key(
        0.1, "a selected token becomes a random token with this probability (else it stays)"
    )
    short_block_steps: int = key(
        0, "cramming's sequence-length curriculum: for the first N steps each block is cut into short_block_size pieces"
    )
    short_block_size: int = key(32, "tokens per piece during the short-block warm-up (same tokens per step)")
    # "unigram" starts the loss at the unigram entropy instead of ln(vocab), but a rotary model then left the
    # plateau ~200 steps later (docs/cpu-recipe-experiments.md), so it is not the default.
    output_bias_init: Literal["unigram", "zero"] = key(
        "zero",
        "the MLM head's bias at step 0: transformers' zeros, or the log token frequencies of the training blocks",
    )
    max_eval_batches: int | None = key(
        20, "evaluate on a fixed, pre-masked prefix of this many validation batches; null: all of them"
    )
    cloze_sentences: int = key(
        500, "held-out sentences with one content word masked, scored at the end against frequency alone",
        resumable=True,
    )  # fmt: skip
    early_stopping_patience: int | None = key(
        None, "stop after this many evaluations without a better validation loss; null: never", resumable=True
    )

    def check(self) -> None:
        super().check()
        require(self.num_train_epochs > 0, "num_train_epochs", "must be positive")
        require(0.0 < self.mlm_probability < 1.0, "mlm_probability", "must be in (0, 1)")
        for name in ("mask_replace_prob", "random_replace_prob"):
            require(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
        require(
            self.mask_replace_prob + self.random_replace_prob <= 1.0,
            "random_replace_prob",
            "mask_replace_prob + random_replace_prob must not exceed 1 (the rest is left unchanged)",
        )
        require(self.short_block_steps >= 0, "short_block_steps", "must be >= 0")
        require(self.short_block_size >= 4, "short_block_size", "must be at least 4")
        require(self.max_eval_batches is None or self.max_eval_batches >= 1, "max_eval_batches", "must be >= 1 or null")
        require(self.cloze_sentences >= 0, "cloze_sentences", "must be >= 0")
        require(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "early_stopping_patience",
            "must be >= 1 or null",
        )


@dataclass
class ImplConfig(SharedImplConfig):
    compile: bool = key(
        True, "torch.compile the encoder and head; CUDA with compute capability >= 7.0 only (minutes of compile on CPU)"
    )
    masked_only_head: bool = key(True, "run the MLM head only where labels != -100 (same loss, less work)")
    tf32: bool = key(True, "TF32 matmuls; used on compute capability >= 8.0 only (transformers refuses it below)")


@dataclass
class PretrainConfig(RunConfig):
    run_name: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=BertModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    examples: ClassVar[tuple[str, ...]] = (
        "train.learning_rate=3.0e-4 model.num_hidden_layers=4",
        "--resume train.max_train_minutes=30",
        "model.architecture=bert impl.num_threads=1",
    )
    stage: ClassVar[str] = "pretrain"
    implied_by_old_checkpoints: ClassVar[dict[str, Any]] = {
        "train.lr_scheduler_type": "reduce_lr_on_plateau",
        "impl.dataloader_pin_memory": True,
        "data.source.weight": 1.0,
    }

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
