"""The MLM training loop (nanoGPT-style, no framework): batches by step, log, evaluate, checkpoint, stop.

Data order is a pure function of (seed, step): one permutation of the blocks per epoch from a seeded
generator. With the RNG states saved in each checkpoint, `--resume` continues exactly where the run
stopped, and on CPU the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from common.config import to_dict
from common.errors import ConfigError, DataError, UserError
from common.tracking import start_tracking
from pretrain.blocks import PackedData, TokenBlocks
from pretrain.checkpoint import latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.engine import MLMEngine, build_training
from pretrain.model import count_parameters

__all__ = ["BlockSampler", "TrainingDiverged", "build_training", "train"]

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN or infinite."""


class BlockSampler:
    """Micro-batch `i` of the run: epoch i // per_epoch, slice of that epoch's seeded permutation."""

    def __init__(self, blocks: TokenBlocks, batch_size: int, seed: int) -> None:
        if len(blocks) < batch_size:
            raise DataError(
                f"only {len(blocks)} training blocks for train.per_device_train_batch_size={batch_size}; "
                "use more documents or a smaller batch"
            )
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.per_epoch = len(blocks) // batch_size  # the last partial batch of each epoch is dropped
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def micro_batch(self, index: int) -> torch.Tensor:
        epoch, offset = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.blocks), generator=generator)
        return self.blocks[self._order[offset * self.batch_size : (offset + 1) * self.batch_size]]


@dataclass
class LoopState:
    step: int = 0
    best_val_loss: float = math.inf
    bad_evals: int = 0  # evaluations since the validation loss last improved (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # optimizer steps only (for tokens/s)
    elapsed_seconds: float = 0.0  # the whole loop, evaluation and checkpoints included (for the time budget)
    stop_reason: str = ""


def total_steps(cfg: PretrainConfig, sampler: BlockSampler) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.num_train_epochs * sampler.per_epoch / cfg.train.gradient_accumulation_steps))


def _resume(cfg: PretrainConfig, engine: MLMEngine, data: PackedData, ckpt_root: Path) -> LoopState:
    path = latest_checkpoint(ckpt_root)
    if path is None:
        log.warning("--resume: no checkpoint under %s; starting from step 0", ckpt_root)
        return LoopState()
    state = read_state(path)
    if state["model"] != dataclasses.asdict(cfg.model):
        changed = [k for k, v in dataclasses.asdict(cfg.model).items() if state["model"].get(k) != v]
        raise ConfigError(f"config key 'model.{changed[0]}': differs from checkpoint {path}; cannot resume")
    if state["cache_key"] != data.stats["cache_key"]:
        raise ConfigError(f"config key 'data': the packed data differ from those of checkpoint {path}; cannot resume")
    state, rng = load_checkpoint(path, engine.model, engine.optimizer, engine.device)
    engine.schedule.load_state_dict(state["schedule"])
    engine.set_rng_state(rng)
    engine.step = state["loop"]["step"]
    log.info("resumed from %s (step %d, lr %.2e)", path, engine.step, engine.schedule.lr)
    return LoopState(**state["loop"])


