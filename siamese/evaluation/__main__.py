"""`python -m siamese.evaluation --model DIR [--config FILE] [key=value ...]` (`bert-evaluate`)."""

from siamese.evaluation.evaluate import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
