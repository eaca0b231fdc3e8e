"""The shared shape of every entry point: `--config FILE [--resume] [key=value ...]`, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from stagekit.config import REPO_ROOT, describe_keys, format_default, load_config
from stagekit.errors import UserError
from stagekit.load_report import quiet_unused_weight_reports

T = TypeVar("T")
log = logging.getLogger(__name__)


def doc_summary(doc: str | None) -> str:
    """A module docstring's first paragraph on one line, as an entry point's `--help` description: whole sentences
    (a first line alone may end mid-sentence); a paragraph that introduces a list (ends in ":") ends in "."."""
    first = " ".join((doc or "").strip().split("\n\n")[0].split())
    return first[:-1] + "." if first.endswith(":") else first


def default_config(schema: type) -> Path:
    """configs/<stage>/cpu-small.yaml: the recipe that runs on a laptop CPU in minutes."""
    return REPO_ROOT / "configs" / schema.stage / "cpu-small.yaml"


def keys_help(schema: type) -> str:
    """One line per config key: dotted name, type, default, help; resumable keys marked (the same text as
    docs/configuration.md, from the fields' metadata: stagekit/config.py `describe_keys`)."""
    lines = []
    for info in describe_keys(schema):
        mark = " [resumable]" if info.resumable else ""
        lines.append(f"  {info.dotted} ({info.type}; default {format_default(info.default)}){mark}\n      {info.help}")
    return "\n".join(lines)


def config_parser(
    prog: str,
    description: str,
    schema: type,
    resume: bool = True,
    leading: str | None = None,
    push: bool | None = None,
) -> argparse.ArgumentParser:
    """`--config FILE` (or, with `leading`, the options the caller adds, e.g. evaluation's `--model DIR`),
    `--resume` and `--push-to-hub REPO` (a training stage; `push` defaults to `resume`) and `key=value`
    overrides; `--help` ends with examples and every config key. The examples are the config class's `examples`
    (each one checked by tests/stagekit/test_documented_commands.py); a command without --resume shows those
    that do not use it."""
    config_file = leading is None
    shown = default_config(schema).relative_to(REPO_ROOT) if config_file else None
    leading = f"--config {shown}" if config_file else leading
    usable = [e for e in getattr(schema, "examples", ()) if resume or "--resume" not in e.split()]
    examples = "".join(f"  {prog} {leading} {example}\n" for example in usable)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(f"examples:\n{examples}\n" if examples else "")
        + "Overrides use dotted keys; every key is checked against the config schema before any work starts."
        + (" [resumable]: --resume may change it." if resume else "")
        + f"\nconfig keys (also docs/configuration.md):\n{keys_help(schema)}",
    )
    if config_file:
        parser.add_argument("--config", default=str(default_config(schema)), help=f"YAML config (default: {shown})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=500")
    if resume:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the run: from its newest complete "
            "checkpoint, or nothing when its model is finished and the config asks for no more steps",
        )
    if resume if push is None else push:
        parser.add_argument(
            "--push-to-hub",
            metavar="REPO",
            help="after training, upload the model folder to this Hub repository (owner/name; checked before "
            "training: reachable Hub, a token from HF_TOKEN or `hf auth login`); see stagekit/push.py",
        )
        parser.add_argument("--hub-private", action="store_true", help="with --push-to-hub: create the repo private")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser`'s arguments with options anywhere among the overrides: plain `parse_args` ends the positional
    list at the first option, so `run_name=x --resume train.max_steps=20` would fail with "unrecognized
    arguments"."""
    return parser.parse_intermixed_args(argv)


def parse_config(parser: argparse.ArgumentParser, schema: type[T], argv: Sequence[str] | None) -> tuple[T, Any]:
    args = parse_args(parser, argv)
    return load_config(schema, getattr(args, "config", None), list(args.overrides)), args


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "datasets.builder"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_unused_weight_reports()


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` as a command: a UserError becomes `error: ...` on stderr and exit status 2.

    Under several processes the line names the rank, and any failure is reported to the other ranks, which
    stop at once instead of waiting in a collective for the timeout (stagekit/distributed.py)."""
    from stagekit import distributed

    setup_logging()
    try:
        main(argv)
    except UserError as err:
        distributed.report_failure(err)
        print(f"error: {distributed.where()}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line = distributed.report_failure(err)
        if distributed.rank_and_size()[1] > 1:  # the traceback follows, but not which rank it came from
            print(f"error: {line}", file=sys.stderr, flush=True)
        raise
    return 0
