from __future__ import annotations

import math
import time

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from common.errors import DataError
from pretrain import blocks as blocks_module
from pretrain.blocks import cache_key, pack_documents, prepare_data, unigram_entropy
from pretrain.config import DataConfig, TokenizerConfig
from pretrain.corpus import clean_text, load_corpus
from pretrain.tokenizer import train_tokenizer

TEXTS = [
    "The movie was great.<br /><br />I loved the acting and the music!",
    "A terrible film. The plot made no sense and the actors were bored.",
    "An average movie with a good soundtrack, but the ending was weak.",
] * 40


def test_cleaning_strips_html_and_normalises_whitespace():
    assert clean_text("Great<br />film.<BR/>Really  \n\t good &amp; <i>fun</i>") == "Great film. Really good & fun"
    assert clean_text(None) == "" and clean_text("   \n ") == ""


@pytest.fixture(scope="module")
def tiny_tokenizer():
    docs = datasets.Dataset.from_dict({"text": TEXTS})
    return train_tokenizer(docs, TokenizerConfig(min_frequency=1), vocab_size=192, model_max_length=128)


def test_tokenizer_is_uncased_wordpiece_with_bert_specials(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    assert len(tok) <= 192
    assert [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    ids = tok("The MOVIE was Great")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids == tok("the movie was great")["input_ids"]  # uncased
    assert any(t.startswith("##") for t in tok.get_vocab())  # WordPiece continuation pieces
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("the movie was great")["input_ids"] == ids
    assert reloaded.model_max_length == 128  # not the 1e30 a bare wrap would save


def test_blocks_are_exactly_block_size_with_cls_and_sep(tiny_tokenizer):
    docs = datasets.Dataset.from_dict({"text": TEXTS})
    packed = pack_documents(docs, tiny_tokenizer, block_size=128)
    ids = torch.tensor(packed["input_ids"])
    assert ids.ndim == 2 and ids.shape[1] == 128 and len(ids) > 3
    assert (ids[:, 0] == tiny_tokenizer.cls_token_id).all() and (ids[:, -1] == tiny_tokenizer.sep_token_id).all()
    assert not (ids == tiny_tokenizer.pad_token_id).any()  # packed, never padded
    # documents are separated by [SEP] inside blocks, and [CLS] appears only at the start
    assert (ids[:, 1:-1] == tiny_tokenizer.sep_token_id).any()
    assert not (ids[:, 1:] == tiny_tokenizer.cls_token_id).any()


def test_unigram_entropy_of_a_known_distribution():
    blocks = torch.tensor([[2, 5, 5, 6, 7, 3]])  # specials 2 and 3 are left out: p = (1/2, 1/4, 1/4)
    assert unigram_entropy(blocks, 8, [0, 1, 2, 3, 4]) == pytest.approx(1.5 * math.log(2))


def test_document_split_is_deterministic_and_disjoint(data_dir):
    cfg = DataConfig(source=f"{data_dir}/pretrain/imdb_100k.jsonl.gz", max_documents=200, validation_fraction=0.1)
    first, counts = load_corpus(cfg)
    again, _ = load_corpus(cfg)
    assert first["validation"]["text"] == again["validation"]["text"]
    assert not set(first["train"]["text"]) & set(first["validation"]["text"])
    assert counts.read == 200 and counts.train_documents + counts.validation_documents + counts.dropped_short == 200


def test_short_documents_are_dropped_and_counted(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(["tiny", "", "x" * 80, "y" * 90, "z" * 100, "<br />"]))
    corpus, counts = load_corpus(
        DataConfig(source=str(path), max_documents=None, min_chars=64, validation_fraction=0.3)
    )
    assert counts.read == 6 and counts.dropped_short == 3
    assert counts.train_documents + counts.validation_documents == 3


def test_missing_text_column_names_the_columns(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"body": "some text here"}\n')
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: body\)"):
        load_corpus(DataConfig(source=str(path), max_documents=None))


def test_offline_hub_source_fails_fast_naming_the_local_alternative():
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_corpus(DataConfig())  # the default: Skylion007/openwebtext on the Hub; conftest sets HF_HUB_OFFLINE=1
    message = str(err.value)
    assert time.perf_counter() - start < 5
    assert "Skylion007/openwebtext" in message and "imdb_100k.jsonl.gz" in message and "\n" not in message


def test_second_run_loads_the_cache_and_a_change_makes_a_new_key(tiny_config, monkeypatch):
    cfg = tiny_config()
    first = prepare_data(cfg)
    assert first.train.shape[1] == cfg.data.block_size and len(first.validation) > 0
    assert first.stats["train_tokens"] == first.train.numel()

    def fail(*_args, **_kwargs):
        raise AssertionError("cache miss: the blocks were rebuilt")

    monkeypatch.setattr(blocks_module, "build_cache", fail)
    second = prepare_data(cfg)
    assert torch.equal(first.train, second.train) and second.stats == first.stats
    assert cache_key(tiny_config("data.block_size=64", "model.max_position_embeddings=128")) != cache_key(cfg)
    assert cache_key(tiny_config("model.vocab_size=2048")) != cache_key(cfg)
    assert cache_key(tiny_config("data.num_proc=2")) == cache_key(cfg)  # speed-only settings share the cache
