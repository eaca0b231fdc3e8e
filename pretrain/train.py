"""MLM pretraining as a stage (stagekit/stage.py): packed blocks → masked examples → model → trainer → metrics.

Runs the same on one process and under `torchrun --nproc_per_node=N` / `accelerate launch`: the data
cache is built by the main process first, accelerate's sampler shards the blocks by rank with a new
order each epoch, DDP averages gradients of the loss computed inside the model's forward, and only
the main process writes the final model, metrics, plots and W&B.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from pretrain.attention import attention_profile
from pretrain.blocks import PackedData, prepare_data
from pretrain.card import write_model_card
from pretrain.cloze import cloze_accuracy, cloze_items
from pretrain.config import PretrainConfig
from pretrain.export import save_model_files
from pretrain.masking import BlockMasker, FixedMaskedBlocks, MaskedBlocks, stack
from pretrain.model import build_model, count_parameters, init_output_bias
from pretrain.trainer import MLMTrainer, ShortBlockWarmup
from stagekit.callbacks import GridEarlyStopping
from stagekit.device import choose_compile, choose_tf32, device_info, resolve_device
from stagekit.errors import DataError
from stagekit.schedule import plateau_settings
from stagekit.stage import Stage, StageResult
from stagekit.stage_config import training_arguments

log = logging.getLogger(__name__)

BERT_MASKING = (0.15, 0.8, 0.1)  # Devlin et al. 2019: the validation set every run is also scored on


def pretrain_arguments(cfg: PretrainConfig, device: str, report_to: list[str]) -> TrainingArguments:
    """TrainingArguments from the config (stagekit/stage_config.py `training_arguments`) plus MLM's own: epochs,
    early stopping on the validation loss, whole batches only, the blocks' columns, tf32 where it exists."""
    t = cfg.train
    return training_arguments(
        TrainingArguments,
        cfg,
        device,
        report_to,
        num_train_epochs=t.num_train_epochs,
        metric_for_best_model="eval_loss" if t.early_stopping_patience else None,
        greater_is_better=False if t.early_stopping_patience else None,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        label_names=["labels"],
        tf32=choose_tf32(device_info(device), cfg.impl.tf32),  # None below compute capability 8.0
    )


def mlm_trainer(
    cfg: PretrainConfig, data: PackedData, report_to: list[str], fresh: bool, callbacks: list | None = None
) -> MLMTrainer:
    """The Trainer `python -m pretrain` trains with, before `run_stage` adds the callbacks both stages share
    (the throughput benchmark times this very object)."""
    t, device = cfg.train, resolve_device(cfg.impl.device)
    model = build_model(cfg.model, data.tokenizer, cfg.impl.masked_only_head)
    if fresh and t.output_bias_init == "unigram":
        init_output_bias(model, data.token_counts)
    masker = BlockMasker(data.tokenizer, t.mlm_probability, t.mask_replace_prob, t.random_replace_prob)
    limit = t.max_eval_batches * t.eval_batch_size() if t.max_eval_batches else None
    eval_sets = {"": FixedMaskedBlocks(data.validation, masker, t.seed + 1, limit)}
    if (t.mlm_probability, t.mask_replace_prob, t.random_replace_prob) != BERT_MASKING:
        bert = BlockMasker(data.tokenizer, *BERT_MASKING)
        eval_sets["bert15_"] = FixedMaskedBlocks(data.validation, bert, t.seed + 1, limit)
    check_masked_targets(cfg, eval_sets)
    stops = []
    if t.early_stopping_patience:
        stops.append(GridEarlyStopping(early_stopping_patience=t.early_stopping_patience))
    if t.short_block_steps:
        stops.append(ShortBlockWarmup(t.short_block_steps, t.short_block_size))
    args = pretrain_arguments(cfg, device, report_to)
    world = args.world_size
    trainer = MLMTrainer(
        model=model,
        args=args,
        train_dataset=MaskedBlocks(data.train, masker, t.seed),
        eval_sets=eval_sets,
        data_collator=stack,
        processing_class=data.tokenizer,
        callbacks=stops + (callbacks or []),
        plateau=plateau_settings(t),
        units_per_step=t.per_device_train_batch_size * t.gradient_accumulation_steps * world * cfg.data.block_size,
        throughput_unit="tokens",
    )
    compile_model, why = choose_compile(device_info(device), cfg.impl.compile)
    if cfg.impl.compile and not compile_model:
        log.info("%s", why)
    if compile_model:
        # Module.compile() keeps state_dict keys, so checkpoints stay plain; the head sees a different
        # number of masked positions in every batch.
        model.base_model.compile()
        model.get_output_embeddings().compile(dynamic=True)
    return trainer


def check_masked_targets(cfg: PretrainConfig, eval_sets: dict[str, FixedMaskedBlocks]) -> None:
    """Refuse a validation set whose fixed masks select no token: its loss and accuracy would be 0 / 0, and
    the plateau schedule and early stopping would steer by that."""
    for infix, blocks in eval_sets.items():
        if blocks.masked_tokens == 0:
            masking = f"train.mlm_probability={cfg.train.mlm_probability}" if not infix else "BERT's 15 %"
            raise DataError(
                f"the {len(blocks)} validation block(s) of {cfg.data.block_size} tokens scored at {masking} hold no "
                "masked token; score more blocks (train.max_eval_batches, train.per_device_eval_batch_size, "
                "data.validation_fraction) or use longer ones (data.block_size)"
            )


