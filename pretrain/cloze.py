"""Does the model read context? Cloze accuracy on held-out sentences, beside guessing by frequency.

From the validation blocks (documents the model never trained on) we cut sentences of 8–48 tokens,
mask one content word in each — a whole-word token of 3+ letters that is not an English stop word
(scikit-learn's list) — and ask for it. The frequency baseline answers every item with the most
frequent content words of the training tokens, the best guess that ignores context; the model is not
restricted to content words, so the comparison favours the baseline. A model that only learnt token
frequencies scores about the baseline; one that reads its neighbours scores well above it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from transformers import PreTrainedModel, PreTrainedTokenizerBase

SENTENCE_ENDS = (".", "!", "?")
MIN_TOKENS, MAX_TOKENS = 8, 48


@dataclass(frozen=True)
class ClozeItem:
    input_ids: tuple[int, ...]  # [CLS] sentence [SEP] with [MASK] at `position`
    position: int
    answer: int  # the masked token's id


def content_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids of vocabulary entries that are whole words of 3+ letters and not stop words (bool, len(vocab))."""
    allowed = torch.zeros(len(tokenizer), dtype=torch.bool)
    for token, index in tokenizer.get_vocab().items():
        if token.isalpha() and len(token) >= 3 and token.lower() not in ENGLISH_STOP_WORDS:
            allowed[index] = True
    return allowed


def cloze_items(
    blocks: Sequence[torch.Tensor], tokenizer: PreTrainedTokenizerBase, count: int, seed: int = 0
) -> list[ClozeItem]:
    """Up to `count` items, one per sentence, taken in block order; the masked word is chosen by `seed`."""
    ends = {tokenizer.convert_tokens_to_ids(t) for t in SENTENCE_ENDS} | {tokenizer.sep_token_id}
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    allowed = content_ids(tokenizer)
    rng, items = random.Random(seed), []
    for block in blocks:
        ids = [int(t) for t in block]
        begin = 1  # after [CLS]
        for i, token in enumerate(ids):
            if token not in ends:
                continue
            sentence, first_piece, begin = ids[begin : i + 1], begin == 1, i + 1
            if first_piece or not MIN_TOKENS <= len(sentence) <= MAX_TOKENS:
                continue  # a block's first piece may begin mid-sentence
            sentence = [t for t in sentence if t != tokenizer.sep_token_id]  # [SEP] ends a document
            candidates = [
                j
                for j, t in enumerate(sentence)
                if allowed[t] and not (j + 1 < len(sentence) and vocab[sentence[j + 1]].startswith("##"))
            ]
            if not candidates:
                continue
            j = rng.choice(candidates)
            masked = [tokenizer.cls_token_id, *sentence, tokenizer.sep_token_id]
            answer, masked[j + 1] = masked[j + 1], tokenizer.mask_token_id
            items.append(ClozeItem(tuple(masked), j + 1, answer))
            if len(items) >= count:
                return items
    return items


@torch.no_grad()
def cloze_accuracy(
    model: PreTrainedModel,
    items: Sequence[ClozeItem],
    token_counts: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 64,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy of `model` and of the frequency baseline on `items` (fractions in [0, 1]).

    `token_counts`: float (vocab_size,) occurrences of each id in the training blocks.
    """
    if not items:
        return {"cloze_items": 0}
    allowed = content_ids(tokenizer)
    counts = token_counts[: len(allowed)].double().clone()
    counts[~allowed] = -1
    frequent = counts.topk(5).indices
    answers = torch.tensor([item.answer for item in items])
    baseline1 = float((answers == frequent[0]).double().mean())
    baseline5 = float(torch.isin(answers, frequent).double().mean())

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits1 = hits5 = 0
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            width = max(len(item.input_ids) for item in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            for row, item in enumerate(chunk):
                ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
            logits = model(input_ids=ids.to(device), attention_mask=(ids != tokenizer.pad_token_id).to(device)).logits
            at_mask = logits[torch.arange(len(chunk)), torch.tensor([item.position for item in chunk])]
            top5 = at_mask.topk(5, dim=-1).indices.cpu()
            gold = torch.tensor([item.answer for item in chunk])
            hits1 += int((top5[:, 0] == gold).sum())
            hits5 += int((top5 == gold[:, None]).any(dim=1).sum())
    finally:
        model.train(was_training)
    n = len(items)
    return {
        "cloze_items": n,
        "cloze_top1": hits1 / n,
        "cloze_top5": hits5 / n,
        "cloze_frequency_top1": baseline1,
        "cloze_frequency_top5": baseline5,
    }
