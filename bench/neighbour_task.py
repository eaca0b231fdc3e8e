"""Can a freshly initialised BertForMaskedLM learn to read its neighbour? A diagnostic, not a benchmark.

Blocks of doubled random tokens (`x x y y z z ...`), 15 % of positions replaced by [MASK]: the answer is
always the token next door, so a model that forms a local attention head reaches a loss near 0, one
that does not stays at ln(vocab). docs/cpu-recipe-experiments.md uses it to show that the CPU recipe's
plateau is an optimisation saddle of small-initialised attention, not a lack of signal in the corpus.

    python -m bench.neighbour_task --layers 2 --positions 16 --init 0.05
"""

from __future__ import annotations

import argparse
import math

import torch
from tqdm.auto import tqdm
from transformers import BertConfig, BertForMaskedLM

from stagekit.cli import doc_summary

MASK_ID = 4  # any id below FIRST_ID: never drawn as a token
FIRST_ID = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--positions", type=int, default=128, help="tokens per block (even)")
    parser.add_argument("--init", type=float, default=0.02, help="BertConfig.initializer_range")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (they change the numerics)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=2,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=args.init,
        attn_implementation="sdpa",
    )
    model = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    warmup = 30  # the cpu-small recipe's
    print(
        f"loss of a model that ignores the context: ln({args.vocab - FIRST_ID}) = {math.log(args.vocab - FIRST_ID):.3f}"
    )
    bar = tqdm(range(1, args.steps + 1), desc="training", unit="step")
    for step in bar:
        tokens = torch.randint(FIRST_ID, args.vocab, (args.batch_size, args.positions // 2)).repeat_interleave(2, dim=1)
        selected = torch.rand(tokens.shape) < 0.15
        labels = torch.where(selected, tokens, -100)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / warmup)
        loss = model(input_ids=tokens.masked_fill(selected, MASK_ID), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0:
            bar.write(f"step {step}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