def check_enough_blocks(cfg: PretrainConfig, data: PackedData, world_size: int) -> None:
    per_step = cfg.train.per_device_train_batch_size * world_size
    if len(data.train) < per_step:
        raise DataError(
            f"only {len(data.train)} training blocks for train.per_device_train_batch_size="
            f"{cfg.train.per_device_train_batch_size} on {world_size} process(es); use more documents or a smaller batch"
        )


class PretrainStage(Stage):
    """`python -m pretrain`: blocks from the corpus cache, the MLM Trainer, validation + cloze metrics, and a
    model folder that loads with `AutoModelForMaskedLM.from_pretrained` and `SentenceTransformer(path)`."""

    name, example = "pretrain", "blocks"
    config_class, prog = PretrainConfig, "python -m pretrain"
    description = "Pretrain a small BERT with masked language modelling."

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.data: PackedData | None = None

    def prepare(self, world_size: int) -> dict[str, Any]:
        """The packed blocks; checkpoints record their cache key, which also covers the corpus files' sizes and
        times, so a resume on a changed corpus is refused."""
        self.data = prepare_data(self.cfg)
        check_enough_blocks(self.cfg, self.data, world_size)
        return {"packed_data": self.data.stats["cache_key"]}

    def build_trainer(self, report_to: list[str], checkpoint: str | None) -> MLMTrainer:
        trainer = mlm_trainer(self.cfg, self.packed, report_to, fresh=checkpoint is None)
        m = self.cfg.model
        log.info(
            "model: %s %.2fM parameters (L%d/H%d/A%d/FFN%d, vocab %d) on %s × %d; %d tokens per step",
            m.architecture,
            count_parameters(trainer.model) / 1e6,
            m.num_hidden_layers,
            m.hidden_size,
            m.num_attention_heads,
            m.intermediate_size,
            m.vocab_size,
            trainer.args.device,
            trainer.args.world_size,
            trainer.units_per_step,
        )
        return trainer

    def metrics(self, trainer: MLMTrainer) -> dict[str, Any]:
        stats = {k: v for k, v in self.packed.stats.items() if k != "unigram_entropy"}
        return final_metrics(self.cfg, trainer, self.packed) | stats

    def save_model(self, trainer: MLMTrainer, folder: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        from pretrain.plots import plot_curves

        save_model_files(folder, trainer.model, self.packed.tokenizer)
        plot_curves(trainer.state.log_history, self.cfg.run_dir / "loss_lr.png", metrics["unigram_entropy"])
        return {"corpus": self.cfg.data.source.path, "packed_data": self.packed.stats["cache_key"]}

    def model_card(self, folder: Path, final: Path) -> None:
        write_model_card(folder, final)

    def summary(self, result: StageResult) -> str:
        return summary_lines(result.metrics, result.model_dir, self.cfg.run_dir / "loss_lr.png")

    @property
    def packed(self) -> PackedData:
        if self.data is None:
            raise RuntimeError("PretrainStage.prepare() has not run")
        return self.data


def final_metrics(cfg: PretrainConfig, trainer: MLMTrainer, data: PackedData) -> dict[str, Any]:
    """Validation loss (also at BERT's masking), cloze accuracy vs frequency, attention vs uniform."""
    evaluation = trainer.evaluate()
    metrics: dict[str, Any] = {k.removeprefix("eval_"): v for k, v in evaluation.items()}
    metrics = {f"val_{k}": v for k, v in metrics.items()}
    if "val_bert15_loss" not in metrics:  # trained at BERT's masking: the primary set is that set
        metrics |= {k.replace("val_", "val_bert15_", 1): v for k, v in list(metrics.items())}
    items = cloze_items(data.validation, data.tokenizer, cfg.train.cloze_sentences, seed=cfg.train.seed)
    metrics |= cloze_accuracy(trainer.model, items, data.token_counts, data.tokenizer)
    profile = attention_profile(trainer.model, data.validation[torch.arange(min(8, len(data.validation)))])
    metrics["attention_entropy"] = [round(p["entropy"], 3) for p in profile]
    metrics["attention_uniform_entropy"] = profile[0]["uniform_entropy"] if profile else None
    metrics["attention_neighbour_weight"] = [round((p["previous"] + p["next"]) / 2, 4) for p in profile]
    metrics |= {"unigram_entropy": data.stats["unigram_entropy"], "parameters": count_parameters(trainer.model)}
    trainer.log({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def summary_lines(metrics: dict, model_dir, plot) -> str:
    return (
        f"done in {metrics['wall_time_s'] / 60:.1f} min, {metrics['step']} steps ({metrics['stop_reason']}): "
        f"validation loss {metrics['val_loss']:.3f} nats at the training masking, {metrics['val_bert15_loss']:.3f} at "
        f"BERT's 15 % (perplexity {metrics['val_bert15_perplexity']:.1f}, masked accuracy "
        f"{metrics['val_bert15_accuracy']:.3f}) vs unigram entropy {metrics['unigram_entropy']:.3f} nats\n"
        f"cloze (one content word masked in {metrics.get('cloze_items', 0)} held-out sentences): top-1 "
        f"{metrics.get('cloze_top1', 0):.1%}, top-5 {metrics.get('cloze_top5', 0):.1%} vs frequency alone "
        f"{metrics.get('cloze_frequency_top1', 0):.1%} / {metrics.get('cloze_frequency_top5', 0):.1%}\n"
        f"attention entropy per layer {metrics['attention_entropy']} (uniform {metrics['attention_uniform_entropy']:.2f})\n"
        f"model: {model_dir}\ncurves: {plot}\n"
        f'try: python -m pretrain.fill_mask --model {model_dir} "the movie was [MASK] ."'
    )
