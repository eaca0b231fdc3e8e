"""`python -m pretrain.fill_mask --model outputs/<run>/model "the movie was [MASK] ."` prints the top-k fills."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stagekit.cli import run_cli
from stagekit.errors import UserError


def load_masked_lm(model_dir: Path):
    """The masked LM in `model_dir` and its tokenizer.

    Raises UserError (one line) for a weights file that cannot be opened (named: stagekit/weights.py), a folder
    transformers cannot load as a masked LM (e.g. GPT-2), and one without the masked-LM head's weights: a fine-tuned
    sentence encoder keeps the encoder only, and transformers would fill the head in at random, so the answers
    would change at every run and mean nothing.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from stagekit.load_report import loading_quietly
    from stagekit.weights import check_weights

    check_weights(model_dir)
    try:
        with loading_quietly():  # a missing head is said below, in one line
            model, info = AutoModelForMaskedLM.from_pretrained(str(model_dir), output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(
            f"model path {model_dir} could not be loaded as a masked LM: {str(err).splitlines()[0]}"
        ) from None
    if info["mismatched_keys"]:
        key = sorted(info["mismatched_keys"])[0]
        key = key[0] if isinstance(key, tuple) else key
        raise UserError(f"model path {model_dir}: the weights of {key} do not have the shape its config.json gives")
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise UserError(
            f"model path {model_dir} holds no masked-LM head ({len(missing)} weights missing, e.g. {missing[0]}): "
            "it is not a pretraining output (a fine-tuned sentence encoder?); give the model folder python -m "
            "pretrain wrote"
        )
    return model.eval(), tokenizer


def fill_mask(model_dir: str | Path, sentences: Sequence[str], top_k: int = 5) -> list[list[dict]]:
    """The `top_k` fills (dicts with score, token_str, ...) for the one mask token of each sentence. Raises
    UserError (one line) for a folder without a saved masked LM (`load_masked_lm`) and a sentence without exactly
    one mask token."""
    from transformers import pipeline

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"model path {model_dir} is not a saved model (no config.json); train one with python -m pretrain"
        )
    model, tokenizer = load_masked_lm(model_dir)
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
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
