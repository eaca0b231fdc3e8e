"""Bad data files give one line naming the file, whether read eagerly or streamed."""

from __future__ import annotations

import gzip

import pytest

from stagekit.errors import DataError
from stagekit.sources import load_source, reading

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


# For every reader (the pretraining corpus reads through load_source too).
@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz", ".tsv.bz2"])
def test_tsv_cells_are_read_verbatim_as_text(tmp_path, suffix, streaming):
    import bz2

    texts = ['"Stop," said the guard.', '"Unclosed quote', "NA", "007", "null", "#hash", "a\\b"]
    data = ("text\tid\n" + "".join(f"{t}\t{i:03d}\n" for i, t in enumerate(texts))).encode("utf-8")
    data = gzip.compress(data) if suffix.endswith(".gz") else bz2.compress(data) if suffix.endswith(".bz2") else data
    path = write(tmp_path / f"docs{suffix}", data)
    rows = list(load_source(path, streaming=streaming))
    assert [row["text"] for row in rows] == texts
    assert [row["id"] for row in rows] == [f"{i:03d}" for i in range(len(texts))]  # never re-typed as numbers


def test_quoted_csv_is_parsed_and_its_text_kept(tmp_path):
    path = write(tmp_path / "docs.csv", b'\xef\xbb\xbftext,n\n"A ""quoted"" word, and a comma",1\nNA,2\n"",3\n')
    assert [row["text"] for row in load_source(path, streaming=True)] == ['A "quoted" word, and a comma', "NA", ""]


@pytest.mark.parametrize("streaming", [True, False])
def test_csv_with_a_stray_quote_is_a_one_line_error(tmp_path, streaming):
    path = write(tmp_path / "docs.csv", b'text,n\n"Stop," said the guard.,1\nA man walks.,2\n')
    with pytest.raises(DataError) as err:
        with reading(path):
            list(load_source(path, streaming=streaming))
    assert path in str(err.value) and "\n" not in str(err.value)


def test_csv_and_tsv_files_in_one_source_are_refused(tmp_path):
    write(tmp_path / "a.csv", b"text\nx\n")
    write(tmp_path / "b.tsv", b"text\ny\n")
    with pytest.raises(DataError, match="mixes"):
        load_source(str(tmp_path), streaming=True)


# The reachability check itself is bounded, even when name resolution hangs.
def test_reachability_check_is_bounded_when_name_resolution_hangs(monkeypatch):
    import socket
    import time

    from stagekit.sources import hub_reachable

    def hanging_dns(*args, **kwargs):
        time.sleep(20)
        raise socket.gaierror("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.hanging-dns.test")
    monkeypatch.setattr(socket, "getaddrinfo", hanging_dns)
    started = time.monotonic()
    assert hub_reachable(timeout=1.0) is False
    assert time.monotonic() - started < 3


def test_hub_dataset_with_an_unreachable_endpoint_fails_in_seconds(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect fails at once
    started = time.monotonic()
    with pytest.raises(DataError, match="unreachable.*local.jsonl.gz"):
        load_source("someone/some-dataset", local_hint="local.jsonl.gz")
    assert time.monotonic() - started < 5
