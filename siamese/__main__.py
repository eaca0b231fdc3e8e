"""`python -m siamese --config configs/siamese/<name>.yaml [--resume] [key=value ...]` (also under
`torchrun --nproc_per_node=N -m siamese ...`)."""

import sys

from common.cli import run_cli
from siamese.train import main


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
