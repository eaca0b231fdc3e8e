"""The packed-data cache as training sees it: memory-mapped blocks, atomic builds, one-line errors."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pretrain import build as build_module
from pretrain.blocks import TokenBlocks, cache_key, open_cache, prepare_data
from pretrain.config import DataConfig, PretrainConfig
from pretrain.corpus import raw_batches
from stagekit.config import load_config
from stagekit.errors import DataError
from stagekit.sources import SourceConfig
from tests.pretrain.reference_packing import reference
from tests.processes import kill_once_ready


def rss_anon_mb() -> float:
    """Anonymous resident memory of this process: heap and copies, not pages of mapped files."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:"))) / 1024


def test_token_blocks_index_like_a_tensor_of_int64_blocks(tmp_path):
    tokens = np.arange(6 * 8, dtype=np.uint16)
    tokens.tofile(tmp_path / "t.bin")
    blocks = TokenBlocks(tmp_path / "t.bin", 8, np.uint16)
    expected = torch.arange(48).reshape(6, 8)
    assert len(blocks) == 6 and blocks.num_tokens == 48 and isinstance(blocks.tokens, np.memmap)
    assert (
        blocks[2].dtype == torch.int64 and torch.equal(blocks[2], expected[2]) and torch.equal(blocks[-1], expected[5])
    )
    assert torch.equal(blocks[torch.tensor([4, 0, 4])], expected[[4, 0, 4]])
    assert torch.equal(blocks[np.array([1, 3])], expected[[1, 3]]) and torch.equal(blocks[1:3], expected[1:3])
    assert torch.equal(blocks[torch.tensor(3)], expected[3])
    with pytest.raises(IndexError):
        blocks[6]
    with pytest.raises(IndexError):
        blocks[torch.tensor([[0, 1]])]
    copy = pickle.loads(pickle.dumps(blocks))
    assert len(pickle.dumps(blocks)) < 500 and torch.equal(copy[1:4], expected[1:4])  # the path travels, not data
    (tmp_path / "bad.bin").write_bytes(b"\0" * 18)
    with pytest.raises(DataError, match=r"bad.bin: 18 bytes is not a whole number of 8-token uint16 blocks"):
        TokenBlocks(tmp_path / "bad.bin", 8, np.uint16)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssAnon from /proc")
