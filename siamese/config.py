"""The Siamese stage's config schema: YAML data → typed sections, each handed to the part that uses it.

Sections mirror the pretraining stage: `model` (what to fine-tune), `data` (what to read), `loss`
(which objective), `train` (the keys both stages share under TrainingArguments names, stagekit/stage_config.py,
plus the NLI head's), `postprocess` (fitted after training), `impl` (speed-only settings that must not
change results), `wandb` (tracking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from stagekit.config import RunConfig, key, require
from stagekit.sources import SourceConfig
from stagekit.stage_config import SharedImplConfig, SharedTrainConfig, WandbConfig


@dataclass
class ModelConfig:
    base_model: str = key(
        "outputs/pretrain-cpu-small/model",
        "a pretraining output (any from_pretrained BERT folder) or a SentenceTransformer folder / Hub id",
    )
    max_seq_length: int = key(128, "tokens per sentence; longer sentences are cut")
    pooling: Literal["mean", "cls", "max"] = key("mean", "how token embeddings become one sentence embedding")
    hidden_dropout_prob: float | None = key(
        None, "BertConfig dropout on top of the base model's; null: keep the base's"
    )
    attention_probs_dropout_prob: float | None = key(
        None, "attention dropout on top of the base model's; null: keep the base's"
    )

    def check(self) -> None:
        require(bool(self.base_model.strip()), "base_model", "must name a model folder or Hub id")
        require(8 <= self.max_seq_length <= 512, "max_seq_length", "must be between 8 and 512")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            require(value is None or 0.0 <= value < 1.0, name, "must be in [0, 1)")


def _default_train_sources() -> list[SourceConfig]:
    return [SourceConfig(path="nyu-mll/glue", config_name="mnli")]


def _default_eval_sources() -> list[SourceConfig]:
    # SNLI dev (Bowman et al. 2015), not MNLI dev: checkpoints are chosen on these pairs, and MNLI dev matched and
    # mismatched are what evaluation reports (siamese/evaluation/evaluate.py); GLUE's MNLI test split has no labels.
    return [SourceConfig(path="stanfordnlp/snli", split="validation")]


@dataclass
class DataConfig:
    train_sources: list[SourceConfig] = key(
        help="NLI sources streamed for training (premise, hypothesis, label), each {path, config_name, split, revision, weight}",
        factory=_default_train_sources,
    )
    eval_sources: list[SourceConfig] = key(
        help="validation NLI pairs scored during training (the first source): accuracy, eval loss for "
        "reduce_lr_on_plateau, the checkpoint train.select_best keeps; not a set evaluation reports (SNLI dev); "
        "not read when validation_fraction holds pairs out of the training sources instead",
        factory=_default_eval_sources,
        resumable=True,
    )
    eval_pairs: int = key(
        1000,
        "validation pairs read: the first of the first eval source, or of the held-out slice with "
        "validation_fraction (0: no evaluation)",
        resumable=True,
    )
    validation_fraction: float | None = key(
        None,
        "hold out the training pairs whose premise hashes below this share as the validation set, in place of "
        "eval_sources: never trained on, the same for every seed and process (siamese/nli_data.py `held_out`); "
        "null or 0: off",
    )
    shuffle_buffer: int = key(10_000, "pairs in the streaming shuffle buffer (1: no shuffling)")
    max_train_pairs: int | None = key(
        None, "read at most this many training pairs; null: the whole stream (cycled until max_steps)"
    )
    triplet_window: int = key(
        50_000, "loss.name=mnrl: premises remembered while looking for an entailment + contradiction pair"
    )

    def check(self) -> None:
        require(len(self.train_sources) > 0, "train_sources", "needs at least one source")
        require(self.eval_pairs >= 0, "eval_pairs", "must be >= 0")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1 (1 disables shuffling)")
        require(self.max_train_pairs is None or self.max_train_pairs > 0, "max_train_pairs", "must be > 0 or null")
        require(self.triplet_window >= 1, "triplet_window", "must be >= 1")
        fraction = self.validation_fraction
        require(fraction is None or 0 <= fraction <= 0.5, "validation_fraction", "must be in [0, 0.5] or null")


@dataclass
class LossConfig:
    name: Literal["softmax", "mnrl", "both"] = key(
        "softmax",
        "softmax: SBERT's classifier over (u, v, |u-v|); mnrl: in-batch ranking of (premise, entailment, "
        "contradiction) triplets; both: the two on the same pairs, weighted",
    )
    softmax_weight: float = key(1.0, "loss.name=both: weight of the softmax loss")
    mnrl_weight: float = key(1.0, "loss.name=both: weight of the ranking loss")
    mnrl_scale: float = key(20.0, "the ranking loss's scale (inverse temperature) on cosine similarities")
    matryoshka_dims: list[int] | None = key(
        None,
        "Matryoshka: smaller widths the ranking loss also trains at, besides the full one, e.g. [64, 32], so a "
        "truncated embedding still ranks (mnrl or both; the NLI head reads the full width; siamese/losses.py); "
        "null: off",
    )

    def check(self) -> None:
        require(self.softmax_weight >= 0, "softmax_weight", "must be >= 0")
        require(self.mnrl_weight >= 0, "mnrl_weight", "must be >= 0")
        require(self.mnrl_scale > 0, "mnrl_scale", "must be > 0")
        dims = self.matryoshka_dims
        require(dims is None or len(dims) > 0, "matryoshka_dims", "must list at least one width, or be null")
        require(dims is None or min(dims) >= 1, "matryoshka_dims", "widths must be >= 1")
        require(dims is None or len(set(dims)) == len(dims), "matryoshka_dims", "lists a width twice")


@dataclass
class TrainConfig(SharedTrainConfig):
    """The shared optimisation keys (stagekit/stage_config.py) with fine-tuning's defaults (SBERT's), plus the
    NLI head's own rate, warm start and best-checkpoint choice."""

    learning_rate: float = 2.0e-5
    warmup_steps: float = 0.1
    per_device_train_batch_size: int = 16
    max_steps: int = key(
        2000, "optimizer steps to train for (a stream has no length, so steps bound the run)", resumable=True
    )
    # Unit-norm embeddings (all-MiniLM-L6-v2 ends in Normalize) feed the head features of ~0.05: at the
    # encoder's rate its logits barely move in a short run while the encoder is trained through it
    # (docs/results.md, "Siamese fine-tuning: the recipe").
    head_learning_rate: float | None = key(
        None, "the NLI head in its own AdamW parameter groups at this rate; null: the encoder's", resumable=True
    )
    head_init_pairs: int = key(
        0,
        "fit the NLI head on the frozen encoder's features of this many training pairs first (0: off; siamese/warm_start.py)",
    )
    select_best: bool = key(
        False, "ship the checkpoint with the best select_metric on the validation pairs, never chosen on STS"
    )
    # Accuracy on n pairs has a standard error of sqrt(p(1-p)/n): 2.2 points at 500 pairs, 1.2 at 1,700, as large
    # as the gaps between a run's later checkpoints. The mean cross-entropy moves with every pair's probability,
    # not only with the pairs whose argmax flips, so it ranks checkpoints on the same pairs with less noise.
    select_metric: Literal["loss", "accuracy"] = key(
        "loss",
        "what select_best chooses by: the NLI head's mean cross-entropy on the validation pairs (lowest wins) or its "
        "accuracy; loss.name=mnrl has no head and always uses the eval loss",
    )

    def check(self) -> None:
        super().check()
        require(self.max_steps is not None, "max_steps", "must be set (a stream has no length, so steps bound the run)")
        require(
            self.per_device_train_batch_size >= 2,
            "per_device_train_batch_size",
            "must be >= 2 (ranking losses need in-batch negatives)",
        )
        require(self.head_learning_rate is None or self.head_learning_rate > 0, "head_learning_rate", "must be > 0")
        require(self.head_init_pairs >= 0, "head_init_pairs", "must be >= 0 (0: no warm start)")
        require(
            not self.select_best or self.save_steps % self.eval_steps == 0,
            "save_steps",
            f"must be a multiple of eval_steps ({self.eval_steps}) with select_best: only evaluated checkpoints "
            "can be chosen",
        )


