"""`python -m pretrain --config configs/pretrain/cpu-small.yaml [--resume] [key=value ...]`

Corpus → tokenizer → packed blocks (cached) → MLM training → outputs/<run_name>/model/. The same command
runs on several processes: `torchrun --nproc_per_node=N -m pretrain --config ...`.
"""

import sys

from pretrain.train import main
from stagekit.cli import run_cli


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