def test_sharded_training_batches_do_not_load_the_token_file(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB of tokens on disk (a sparse file: no disk space used)
    blocks = TokenBlocks(path, 4096, np.uint16)
    before = rss_anon_mb()
    seen = []
    for rank in (0, 1):  # what accelerate gives each of two training processes: a DistributedSampler shard
        sampler = DistributedSampler(blocks, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(blocks, batch_size=16, sampler=sampler)
        batch = next(iter(loader))
        assert batch.shape == (16, 4096) and batch.dtype == torch.int64
        seen.append(set(sampler))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == len(blocks) == 1 << 17
    # Reading the file into memory would add 1,024 MiB (4,096 as int64); the samplers' index lists add ~10.
    assert rss_anon_mb() - before < 64


def test_prepared_data_are_memory_mapped_and_counts_are_vocabulary_sized(tiny_config):
    cfg = tiny_config()
    data = prepare_data(cfg)
    assert isinstance(data.train.tokens, np.memmap) and isinstance(data.validation.tokens, np.memmap)
    assert not data.train.tokens.flags.writeable
    assert data.token_counts.shape == (cfg.model.vocab_size,) and data.token_counts.dtype == torch.float64
    assert data.stats["train_tokens"] == data.train.num_tokens


def test_a_cache_whose_files_disagree_with_its_stats_is_refused(tiny_config, tmp_path):
    cfg = tiny_config()
    prepare_data(cfg)
    folder = tmp_path / "copy"
    shutil.copytree(Path(cfg.data.cache_dir) / cache_key(cfg), folder)
    train = folder / "train.bin"
    train.write_bytes(train.read_bytes()[: -cfg.data.block_size * 2])  # one uint16 block short
    with pytest.raises(DataError, match=r"train.bin: \d+ blocks, stats.json says \d+; delete"):
        open_cache(folder)


def test_an_exception_midway_leaves_nothing_and_the_next_call_builds(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("data.chunk_documents=25", "data.num_proc=2", f"data.cache_dir={tmp_path}")
    calls = []
    real_add = build_module.BlockWriter.add

    def add_then_die(self, stream):
        calls.append(1)
        if len(calls) > 2:  # both splits of the first chunk are written, then the run dies
            raise RuntimeError("killed")
        return real_add(self, stream)

    monkeypatch.setattr(build_module.BlockWriter, "add", add_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_data(cfg)
    assert list(tmp_path.iterdir()) == [tmp_path / f".lock-{cache_key(cfg)}"]  # no cache, no temporary folder
    monkeypatch.setattr(build_module.BlockWriter, "add", real_add)
    data = prepare_data(cfg)
    assert torch.equal(data.train[:], reference(cfg, data.tokenizer)["train"])


def test_a_killed_preparation_is_never_trusted_and_is_cleaned_up(tiny_args, tmp_path):
    cache = tmp_path / "cache"
    args = tiny_args("data.max_documents=1500", "data.chunk_documents=10", "data.num_proc=1")
    args = [a for a in args if not a.startswith("data.cache_dir=")] + [f"data.cache_dir={cache}"]

    def first_blocks_written() -> bool:
        return any(p.stat().st_size > 0 for p in cache.glob(".tmp-*/train.bin"))

    kill_once_ready("pretrain.prepare", args, first_blocks_written)
    (stale,) = cache.glob(".tmp-*")
    assert not (stale / "stats.json").exists()
    cfg = load_config(PretrainConfig, args[1], args[2:])
    data = prepare_data(cfg)
    assert not stale.exists() and data.stats["documents_read"] == 1500
    assert torch.equal(data.validation[:], reference(cfg, data.tokenizer)["validation"])


def write_jsonl(path: Path, rows: list[dict]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_a_folder_of_files_with_different_columns_is_read_file_by_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", [{"text": f"review {i}"} for i in range(5)])
    write_jsonl(tmp_path / "b.jsonl.gz", [{"id": i, "title": "t", "text": f"article {i}"} for i in range(5)])
    batches = list(raw_batches(DataConfig(source=SourceConfig(path=str(tmp_path)), max_documents=8), batch_size=3))
    assert sum(batches, []) == [f"review {i}" for i in range(5)] + [f"article {i}" for i in range(3)]
    write_jsonl(tmp_path / "c.jsonl.gz", [{"body": "no text column here"}])
    with pytest.raises(DataError, match=r"c.jsonl.gz: no text column 'text' \(columns: body\)"):
        list(raw_batches(DataConfig(source=SourceConfig(path=str(tmp_path)), max_documents=None), batch_size=3))


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        ([{"body": "text"}], [], r"no text column 'text' \(columns: body\); set data.text_column"),
        ([{"text": 5}], [], r"column 'text' holds int, not text"),
        # "y" * 80 hashes into train (seed 42), so the sample exists and the kept count is what fails
        ([{"text": "tiny"}] * 5 + [{"text": "y" * 80}], [], r"only 1 of 6 documents have at least data.min_chars=64"),
        ([{"text": "short"}] * 4, [], r"none of the 4 documents gives a training document of at least"),
        (
            [{"text": f"review {i} " * 30} for i in range(40)],
            ["data.validation_fraction=0.01"],
            r"the validation split gives no block",
        ),
    ],
    ids=["missing-column", "not-text", "too-few-kept", "no-training-document", "no-validation-block"],
)
def test_bad_corpora_fail_in_one_line(tiny_config, tmp_path, rows, overrides, message):
    source = write_jsonl(tmp_path / "docs.jsonl.gz", rows)
    cfg = tiny_config(f"data.source={source}", "data.max_documents=null", f"data.cache_dir={tmp_path}/c", *overrides)
    with pytest.raises(DataError, match=message) as err:
        prepare_data(cfg)
    assert "\n" not in str(err.value) and not list((tmp_path / "c").glob(".tmp-*"))


def test_malformed_json_line_is_one_line_naming_the_file(tiny_config, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine document here"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl: could not be read") as err:
        prepare_data(tiny_config(f"data.source={path}", "data.max_documents=null", f"data.cache_dir={tmp_path}/c"))
    assert "\n" not in str(err.value)


def test_offline_hub_source_fails_fast_naming_the_local_alternative():
    start = time.perf_counter()
    with pytest.raises(DataError) as err:  # the default: Skylion007/openwebtext; conftest sets HF_HUB_OFFLINE=1
        next(raw_batches(DataConfig(), batch_size=10))
    message = str(err.value)
    assert time.perf_counter() - start < 5
    assert "Skylion007/openwebtext" in message and "imdb_100k.jsonl.gz" in message and "\n" not in message
