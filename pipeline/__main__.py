"""`python -m pipeline [pretrain.KEY=VALUE ...] [siamese.KEY=VALUE ...] [eval.KEY=VALUE ...]`: pretrain → fine-tune
on MNLI → evaluate → the app. Each stage runs through `stagekit.stage.run_stage` with resume on (a finished stage is
left as it is, an interrupted one continues); `--nproc N` runs it all under `torchrun --standalone`, and under a
launcher of its own (docs/several-machines.md) global rank 0 evaluates.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import SECTIONS
from pretrain.config import PretrainConfig
from pretrain.train import PretrainStage
from siamese.config import EvalConfig, SiameseConfig
from siamese.evaluation.evaluate import current_report, evaluate
from siamese.train import SiameseStage
from stagekit import distributed
from stagekit.cli import doc_summary, run_cli
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import ConfigError, UserError
from stagekit.folders import require_writable
from stagekit.stage import run_stage
from stagekit.wandb_tracking import pipeline_group

log = logging.getLogger("pipeline")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=doc_summary(__doc__))
    for stage in ("pretrain", "siamese"):
        parser.add_argument(f"--{stage}-config", default=str(REPO_ROOT / "configs" / stage / "cpu-small.yaml"),
                            help=f"the {stage} stage's YAML config (keys: python -m {stage} --help)")  # fmt: skip
    parser.add_argument("--output-dir", help="put both runs under this folder instead of the configs' output_dir")
    parser.add_argument("--nproc", type=int, default=1, help="processes to train on (torchrun --standalone)")
    parser.add_argument("--no-app", action="store_true", help="stop after evaluation instead of starting the app")
    parser.add_argument("--port", type=int, default=8501, help="port for the Streamlit app")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="e.g. pretrain.train.max_steps=500 "
                        "eval.limit=200 (eval keys: python -m siamese.evaluation --help)")  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    if args.nproc < 1 or (args.nproc > 1 and distributed.launched()):
        raise UserError("--nproc must be >= 1, and is left out under a launcher (it sets the processes)")
    return args


def build_configs(args: argparse.Namespace) -> tuple[PretrainConfig, SiameseConfig, EvalConfig]:
    """The three configs from the files and the `section.key=value` overrides (one-line ConfigError)."""
    overrides: dict[str, list[str]] = {section: [] for section in SECTIONS}
    for item in args.overrides:
        section, dot, rest = item.partition(".")
        if section not in SECTIONS or not dot or rest.startswith("model.base_model="):
            raise ConfigError(f"override '{item}': use pretrain.KEY=, siamese.KEY= (the base model is the "
                              "pretraining output) or eval.KEY=")  # fmt: skip
        overrides[section].append(rest)
    out = [f"output_dir={args.output_dir}"] if args.output_dir else []
    pretrain = load_config(PretrainConfig, args.pretrain_config, [*overrides["pretrain"], *out])
    base = f"model.base_model={pretrain.run_dir / 'model'}"
    siamese = load_config(SiameseConfig, args.siamese_config, [*overrides["siamese"], *out, base])
    return pretrain, siamese, load_config(EvalConfig, None, overrides["eval"])


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    pretrain_cfg, siamese_cfg, eval_cfg = build_configs(args)
    for run_dir in (pretrain_cfg.run_dir, siamese_cfg.run_dir):  # now, not when the second stage starts
        require_writable(run_dir, "set --output-dir (or output_dir in the configs) to a writable folder")
    if group := pipeline_group([pretrain_cfg.wandb, siamese_cfg.wandb], pretrain_cfg.run_dir):
        log.info("W&B group %s: the pipeline's runs, evaluation included (kept on resume)", group)
    model_dir, is_main = siamese_cfg.run_dir / "model", True
    if args.nproc > 1:  # each launched process runs the stages itself (--nproc left out: torchrun would read it)
        inner = [w for i, w in enumerate(argv) if not w.startswith("--nproc") and argv[i - 1 : i] != ["--nproc"]]
        distributed.run_under_torchrun("pipeline", [*inner, "--no-app"], args.nproc)
    else:
        log.info("1/3 pretraining → %s", pretrain_cfg.run_dir / "model")
        run_stage(PretrainStage(pretrain_cfg), resume=True)
        log.info("2/3 siamese fine-tuning → %s", model_dir)
        is_main = run_stage(SiameseStage(siamese_cfg), resume=True).is_main
        if is_main and (report := current_report(model_dir, eval_cfg)) is not None:  # unchanged: minutes saved
            log.info("3/3 evaluation: %s was made from this model with these settings; nothing to evaluate", report)
        elif is_main:  # global rank 0 alone evaluates and starts the app
            log.info("3/3 evaluation of %s", model_dir)
            evaluate(model_dir, eval_cfg)
    if is_main and not args.no_app:
        from app.launch import launch  # streamlit loads only when the app starts

        launch(model_dir, port=args.port)
    return model_dir


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
