"""Bad data files give one line naming the file, whether read eagerly or streamed."""

from __future__ import annotations

import gzip

import pytest

from common.errors import DataError
from common.sources import load_source, reading

GOOD = '{"text": "a document"}\n'


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def bad_files(tmp_path) -> dict[str, str]:
    full = gzip.compress((GOOD * 2000).encode())
    return {
        "missing": str(tmp_path / "missing.jsonl"),
        "empty": write(tmp_path / "empty.jsonl", b""),
        "truncated gzip": write(tmp_path / "cut.jsonl.gz", full[: len(full) // 2]),
        "malformed json": write(tmp_path / "bad.jsonl", (GOOD + '{"text": broken\n').encode()),
        "not utf-8": write(tmp_path / "latin1.jsonl", '{"text": "café"}\n'.encode("latin-1")),
        "unsupported type": write(tmp_path / "data.xml", b"<doc/>"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "empty", "truncated gzip", "malformed json", "not utf-8", "unsupported type"]
)
@pytest.mark.parametrize("streaming", [True, False])
def test_bad_files_are_one_line_errors_naming_the_file(bad_files, case, streaming):
    path = bad_files[case]
    with pytest.raises(DataError) as err:
        with reading(path):
            list(load_source(path, streaming=streaming))
    assert path in str(err.value) and "\n" not in str(err.value)


def test_a_good_file_streams_lazily(tmp_path):
    path = write(tmp_path / "good.jsonl.gz", gzip.compress((GOOD * 3).encode()))
    rows = load_source(path, streaming=True)
    assert [row["text"] for row in rows] == ["a document"] * 3


def test_hub_id_offline_fails_fast_naming_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="unreachable.*local.jsonl.gz"):
        load_source("someone/some-dataset", local_hint="local.jsonl.gz")
