"""`python -m pipeline`: pretrain → fine-tune on MNLI → evaluate → start the app on the new model.

Both stage configs are loaded and checked before any work starts. A stage whose final model already
exists is skipped (pass --retrain to run it again); a stage interrupted mid-run continues from its last
checkpoint. The siamese stage always fine-tunes the model the pretraining stage just wrote.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import run_cli
from common.config import REPO_ROOT, load_config
from pretrain.config import PretrainConfig
from siamese.config import SiameseConfig

log = logging.getLogger("pipeline")
CONFIGS = REPO_ROOT / "configs"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-config", default=str(CONFIGS / "pretrain" / "cpu-small.yaml"))
    parser.add_argument("--siamese-config", default=str(CONFIGS / "siamese" / "cpu-small.yaml"))
    parser.add_argument("--output-dir", help="put both runs under this folder instead of the configs' output_dir")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="run a stage even if its final model exists (from its checkpoints, if any; delete outputs/<run_name> to start over)",
    )
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N pairs of each set only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the all-MiniLM-L6-v2 comparison")
    parser.add_argument("--no-app", action="store_true", help="stop after evaluation instead of starting the app")
    parser.add_argument("--port", type=int, default=8501, help="port for the Streamlit app")
    return parser.parse_args(argv)


def has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("checkpoint-*"))


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    out = [f"output_dir={args.output_dir}"] if args.output_dir else []
    pretrain_cfg = load_config(PretrainConfig, args.pretrain_config, out)
    pretrained = pretrain_cfg.run_dir / "model"
    # The siamese stage must start from this pretraining run, whatever its config names.
    siamese_cfg = load_config(SiameseConfig, args.siamese_config, [*out, f"model.base_model={pretrained}"])
    siamese_model = siamese_cfg.run_dir / "model"

    from pretrain.__main__ import main as pretrain_main
    from siamese.evaluate import main as evaluate_main
    from siamese.train import main as siamese_main

    if (pretrained / "config.json").is_file() and not args.retrain:
        log.info("1/3 pretraining: %s exists, skipped (--retrain to run it again)", pretrained)
    else:
        log.info("1/3 pretraining → %s", pretrained)
        resume = ["--resume"] if has_checkpoints(pretrain_cfg.run_dir) else []
        pretrain_main(["--config", args.pretrain_config, *resume, *out])

    if (siamese_model / "modules.json").is_file() and not args.retrain:
        log.info("2/3 siamese fine-tuning: %s exists, skipped (--retrain to run it again)", siamese_model)
    else:
        log.info("2/3 siamese fine-tuning of %s → %s", pretrained, siamese_model)
        resume = ["--resume"] if has_checkpoints(siamese_cfg.run_dir) else []
        siamese_main(["--config", args.siamese_config, *resume, *out, f"model.base_model={pretrained}"])

    log.info("3/3 evaluation of %s", siamese_model)
    evaluate = ["--model", str(siamese_model)]
    evaluate += [] if args.no_baseline else ["--baseline"]
    evaluate += ["--limit", str(args.eval_limit)] if args.eval_limit else []
    evaluate_main(evaluate)
    print(f"report: {siamese_model / 'report.md'}")

    if not args.no_app:
        print(f"starting the app on {siamese_model}: open http://localhost:{args.port} (Ctrl+C stops it)", flush=True)
        app = REPO_ROOT / "app" / "streamlit_app.py"
        command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)]
        command += [
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--",
            "--model",
            str(siamese_model),
        ]
        subprocess.run(command, check=False)
    return siamese_model


if __name__ == "__main__":
    sys.exit(run_cli(main))
