"""Preparation: cleaning, split, tokenizer sample, streamed packing against an in-memory reference, cache."""

from __future__ import annotations

import html
import itertools
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer

from pretrain import blocks as blocks_module
from pretrain import build as build_module
from pretrain import corpus as corpus_module
from pretrain.blocks import cache_key, prepare_data, unigram_entropy
from pretrain.config import TokenizerConfig
from pretrain.corpus import _TAG, clean_text, in_validation, split_documents
from pretrain.tokenizer import train_tokenizer
from tests.pretrain.reference_packing import first_documents, reference

TEXTS = [
    "The movie was great.<br /><br />I loved the acting and the music!",
    "A terrible film. The plot made no sense and the actors were bored.",
    "An average movie with a good soundtrack, but the ending was weak.",
] * 40


def test_cleaning_strips_html_and_normalises_whitespace():
    assert clean_text("Great<br />film.<BR/>Really  \n\t good &amp; <i>fun</i>") == "Great film. Really good & fun"
    assert clean_text(None) == "" and clean_text("   \n ") == ""


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_cleaning_equals_its_regex_definition_on_any_text(text):
    # clean_text collapses whitespace with str.split(), which must agree with re's \s on every character.
    assert clean_text(text) == re.sub(r"\s+", " ", html.unescape(_TAG.sub(" ", text))).strip()


def test_documents_with_nothing_visible_are_dropped_like_empty_ones():
    # Zero-width spaces, control and format characters survive whitespace cleaning; such a document is as
    # empty as a blank one, whatever its length (the rule of stagekit/text.py, shared with the NLI readers).
    invisible = ["\u200b" * 80, "\x00\x01" * 40, "\ufeff\u2060\u200d" * 30]
    kept = "a review long enough to keep, with words in it that a model can learn something from."
    out = split_documents([*invisible, kept, "", None], min_chars=64, validation_fraction=0.0, seed=0)
    assert (out.read, out.dropped) == (6, 5)
    assert out.texts["train"] == [kept]


def test_split_is_seeded_near_the_fraction_and_keeps_duplicates_together():
    docs = [f"document number {i}" for i in range(20_000)]
    share = sum(in_validation(d, 0.1, 42) for d in docs) / len(docs)
    assert 0.09 < share < 0.11  # 20k draws: 1 point is > 4 sigma
    assert [in_validation(d, 0.1, 42) for d in docs[:500]] == [in_validation(d, 0.1, 42) for d in docs[:500]]
    assert [in_validation(d, 0.1, 42) for d in docs[:500]] != [in_validation(d, 0.1, 7) for d in docs[:500]]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return train_tokenizer([TEXTS], TokenizerConfig(min_frequency=1), vocab_size=192, model_max_length=128)


