"""Train an uncased WordPiece vocabulary on the training split and wrap it as a transformers tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import datasets
from tokenizers import BertWordPieceTokenizer
from transformers import BertTokenizerFast

from pretrain.config import TokenizerConfig

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(
    texts: datasets.Dataset, cfg: TokenizerConfig, vocab_size: int, model_max_length: int
) -> BertTokenizerFast:
    """A BertTokenizerFast whose WordPiece vocabulary (at most `vocab_size`) is learnt from `texts["text"]`."""
    if cfg.max_training_documents is not None and len(texts) > cfg.max_training_documents:
        texts = texts.select(range(cfg.max_training_documents))

    def batches(size: int = 1000) -> Iterator[list[str]]:
        for start in range(0, len(texts), size):
            yield texts[start : start + size]["text"]

    wordpiece = BertWordPieceTokenizer(lowercase=cfg.lowercase, clean_text=True, handle_chinese_chars=True)
    wordpiece.train_from_iterator(
        batches(),
        vocab_size=vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        special_tokens=SPECIAL_TOKENS,
        wordpieces_prefix="##",
        show_progress=True,
        length=len(texts),
    )
    # Without model_max_length the saved tokenizer claims 1e30 and never truncates (NOTES.md).
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer, do_lower_case=cfg.lowercase, model_max_length=model_max_length
    )
    if len(tokenizer) < vocab_size:
        # The model keeps model.vocab_size rows (a multiple of 64); the spare rows are never targets.
        log.warning(
            "the corpus gave only %d WordPiece tokens for model.vocab_size=%d; the extra rows stay unused",
            len(tokenizer),
            vocab_size,
        )
    log.info("tokenizer: %d WordPiece tokens, lowercase=%s", len(tokenizer), cfg.lowercase)
    return tokenizer
