"""pretrain/tokenizer.py: token ids that depend on the learned tokens alone, not on the trainer's hash-map order."""

from __future__ import annotations

import gzip
import json

import pytest
from tokenizers import BertWordPieceTokenizer

from pretrain.config import TokenizerConfig
from pretrain.tokenizer import SPECIAL_TOKENS, canonical_ids, train_tokenizer


@pytest.fixture(scope="module")
def premises(data_dir) -> list[str]:
    with gzip.open(data_dir / "mnli" / "train.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line)["premise"] for line, _ in zip(fh, range(400), strict=False)]


def test_the_same_tokens_get_the_same_ids_however_the_trainer_numbered_them(premises):
    tokenizer = train_tokenizer([premises], TokenizerConfig(), 512, 128)
    rest = [t for t in tokenizer.get_vocab() if t not in SPECIAL_TOKENS]
    numberings = []
    for order in (rest, rest[::-1], sorted(rest, key=len)):  # three numberings, the specials first as the trainer's
        vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *order])}
        wordpiece = BertWordPieceTokenizer(vocab=vocab, lowercase=True)
        canonical_ids(wordpiece)
        numberings.append(wordpiece.get_vocab())
    assert numberings[0] == numberings[1] == numberings[2] == tokenizer.get_vocab()
    assert [numberings[0][t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


def test_builds_that_learn_the_same_tokens_number_them_the_same(premises):
    # The trainer numbers its ##pieces in hash-map order: before the renumbering, three builds of these 400 premises
    # gave three numberings of the ~50 ##letters. Where merge counts tie it may also learn another token or two
    # (docs/training.md), so builds are compared where their tokens agree.
    vocabularies = [train_tokenizer([premises], TokenizerConfig(), 512, 128).get_vocab() for _ in range(3)]
    same_tokens = [v for v in vocabularies[1:] if set(v) == set(vocabularies[0])]
    assert all(v == vocabularies[0] for v in same_tokens)
    assert [vocabularies[0][t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


def test_renumbering_keeps_how_words_are_split(premises):
    tokenizer = train_tokenizer([premises], TokenizerConfig(), 512, 128)
    ids = tokenizer("An unbelievable tokenization.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["an", "un"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "an unbelievable tokenization."
