"""`python -m siamese.evaluation --model DIR [--config FILE] [key=value ...]` (`bert-evaluate`)."""

from siamese.evaluation.evaluate import cli, main  # noqa: F401  (main: what tests/test_help_texts.py calls)

if __name__ == "__main__":
    cli()
