"""`python -m pretrain.fill_mask --model outputs/<run>/model "the movie was [MASK] ."` prints the top-k fills."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stagekit.cli import run_cli
from stagekit.errors import UserError


def fill_mask(model_dir: str | Path, sentences: Sequence[str], top_k: int = 5) -> list[list[dict]]:
    from transformers import pipeline

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"model path {model_dir} is not a saved model (no config.json); train one with python -m pretrain"
        )
    fill = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    mask = fill.tokenizer.mask_token
    results = []
    for sentence in sentences:
        if sentence.count(mask) != 1:
            raise UserError(f"sentence {sentence!r} must contain exactly one {mask}")
        results.append(fill(sentence, top_k=top_k))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.fill_mask", description=__doc__)
    parser.add_argument("--model", required=True, help="a model folder written by python -m pretrain")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("sentences", nargs="+", help="sentences with one [MASK] each")
    args = parser.parse_args(argv)
    for sentence, predictions in zip(args.sentences, fill_mask(args.model, args.sentences, args.top_k), strict=True):
        print(sentence)
        for p in predictions:
            print(f"  {p['score']:.3f}  {p['token_str']}")


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
