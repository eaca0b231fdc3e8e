"""`python -m pretrain --config configs/pretrain/cpu-small.yaml [--resume] [key=value ...]`

Corpus → tokenizer → packed blocks (cached) → MLM training → outputs/<run_name>/model/.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

from common.cli import config_parser, run_cli
from common.config import REPO_ROOT, load_config, save_config
from pretrain.blocks import prepare_data
from pretrain.checkpoint import export_model
from pretrain.config import PretrainConfig
from pretrain.plots import plot_curves
from pretrain.train import train

log = logging.getLogger("pretrain")

DEFAULT_CONFIG = REPO_ROOT / "configs" / "pretrain" / "cpu-small.yaml"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = config_parser(
        "python -m pretrain", "Pretrain a small BERT with masked language modelling.", DEFAULT_CONFIG
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, list(args.overrides))  # fails in one line before any work
    start = time.perf_counter()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir / "resolved_config.yaml")
    log.info("run %s → %s", cfg.run_name, cfg.run_dir)

    data = prepare_data(cfg)
    engine, loop, metrics = train(cfg, data, resume=args.resume)
    metrics.update(
        {k: v for k, v in data.stats.items() if k != "unigram_entropy"}, wall_seconds=time.perf_counter() - start
    )
    engine.model.eval()
    export_model(cfg.run_dir / "model", engine.model, data.tokenizer, cfg, metrics)
    (cfg.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot = plot_curves(loop.history, cfg.run_dir / "loss_lr.png", metrics["unigram_entropy"])
    print(
        f"done in {metrics['wall_seconds'] / 60:.1f} min: validation loss {metrics['val_loss']:.3f} nats "
        f"(perplexity {metrics['val_perplexity']:.1f}, masked accuracy {metrics['val_accuracy']:.3f}) vs "
        f"unigram entropy {metrics['unigram_entropy']:.3f} nats\n"
        f"model: {cfg.run_dir / 'model'}\ncurves: {plot}\n"
        f'try: python -m pretrain.fill_mask --model {cfg.run_dir / "model"} "the movie was [MASK] ."'
    )
    return metrics


if __name__ == "__main__":
    sys.exit(run_cli(main))
