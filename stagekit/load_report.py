"""transformers' LOAD REPORT, kept for what needs a person's eye.

Loading a pretraining output (BertForMaskedLM & co.) as a sentence encoder's backbone leaves the MLM head's
weights unused, by design, and transformers then prints a 10-line table of UNEXPECTED keys at every load —
in each stage's log, and above the one-line error of a refused setting. A report whose every key is
UNEXPECTED becomes one line at INFO; a report with a MISSING, MISMATCHED or other key (weights the model
needed and did not get) is printed as transformers writes it.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

REPORTING_LOGGER = "transformers.modeling_utils"  # transformers/utils/loading_report.py logs through it
_ROW = re.compile(r"^\s*(\S+)\s*\|\s*([A-Z_]+)\s*\|")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # transformers colours the title


def report_statuses(message: str) -> list[tuple[str, str]]:
    """(key, status) of each row of a LOAD REPORT table, e.g. ("cls.predictions.bias", "UNEXPECTED")."""
    rows = [_ROW.match(line) for line in _plain(message).splitlines()]
    return [(m.group(1), m.group(2)) for m in rows if m and m.group(2) != "STATUS" and m.group(1) != "Key"]


class UnusedWeightsOnly(logging.Filter):
    """Drop a LOAD REPORT that lists only UNEXPECTED keys, logging one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = report_statuses(message)
        if not rows or any(status != "UNEXPECTED" for _, status in rows):
            return True
        title = _plain(message.splitlines()[0]).replace(" LOAD REPORT from:", " from")
        log.info("%s: %d weights of the checkpoint not used (e.g. its MLM head), as expected", title, len(rows))
        return False


def quiet_unused_weight_reports() -> None:
    """Install `UnusedWeightsOnly` on transformers' loading logger (once per process)."""
    logger = logging.getLogger(REPORTING_LOGGER)
    if not any(isinstance(f, UnusedWeightsOnly) for f in logger.filters):
        logger.addFilter(UnusedWeightsOnly())
