"""`python -m pretrain.attention --model outputs/<run>/model [--blocks 8]`: how far each layer's attention
is from uniform.

A model that has not learnt to read context attends (almost) uniformly: every head's entropy is close to
ln(block length) and each neighbour gets ~1/length of the weight (docs/cpu-recipe-experiments.md). Heads
that read context have lower entropy and put clear weight on nearby tokens. Scored on validation blocks
of the run that wrote the model (its packed-data cache), with eager attention (SDPA returns no weights).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel

from stagekit.cli import doc_summary, run_cli
from stagekit.errors import UserError


@torch.no_grad()
def attention_profile(model: PreTrainedModel, blocks: torch.Tensor) -> list[dict[str, float]]:
    """Per layer: mean entropy (nats) of the attention rows over heads, rows and blocks; ln(length) for
    uniform attention; and the mean weight on the previous, same and next position. `blocks`: int64
    (n, length). The model is switched to eager attention for the call and back afterwards."""
    previous = model.config._attn_implementation
    was_training = model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        out = model.base_model(input_ids=blocks.to(next(model.parameters()).device), output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)
    length = blocks.shape[1]
    rows = torch.arange(length)
    profile = []
    for layer, weights in enumerate(out.attentions):  # (n, heads, length, length)
        weights = weights.float().cpu()
        entropy = -(weights * weights.clamp(min=1e-12).log()).sum(-1).mean()
        profile.append(
            {
                "layer": layer,
                "entropy": float(entropy),
                "uniform_entropy": math.log(length),
                "previous": float(weights[..., rows[1:], rows[:-1]].mean()),
                "self": float(weights[..., rows, rows].mean()),
                "next": float(weights[..., rows[:-1], rows[1:]].mean()),
            }
        )
    return profile


def format_profile(profile: list[dict[str, float]]) -> str:
    lines = ["layer  entropy (nats)  uniform  weight on previous / self / next"]
    for p in profile:
        lines.append(
            f"{p['layer']:>5}  {p['entropy']:>14.2f}  {p['uniform_entropy']:>7.2f}  "
            f"{p['previous']:.3f} / {p['self']:.3f} / {p['next']:.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    from transformers import AutoModelForMaskedLM

    from pretrain.blocks import prepare_data
    from pretrain.config import PretrainConfig
    from stagekit.config import load_config
    from stagekit.weights import check_weights

    parser = argparse.ArgumentParser(prog="python -m pretrain.attention", description=doc_summary(__doc__))
    parser.add_argument("--model", required=True, help="a model folder written by python -m pretrain")
    parser.add_argument("--blocks", type=int, default=8, help="validation blocks to average over")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    if not (folder / "config.json").is_file() or not (folder / "resolved_config.yaml").is_file():
        raise UserError(f"{folder} is not a model folder written by python -m pretrain (no resolved_config.yaml)")
    if args.blocks < 1:
        raise UserError("--blocks must be >= 1")
    check_weights(folder)  # before the data: a weights file cut short is one line naming it
    cfg = load_config(PretrainConfig, folder / "resolved_config.yaml")
    data = prepare_data(cfg)  # the run's cache: a hit unless it was deleted
    model = AutoModelForMaskedLM.from_pretrained(folder)
    count = min(args.blocks, len(data.validation))
    profile = attention_profile(model, data.validation[torch.arange(count)])
    print(format_profile(profile))
    return profile


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