@dataclass
class ImplConfig(SharedImplConfig):
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = key("sdpa", "the encoder's attention kernel")
    merge_pair_forward: bool = key(
        False, "embed premise and hypothesis in one forward pass (GPU: fewer kernel launches; CPU: more padding)"
    )
    length_bucket_batches: int = key(
        32,
        "sort pairs by length inside windows of this many optimizer steps' pairs and cut them into one step's pairs "
        "(all processes' micro-batches, in order) so each batch pads little (0: off)",
    )
    mini_batch_size: int | None = key(
        None,
        "mnrl / both: embed each per-device batch in mini-batches of this many pairs and cache the loss's gradients "
        "(GradCache), so the ranking keeps every in-batch negative in one mini-batch's activation memory; "
        "null: one pass (siamese/losses.py)",
    )

    def check(self) -> None:
        super().check()
        require(self.mini_batch_size is None or self.mini_batch_size >= 1, "mini_batch_size", "must be >= 1 or null")


def _default_selection_source() -> SourceConfig:
    return SourceConfig(path="sentence-transformers/stsb", config_name=None, split="validation")


@dataclass
class PostprocessConfig:
    """Post-processing fitted after training (siamese/fit_postprocessing.py) and saved in the model; nothing in a
    checkpoint depends on it, so `--resume` may change any of it."""

    resumable_section: ClassVar[bool] = True
    method: Literal["auto", "none", "centre", "whiten"] = key(
        "auto",
        "auto: none / centre / whiten (and whiten to dims), whichever scores the best STS-B validation Spearman "
        "(none wins a tie); or one method, fitted without selection",
    )
    dims: int | None = key(None, "whiten to this many dimensions (auto: an extra candidate); null: all")
    fit_sentences: int = key(
        20_000, "training sentences (premises and hypotheses of the first pairs, each once) the transform is fitted on"
    )
    selection_source: SourceConfig = key(
        help="what auto selects on: STS-B validation, never test (a local file or the Hub's sentence-transformers/stsb)",
        factory=_default_selection_source,
    )
    reference_pairs: int = key(
        5_000, "random training-sentence pairs whose cosines the app compares a pair's cosine with"
    )

    def check(self) -> None:
        require(self.dims is None or self.dims >= 1, "dims", "must be >= 1 or null")
        require(self.fit_sentences >= 2, "fit_sentences", "must be >= 2")
        require(self.reference_pairs >= 100, "reference_pairs", "must be >= 100 (its percentiles are shown)")


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

    examples: ClassVar[tuple[str, ...]] = (
        "train.learning_rate=5.0e-5 loss.name=both",
        "model.base_model=outputs/pretrain-cpu-small/model train.max_steps=500",
        "--resume train.max_steps=3000",
    )
    stage: ClassVar[str] = "siamese"
    implied_by_old_checkpoints: ClassVar[dict[str, Any]] = {
        "train.adam_epsilon": 1.0e-8,
        "train.plateau_threshold": 1.0e-3,
        "train.min_lr": 0.0,
        "train.select_metric": "accuracy",
    }

    def check(self) -> None:
        super().check()
        require(
            not self.train.plateau or self.data.eval_pairs > 0,
            "train.lr_scheduler_type",
            "reduce_lr_on_plateau steps on the eval loss: set data.eval_pairs > 0",
        )
        require(
            not self.train.select_best or self.data.eval_pairs > 0,
            "train.select_best",
            "chooses a checkpoint by its score on held-out pairs: set data.eval_pairs > 0",
        )
        require(
            not self.train.select_best or self.train.select_metric == "loss" or self.loss.name != "mnrl",
            "train.select_metric",
            "accuracy needs the NLI head, and loss.name=mnrl trains none: use loss",
        )
        require(
            self.loss.name != "softmax" or self.loss.matryoshka_dims is None,
            "loss.matryoshka_dims",
            "trains each width through the ranking loss, and loss.name=softmax has none (its NLI head reads the full "
            "embedding): use loss.name=both or mnrl",
        )
        mini = self.impl.mini_batch_size
        require(
            mini is None or self.loss.name != "softmax",
            "impl.mini_batch_size",
            "caches gradients for the in-batch negatives of loss.name=mnrl or both; softmax scores each pair alone, "
            "so lower train.per_device_train_batch_size and raise train.gradient_accumulation_steps instead",
        )
        require(
            mini is None or mini < self.train.per_device_train_batch_size,
            "impl.mini_batch_size",
            f"must be below train.per_device_train_batch_size ({self.train.per_device_train_batch_size}) to save memory",
        )
        for name in ("head_learning_rate", "head_init_pairs"):
            require(
                self.loss.name != "mnrl" or getattr(self.train, name) in (None, 0),
                f"train.{name}",
                "loss.name=mnrl trains no NLI head: leave it unset, or use loss.name=softmax or both",
            )


