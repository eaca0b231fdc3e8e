"""pretrain/tokenizer.py: the same corpus gives the same WordPiece vocabulary, ids included, on every build."""

from __future__ import annotations

import gzip
import json

import pytest

from pretrain.config import TokenizerConfig
from pretrain.tokenizer import SPECIAL_TOKENS, train_tokenizer


@pytest.fixture(scope="module")
def premises(data_dir) -> list[str]:
    with gzip.open(data_dir / "mnli" / "train.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line)["premise"] for line, _ in zip(fh, range(400), strict=False)]


def test_the_same_corpus_gives_the_same_token_ids_on_every_build(premises):
    # The trainer numbers its ##pieces in hash-map order: before canonical ids, three builds of these 400 premises
    # gave three numberings of the ~50 ##letters.
    vocabularies = [train_tokenizer([premises], TokenizerConfig(), 512, 128).get_vocab() for _ in range(3)]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]
    assert [vocabularies[0][t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


def test_renumbering_keeps_how_words_are_split(premises):
    tokenizer = train_tokenizer([premises], TokenizerConfig(), 512, 128)
    ids = tokenizer("An unbelievable tokenization.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["an", "un"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "an unbelievable tokenization."
