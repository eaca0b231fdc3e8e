"""Several corpora at once (a folder or glob as data.source): files with other columns, columns of mixed types."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from pretrain.__main__ import main
from pretrain.blocks import prepare_data
from pretrain.config import DataConfig
from pretrain.corpus import raw_batches
from stagekit.errors import DataError
from stagekit.sources import SourceConfig


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def first_rows(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, n)]


@pytest.mark.slow
def test_pretraining_on_a_folder_of_two_corpora_reads_every_document_of_both(data_dir, tmp_path):
    # the README's two stand-ins: IMDB reviews {text} and Wikipedia articles {id, title, text}; one id as a number
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    write_jsonl(corpora / "imdb.jsonl.gz", first_rows(data_dir / "pretrain" / "imdb_100k.jsonl.gz", 150))
    wiki = first_rows(data_dir / "pretrain" / "wikipedia_2015.jsonl.gz", 6)
    wiki[3]["id"] = int(wiki[3]["id"])
    write_jsonl(corpora / "wikipedia.jsonl.gz", wiki)
    argv = [
        "--config", str(Path(__file__).parents[2] / "configs" / "pretrain" / "debug.yaml"),
        f"data.source={corpora}", "data.max_documents=null", f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'out'}", "train.max_steps=4", "train.eval_steps=4", "train.save_steps=4",
    ]  # fmt: skip
    metrics = main(argv).metrics
    assert metrics["documents_read"] == 156 and metrics["step"] == 4
    assert metrics["train_documents"] + metrics["validation_documents"] + metrics["documents_dropped"] == 156


# datasets' JSON reader fixes every column's type from the first 10 MB of a file: a later line where a
# column the corpus never uses changes type (an id written as text) or first appears failed the whole
# corpus, and a number in the text column there was silently read as text.
def test_columns_changing_type_or_appearing_after_the_first_10mb_are_read_line_by_line(tmp_path):
    filler = [{"id": i, "text": f"document {i} " + "word " * 220} for i in range(10_000)]
    late = [{"id": "10000a", "text": "an id as text"}, {"text": "no id", "meta": {"lang": "en"}}, {"id": 3}]
    path = write_jsonl(tmp_path / "wiki.jsonl", filler + late)
    assert path.stat().st_size > 10 << 20
    texts = list(
        itertools.chain.from_iterable(
            raw_batches(DataConfig(source=SourceConfig(path=str(path)), max_documents=None), 64)
        )
    )
    assert len(texts) == 10_003 and texts[-3:] == ["an id as text", "no id", None]

    write_jsonl(path, filler + [{"id": 1, "text": 12345}])
    with pytest.raises(DataError, match=r"wiki.jsonl: line 10001: column 'text' holds int, not text"):
        list(raw_batches(DataConfig(source=SourceConfig(path=str(path)), max_documents=None), 64))


# A corpus of many scripts (Wikipedia's) gave a WordPiece vocabulary larger than model.vocab_size (its alphabet,
# each letter also as a ##piece, does not shrink to fit), and packing failed with a numpy broadcast traceback.
def test_a_vocabulary_larger_than_the_model_is_refused_in_one_line(tiny_config, tmp_path):
    ranges = [(0x1200, 0x137C), (0x10D0, 0x10FA), (0x0561, 0x0586), (0x0430, 0x044F)]  # Ethiopic, Georgian, ...
    letters = [chr(c) for a, b in ranges for c in range(a, b + 1) if chr(c).isalpha()]
    words = ["".join(letters[(i * 7 + j) % len(letters)] for j in range(5)) for i in range(len(letters))]
    docs = [{"text": " ".join(words[i : i + 40] + words[: 40 - len(words[i : i + 40])])} for i in range(len(words))]
    source = write_jsonl(tmp_path / "scripts.jsonl.gz", docs)
    cache = tmp_path / "cache"
    cfg = tiny_config(
        f"data.source={source}", "data.max_documents=null", f"data.cache_dir={cache}", "model.vocab_size=128"
    )
    with pytest.raises(DataError, match=r"tokens, more than model.vocab_size=128.*tokenizer.limit_alphabet") as err:
        prepare_data(cfg)
    assert "\n" not in str(err.value) and not list(cache.glob(".tmp-*"))
