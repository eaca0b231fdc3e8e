"""`python -m pretrain --config configs/pretrain/cpu-small.yaml [--resume] [key=value ...]`

Corpus → tokenizer → packed blocks (cached) → MLM training → outputs/<run_name>/model/. The same command
runs on several processes: `torchrun --nproc_per_node=N -m pretrain --config ...`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

from common.cli import config_parser, parse_config, run_cli
from common.config import REPO_ROOT, save_config
from pretrain.config import PretrainConfig

log = logging.getLogger("pretrain")

DEFAULT_CONFIG = REPO_ROOT / "configs" / "pretrain" / "cpu-small.yaml"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = config_parser(
        "python -m pretrain", "Pretrain a small BERT with masked language modelling.", DEFAULT_CONFIG
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    cfg, args = parse_config(parser, PretrainConfig, argv)  # fails in one line before any work

    from common.device import resolve_device
    from common.runlock import claim_run_folder
    from common.training import setup_process
    from pretrain.export import export_model
    from pretrain.plots import plot_curves
    from pretrain.train import finish, run

    start = time.perf_counter()
    state = setup_process(resolve_device(cfg.impl.device), cfg.impl.num_threads, cfg.train.seed)
    # Writable and not in use by another run, or refused before any data are read; held until the model is out.
    with claim_run_folder(cfg.run_dir, is_main=state.is_main_process, device=state.device):
        trainer, data, metrics = run(cfg, resume=args.resume)
        metrics |= {k: v for k, v in data.stats.items() if k != "unigram_entropy"}
        metrics["wall_seconds"] = time.perf_counter() - start
        if not trainer.is_world_process_zero():
            return metrics
        save_config(cfg, cfg.run_dir / "resolved_config.yaml")
        model_dir = cfg.run_dir / "model"
        export_model(model_dir, trainer.model, data.tokenizer, cfg, metrics)
        (cfg.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot = plot_curves(trainer.state.log_history, cfg.run_dir / "loss_lr.png", metrics["unigram_entropy"])
        finish(metrics)
    print(summary(metrics, model_dir, plot))
    return metrics


def summary(metrics: dict, model_dir, plot) -> str:
    return (
        f"done in {metrics['wall_seconds'] / 60:.1f} min, {metrics['step']} steps ({metrics['stop_reason']}): "
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


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
