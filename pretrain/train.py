"""MLM pretraining on transformers' Trainer: packed blocks → masked examples → model → trainer → metrics.

Runs the same on one process and under `torchrun --nproc_per_node=N` / `accelerate launch`: the data
cache is built by the main process first, accelerate's sampler shards the blocks by rank with a new
order each epoch, DDP averages gradients of the loss computed inside the model's forward, and only
the main process writes the final model, metrics, plots and W&B.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import TrainingArguments

from common.batch_fit import fit_trainer_batch
from common.checkpoints import (
    SaveRunConfig,
    check_resume_settings,
    check_world_size,
    choose_checkpoint,
    recorded_wandb_id,
)
from common.config import to_dict
from common.device import resolve_device
from common.errors import DataError
from common.precision import choose_compile, choose_tf32, device_info, run_precision
from common.tracking import finish_run, trainer_report_to
from common.training import (
    GridEarlyStopping,
    PlateauStep,
    StopOnNonFiniteLoss,
    TimeBudget,
    advise_on_out_of_memory,
    setup_process,
    shared_arguments,
)
from pretrain.attention import attention_profile
from pretrain.blocks import PackedData, prepare_data
from pretrain.cloze import cloze_accuracy, cloze_items
from pretrain.config import RESUMABLE_KEYS, PretrainConfig
from pretrain.masking import BlockMasker, FixedMaskedBlocks, MaskedBlocks, stack
from pretrain.model import build_model, count_parameters, init_output_bias
from pretrain.trainer import MLMTrainer, ShortBlockWarmup

log = logging.getLogger(__name__)

BERT_MASKING = (0.15, 0.8, 0.1)  # Devlin et al. 2019: the validation set every run is also scored on


def training_arguments(cfg: PretrainConfig, device: str, report_to: list[str]) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
        output_dir=str(cfg.run_dir / "checkpoints"),
        run_name=cfg.wandb.run_name or cfg.run_name,
        max_steps=t.max_steps or -1,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,  # the Trainer exempts biases and LayerNorm weights
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        logging_steps=t.logging_steps,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        metric_for_best_model="eval_loss" if t.early_stopping_patience else None,
        greater_is_better=False if t.early_stopping_patience else None,
        dataloader_drop_last=True,
        dataloader_num_workers=cfg.impl.dataloader_num_workers,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        label_names=["labels"],
        tf32=choose_tf32(device_info(device), cfg.impl.tf32),  # None below compute capability 8.0
        **shared_arguments(device=device, seed=t.seed, report_to=report_to, precision=cfg.impl.precision),
    )


def build_trainer(
    cfg: PretrainConfig, data: PackedData, report_to: list[str], fresh: bool, callbacks: list | None = None
) -> MLMTrainer:
    """The Trainer `python -m pretrain` trains with (the throughput benchmark times this very object)."""
    t, device = cfg.train, resolve_device(cfg.impl.device)
    model = build_model(cfg.model, data.tokenizer, cfg.impl.masked_only_head)
    if fresh and t.output_bias_init == "unigram":
        init_output_bias(model, data.token_counts)
    masker = BlockMasker(data.tokenizer, t.mlm_probability, t.mask_replace_prob, t.random_replace_prob)
    limit = t.max_eval_batches * t.per_device_eval_batch_size if t.max_eval_batches else None
    eval_sets = {"": FixedMaskedBlocks(data.validation, masker, t.seed + 1, limit)}
    if (t.mlm_probability, t.mask_replace_prob, t.random_replace_prob) != BERT_MASKING:
        bert = BlockMasker(data.tokenizer, *BERT_MASKING)
        eval_sets["bert15_"] = FixedMaskedBlocks(data.validation, bert, t.seed + 1, limit)
    stops: list = [StopOnNonFiniteLoss(), PlateauStep(), SaveRunConfig(run_record(cfg, data))]
    if t.max_train_minutes:
        stops.append(TimeBudget(t.max_train_minutes))
    if t.early_stopping_patience:
        stops.append(GridEarlyStopping(early_stopping_patience=t.early_stopping_patience))
    if t.short_block_steps:
        stops.append(ShortBlockWarmup(t.short_block_steps, t.short_block_size))
    args = training_arguments(cfg, device, report_to)
    trainer = MLMTrainer(
        model=model,
        args=args,
        train_dataset=MaskedBlocks(data.train, masker, t.seed),
        eval_sets=eval_sets,
        data_collator=stack,
        processing_class=data.tokenizer,
        callbacks=stops + (callbacks or []),
    )
    trainer.plateau = {
        "warmup_steps": t.warmup_steps,
        "factor": t.plateau_factor,
        "patience": t.plateau_patience,
        "threshold": t.plateau_threshold,
        "min_lr": t.min_lr,
    }
    trainer.units_per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * args.world_size
    trainer.units_per_step *= cfg.data.block_size
    compile_model, why = choose_compile(device_info(device), cfg.impl.compile)
    if cfg.impl.compile and not compile_model:
        log.info("%s", why)
    if compile_model:
        # Module.compile() keeps state_dict keys, so checkpoints stay plain; the head sees a different
        # number of masked positions in every batch.
        model.base_model.compile()
        model.get_output_embeddings().compile(dynamic=True)
    return trainer


def run_record(cfg: PretrainConfig, data: PackedData) -> dict[str, Any]:
    """What each checkpoint records to check a resume against: the config and the packed data's cache key
    (which also covers the corpus files' sizes and times, so a changed corpus is refused)."""
    return to_dict(cfg) | {"packed_data": data.stats["cache_key"]}


def check_enough_blocks(cfg: PretrainConfig, data: PackedData, world_size: int) -> None:
    per_step = cfg.train.per_device_train_batch_size * world_size
    if len(data.train) < per_step:
        raise DataError(
            f"only {len(data.train)} training blocks for train.per_device_train_batch_size="
            f"{cfg.train.per_device_train_batch_size} on {world_size} process(es); use more documents or a smaller batch"
        )


def run(cfg: PretrainConfig, resume: bool = False) -> tuple[MLMTrainer, PackedData, dict[str, Any]]:
    """Train on every rank; returns the trainer, the data and the final metrics (computed on every rank)."""
    state = setup_process(resolve_device(cfg.impl.device), cfg.impl.num_threads, cfg.train.seed)
    precision = run_precision(resolve_device(cfg.impl.device), cfg.impl.precision)  # refused before any data
    checkpoint = choose_checkpoint(cfg.run_dir, resume, is_main=state.is_main_process)
    state.wait_for_everyone()  # the main process may have removed a half-written checkpoint
    if checkpoint:
        check_world_size(checkpoint, state.num_processes)  # before the data: the cache may take minutes to build
    with state.main_process_first():  # one process builds the cache, the others then read it
        data = prepare_data(cfg)
    if checkpoint:
        check_resume_settings(checkpoint, run_record(cfg, data), RESUMABLE_KEYS)
    check_enough_blocks(cfg, data, state.num_processes)
    report_to = trainer_report_to(
        cfg.wandb,
        cfg.run_dir,
        to_dict(cfg),
        "pretrain",
        is_main=state.is_main_process,
        resume_id=recorded_wandb_id(checkpoint),
    )
    trainer = build_trainer(cfg, data, report_to, fresh=checkpoint is None)
    log.info(
        "model: %s %.2fM parameters (L%d/H%d/A%d/FFN%d, vocab %d) on %s × %d; %d tokens per step",
        cfg.model.architecture,
        count_parameters(trainer.model) / 1e6,
        cfg.model.num_hidden_layers,
        cfg.model.hidden_size,
        cfg.model.num_attention_heads,
        cfg.model.intermediate_size,
        cfg.model.vocab_size,
        trainer.args.device,
        state.num_processes,
        trainer.units_per_step,
    )
    fitted = fit_trainer_batch(
        trainer, lambda n: stack([trainer.train_dataset[i] for i in range(n)]), cfg.impl.fit_batch
    )
    batch_key = "train.per_device_train_batch_size"
    with advise_on_out_of_memory(batch_key, fitted.per_device, fitted.accumulation, "blocks"):
        trainer.train(resume_from_checkpoint=checkpoint)
        metrics = final_metrics(cfg, trainer, data) | precision.as_metrics() | fitted.as_metrics()
    return trainer, data, metrics


def final_metrics(cfg: PretrainConfig, trainer: MLMTrainer, data: PackedData) -> dict[str, Any]:
    """Validation loss (also at BERT's masking), cloze accuracy vs frequency, attention vs uniform."""
    state, history = trainer.state, trainer.state.log_history
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
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    metrics |= {
        "step": state.global_step,
        "unigram_entropy": data.stats["unigram_entropy"],
        "parameters": count_parameters(trainer.model),
        "tokens_seen": state.global_step * trainer.units_per_step,
        "tokens_per_s": sorted(rates)[len(rates) // 2] if rates else math.nan,
        "processes": trainer.args.world_size,
        "stop_reason": stop_reason(trainer),
    }
    trainer.log({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def stop_reason(trainer: MLMTrainer) -> str:
    if trainer.state.global_step >= trainer.state.max_steps:
        return "max_steps"
    budget = next((c for c in trainer.callback_handler.callbacks if c.__class__.__name__ == "TimeBudget"), None)
    if budget is not None and budget.state()["attributes"]["spent_seconds"] > 60 * budget.minutes:
        return f"time budget train.max_train_minutes={budget.minutes:g}"
    return "early stop: validation loss stopped improving"


def finish(metrics: dict[str, Any]) -> None:
    finish_run({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