def train(cfg: PretrainConfig, data: PackedData, resume: bool = False) -> tuple[MLMEngine, LoopState, dict[str, Any]]:
    """Train until max_steps (or early stop); returns the engine, the loop state and the final metrics."""
    train_cfg = cfg.train
    ckpt_root = cfg.run_dir / "checkpoints"
    engine = build_training(cfg, data.tokenizer, data.token_counts)
    sampler = BlockSampler(data.train, train_cfg.per_device_train_batch_size, train_cfg.seed)
    val_blocks = data.validation[
        : (train_cfg.max_eval_batches or len(data.validation)) * train_cfg.per_device_eval_batch_size
    ]
    val_batches = engine.fixed_masks(val_blocks, train_cfg.per_device_eval_batch_size, seed=train_cfg.seed + 1)
    loop = _resume(cfg, engine, data, ckpt_root) if resume else LoopState()
    steps = total_steps(cfg, sampler)
    accum = train_cfg.gradient_accumulation_steps
    tokens_per_step = train_cfg.per_device_train_batch_size * accum * cfg.data.block_size
    entropy = data.stats["unigram_entropy"]
    log.info(
        "model: %.2fM parameters (L%d/H%d/A%d/FFN%d, vocab %d) on %s; %d tokens per step; %d steps (%.2f epochs)",
        count_parameters(engine.model) / 1e6,
        cfg.model.num_hidden_layers,
        cfg.model.hidden_size,
        cfg.model.num_attention_heads,
        cfg.model.intermediate_size,
        cfg.model.vocab_size,
        engine.device,
        tokens_per_step,
        steps,
        steps * accum / sampler.per_epoch,
    )
    tracker = start_tracking(cfg.wandb, cfg.run_dir, to_dict(cfg), job_type="pretrain")
    tracker.summary({"parameters": count_parameters(engine.model), "unigram_entropy": entropy, **data.stats})

    def checkpoint_state() -> dict[str, Any]:
        return {
            "loop": dataclasses.asdict(loop),
            "schedule": engine.schedule.state_dict(),
            "model": dataclasses.asdict(cfg.model),
            "cache_key": data.stats["cache_key"],
        }

    def guard() -> None:
        # Checked at log/eval/save points only, so a GPU never waits on a per-step host sync.
        if not torch.isfinite(window_sum):
            last = latest_checkpoint(ckpt_root)
            raise TrainingDiverged(
                f"training diverged: loss or gradient norm became NaN/inf between steps {window_start + 1} and "
                f"{loop.step}; the last good checkpoint is {last or '(none saved yet)'} — lower train.learning_rate "
                "or raise train.warmup_steps"
            )

    window_sum, window_steps, window_start = torch.zeros((), device=engine.device), 0, loop.step
    stop = False
    bar = tqdm(total=steps, initial=loop.step, desc="training", unit="step", dynamic_ncols=True)
    clock = loop_start = time.perf_counter()
    elapsed_before = loop.elapsed_seconds
    try:
        while loop.step < steps and not stop:
            micro = [sampler.micro_batch(loop.step * accum + i) for i in range(accum)]
            loss, grad_norm = engine.train_step(micro)
            loop.step += 1
            window_sum += loss + 0.0 * grad_norm  # a NaN/inf gradient norm poisons the sum too
            window_steps += 1
            bar.update(1)
            if loop.step % train_cfg.logging_steps == 0 or loop.step == steps:
                guard()
                elapsed = time.perf_counter() - clock
                loop.train_seconds += elapsed
                record = {
                    "step": loop.step,
                    "train_loss": float(window_sum) / window_steps,
                    "lr": engine.schedule.lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": window_steps * tokens_per_step / max(elapsed, 1e-9),
                }
                loop.history.append(record)
                tracker.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=loop.step)
                bar.set_postfix(
                    loss=f"{record['train_loss']:.3f}", lr=f"{record['lr']:.1e}", tok_s=f"{record['tokens_per_s']:.0f}"
                )
                window_sum, window_steps, window_start = torch.zeros((), device=engine.device), 0, loop.step
                clock = time.perf_counter()
            loop.elapsed_seconds = elapsed_before + time.perf_counter() - loop_start
            if train_cfg.max_train_minutes and loop.elapsed_seconds > 60 * train_cfg.max_train_minutes:
                loop.stop_reason = f"time budget train.max_train_minutes={train_cfg.max_train_minutes}"
                stop = True
            if loop.step % train_cfg.eval_steps == 0:
                guard()
                stop = _evaluate(engine, val_batches, loop, cfg, tracker, entropy) or stop
                clock = time.perf_counter()
            if loop.step % train_cfg.save_steps == 0 or stop or loop.step == steps:
                guard()
                save_checkpoint(
                    ckpt_root,
                    loop.step,
                    engine.model,
                    engine.optimizer,
                    engine.rng_state(),
                    checkpoint_state(),
                    train_cfg.save_total_limit,
                )
                clock = time.perf_counter()
    except torch.OutOfMemoryError:
        raise UserError(
            f"CUDA out of memory at train.per_device_train_batch_size={train_cfg.per_device_train_batch_size}: lower it "
            f"and raise train.gradient_accumulation_steps (now {accum}) to keep {tokens_per_step} tokens per step"
        ) from None
    finally:
        bar.close()
    final = engine.evaluate(val_batches)  # report only: never moves the schedule, so resume stays exact
    final.update(
        step=loop.step,
        best_val_loss=min(loop.best_val_loss, final["val_loss"]),
        unigram_entropy=entropy,
        parameters=count_parameters(engine.model),
        tokens_seen=loop.step * tokens_per_step,
        train_seconds=loop.train_seconds,
        tokens_per_s=loop.step * tokens_per_step / max(loop.train_seconds, 1e-9),
        stop_reason=loop.stop_reason or "max_steps",
    )
    if loop.stop_reason:
        log.info("stopped at step %d: %s", loop.step, loop.stop_reason)
    tracker.summary({f"final/{k}": v for k, v in final.items()})
    tracker.finish()
    return engine, loop, final


def _evaluate(engine: MLMEngine, val_batches, loop: LoopState, cfg: PretrainConfig, tracker, entropy: float) -> bool:
    """Evaluate, step the plateau schedule, record; return True when early stopping says stop."""
    metrics = engine.evaluate(val_batches)
    engine.schedule.after_eval(loop.step, metrics["val_loss"])
    if metrics["val_loss"] < loop.best_val_loss * (1 - cfg.train.plateau_threshold):
        loop.best_val_loss, loop.bad_evals = metrics["val_loss"], 0
    else:
        loop.bad_evals += 1
    loop.history.append({"step": loop.step, **metrics, "lr": engine.schedule.lr})
    tracker.log({f"val/{k[4:]}": v for k, v in metrics.items()}, step=loop.step)
    tqdm.write(
        f"step {loop.step}: val loss {metrics['val_loss']:.3f} (unigram entropy {entropy:.3f}), "
        f"perplexity {metrics['val_perplexity']:.1f}, masked accuracy {metrics['val_accuracy']:.3f}, lr {engine.schedule.lr:.2e}"
    )
    patience = cfg.train.early_stopping_patience
    if patience is not None and loop.bad_evals >= patience:
        loop.stop_reason = f"early stop: no validation improvement in {patience} evaluations"
        return True
    return False
