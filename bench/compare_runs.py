"""Validation-loss curves of several pretraining runs in one figure, and their table at chosen steps.

    python -m bench.compare_runs outputs/run-a outputs/run-b --steps 100 200 300 --out docs/curves.png

Each run folder is a `python -m pretrain` output (`<run>/checkpoints/checkpoint-N/trainer_state.json`);
the curve is its `eval_bert15_loss` (validation at BERT's 15 % / 80-10-10 masking, the same task for
every run whatever it trained with), or `eval_loss` when the run trained at BERT's masking.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from stagekit.cli import doc_summary
from stagekit.errors import UserError  # noqa: E402
from stagekit.resume import newest_checkpoint  # noqa: E402


def bert15_curve(run: Path) -> list[tuple[int, float]]:
    """(step, validation loss at BERT's masking) of a run, from its newest checkpoint's log history."""
    checkpoint = newest_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise UserError(f"{run}: no checkpoint with a trainer_state.json")
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    key = "eval_bert15_loss" if any("eval_bert15_loss" in h for h in history) else "eval_loss"
    return [(h["step"], h[key]) for h in history if key in h]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--steps", nargs="*", type=int, default=[100, 200, 300, 400, 500, 600])
    parser.add_argument("--unigram-entropy", type=float, help="draw the frequency-only loss as a line")
    parser.add_argument("--out", type=Path, help="PNG to write (default: only print the table)")
    args = parser.parse_args(argv)
    curves = {run.name: bert15_curve(run) for run in args.runs}
    print("| run | " + " | ".join(f"step {s}" for s in args.steps) + " |")
    print("|---" * (len(args.steps) + 1) + "|")
    for name, curve in curves.items():
        at = dict(curve)
        print(f"| {name} | " + " | ".join(f"{at[s]:.3f}" if s in at else "–" for s in args.steps) + " |")
    if args.out:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, curve in curves.items():
            ax.plot(*zip(*curve, strict=True), label=name, marker=".", markersize=3)
        if args.unigram_entropy:
            ax.axhline(args.unigram_entropy, color="grey", ls="--", label="unigram entropy")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation loss at 15 % / 80-10-10 masking (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