def test_tokenizer_is_uncased_wordpiece_with_bert_specials(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    assert len(tok) <= 192
    specials = [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token]
    assert specials == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tok("The MOVIE was Great")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids == tok("the movie was great")["input_ids"]  # uncased
    assert any(t.startswith("##") for t in tok.get_vocab())  # WordPiece continuation pieces
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("the movie was great")["input_ids"] == ids
    assert reloaded.model_max_length == 128  # not the 1e30 a bare wrap would save


def test_unigram_entropy_of_a_known_distribution():
    assert unigram_entropy(np.array([0, 0, 2, 1, 1])) == pytest.approx(1.5 * math.log(2))  # p = (1/2, 1/4, 1/4)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_blocks_of_a_corpus_of_many_chunks_equal_the_in_memory_reference(tiny_config, tmp_path, num_proc):
    cfg = tiny_config("data.max_documents=500", "data.chunk_documents=37", f"data.num_proc={num_proc}")
    cfg.data.cache_dir = str(tmp_path)
    data = prepare_data(cfg)
    expected = reference(cfg, data.tokenizer)
    assert len(data.train) > 10 * 37 // 3  # many chunks' worth of blocks, each chunk's tail carried over
    for split in ("train", "validation"):
        blocks = getattr(data, split)
        assert torch.equal(blocks[: len(blocks)], expected[split]), split
        assert data.stats[f"{split}_blocks"] == len(expected[split])
    counts = torch.bincount(expected["train"].flatten(), minlength=cfg.model.vocab_size).double()
    counts[data.tokenizer.all_special_ids] = 0
    assert torch.equal(data.token_counts, counts)
    assert data.stats["unigram_entropy"] == pytest.approx(unigram_entropy(counts.numpy()))
    assert data.stats["dtype"] == "uint16" and data.stats["block_size"] == cfg.data.block_size


def test_chunks_keep_the_source_order_within_both_bounds_and_read_the_source_in_small_batches(tiny_config, monkeypatch):
    # What the main process holds is one chunk plus one read batch: long documents (Wikipedia's) must not
    # make either grow with chunk_documents.
    long_docs = ["x" * (corpus_module.CHUNK_CHARS // 3 + i) for i in range(10)]
    docs = [*long_docs, None, *(f"doc {i}" for i in range(300))]
    reads: list[int] = []

    def fake_raw_batches(cfg, batch_size):
        for start in range(0, len(docs), batch_size):
            reads.append(len(docs[start : start + batch_size]))
            yield docs[start : start + batch_size]

    monkeypatch.setattr(corpus_module, "raw_batches", fake_raw_batches)
    cfg = tiny_config("data.chunk_documents=100").data
    chunks = list(corpus_module.document_chunks(cfg))
    assert [d for chunk in chunks for d in chunk] == docs
    assert max(reads) <= corpus_module.READ_BATCH
    for chunk in chunks:
        assert len(chunk) <= 100
        assert sum(len(d or "") for d in chunk[:-1]) < corpus_module.CHUNK_CHARS
    assert [len(c) for c in chunks[:4]] == [3, 3, 3, 100]  # three long documents reach CHUNK_CHARS


def test_tokenizer_learns_from_the_first_training_documents_only(tiny_config, tmp_path, monkeypatch):
    seen: list[str] = []
    real = build_module.train_tokenizer

    def spy(batches, *args, **kwargs):
        seen.extend(itertools.chain.from_iterable(batches))
        return real([seen], *args, **kwargs)

    monkeypatch.setattr(build_module, "train_tokenizer", spy)
    cfg = tiny_config("tokenizer.max_training_documents=120", "data.chunk_documents=50", f"data.cache_dir={tmp_path}")
    data = prepare_data(cfg)
    d = cfg.data
    cleaned = [t for t in map(clean_text, first_documents(d.source.path, d.max_documents)) if len(t) >= d.min_chars]
    train_docs = [t for t in cleaned if not in_validation(t, d.validation_fraction, d.split_seed)]
    assert seen == train_docs[:120] and data.stats["tokenizer_documents"] == 120


@pytest.fixture
def pinned_tokenizer(monkeypatch, tiny_config):
    """One tokenizer for every build: WordPiece training itself breaks count ties by hash-map order
    (a known limitation of the tokenizers library), so comparing two builds byte for byte needs the same
    vocabulary."""
    cfg = tiny_config()
    docs = [clean_text(t) for t in first_documents(cfg.data.source.path, cfg.data.max_documents)]
    tokenizer = train_tokenizer([docs], cfg.tokenizer, cfg.model.vocab_size, model_max_length=cfg.data.block_size)

    def fixed(batches, *_args, **_kwargs):
        for _ in batches:  # the sample is still read, as the real trainer would
            pass
        return tokenizer

    monkeypatch.setattr(build_module, "train_tokenizer", fixed)
    return tokenizer


def cache_files(cfg) -> dict[str, bytes]:
    folder = Path(cfg.data.cache_dir) / cache_key(cfg)
    return {name: (folder / name).read_bytes() for name in ("train.bin", "validation.bin", "token_counts.npy")}


@pytest.mark.parametrize(
    "speed_only",
    [["data.num_proc=2", "data.chunk_documents=7"], ["data.streaming=false", "data.chunk_documents=64"]],
    ids=["two-processes-small-chunks", "arrow-not-streaming"],
)
def test_speed_only_settings_give_the_same_files(tiny_config, tmp_path, pinned_tokenizer, monkeypatch, speed_only):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # the Arrow copy goes here
    # Local JSON Lines are read line by line either way: a Parquet copy goes through datasets' stream and Arrow cache.
    parquet = tmp_path / "docs.parquet"
    texts = first_documents(tiny_config().data.source.path, 300)
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(parquet))
    source = (
        f"data.source={parquet}"
        if "data.streaming=false" in speed_only
        else f"data.source={tiny_config().data.source.path}"
    )
    first = tiny_config(source, "data.num_proc=1", f"data.cache_dir={tmp_path}/a")
    second = tiny_config(source, *speed_only, f"data.cache_dir={tmp_path}/b")
    prepare_data(first), prepare_data(second)
    assert cache_key(first) == cache_key(second)
    assert cache_files(first) == cache_files(second)


def test_cache_is_reused_and_its_key_covers_what_determines_the_blocks(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config()
    first = prepare_data(cfg)

    def fail(*_args, **_kwargs):
        raise AssertionError("cache miss: the blocks were rebuilt")

    monkeypatch.setattr(blocks_module, "build_cache", fail)
    second = prepare_data(cfg)
    assert torch.equal(first.train[:], second.train[:]) and second.stats == first.stats
    copy = tmp_path / "copy.jsonl.gz"
    shutil.copy(cfg.data.source.path, copy)
    determining = [
        f"data.source={copy}",
        "data.max_documents=299",
        "data.text_column=body",
        "data.min_chars=65",
        "data.validation_fraction=0.2",
        "data.split_seed=1",
        "tokenizer.lowercase=false",
        "tokenizer.min_frequency=3",
        "tokenizer.limit_alphabet=500",
        "tokenizer.max_training_documents=100",
        "model.vocab_size=2048",
    ]
    keys = {cache_key(tiny_config(o)) for o in determining}
    keys.add(cache_key(tiny_config("data.block_size=64", "model.max_position_embeddings=128")))
    assert cache_key(cfg) not in keys and len(keys) == len(determining) + 1
    os.utime(copy, (1, 1))  # same path, new modification time: a changed file
    assert cache_key(tiny_config(f"data.source={copy}")) not in keys
    for speed_only in ("data.num_proc=3", "data.chunk_documents=5", "data.streaming=false", "data.cache_dir=/x"):
        assert cache_key(tiny_config(speed_only)) == cache_key(cfg), speed_only
