"""transformers' LOAD REPORT, kept for what needs a person's eye.

Loading a pretraining output (BertForMaskedLM & co.) as a sentence encoder's backbone leaves the MLM head's
weights unused, by design, and for architectures with a pooler (BERT, RoBERTa) the pooler new: sentence
embeddings here pool the token states and never read it (siamese/model.py freezes it). transformers then prints
a 15-line table of UNEXPECTED and MISSING keys with its notes at every load — in each stage's log, and above the
one-line error of a refused setting. A report of only these (any key UNEXPECTED, a MISSING key only of a pooler)
becomes one line at INFO saying what was left out and what is new; a report with any other MISSING, a
MISMATCHED or another status (weights the model needed and did not get) is printed as transformers writes it.
The same rule for every architecture: NomicBERT and ModernBERT have no pooler, BERT's has.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

REPORTING_LOGGER = "transformers.modeling_utils"  # transformers/utils/loading_report.py logs through it
_ROW = re.compile(r"^\s*(\S+)\s*\|\s*([A-Z_]+)\s*\|")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # transformers colours the title


def report_statuses(message: str) -> list[tuple[str, str]]:
    """(key, status) of each row of a LOAD REPORT table, e.g. ("cls.predictions.bias", "UNEXPECTED")."""
    rows = [_ROW.match(line) for line in _plain(message).splitlines()]
    return [(m.group(1), m.group(2)) for m in rows if m and m.group(2) != "STATUS" and m.group(1) != "Key"]


def _is_pooler(key: str) -> bool:
    return "pooler" in key.split(".")


def _families(keys: list[str]) -> str:
    """e.g. "cls.*" or "head.*, decoder.*": the first part of each key, in order of appearance."""
    return ", ".join(dict.fromkeys(key.split(".")[0] + ".*" for key in keys))


class UnusedWeightsOnly(logging.Filter):
    """Drop a LOAD REPORT that lists only UNEXPECTED keys and MISSING pooler keys, logging one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = report_statuses(message)
        unused = [key for key, status in rows if status == "UNEXPECTED"]
        new = [key for key, status in rows if status == "MISSING" and _is_pooler(key)]
        if not rows or len(unused) + len(new) != len(rows):
            return True
        title = _plain(message.splitlines()[0]).replace(" LOAD REPORT from:", " from")
        parts = []
        if unused:
            parts.append(f"{len(unused)} weights of the checkpoint not used ({_families(unused)}, e.g. its MLM head)")
        if new:
            parts.append(f"{len(new)} new ({_families(new)}: a pooler, which the sentence embedding does not read)")
        log.info("%s: %s, as expected", title, " and ".join(parts))
        return False


def quiet_unused_weight_reports() -> None:
    """Install `UnusedWeightsOnly` on transformers' loading logger (once per process)."""
    logger = logging.getLogger(REPORTING_LOGGER)
    if not any(isinstance(f, UnusedWeightsOnly) for f in logger.filters):
        logger.addFilter(UnusedWeightsOnly())


class _LoadingRemarks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def loading_quietly() -> Iterator[None]:
    """No LOAD REPORT and no other warning of transformers' loading code within (for a missing head it adds "This
    checkpoint seem corrupted … tied weights"): for a caller that reads `output_loading_info` itself and says what
    matters in one line (pretrain/fill_mask.py)."""
    logger, quiet = logging.getLogger(REPORTING_LOGGER), _LoadingRemarks()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
