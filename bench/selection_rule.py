"""Which checkpoint each selection rule keeps, measured against MNLI dev: every checkpoint of fine-tuning runs scored.

    python -m bench.selection_rule outputs/siamese-seed0 outputs/siamese-seed1 outputs/siamese-seed2 \
        --jobs 2 --out selection.json

Each run folder is a finished `python -m siamese` run with `data.validation_fraction` set whose checkpoints were all
kept (`train.save_total_limit` at least its number of saves). Every `checkpoints/checkpoint-N` is loaded by the one
inference loader (`siamese.inference.encoder.NLIEncoder.load`: the SentenceTransformer and the NLI head saved with it) and
scored by the evaluator training uses (`siamese.trainer.NLIAccuracyEvaluator`: accuracy and the head's mean
cross-entropy) on:
- SNLI dev, its first `--snli-pairs` labelled pairs: where the old rule chose (best accuracy);
- the pairs held out of the training file (`siamese.nli_data.held_out_pairs`, the first `data.eval_pairs` of the
  run's resolved config: the set training scored): the shipped rule (lowest loss) and its variant (best accuracy);
- MNLI dev matched and mismatched, all pairs (`--limit N`: the first N, for dry runs): the oracle, the checkpoint
  with the best mean of the two. It measures the rules and never chooses: a figure chosen on its own test set is
  not a figure.

Printed per run: step × score, with each rule's pick marked; then per rule, how many picks differ from the oracle's
and how many MNLI dev points (mean of matched and mismatched) its pick loses against the oracle's pick and against
the last checkpoint (mean and max over runs; negative: a gain). A tie goes to the earliest step, as the Trainer
keeps the first best. `--out FILE` writes it all as JSON, with the command, machine and date; such a file given in
place of a run folder adds its scored runs to the summary without scoring them again (runs scored as each finished
training). Each process scores with one torch thread; `--jobs N` scores N runs side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from bench.harness import machine
from siamese.config import SiameseConfig
from siamese.evaluation.evaluate import DATA, eval_source, local_hint
from siamese.inference.encoder import RESOLVED_CONFIG, NLIEncoder
from siamese.nli_data import VALIDATION_HINT, held_out_pairs, read_pairs
from siamese.trainer import NLIAccuracyEvaluator
from stagekit.cli import doc_summary, run_cli, setup_logging
from stagekit.config import load_config
from stagekit.errors import UserError
from stagekit.resume import STATE, checkpoint_dirs
from stagekit.sources import SourceConfig

log = logging.getLogger(__name__)

SNLI_DEV = "snli/validation.jsonl.gz"  # under ${BERT_DATA_DIR}: the old recipe's data.eval_sources
MNLI_DEV = {"mnli_matched": "mnli_validation_matched", "mnli_mismatched": "mnli_validation_mismatched"}
# rule → (the score it picks by, whether higher is better); "last" is the checkpoint training ends with
RULES = {
    "old: SNLI dev accuracy": ("snli_accuracy", True),
    "new: held-out loss": ("validation_loss", False),
    "variant: held-out accuracy": ("validation_accuracy", True),
    "last checkpoint": ("step", True),
}
MARKS = {"old: SNLI dev accuracy": "O", "new: held-out loss": "N", "variant: held-out accuracy": "V"}
ORACLE = "mnli_mean"  # mean of MNLI dev matched and mismatched accuracy
COLUMNS = {  # score → table heading, ×100 for accuracies
    "snli_accuracy": "SNLI acc",
    "validation_loss": "held-out loss",
    "validation_accuracy": "held-out acc",
    "mnli_matched_accuracy": "MNLI m",
    "mnli_mismatched_accuracy": "MNLI mm",
    "mnli_mean": "MNLI mean",
}


def run_config(run: Path) -> SiameseConfig:
    """The resolved config of a finished fine-tuning run; UserError (one line) when the folder is not one, or
    when it trained without held-out validation pairs."""
    path = run / "model" / RESOLVED_CONFIG
    if not path.is_file():
        raise UserError(f"{run}: no model/{RESOLVED_CONFIG}; give the folder of a finished `python -m siamese` run")
    cfg = load_config(SiameseConfig, path)
    if not cfg.data.validation_fraction:
        raise UserError(f"{run}: trained without data.validation_fraction, so it has no held-out pairs to score")
    return cfg


def kept_checkpoints(run: Path, cfg: SiameseConfig) -> list[Path]:
    """Every checkpoint of `run`, oldest first; UserError (one line) when training deleted some of its saves."""
    found = checkpoint_dirs(run / "checkpoints")
    if not found:
        raise UserError(f"{run}: no checkpoints/checkpoint-N folder")
    last = int(found[-1].name.rsplit("-", 1)[-1])
    saves = set(range(cfg.train.save_steps, last + 1, cfg.train.save_steps)) | {last}
    missing = sorted(saves - {int(p.name.rsplit("-", 1)[-1]) for p in found})
    if missing:
        raise UserError(
            f"{run}: the checkpoints of steps {', '.join(map(str, missing))} were deleted (train.save_total_limit="
            f"{cfg.train.save_total_limit}); train again with train.save_total_limit={len(saves)} or more to keep "
            "them all"
        )
    return found


def logged_validation(checkpoint: Path) -> dict[int, dict[str, float]]:
    """step → the held-out loss and accuracy training logged (the newest checkpoint's trainer_state.json)."""
    history = json.loads((checkpoint / STATE).read_text())["log_history"]
    return {
        h["step"]: {"validation_loss": h["eval_validation_loss"], "validation_accuracy": h["eval_validation_accuracy"]}
        for h in history
        if "eval_validation_loss" in h
    }


def score_checkpoint(checkpoint: Path, sets: dict[str, dict[str, list]]) -> dict[str, float]:
    """Accuracy and head loss of one checkpoint on each set (`<set>_accuracy`, `<set>_loss`), plus `mnli_mean`."""
    encoder = NLIEncoder.load(checkpoint, device="cpu")
    if encoder.head is None:
        raise UserError(f"{checkpoint}: no NLI head saved; only a loss with the softmax head can be scored")
    scores: dict[str, float] = {}
    for name, pairs in sets.items():
        metrics = NLIAccuracyEvaluator(pairs, encoder.head, name)(encoder.model)
        scores[f"{name}_accuracy"], scores[f"{name}_loss"] = metrics[f"{name}_accuracy"], metrics[f"{name}_loss"]
    scores[ORACLE] = (scores["mnli_matched_accuracy"] + scores["mnli_mismatched_accuracy"]) / 2
    return scores


def score_run(run: Path, shared: dict[str, dict[str, list]], threads: int) -> dict[str, Any]:
    """Every checkpoint of one run scored, the step each rule picks, and what training logged and kept."""
    torch.set_num_threads(threads)
    cfg = run_config(run)
    checkpoints = kept_checkpoints(run, cfg)
    sets = {"validation": held_out_pairs(cfg.data, cfg.data.eval_pairs)} | shared
    logged = logged_validation(checkpoints[-1])
    rows = []
    for checkpoint in checkpoints:
        started = time.perf_counter()
        step = int(checkpoint.name.rsplit("-", 1)[-1])
        row = {"step": step} | score_checkpoint(checkpoint, sets)
        if step in logged:
            row["logged_validation_loss"] = logged[step]["validation_loss"]
            row["logged_validation_accuracy"] = logged[step]["validation_accuracy"]
        rows.append(row)
        log.info("%s step %d scored in %.0f s", run.name, step, time.perf_counter() - started)
    metrics_file = run / "model" / "metrics.json"
    kept = json.loads(metrics_file.read_text()).get("best_step") if metrics_file.is_file() else None
    return {
        "run": str(run),
        "seed": cfg.train.seed,
        "pairs": {name: len(pairs["label"]) for name, pairs in sets.items()},
        "trainer_kept_step": kept,
        "checkpoints": rows,
        "picks": {rule: pick(rows, score, higher) for rule, (score, higher) in RULES.items()}
        | {"oracle": pick(rows, ORACLE, True)},
    }


def pick(rows: list[dict[str, float]], score: str, higher: bool) -> int:
    """The step whose `score` is best; a tie keeps the earliest, as the Trainer's `load_best_model_at_end` does."""
    best = rows[0]
    for row in rows[1:]:
        if (row[score] > best[score]) if higher else (row[score] < best[score]):
            best = row
    return int(best["step"])


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per rule: picks that differ from the oracle's, and MNLI dev points (mean of m and mm, ×100) lost against the
    oracle's pick and against the last checkpoint (mean and max over runs; negative: gained)."""
    out = {}
    for rule in RULES:
        vs_oracle, vs_last, differ = [], [], 0
        for run in runs:
            at = {row["step"]: row[ORACLE] for row in run["checkpoints"]}
            chosen = at[run["picks"][rule]]
            differ += run["picks"][rule] != run["picks"]["oracle"]
            vs_oracle.append(100 * (at[run["picks"]["oracle"]] - chosen))
            vs_last.append(100 * (at[run["picks"]["last checkpoint"]] - chosen))
        out[rule] = {
            "differs_from_oracle": differ,
            "runs": len(runs),
            "loss_vs_oracle_mean": statistics.fmean(vs_oracle),
            "loss_vs_oracle_max": max(vs_oracle),
            "loss_vs_last_mean": statistics.fmean(vs_last),
            "loss_vs_last_max": max(vs_last),
        }
    return out


def run_table(run: dict[str, Any]) -> list[str]:
    """One run as a markdown table: step × score, accuracies in %, and the rules that pick each step."""
    lines = [
        "| step | " + " | ".join(COLUMNS.values()) + " | picked by |",
        "|---:|" + "---:|" * len(COLUMNS) + "---|",
    ]
    for row in run["checkpoints"]:
        marks = [m for rule, m in MARKS.items() if run["picks"][rule] == row["step"]]
        if run["picks"]["oracle"] == row["step"]:
            marks.append("oracle")
        cells = [f"{row[k]:.4f}" if k.endswith("loss") else f"{100 * row[k]:.1f}" for k in COLUMNS]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + f" | {' '.join(marks)} |")
    return lines