@dataclass
class EvalConfig:
    """`python -m siamese.evaluation --model DIR [key=value ...]`, and the pipeline's `eval.key=value`: which
    encoders are scored, on which sets, and where the report goes. An evaluation set left null is the shared
    local copy under ${BERT_DATA_DIR} when it is there, else the Hub dataset it was taken from."""

    baseline: str | None = key(
        "all-MiniLM-L6-v2",
        "an encoder scored beside the model: a SentenceTransformer folder or Hub id (all-MiniLM-L6-v2 loads from "
        "its offline copy); null: none",
    )
    base_stsb: bool = key(
        True, "also score the base model fine-tuning started from (run_info.json's base_model) on STS-B test"
    )
    backend: Literal["torch", "onnx", "onnx-int8"] = key(
        "torch", "what runs the model: torch, or its ONNX export (python -m siamese.inference.export) in fp32 or int8"
    )
    out: str | None = key(None, "the folder report.json, report.md and the plots go to; null: the model folder")
    limit: int | None = key(None, "score only the first N pairs of each set (quick looks, tests); null: all")
    mnli_matched: str | None = key(
        None, "MNLI dev matched: a file or Hub id; null: mnli/validation_matched.jsonl.gz, else nyu-mll/glue"
    )
    mnli_mismatched: str | None = key(
        None, "MNLI dev mismatched: a file or Hub id; null: mnli/validation_mismatched.jsonl.gz, else nyu-mll/glue"
    )
    stsb: str | None = key(
        None, "STS-B test: a file or Hub id; null: stsb/test.jsonl.gz, else sentence-transformers/stsb"
    )
    stsb_scale: float | None = key(
        None, "the largest score the STS-B source holds; null: 1.0 for sentence-transformers/stsb, else 5.0 (STS-B's)"
    )
    retrieval: str | None = key(
        None,
        "the retrieval set: an NLI file (its premises the corpus, entailed hypotheses the queries), or nanobeir "
        "(NanoBEIR's 13 sets from the Hub; needs internet); null: MNLI dev matched as above",
    )

    examples: ClassVar[tuple[str, ...]] = ("limit=500", "baseline=null backend=onnx-int8", "out=reports/cpu-small")
    stage: ClassVar[str] = "eval"

    def check(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null")
        require(self.stsb_scale is None or self.stsb_scale > 0, "stsb_scale", "must be > 0 or null")
        require(self.baseline is None or bool(self.baseline.strip()), "baseline", "must name an encoder or be null")
