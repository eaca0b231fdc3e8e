"""transformers' LOAD REPORT: a table of only unused (UNEXPECTED) weights and a new pooler becomes one line; a
report with other weights the model needed and did not get stays as transformers prints it."""

from __future__ import annotations

import logging

from stagekit.load_report import REPORTING_LOGGER, UnusedWeightsOnly, report_statuses

UNUSED = """\x1b[1mNomicBertModel LOAD REPORT\x1b[0m from: outputs/pretrain-cpu-small/model
Key                                         | Status     |  |
--------------------------------------------+------------+--+-
cls.predictions.transform.dense.bias        | UNEXPECTED |  |
cls.predictions.bias                        | UNEXPECTED |  |

Notes:
- UNEXPECTED:\tcan be ignored when loading from different task/architecture; not ok if you expect identical arch."""

# BertModel from BertForMaskedLM (the GPU recipe's architecture): its pooler is new as well.
NEW_POOLER = UNUSED.replace(
    "cls.predictions.bias                        | UNEXPECTED |  |",
    "cls.predictions.bias                        | UNEXPECTED |  |\n"
    "pooler.dense.weight                         | MISSING    |  |\n"
    "pooler.dense.bias                           | MISSING    |  |",
)

MISSING = UNUSED.replace(
    "cls.predictions.bias                        | UNEXPECTED", "encoder.layer.0.attn.weight | MISSING   "
)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord(REPORTING_LOGGER, logging.WARNING, __file__, 1, message, None, None)


def test_rows_are_read_from_the_table():
    assert report_statuses(UNUSED) == [
        ("cls.predictions.transform.dense.bias", "UNEXPECTED"),
        ("cls.predictions.bias", "UNEXPECTED"),
    ]


def test_a_report_of_unused_weights_only_is_one_info_line(caplog):
    with caplog.at_level(logging.INFO, logger="stagekit.load_report"):
        assert UnusedWeightsOnly().filter(record(UNUSED)) is False
    (line,) = [r.getMessage() for r in caplog.records]
    assert "2 weights" in line and "outputs/pretrain-cpu-small/model" in line and "\x1b" not in line


def test_a_report_with_a_missing_weight_is_kept():
    assert UnusedWeightsOnly().filter(record(MISSING)) is True
    assert UnusedWeightsOnly().filter(record("any other warning")) is True


def test_a_new_pooler_beside_unused_weights_is_one_info_line_too(caplog):
    with caplog.at_level(logging.INFO, logger="stagekit.load_report"):
        assert UnusedWeightsOnly().filter(record(NEW_POOLER)) is False
    (line,) = [r.getMessage() for r in caplog.records]
    assert "2 weights of the checkpoint not used (cls.*" in line and "2 new (pooler.*" in line
    assert "outputs/pretrain-cpu-small/model" in line and "\n" not in line


def test_a_missing_weight_beside_a_new_pooler_is_kept():
    mixed = NEW_POOLER.replace(
        "cls.predictions.bias                        | UNEXPECTED", "embeddings.word | MISSING   "
    )
    assert UnusedWeightsOnly().filter(record(mixed)) is True
