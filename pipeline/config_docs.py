"""`python -m pipeline.config_docs [--check]`: write docs/configuration.md from the config schemas.

Every key's type, default, help and resume rule come from the fields themselves (stagekit/config.py `key`), the
same text `--help` prints; `--check` exits 1 when the file is out of step (tests/stagekit/test_documented_commands.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pretrain.config import PretrainConfig
from pretrain.probe import ProbeConfig
from siamese.config import EvalConfig, SiameseConfig
from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT, describe_keys, format_default

TARGET = REPO_ROOT / "docs" / "configuration.md"

INTRO = """# Configuration

Written by `python -m pipeline.config_docs` from the config classes (`pretrain/config.py`, `siamese/config.py`,
`pretrain/probe.py`, the keys they share in `stagekit/stage_config.py`); each command's `--help` prints the same
list. A config is a YAML file of these keys (`configs/<stage>/*.yaml`); any key can be overridden on the command
line as `section.key=value` (in `python -m pipeline`, prefixed by `pretrain.`, `siamese.` or `eval.`), and every
key is checked before any work starts.

**Resumable** keys may change when a run continues with `--resume` (applied from the resumed step on); a
change to any other key is refused in one line, because the checkpoint's weights, optimizer state or data
position depend on it. The `train` keys both stages share carry `transformers.TrainingArguments`' names.
"""


PROBE_NOTE = (
    "The probe runs start to end: no `--resume`, no checkpoints and no evaluation during training, so "
    "`train.eval_steps`, `train.save_steps` and `train.save_total_limit` do not apply, and `data.*.weight` is unused "
    "(one source each)."
)


def stage_table(title: str, command: str, schema: type, note: str = "", resumable: bool = True) -> str:
    rows = [
        f"## {title} (`{command}`)",
        "",
        *([note, ""] if note else []),
        "| key | type | default | resumable | what it does |"
        if resumable
        else "| key | type | default | what it does |",
        "|---|---|---|---|---|" if resumable else "|---|---|---|---|",
    ]
    for info in describe_keys(schema):
        default = format_default(info.default).replace("|", "\\|")
        kind = info.type.replace("|", "\\|")
        help_text = info.help.replace("|", "\\|")
        resume = f" {'yes' if info.resumable else ''} |" if resumable else ""
        rows.append(f"| `{info.dotted}` | {kind} | `{default}` |{resume} {help_text} |")
    return "\n".join(rows)


def render() -> str:
    parts = [
        INTRO,
        stage_table("Pretraining", "python -m pretrain", PretrainConfig),
        stage_table("Siamese fine-tuning", "python -m siamese", SiameseConfig),
        stage_table("Evaluation", "python -m siamese.evaluation --model DIR", EvalConfig, resumable=False),
        stage_table(
            "Cross-encoder probe of a pretraining output", "python -m pretrain.probe", ProbeConfig, PROBE_NOTE, False
        ),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config_docs", description=doc_summary(__doc__))
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of step")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != text:
            print(
                f"{TARGET} is out of step with the config classes: run python -m pipeline.config_docs", file=sys.stderr
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
