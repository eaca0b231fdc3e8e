"""Example pairs for the picker: the first rows of MNLI dev matched, from the local copy or the Hub."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass

import common.config  # noqa: F401  (gives ${BERT_DATA_DIR} its default: ../shared/data beside the checkout)
from common.errors import UserError
from common.sources import load_source
from siamese.encoder import LABELS

EXAMPLES_ENV = "APP_EXAMPLES"  # a local file or a Hub dataset id, tried before the local default
HUB_DATASET = "nyu-mll/glue"
LOCAL_DEFAULT = "${BERT_DATA_DIR}/mnli/validation_matched.jsonl.gz"
DEFAULT_LIMIT = 200


@dataclass(frozen=True)
class Example:
    premise: str
    hypothesis: str
    gold: str | None  # None where the row has no gold label (-1)


def example_sources(env: Mapping[str, str] = os.environ) -> list[str]:
    local = os.path.expandvars(LOCAL_DEFAULT)
    configured = env.get(EXAMPLES_ENV)
    return [configured, local] if configured and configured != local else [local]


def load_examples(source: str, limit: int = DEFAULT_LIMIT) -> list[Example]:
    """The first `limit` rows of `source`, streamed so a large file is never read whole."""
    hub = source == HUB_DATASET
    rows = load_source(
        source,
        split="validation_matched" if hub else "train",
        config_name="mnli" if hub else None,
        streaming=True,
        local_hint=LOCAL_DEFAULT,
    )
    examples = []
    try:
        head = list(itertools.islice(rows, limit))
    except Exception as err:  # a malformed line surfaces while streaming: say where, in one line
        raise UserError(
            f"{source}: could not be read: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    for row in head:
        if "premise" not in row or "hypothesis" not in row:
            raise UserError(f"{source}: rows need 'premise' and 'hypothesis' columns, got {sorted(row)}")
        label = row.get("label")
        gold = LABELS[label] if isinstance(label, int) and 0 <= label < len(LABELS) else None
        examples.append(Example(str(row["premise"]), str(row["hypothesis"]), gold))
    return examples


def first_available(sources: list[str], limit: int = DEFAULT_LIMIT) -> tuple[list[Example], list[str]]:
    """Examples from the first source that gives any, plus one line per source that failed."""
    problems = []
    for source in sources:
        try:
            examples = load_examples(source, limit)
        except UserError as err:
            problems.append(str(err))
            continue
        if examples:
            return examples, problems
        problems.append(f"{source}: no rows")
    return [], problems