def picks_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per run and rule: the step picked, its MNLI dev m / mm, and the points it loses against the oracle's pick."""
    lines = [
        "| seed | rule | step | MNLI m | MNLI mm | mean | − oracle | − last |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        rows = {row["step"]: row for row in run["checkpoints"]}
        oracle, last = rows[run["picks"]["oracle"]][ORACLE], rows[run["picks"]["last checkpoint"]][ORACLE]
        for rule in [*RULES, "oracle"]:
            row = rows[run["picks"][rule]]
            lines.append(
                f"| {run['seed']} | {rule} | {row['step']} | {100 * row['mnli_matched_accuracy']:.1f} | "
                f"{100 * row['mnli_mismatched_accuracy']:.1f} | {100 * row[ORACLE]:.2f} | "
                f"{100 * (oracle - row[ORACLE]):.2f} | {100 * (last - row[ORACLE]):+.2f} |"
            )
    return lines


def summary_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| rule | picks ≠ oracle | − oracle, mean | − oracle, max | − last, mean | − last, max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rule, s in summary.items():
        lines.append(
            f"| {rule} | {s['differs_from_oracle']} of {s['runs']} | {s['loss_vs_oracle_mean']:.2f} | "
            f"{s['loss_vs_oracle_max']:.2f} | {s['loss_vs_last_mean']:+.2f} | {s['loss_vs_last_max']:+.2f} |"
        )
    return lines


def logged_gap(runs: list[dict[str, Any]]) -> float:
    """Largest difference between the held-out loss scored here and the one training logged at the same step:
    the same pairs and head, so only float rounding of other batch paddings should separate them."""
    gaps = [
        abs(row["validation_loss"] - row["logged_validation_loss"])
        for run in runs
        for row in run["checkpoints"]
        if "logged_validation_loss" in row
    ]
    return max(gaps, default=float("nan"))


def shared_sets(snli_pairs: int, limit: int | None) -> dict[str, dict[str, list]]:
    """The sets every run is scored on: SNLI dev's first labelled pairs and MNLI dev matched / mismatched."""
    snli = read_pairs(SourceConfig(path=str(Path(DATA) / SNLI_DEV)), snli_pairs, local_hint=VALIDATION_HINT)
    mnli = {name: read_pairs(eval_source(key), limit, local_hint=local_hint(key)) for name, key in MNLI_DEV.items()}
    return {"snli": snli} | mnli


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.selection_rule", description=doc_summary(__doc__))
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="fine-tuning run folders (<output_dir>/<run_name>), or an --out file of an "
        "earlier call whose runs join the summary unscored",
    )
    parser.add_argument("--snli-pairs", type=int, default=500, help="SNLI dev pairs the old rule chose on")
    parser.add_argument("--limit", type=int, help="score the first N pairs of each MNLI dev set (dry runs)")
    parser.add_argument("--jobs", type=int, default=1, help="runs scored side by side, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=Path, help="write the scores, picks and summary here (JSON)")
    args = parser.parse_args(argv)
    command = "python -m bench.selection_rule " + " ".join(sys.argv[1:] if argv is None else argv)
    scored = [run for path in args.runs if path.is_file() for run in json.loads(path.read_text())["runs"]]
    folders = [path for path in args.runs if not path.is_file()]
    for run in folders:  # every folder checked before minutes of scoring
        kept_checkpoints(run, run_config(run))
    started = time.perf_counter()
    shared = shared_sets(args.snli_pairs, args.limit) if folders else {}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=setup_logging) as pool:
            runs = list(pool.map(score_run, folders, [shared] * len(folders), [args.threads] * len(folders)))
    else:
        runs = [score_run(run, shared, args.threads) for run in folders]
    runs = sorted(scored + runs, key=lambda run: run["seed"])
    summary = summarise(runs)
    record = {
        "command": command,
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "pairs": sorted({json.dumps(run["pairs"], sort_keys=True) for run in runs}),
        "runs": runs,
        "summary": summary,
        "max_gap_to_logged_validation_loss": logged_gap(runs),
    }
    for run in runs:
        print(f"\n{run['run']} (seed {run['seed']}; training kept step {run['trainer_kept_step']}; "
              f"O old, N new, V variant):")  # fmt: skip
        print("\n".join(run_table(run)))
    print("\n" + "\n".join(picks_table(runs)))
    print("\nMNLI dev points (mean of m and mm) lost:\n" + "\n".join(summary_table(summary)))
    print(f"\n{record['machine']}; {record['minutes']} min; pairs {'; '.join(record['pairs'])}; held-out loss vs logged: "
          f"max gap {record['max_gap_to_logged_validation_loss']:.2e}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"written: {args.out}")
    return record


def cli() -> None:
    sys.exit(run_cli(lambda argv: main(argv) and None))


if __name__ == "__main__":
    cli()
