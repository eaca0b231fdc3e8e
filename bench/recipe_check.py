"""The CPU recipe at fixed step counts, over several seeds, against the figures recorded for it.

    python -m bench.recipe_check --pretrain-steps 1000 --siamese-steps 2000 --seeds 0 1 2
    python -m bench.recipe_check --recipe debug --pretrain-steps 10 --siamese-steps 10 --seeds 0 1 --limit 200 \
        --figures /tmp/debug-figures.json --record

Each seed is one `python -m pipeline --no-app` (pretraining → fine-tuning → evaluation) of the recipe's configs
(`configs/{pretrain,siamese}/<recipe>.yaml`) with both stages' `train.seed` set to it, their step counts fixed and
their time caps off (so a slow or busy machine trains as far as a fast one), one torch thread, in its own folder
under `--out`; `--jobs 2` runs two seeds side by side (the pretraining cache is built once and shared). The figures: MNLI dev matched / mismatched accuracy, STS-B test Spearman, retrieval MRR@10 (MNLI dev
matched, the widest embedding), and the NLI head's validation loss and accuracy of the shipped checkpoint. Printed
as mean and spread (sample standard deviation over the seeds) beside the recorded ones; a figure whose mean is worse
than the recorded mean by more than `--tolerance` × the recorded spread is flagged, and the command exits with
status 1. `--record` writes this run's figures, command, machine and date to `--figures` instead of comparing.

A candidate recipe is measured the same way: config overrides after the options go to every seed's pipeline
(`python -m bench.recipe_check --seeds 0 1 2 siamese.train.learning_rate=3e-4`), and `--pretrained DIR` starts
each seed from the finished pretraining of an earlier check in DIR (DIR/seed-N/pretrain-*, hard-linked), so a
fine-tuning candidate costs fine-tuning and evaluation only. Choose between candidates on the validation figures;
the reported sets are for reporting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import machine
from pipeline import SECTIONS
from stagekit.config import REPO_ROOT

FIGURES = REPO_ROOT / "bench" / "recipe_figures.json"
# figure → whether higher is better; accuracies and Spearman ×100, as the docs quote them
MEASURES = {
    "MNLI dev matched %": True,
    "MNLI dev mismatched %": True,
    "STS-B test ×100": True,
    "retrieval MRR@10": True,
    "validation loss": False,
    "validation accuracy %": True,
}


def pipeline_command(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    """One seed's `python -m pipeline` argv: the recipe at fixed steps, time caps off, one thread, no W&B."""
    stage_keys = [f"train.seed={seed}", "train.max_train_minutes=null", "impl.num_threads=1", "wandb.mode=disabled"]
    command = [
        sys.executable, "-m", "pipeline", "--no-app", "--output-dir", str(out),
        "--pretrain-config", str(REPO_ROOT / "configs" / "pretrain" / f"{args.recipe}.yaml"),
        "--siamese-config", str(REPO_ROOT / "configs" / "siamese" / f"{args.recipe}.yaml"),
        f"pretrain.train.max_steps={args.pretrain_steps}", f"siamese.train.max_steps={args.siamese_steps}",
        *(f"{stage}.{k}" for stage in ("pretrain", "siamese") for k in stage_keys),
        "eval.baseline=null", "eval.base_stsb=false", *args.overrides,
    ]  # fmt: skip
    if args.limit:
        command.append(f"eval.limit={args.limit}")
    return command


