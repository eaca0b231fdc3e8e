"""What the app shows for one pair or a table of pairs, computed through `NLIEncoder.predict` only."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from siamese.inference.encoder import MOSTLY_UNKNOWN, NLIEncoder
from siamese.inference.postprocess import SimilarityReference, random_pair_cosines
from stagekit.errors import UserError
from stagekit.text import has_visible_content

THREADS_ENV = "APP_TORCH_THREADS"
MAX_CHARS_ENV = "APP_MAX_CHARS"
DEFAULT_MAX_CHARS = 10_000
PAIR_FIELDS = ("premise", "hypothesis")


def cpu_threads(env: Mapping[str, str] = os.environ) -> int:
    """Torch CPU threads for the app: $APP_TORCH_THREADS, default 1.

    One sentence pair at a time gains little from more threads, and on a busy CPU (a shared 2-core
    machine, measured) OpenMP's spinning threads made each pair 7-20x slower than one thread.
    """
    value = env.get(THREADS_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
    return int(value)


def max_text_chars(env: Mapping[str, str] = os.environ) -> int:
    """The most characters the app takes in one text (a premise, a hypothesis, a query, a sentence of a search list,
    a CSV cell): $APP_MAX_CHARS, default 10,000. UserError when it is not a positive integer.

    Checked before any tokenization: a tokenizer builds every token of a text (ids, offsets, strings) before it
    truncates, so one pasted book cost gigabytes, for a model that reads at most its max_seq_length tokens (512 at
    most for BERT's positions, a few characters each): 10,000 characters is more than any model here reads.
    """
    value = env.get(MAX_CHARS_ENV, str(DEFAULT_MAX_CHARS))
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{MAX_CHARS_ENV} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TooLong:
    """The signal for "too long to score": which texts are over the cap (max_text_chars), and how long they are."""

    fields: tuple[str, ...]
    lengths: tuple[int, ...]  # characters, one per field
    limit: int
    max_seq_length: int | None = None  # the model's, to say how little of the text it would read anyway

    @property
    def message(self) -> str:
        return too_long_message(
            dict(zip(self.fields, self.lengths, strict=True)), self.limit, "scored", self.max_seq_length
        )


def too_long_message(lengths: dict[str, int], limit: int, not_done: str, max_seq_length: int | None = None) -> str:
    """e.g. "The premise is 13,200 characters long, over this app's limit of 10,000 characters a text
    (APP_MAX_CHARS): it was not scored. …"; `lengths`: text name -> characters."""
    (first, n), *others = lengths.items()
    if others:
        said = " and ".join([f"the {first} ({n:,} characters)"] + [f"the {name} ({k:,})" for name, k in others])
        subject, it = f"{said[0].upper()}{said[1:]} are", "they were"
    else:
        subject, it = f"The {first} is {n:,} characters long,", "it was"
    reads = f" The model reads only the first {max_seq_length} tokens of a text anyway." if max_seq_length else ""
    return (
        f"{subject} over this app's limit of {limit:,} characters a text ({MAX_CHARS_ENV}): {it} not {not_done}.{reads}"
    )


def over_limit(texts: Mapping[str, str], limit: int) -> dict[str, int]:
    """name -> length in characters of the texts longer than `limit`."""
    return {name: len(text) for name, text in texts.items() if len(text) > limit}


@dataclass(frozen=True)
class EmptyInput:
    """The signal for "nothing to predict": which inputs had no visible character."""

    fields: tuple[str, ...]

    @property
    def message(self) -> str:
        return (
            f"Please enter a {' and a '.join(self.fields)} (empty text, or only spaces, invisible or control "
            "characters, cannot be compared)."
        )


@dataclass(frozen=True)
class PairResult:
    cosine: float
    probs: dict[str, float] | None  # label -> probability; None when the model has no NLI head
    label: str | None
    truncated: bool
    max_seq_length: int
    percentile: float | None = None  # share of random sentence pairs (0-100) with a lower cosine; None: no reference
    reference_source: str | None = None  # what those random pairs were, e.g. "5000 random pairs of …"
    unknown_share: tuple[float, float] = (0.0, 0.0)  # share of [UNK] in what the model reads of premise, hypothesis

    @property
    def unreadable(self) -> tuple[str, ...]:
        """The texts ("premise", "hypothesis") that are mostly [UNK] to the model (siamese.inference.encoder.MOSTLY_UNKNOWN)."""
        return tuple(
            name for name, share in zip(PAIR_FIELDS, self.unknown_share, strict=True) if share > MOSTLY_UNKNOWN
        )

    @property
    def unreadable_message(self) -> str | None:
        """What the app shows in place of the scores when a text is mostly [UNK]; None when both are readable."""
        if not self.unreadable:
            return None
        shares = dict(zip(PAIR_FIELDS, self.unknown_share, strict=True))
        return unknown_message({name: shares[name] for name in self.unreadable}, "no similarity or label is shown")

    @property
    def similarity_words(self) -> str | None:
        """e.g. "more similar than 97 % of random sentence pairs"."""
        if self.percentile is None:
            return None
        if self.percentile >= 99.5:  # "100 %" would claim more than a sample of random pairs can show
            return "more similar than over 99 % of random sentence pairs"
        return f"more similar than {self.percentile:.0f} % of random sentence pairs"

    @property
    def verdict_words(self) -> str | None:
        """e.g. "contradiction, fairly confident (72 %)"; None without an NLI head."""
        if self.probs is None or self.label is None:
            return None
        p = self.probs[self.label]
        return f"{self.label}, {confidence_words(p, len(self.probs))} ({p:.0%})"


def unknown_message(shares: dict[str, float], withheld: str) -> str:
    """What to say in place of scores when texts are mostly [UNK] to the model; `shares`: text name -> [UNK] share,
    `withheld`: what is not shown. E.g. "To this model the premise is 100 % [UNK] tokens and the hypothesis 75 %: …,
    so no similarity or label is shown."."""
    (first, share), *others = shares.items()
    said = [f"the {first} is {share * 100:.0f} % [UNK] tokens"] + [f"the {n} {s * 100:.0f} %" for n, s in others]
    return (
        f"To this model {' and '.join(said)}: text in a script, emoji or symbols its vocabulary lacks. Texts that "
        f"are mostly [UNK] look alike to the model whatever they say, so {withheld}."
    )


def confidence_words(probability: float, num_labels: int) -> str:
    """How sure a top probability is, in words. With 3 labels chance is 33 %: below 50 % the head is barely
    better than a guess. The cut points (50 / 70 / 90 %) are a reading aid, not calibrated against anything."""
    if probability >= 0.9:
        return "very confident"
    if probability >= 0.7:
        return "fairly confident"
    if probability >= 0.5:
        return "leaning"
    return "unsure, close to a guess" if probability < 1.5 / num_labels else "unsure"


def is_blank(text: str) -> bool:
    """No visible character: empty, whitespace, zero-width, control or format characters only (stagekit.text)."""
    return not has_visible_content(text)


def predict_pair(
    encoder: NLIEncoder,
    premise: str,
    hypothesis: str,
    reference: SimilarityReference | None = None,
    max_chars: int | None = None,
) -> PairResult | EmptyInput | TooLong:
    """The app's answer for one pair; `reference` (default: the model's own) places the cosine among random pairs.
    A text longer than `max_chars` (default: max_text_chars()) gives TooLong before anything is tokenized."""
    empty = tuple(name for name, text in (("premise", premise), ("hypothesis", hypothesis)) if is_blank(text))
    if empty:
        return EmptyInput(empty)
    limit = max_text_chars() if max_chars is None else max_chars
    if over := over_limit({"premise": premise, "hypothesis": hypothesis}, limit):
        return TooLong(tuple(over), tuple(over.values()), limit, encoder.max_seq_length)
    pred = encoder.predict([premise], [hypothesis])
    probs = (
        None if pred.probs is None else {label: float(p) for label, p in zip(pred.labels, pred.probs[0], strict=True)}
    )
    label = pred.predicted[0] if pred.probs is not None else None
    cosine = float(pred.cosine[0])
    reference = reference or encoder.reference
    percentile = reference.percentile(cosine) if reference is not None else None
    source = reference.source if reference is not None else None
    unknown = (float(pred.unknown_share[0, 0]), float(pred.unknown_share[0, 1]))
    truncated = bool(pred.truncated[0])
    return PairResult(cosine, probs, label, truncated, encoder.max_seq_length, percentile, source, unknown)


def unscorable(texts: Mapping[str, str], limit: int) -> str:
    """Why a pair cannot be scored before the model sees it ("empty premise", "hypothesis over 10,000 characters
    (13,200)"), or "" when it can."""
    if empty := [f"empty {name}" for name, text in texts.items() if is_blank(text)]:
        return " and ".join(empty)
    return " and ".join(f"{name} over {limit:,} characters ({k:,})" for name, k in over_limit(texts, limit).items())


def reference_from_sentences(encoder: NLIEncoder, sentences: list[str], source: str, pairs: int = 2_000):
    """A random-pair reference for a model folder that has none saved (an older run, all-MiniLM-L6-v2), from
    random pairs of `sentences` (seeded)."""
    embeddings = encoder.embed(sentences).float().cpu().numpy()
    return SimilarityReference.from_cosines(random_pair_cosines(embeddings, pairs, seed=0), source)


def predict_table(
    encoder: NLIEncoder,
    premises: Sequence[str],
    hypotheses: Sequence[str],
    batch_size: int = 32,
    progress: Callable[[float], None] | None = None,
    max_chars: int | None = None,
) -> pd.DataFrame:
    """One row per pair: texts, cosine, label, p_<label>, truncated, and not_scored: why a pair has no scores
    ("empty premise", "hypothesis over 10,000 characters (13,200)", "premise 100 % [UNK]"), empty where it has them.
    A text longer than `max_chars` (default: max_text_chars()) is never tokenized."""
    n = len(premises)
    has_head = encoder.head is not None
    limit = max_text_chars() if max_chars is None else max_chars
    cosine = np.full(n, np.nan)
    probs = np.full((n, len(encoder.labels)), np.nan)
    truncated = np.zeros(n, dtype=bool)
    pairs = zip(premises, hypotheses, strict=True)
    not_scored = [unscorable(dict(zip(PAIR_FIELDS, pair, strict=True)), limit) for pair in pairs]
    todo = [i for i in range(n) if not not_scored[i]]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        pred = encoder.predict([premises[i] for i in idx], [hypotheses[i] for i in idx], batch_size=batch_size)
        truncated[idx] = pred.truncated
        for row, i in enumerate(idx):
            shares = dict(zip(PAIR_FIELDS, pred.unknown_share[row], strict=True))
            if pred.mostly_unknown[row]:  # a score of text the model cannot read means nothing: none is given
                unread = [
                    f"{name} {share * 100:.0f} % [UNK]" for name, share in shares.items() if share > MOSTLY_UNKNOWN
                ]
                not_scored[i] = " and ".join(unread)
                continue
            cosine[i] = pred.cosine[row]
            if pred.probs is not None:
                probs[i] = pred.probs[row]
        if progress is not None:
            progress(min(start + batch_size, len(todo)) / len(todo))
    table = pd.DataFrame({"premise": list(premises), "hypothesis": list(hypotheses), "cosine": cosine})
    if has_head:
        done = ~np.isnan(probs).any(axis=1)
        table["label"] = [encoder.labels[j] if ok else "" for j, ok in zip(probs.argmax(axis=1), done, strict=True)]
        for j, label in enumerate(encoder.labels):
            table[f"p_{label}"] = probs[:, j]
    table["truncated"] = truncated
    table["not_scored"] = not_scored
    return table
