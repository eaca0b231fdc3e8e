"""`python -m siamese --config configs/siamese/<name>.yaml [--resume] [key=value ...]`."""

import sys

from common.cli import run_cli
from siamese.train import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