def shown(arg: str) -> str:
    """A command-line word as the record may show it: an absolute path inside the checkout relative to it, any other
    absolute path by its last part (`…/runs`), so the recorded command names no folder of this machine."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else f"…/{path.name}"


def figures_of(model_dir: Path) -> dict[str, float]:
    """The measures of one finished seed, from its model folder's report.json and metrics.json."""
    report = json.loads((model_dir / "report.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    widths = report["retrieval"]["by_width"]
    return {
        "MNLI dev matched %": 100 * report["mnli_validation_matched"]["accuracy"],
        "MNLI dev mismatched %": 100 * report["mnli_validation_mismatched"]["accuracy"],
        "STS-B test ×100": 100 * report["stsb_test"]["spearman"],
        "retrieval MRR@10": widths[max(widths, key=int)]["mrr@10"],
        "validation loss": metrics.get("eval_validation_loss", float("nan")),
        "validation accuracy %": 100 * metrics.get("eval_validation_accuracy", float("nan")),
    }


def summary(values: list[float]) -> dict[str, float | list[float]]:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "values": values}


def reuse_pretraining(pretrained: Path, seed: int, out: Path) -> None:
    """Hard-link seed `seed`'s finished pretraining folder of an earlier check into `out`; the pipeline then leaves
    that stage as it is (it is finished at the same settings) and fine-tunes from it.

    Raises SystemExit when `pretrained` holds no finished pretraining for that seed."""
    found = [
        d for d in (pretrained / f"seed-{seed}").glob("pretrain-*") if (d / "model" / "model.safetensors").is_file()
    ]
    if len(found) != 1:
        sys.exit(f"{pretrained / f'seed-{seed}'}: no finished pretraining (pretrain-*/model) to start seed {seed} from")
    shutil.copytree(found[0], out / found[0].name, copy_function=os.link)


def run_seed(args: argparse.Namespace, seed: int) -> tuple[dict[str, float], float]:
    """Train and evaluate one seed in `--out`/seed-N (its log beside it); its figures and wall-clock seconds."""
    out = args.out / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    if args.pretrained:
        reuse_pretraining(args.pretrained, seed, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    with (out / "pipeline.log").open("w", encoding="utf-8") as log:
        done = subprocess.run(pipeline_command(args, seed, out), env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
    if done.returncode != 0:
        tail = (out / "pipeline.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        sys.exit(f"seed {seed}: the pipeline failed (log: {out / 'pipeline.log'}):\n{tail}")
    model_dir = next(out.glob("*/model/report.json")).parent
    return figures_of(model_dir), time.perf_counter() - started


def compare(now: dict[str, dict], recorded: dict[str, dict], tolerance: float) -> tuple[list[str], list[str]]:
    """Table rows (markdown) and the names of the figures that dropped beyond tolerance × the recorded spread."""
    rows, dropped = [], []
    for name, higher in MEASURES.items():
        mean, spread = now[name]["mean"], now[name]["spread"]
        old = recorded.get(name)
        if old is None:
            rows.append(f"| {name} | {mean:.3f} ± {spread:.3f} | – | – | |")
            continue
        change = mean - old["mean"]
        worse = -change if higher else change
        flag = worse > tolerance * old["spread"]
        if flag:
            dropped.append(name)
        rows.append(f"| {name} | {mean:.3f} ± {spread:.3f} | {old['mean']:.3f} ± {old['spread']:.3f} | "
                    f"{change:+.3f} | {'**worse than the spread**' if flag else 'ok'} |")  # fmt: skip
    return rows, dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s [options] [STAGE.KEY=VALUE ...] (a candidate's overrides)"
    )
    parser.add_argument(
        "--recipe", default="cpu-small", help="configs/{pretrain,siamese}/<recipe>.yaml (debug: seconds)"
    )
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--siamese-steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run side by side, one thread each (2 on 2 cores)")
    parser.add_argument("--limit", type=int, help="evaluate on the first N pairs of each set (dry runs); default all")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "recipe-check", help="one folder per seed")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="the recorded figures (JSON)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="flag a drop beyond this many recorded spreads")
    parser.add_argument("--record", action="store_true", help="write this run's figures to --figures")
    parser.add_argument(
        "--pretrained", type=Path, help="start each seed from the finished pretraining in DIR/seed-N (fine-tuning only)"
    )
    words = sys.argv[1:] if argv is None else argv
    # KEY=VALUE (or STAGE.KEY) words are the candidate's overrides wherever they stand, after --seeds 0 1 2 included
    overrides = [w for w in words if not w.startswith("-") and ("=" in w or w.split(".")[0] in SECTIONS)]
    args = parser.parse_args([w for w in words if w not in overrides])
    args.overrides = overrides
    if bad := [o for o in args.overrides if "=" not in o or o.split(".")[0] not in SECTIONS]:
        parser.error(f"{bad[0]}: an override is STAGE.KEY=VALUE with STAGE pretrain, siamese or eval")
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds needs at least two different seeds (the spread is taken over them)")
    if any(list(args.out.glob(f"seed-{s}/*")) for s in args.seeds):
        parser.error(f"{args.out} already holds runs of these seeds: give another --out or remove them")
    command = "python -m bench.recipe_check " + " ".join(shown(a) for a in words)

    per_seed, seconds = [], []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each seed is its own process; threads only wait
        for seed, (figures, took) in zip(args.seeds, pool.map(lambda s: run_seed(args, s), args.seeds), strict=True):
            per_seed.append(figures)
            seconds.append(took)
            print(f"seed {seed} ({took / 60:.1f} min): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    now = {name: summary([f[name] for f in per_seed]) for name in MEASURES}
    record = {
        "recipe": args.recipe,
        "pretrain_steps": args.pretrain_steps,
        "siamese_steps": args.siamese_steps,
        "seeds": args.seeds,
        "limit": args.limit,
        "overrides": args.overrides,
        "command": command,
        "machine": f"{machine()}; each seed on one torch thread, {args.jobs} side by side",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "jobs": args.jobs,
        "minutes_per_seed": round(statistics.fmean(seconds) / 60, 1),
        "figures": now,
    }
    print(f"{record['machine']}; {record['minutes_per_seed']} min per seed")
    if args.record:
        args.figures.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"recorded in {args.figures}")
        return 0
    if not args.figures.is_file():
        sys.exit(f"{args.figures}: no recorded figures to compare with; run with --record first")
    recorded = json.loads(args.figures.read_text(encoding="utf-8"))
    same = ("recipe", "pretrain_steps", "siamese_steps", "limit")
    if any(recorded.get(k) != record[k] for k in same):
        sys.exit(f"{args.figures} holds {', '.join(f'{k}={recorded.get(k)}' for k in same)}: run the same recipe, "
                 "step counts and limit, or record anew")  # fmt: skip
    rows, dropped = compare(now, recorded["figures"], args.tolerance)
    print(f"recorded: {recorded['command']} on {recorded['machine']}, {recorded['date']}")
    print("| figure | now (mean ± spread) | recorded | change | |\n|---|---|---|---|---|\n" + "\n".join(rows))
    if dropped:
        print(f"worse than the recorded spread: {', '.join(dropped)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
