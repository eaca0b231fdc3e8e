"""Example pairs for the picker: the first rows of MNLI dev matched, from the local copy or the Hub, read by
the one reader of NLI rows that training and evaluation use."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import stagekit.config  # noqa: F401  (gives ${BERT_DATA_DIR} its default: ../shared/data beside the checkout)
from siamese.inference.encoder import LABELS
from siamese.nli_data import RowCounts, open_pairs
from stagekit.errors import UserError
from stagekit.sources import SourceConfig, reading

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
    """The first `limit` pairs of `source` with text, streamed so a large file is never read whole.

    Rows are read by the training reader (`siamese.nli_data.open_pairs`): same columns, labels and "empty
    text" rule; a row without a gold label stays, shown without one. Raises a one-line UserError.
    """
    hub = source == HUB_DATASET
    where = SourceConfig(
        path=source, config_name="mnli" if hub else None, split="validation_matched" if hub else "train"
    )
    pairs = open_pairs(where, RowCounts(), local_hint=LOCAL_DEFAULT, keep_unlabelled=True)
    try:
        with reading(source):
            head = list(itertools.islice(pairs, limit))
    except UserError:
        raise
    except Exception as err:  # anything else met while streaming: still one line naming the source
        raise UserError(
            f"{source}: could not be read: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    return [Example(row["premise"], row["hypothesis"], LABELS[row["label"]] if row["label"] >= 0 else None)
            for row in head]  # fmt: skip


def first_available(sources: list[str], limit: int = DEFAULT_LIMIT) -> tuple[list[Example], list[str]]:
    """Examples from the first source that gives any, plus one line per source that failed."""
    _, examples, problems = first_source(sources, limit)
    return examples, problems


def first_source(sources: Sequence[str], limit: int = DEFAULT_LIMIT) -> tuple[str | None, list[Example], list[str]]:
    """The first source that gives examples (None: none does), its first `limit` examples, and one line per
    source that failed before it."""
    problems = []
    for source in sources:
        try:
            examples = load_examples(source, limit)
        except UserError as err:
            problems.append(str(err))
            continue
        if examples:
            return source, examples, problems
        problems.append(f"{source}: no rows")
    return None, [], problems
