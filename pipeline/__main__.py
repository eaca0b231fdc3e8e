"""`python -m pipeline`: pretrain → fine-tune on MNLI → evaluate → start the app on the new model.

Both stage configs are loaded and checked before any work starts. A stage whose final model already
exists is skipped (--retrain runs it again from its checkpoints); a stage with checkpoints continues
from the newest one (`--resume`), so a killed pipeline picks up where it stopped. The siamese stage
always fine-tunes the model the pretraining stage just wrote. `--nproc N` runs both training stages on
N processes with `torchrun --standalone` (one per GPU, or CPU processes with gloo). Started by a launcher
itself (`torchrun --nnodes=N … -m pipeline`, `accelerate launch … -m pipeline`: several machines), it runs
each stage in the launched processes, and global rank 0 alone evaluates (docs/several-machines.md).

Before any stage starts, the pipeline claims both run folders (writable, and no other pipeline in them:
stagekit/runlock.py) and checks that a stage it will resume was trained on `--nproc` processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pretrain.config import PretrainConfig
from siamese.config import SiameseConfig
from stagekit import elastic
from stagekit.checkpoints import check_world_size, checkpoint_dirs, newest_checkpoint
from stagekit.cli import run_cli
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import UserError
from stagekit.runlock import PIPELINE_LOCK, claim_run_folder
from stagekit.stage import starting_point

log = logging.getLogger("pipeline")
CONFIGS = REPO_ROOT / "configs"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pretrain-config",
        default=str(CONFIGS / "pretrain" / "cpu-small.yaml"),
        help="YAML config of the pretraining stage (default: configs/pretrain/cpu-small.yaml; keys: python -m pretrain --help)",
    )
    parser.add_argument(
        "--siamese-config",
        default=str(CONFIGS / "siamese" / "cpu-small.yaml"),
        help="YAML config of the fine-tuning stage (default: configs/siamese/cpu-small.yaml; keys: python -m siamese --help)",
    )
    parser.add_argument("--output-dir", help="put both runs under this folder instead of the configs' output_dir")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="run a stage even if its final model exists (from its checkpoints, if any; delete outputs/<run_name> to start over)",
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="processes per training stage (torchrun --standalone); default 1"
    )
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N pairs of each set only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the all-MiniLM-L6-v2 comparison")
    parser.add_argument("--no-app", action="store_true", help="stop after evaluation instead of starting the app")
    parser.add_argument("--port", type=int, default=8501, help="port for the Streamlit app")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        raise UserError("--nproc must be >= 1")
    return args


def stage_argv(config: str, run_dir: Path, extra: list[str]) -> list[str]:
    """The stage's command line; `--resume` whenever the run folder already holds checkpoints or a model."""
    resume = ["--resume"] if checkpoint_dirs(run_dir / "checkpoints") or (run_dir / "model").is_dir() else []
    return ["--config", config, *resume, *extra]


def launch_stage(module: str, main: Callable[[list[str]], object], argv: list[str], nproc: int) -> None:
    """In this process for one process; under `torchrun --standalone` for several."""
    if nproc == 1:
        main(argv)
        return
    # gloo, which CPU processes use, can hang at shutdown on hosts whose default interface is not loopback.
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    log.info("running %s on %d processes: %s", module, nproc, " ".join([*command, "-m", module, *argv]))
    done = subprocess.run([*command, "-m", module, *argv], env=env, check=False)
    if done.returncode != 0:
        raise UserError(f"python -m {module} on {nproc} processes failed (exit status {done.returncode}); see above")


def where_it_starts(cfg: PretrainConfig | SiameseConfig) -> str:
    """The stage's own "continuing from <checkpoint> (step N of M)" line, said before the stage starts."""
    return starting_point(newest_checkpoint(cfg.run_dir / "checkpoints"), cfg.train.max_steps or 0)


def check_resumed_world_sizes(run_dirs: list[Path], nproc: int) -> None:
    """A stage that will resume must resume on the processes it was trained on: refused here, before the first
    stage starts, not when the run reaches that stage (e.g. re-running without `--nproc 2` after a killed
    two-process run)."""
    for run_dir in run_dirs:
        checkpoint = newest_checkpoint(run_dir / "checkpoints")
        if checkpoint is not None:
            check_world_size(checkpoint, nproc, remedy="rerun the pipeline with --nproc {n}")


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    out = [f"output_dir={args.output_dir}"] if args.output_dir else []
    pretrain_cfg = load_config(PretrainConfig, args.pretrain_config, out)
    pretrained = pretrain_cfg.run_dir / "model"
    # The siamese stage must start from this pretraining run, whatever its config names.
    base = [f"model.base_model={pretrained}"]
    siamese_cfg = load_config(SiameseConfig, args.siamese_config, [*out, *base])
    siamese_model = siamese_cfg.run_dir / "model"
    pretrain_done = (pretrained / "config.json").is_file() and not args.retrain
    siamese_done = (siamese_model / "modules.json").is_file() and not args.retrain

    # Each stage locks its folder while it trains; the pipeline's own lock (another file, so the stages it
    # starts are not refused) keeps a second pipeline out of both folders from here to the report.
    main_process, device, nproc = elastic.join_launched_group(
        pretrain_cfg.impl.device, pretrain_cfg.train.seed, args.nproc
    )
    remedy = "set --output-dir (or output_dir in the configs) to a writable folder"
    claim = {"is_main": main_process, "device": device, "lock": PIPELINE_LOCK, "what": "pipeline", "remedy": remedy}
    with claim_run_folder(pretrain_cfg.run_dir, **claim), claim_run_folder(siamese_cfg.run_dir, **claim):
        stages = [(pretrain_cfg.run_dir, pretrain_done), (siamese_cfg.run_dir, siamese_done)]
        check_resumed_world_sizes([run_dir for run_dir, done in stages if not done], nproc)

        from pretrain.train import main as pretrain_main
        from siamese.evaluate import main as evaluate_main
        from siamese.train import main as siamese_main

        if pretrain_done:
            log.info("1/3 pretraining: %s exists, skipped (--retrain to run it again)", pretrained)
        else:
            log.info(
                "1/3 pretraining → %s (%s)",
                pretrained,
                where_it_starts(pretrain_cfg),
            )
            argv_ = stage_argv(args.pretrain_config, pretrain_cfg.run_dir, out)
            launch_stage("pretrain", pretrain_main, argv_, 1 if elastic.launched() else nproc)

        if siamese_done:
            log.info("2/3 siamese fine-tuning: %s exists, skipped (--retrain to run it again)", siamese_model)
        else:
            log.info(
                "2/3 siamese fine-tuning of %s → %s (%s)",
                pretrained,
                siamese_model,
                where_it_starts(siamese_cfg),
            )
            argv_ = stage_argv(args.siamese_config, siamese_cfg.run_dir, [*out, *base])
            launch_stage("siamese", siamese_main, argv_, 1 if elastic.launched() else nproc)
        if not main_process:
            return siamese_model  # global rank 0 evaluates and starts the app

        log.info("3/3 evaluation of %s", siamese_model)
        evaluate = ["--model", str(siamese_model)]
        evaluate += [] if args.no_baseline else ["--baseline"]
        evaluate += ["--limit", str(args.eval_limit)] if args.eval_limit else []
        evaluate_main(evaluate)
        print(f"report: {siamese_model / 'report.md'}")

    if not args.no_app:  # the app only reads the model: another pipeline may run meanwhile
        from app.launch import launch

        launch(siamese_model, port=args.port)
    return siamese_model


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
