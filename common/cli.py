"""The shared shape of every entry point: `--config FILE [--resume] [key=value ...]`, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.config import load_config
from common.errors import UserError

T = TypeVar("T")
log = logging.getLogger(__name__)


def config_parser(prog: str, description: str, default_config: str | Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Overrides use dotted keys, e.g. train.lr=3.0e-4 model.num_hidden_layers=4; "
        "every key is checked against the config schema before any work starts.",
    )
    parser.add_argument("--config", default=str(default_config), help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser`'s arguments with options anywhere among the overrides: plain `parse_args` ends the positional
    list at the first option, so `run_name=x --resume train.max_steps=20` failed with "unrecognized arguments"."""
    return parser.parse_intermixed_args(argv)


def parse_config(parser: argparse.ArgumentParser, schema: type[T], argv: Sequence[str] | None) -> tuple[T, Any]:
    args = parse_args(parser, argv)
    return load_config(schema, args.config, list(args.overrides)), args


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "datasets.builder"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` as a command: a UserError becomes `error: ...` on stderr and exit status 2."""
    setup_logging()
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
