"""Train an uncased WordPiece vocabulary on a bounded sample of documents; wrap it as a transformers tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from tokenizers import BertWordPieceTokenizer
from tokenizers.models import WordPiece
from transformers import BertTokenizerFast

from pretrain.config import TokenizerConfig
from pretrain.corpus import PIECE_CHARS, text_pieces
from stagekit.errors import DataError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(
    batches: Iterable[list[str]], cfg: TokenizerConfig, vocab_size: int, model_max_length: int
) -> BertTokenizerFast:
    """A BertTokenizerFast whose WordPiece vocabulary (at most `vocab_size` tokens) is learnt from `batches`.
    Raises DataError (one line) when the corpus's alphabet alone needs more than `vocab_size` tokens.

    `batches` (lists of cleaned documents) is consumed once, as a stream: the trainer keeps word counts,
    not texts, so memory depends on the sample's vocabulary, not its size. The caller bounds the sample
    (`pretrain.corpus.training_sample`, tokenizer.max_training_documents).
    """
    wordpiece = BertWordPieceTokenizer(lowercase=cfg.lowercase, clean_text=True, handle_chinese_chars=True)
    # Long documents go in as pieces cut at spaces: the same words are counted, and the trainer never holds a
    # whole long document's normalised text with its alignments.
    pieces = ([piece for text in batch for piece in text_pieces(text, PIECE_CHARS)] for batch in batches)
    wordpiece.train_from_iterator(
        pieces,
        vocab_size=vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        special_tokens=SPECIAL_TOKENS,
        wordpieces_prefix="##",
        show_progress=False,  # the caller's progress bar counts the documents
    )
    canonical_ids(wordpiece)
    # Without model_max_length the saved tokenizer claims 1e30 and never truncates (tests/pretrain/test_data.py checks the saved value).
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer, do_lower_case=cfg.lowercase, model_max_length=model_max_length
    )
    if len(tokenizer) > vocab_size:
        # The trainer keeps its whole alphabet, each letter also as a ##piece, whatever vocab_size says; the model's
        # embeddings would then lack rows for some ids.
        raise DataError(
            f"the WordPiece vocabulary learnt from the corpus has {len(tokenizer)} tokens, more than model.vocab_size="
            f"{vocab_size}: its alphabet (up to tokenizer.limit_alphabet={cfg.limit_alphabet} characters, each also as "
            "a ##piece) does not fit; raise model.vocab_size or lower tokenizer.limit_alphabet"
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


def canonical_ids(wordpiece: BertWordPieceTokenizer) -> None:
    """Renumber a trained WordPiece vocabulary: the special tokens first, in SPECIAL_TOKENS order, then every other
    token in code-point order, so the ids depend on the learned tokens alone. The trainer numbers its ##pieces in
    hash-map order, which changes from one build to the next; a WordPiece model's ids play no part in how it splits a
    word (longest match over the vocabulary), so only the numbering changes. Where merge counts tie, the trainer may
    also learn a few other tokens from one build to the next, which no renumbering undoes (docs/training.md)."""
    model = wordpiece._tokenizer.model
    vocab = wordpiece._tokenizer.get_vocab(with_added_tokens=False)
    specials = [t for t in SPECIAL_TOKENS if t in vocab]
    tokens = specials + sorted(set(vocab) - set(specials))
    wordpiece._tokenizer.model = WordPiece(
        {token: i for i, token in enumerate(tokens)},
        unk_token=model.unk_token,
        max_input_chars_per_word=model.max_input_chars_per_word,
        continuing_subword_prefix=model.continuing_subword_prefix,
    )


def token_dtype(vocabulary: int) -> np.dtype:
    """The narrowest unsigned type for ids below `vocabulary`: uint16 up to 65,536 tokens, else uint32."""
    return np.dtype(np.uint16 if vocabulary <= 1 << 16 else np.uint32)
