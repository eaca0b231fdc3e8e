"""The NLI stream: label mapping, dropped-and-counted rows, column aliases, triplets, buckets, laziness."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from datasets import IterableDataset

from siamese.config import DataConfig
from siamese.nli_data import (
    RowCounts,
    _LengthBuckets,
    _Triplets,
    clean_pairs,
    label_id,
    open_pairs,
    read_pairs,
    train_stream,
)
from stagekit.errors import DataError
from stagekit.sources import SourceConfig


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (1, 1), (2, 2), (-1, -1), ("entailment", 0), ("Neutral", 1), ("CONTRADICTION", 2), (" contradiction ", 2),
     ("-", -1), ("2", 2), (None, -1)],
)  # fmt: skip
def test_label_mapping_from_hub_ints_and_strings(value, expected):
    assert label_id(value, "x") == expected


@pytest.mark.parametrize("value", [3, -2, "entails", "maybe", True, 1.5])
def test_unmappable_labels_fail_with_the_row(value):
    with pytest.raises(DataError, match=r"f\.jsonl: row 7: label"):
        label_id(value, "f.jsonl: row 7")


@pytest.mark.parametrize(
    ("entail", "neutral", "contra", "none"),
    [(0, 1, 2, -1), ("entailment", "Neutral", "CONTRADICTION", "-"), (0, "neutral", 2, "-"), ("entailment", 1, 2, -1)],
    ids=["hub-ints", "strings", "mixed-dash", "mixed-int-none"],
)  # mixed: datasets' JSON reader alone turns such a column into JSON text and reads "-" back as 0
def test_minus_one_and_empty_rows_are_dropped_and_counted(tmp_path, entail, neutral, contra, none):
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": entail},
        {"premise": "A man sleeps.", "hypothesis": "Nobody sleeps.", "label": contra},
        {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": none},
        {"premise": "", "hypothesis": "Empty premise.", "label": neutral},
        {"premise": "Whitespace hypothesis.", "hypothesis": "   \t", "label": entail},
        {"premise": None, "hypothesis": "Null premise.", "label": neutral},
        {"premise": "Kids play.", "hypothesis": "Children are outside.", "label": neutral},
    ]
    path = str(write_jsonl_gz(tmp_path / "nli.jsonl.gz", rows))
    counts = RowCounts()
    pairs = read_pairs(SourceConfig(path=path, config_name=None), None, counts)
    assert pairs["label"] == [0, 2, 1]
    assert pairs["hypothesis"] == ["A person rests.", "Nobody sleeps.", "Children are outside."]
    assert counts.as_dict()[path] == {"seen": 7, "kept": 3, "dropped_no_label": 1, "dropped_empty_text": 3}


def test_column_aliases_and_missing_columns(tmp_path):
    ok = write_jsonl_gz(tmp_path / "a.jsonl.gz", [{"sentence1": "A b.", "sentence2": "C d.", "gold_label": "neutral"}])
    assert read_pairs(SourceConfig(path=str(ok), config_name=None), None)["label"] == [1]
    bad = write_jsonl_gz(tmp_path / "b.jsonl.gz", [{"text": "A b.", "hypothesis": "C d.", "label": 0}])
    with pytest.raises(DataError, match="no 'premise' column"):
        read_pairs(SourceConfig(path=str(bad), config_name=None), None)


def test_bad_label_in_a_file_names_the_file_and_row(tmp_path):
    rows = [{"premise": "A.", "hypothesis": "B.", "label": 0}] * 3 + [{"premise": "A.", "hypothesis": "B.", "label": 7}]
    path = write_jsonl_gz(tmp_path / "bad.jsonl.gz", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz: row 4: label 7"):
        read_pairs(SourceConfig(path=str(path), config_name=None), None)


def test_shared_mnli_subset_has_no_drops(data_dir):
    counts = RowCounts()
    pairs = read_pairs(
        SourceConfig(path=str(data_dir / "snli" / "validation.jsonl.gz"), config_name=None), None, counts
    )
    assert len(pairs["label"]) == 10_000 - 158  # the SNLI dev rows without a gold label are dropped...
    assert counts.total("dropped_no_label") == 158  # ...and counted


def test_labels_changing_type_after_the_first_10mb_chunk_are_read_as_written(tmp_path):
    # datasets reads JSON lines in 10 MB chunks and fixes the column type from the first one
    filler = {"premise": "p" * 2000, "hypothesis": "A person rests.", "label": 1}
    rows = [filler] * 5500 + [
        {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": "-"},
        {"premise": "Kids play.", "hypothesis": "Children are outside.", "label": "contradiction"},
    ]
    path = tmp_path / "nli.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert path.stat().st_size > 10 << 20
    counts = RowCounts()
    pairs = read_pairs(SourceConfig(path=str(path), config_name=None), None, counts)
    assert pairs["label"][-2:] == [1, 2] and len(pairs["label"]) == 5501
    assert counts.total("dropped_no_label") == 1


def test_hub_source_offline_fails_fast_with_one_line():
    started = time.time()
    with pytest.raises(DataError) as err:
        open_pairs(SourceConfig(path="nyu-mll/glue", config_name="mnli"), RowCounts())
    assert time.time() - started < 5
    assert "\n" not in str(err.value) and "unreachable" in str(err.value)


def test_triplets_pair_entailment_and_contradiction_of_the_same_premise():
    batch = {
        "premise": ["p1", "p2", "p1", "p1", "p3"],
        "hypothesis": ["e1", "c2", "n1", "c1", "e3"],
        "label": [0, 2, 1, 2, 0],
    }
    counts = RowCounts()
    out = _Triplets(window=10, counts=counts.array("triplets"))(batch)
    assert out == {"anchor": ["p1"], "positive": ["e1"], "negative": ["c1"]}
    assert counts.as_dict()["triplets"]["triplets"] == 1


def test_length_buckets_keep_every_row_and_group_similar_lengths():
    texts = [("x" * n, "y") for n in (50, 3, 40, 1, 30, 2, 45, 4)]
    batch = {"premise": [p for p, _ in texts], "hypothesis": [h for _, h in texts], "label": list(range(8))}
    out = _LengthBuckets(batch_size=4)(batch)
    assert sorted(out["label"]) == list(range(8))
    chunks = [out["premise"][:4], out["premise"][4:]]
    assert sorted(len(p) for p in chunks[0] + chunks[1]) == sorted(len(p) for p, _ in texts)
    assert {max(len(p) for p in c) for c in chunks} == {4, 50}  # short ones together, long ones together


PRODUCED: list[int] = []


def counting_rows(n: int):
    for i in range(n):
        PRODUCED.append(i)
        yield {"premise": f"premise number {i}", "hypothesis": f"hypothesis {i % 7}", "label": i % 3}


def test_stream_is_lazy(monkeypatch):
    from siamese import nli_data

    PRODUCED.clear()
    raw = IterableDataset.from_generator(counting_rows, gen_kwargs={"n": 100_000})
    # The one configured training source reads this generator: a source of any size, produced row by row.
    monkeypatch.setattr(nli_data, "open_pairs", lambda source, counts, **kw: clean_pairs(raw, "generator", counts))
    cfg = DataConfig(shuffle_buffer=64)
    stream = train_stream(cfg, batch_size=8, bucket_batches=4, seed=0, counts=RowCounts())
    assert len(PRODUCED) <= 1  # building the pipeline peeks at most one row (to learn the columns)
    first = [row for _, row in zip(range(16), stream, strict=False)]
    assert len(first) == 16 and len(PRODUCED) < 2_000  # a bounded look-ahead, not the whole source


def test_one_file_listed_twice_as_sources_counts_each_apart(tmp_path):
    rows = [{"premise": f"A man {i} sleeps.", "hypothesis": "A person rests.", "label": i % 3} for i in range(12)]
    path = str(write_jsonl_gz(tmp_path / "nli.jsonl.gz", rows))
    sources = [SourceConfig(path=path, config_name=None, weight=w) for w in (2.0, 1.0)]
    counts = RowCounts()
    stream = train_stream(DataConfig(train_sources=sources, shuffle_buffer=1), 4, 1, seed=0, counts=counts)
    assert sorted(row["premise"] for row in stream) == sorted(2 * [row["premise"] for row in rows])
    expected = {"seen": 12, "kept": 12, "dropped_no_label": 0, "dropped_empty_text": 0}
    assert counts.as_dict() == {f"{path} (source 1)": expected, f"{path} (source 2)": expected}


# One reader over all files of a folder fixed the columns from the first file: a later file with another
# column failed ("Couldn't cast"), and other column names for the same role were not looked for.
def test_a_folder_of_files_with_different_columns_is_read_file_by_file(tmp_path):
    folder = tmp_path / "nli"
    folder.mkdir()
    write_jsonl_gz(folder / "a.jsonl.gz", [{"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": 0}])
    b = [{"sentence1": "A dog runs.", "sentence2": "An animal moves.", "gold_label": "-", "pairID": 7, "genre": "x"},
         {"sentence1": "Kids play.", "sentence2": "Nobody plays.", "gold_label": "contradiction", "pairID": "8a"}]  # fmt: skip
    write_jsonl_gz(folder / "b.jsonl.gz", b)
    counts = RowCounts()
    pairs = read_pairs(SourceConfig(path=str(folder), config_name=None), None, counts)
    assert pairs == {"premise": ["A man sleeps.", "Kids play."], "hypothesis": ["A person rests.", "Nobody plays."],
                     "label": [0, 2]}  # fmt: skip
    assert counts.as_dict() == {
        str(folder / "a.jsonl.gz"): {"seen": 1, "kept": 1, "dropped_no_label": 0, "dropped_empty_text": 0},
        str(folder / "b.jsonl.gz"): {"seen": 2, "kept": 1, "dropped_no_label": 1, "dropped_empty_text": 0},
    }


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b'{"premise": "a", "hypothesis": "b", "label": 0}\n{"premise": "a", "hyp\n', "malformed"),
     ('{"premise": "caf\u00e9", "hypothesis": "b", "label": 0}\n'.encode("latin-1"), "latin-1")],
)  # fmt: skip
def test_malformed_or_non_utf8_file_is_a_one_line_error(tmp_path, content, problem):
    path = tmp_path / f"{problem}.jsonl.gz"
    path.write_bytes(gzip.compress(content))
    with pytest.raises(DataError, match=f"{problem}.jsonl.gz: could not be read") as err:
        read_pairs(SourceConfig(path=str(path), config_name=None), None)
    assert "\n" not in str(err.value)


# a premise that opens with a quote. NLI TSVs are not quoted CSV: text is verbatim.
ISSUE_TSV = (
    "sentence1\tsentence2\tgold_label\n"
    '"Hello there, she said.\tShe greeted people.\tentailment\n'
    "A man walks.\tA man is outside.\tentailment\n"
    'Kids play.\tIt is "summer".\tcontradiction\n'
    "A band plays.\tPeople hear music.\tneutral\n"
    "Two women talk.\tNobody talks.\tcontradiction\n"
)


def test_tsv_with_an_unclosed_quote_keeps_every_row_verbatim(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(ISSUE_TSV, encoding="utf-8")
    counts = RowCounts()
    pairs = read_pairs(SourceConfig(path=str(path), config_name=None), None, counts)
    assert pairs["premise"] == [
        '"Hello there, she said.',
        "A man walks.",
        "Kids play.",
        "A band plays.",
        "Two women talk.",
    ]
    assert pairs["hypothesis"][2] == 'It is "summer".'
    assert pairs["label"] == [0, 0, 2, 1, 2]
    assert counts.as_dict()[str(path)]["seen"] == 5


# Text that quoted-CSV parsing, NA detection or type inference would change: every reader keeps it as written.
TRICKY = [
    ('"Stop," said the guard.', "He spoke.", 0),
    ('"Hello there, she said.', 'It is "summer".', 2),
    ("NA", "None", 1),  # pandas reads both as missing values by default
    ("007", "1e3", 0),  # and these as numbers
    ("C:\\temp\\new", "#not a comment", 2),
    ("A man walks.", "A man is outside.", "-"),
]
EXPECTED = [(p, h, y) for p, h, y in TRICKY if y != "-"]


def _write_as(path: Path, fmt: str) -> Path:
    import csv

    import pandas as pd

    rows = [{"premise": p, "hypothesis": h, "label": str(y)} for p, h, y in TRICKY]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "csv":  # properly quoted, as Python's csv module (and Excel) write it
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["premise", "hypothesis", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:  # tsv, tsv.gz: tab-separated lines, nothing quoted
        text = "premise\thypothesis\tlabel\n" + "".join(
            f"{r['premise']}\t{r['hypothesis']}\t{r['label']}\n" for r in rows
        )
        if fmt.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode("utf-8")))
        else:
            path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "tsv", "tsv.gz"])
def test_every_file_format_reads_the_same_pairs_verbatim(tmp_path, fmt):
    path = _write_as(tmp_path / f"pairs.{fmt}", fmt)
    counts = RowCounts()
    pairs = read_pairs(SourceConfig(path=str(path), config_name=None), None, counts)
    assert list(zip(pairs["premise"], pairs["hypothesis"], pairs["label"], strict=True)) == EXPECTED
    assert counts.as_dict()[str(path)] == {"seen": 6, "kept": 5, "dropped_no_label": 1, "dropped_empty_text": 0}


def test_csv_with_an_unbalanced_quote_is_a_one_line_error_not_merged_rows(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(ISSUE_TSV.replace("\t", ","), encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.csv: could not be read") as err:
        read_pairs(SourceConfig(path=str(path), config_name=None), None)
    assert "\n" not in str(err.value)


# text with no visible content is empty text.
@pytest.mark.parametrize("blank", ["\u200b\u200b", "\x00\x01", "\ufeff \u2060", "\u200c\u200d\t"])
def test_invisible_text_is_dropped_and_counted_as_empty(tmp_path, blank):
    rows = [
        {"premise": blank, "hypothesis": "A person rests.", "label": 0},
        {"premise": "A man sleeps.", "hypothesis": blank, "label": 2},
        {"premise": "Kids play.", "hypothesis": "Children are outside.", "label": 1},
    ]
    path = str(write_jsonl_gz(tmp_path / "nli.jsonl.gz", rows))
    counts = RowCounts()
    pairs = read_pairs(SourceConfig(path=path, config_name=None), None, counts)
    assert pairs["premise"] == ["Kids play."]
    assert counts.as_dict()[path] == {"seen": 3, "kept": 1, "dropped_no_label": 0, "dropped_empty_text": 2}
