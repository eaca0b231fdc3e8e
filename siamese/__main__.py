"""`python -m siamese --config configs/siamese/<name>.yaml [--resume] [key=value ...]` (also under
`torchrun --nproc_per_node=N -m siamese ...`)."""

import sys

from siamese.train import main
from stagekit.cli import run_cli


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
