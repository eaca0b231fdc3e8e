"""How closely an exported encoder agrees with torch: embeddings and NLI head on a fixed set of sentences."""

from __future__ import annotations

import numpy as np

from siamese.inference.encoder import NLIEncoder
from siamese.inference.postprocess import cosine_rows

# Short and long, plain and odd (digits, punctuation, a word piece salad, a repeated word), so padding,
# truncation at max_seq_length and rare tokens are all exercised.
CHECK_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar on the street.",
    "Someone is making music outdoors.",
    "The cat sleeps.",
    "Nobody is playing any instrument.",
    "Two children are running through a field of tall grass while their parents watch from a bench.",
    "The stock market fell 3.5% on Tuesday after the report was published.",
    "I don't think that's what she meant, is it?",
    "yes",
    "The committee postponed the vote until next spring because several members were absent.",
    "A woman is slicing tomatoes in a kitchen.",
    "Zxqv blorft unpronounceable glyphs 12345 !!!",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "He said the movie was good, but the ending was too long and the music far too loud.",
    "Dogs are barking.",
    "The train to the airport leaves every fifteen minutes from platform two.",
    "It is raining heavily in the city tonight.",
)


def agreement(reference: NLIEncoder, candidate: NLIEncoder, sentences: tuple[str, ...] | list[str]) -> dict:
    """Figures comparing `candidate` (e.g. the ONNX export) with `reference` (torch) on `sentences`.

    Returns a dict of floats: `cosine_min` / `cosine_mean` of each sentence's embedding (as the model outputs
    it, post-processing and truncation included) with the reference's; `core_cosine_min` of the embedding before post-processing
    (what the head reads); and, when both have an NLI head, over the pairs (sentence i, sentence i+1):
    `probs_max_abs_diff` (largest difference of any class probability) and `label_agreement` (share of pairs
    with the same predicted label). Needs at least two sentences.
    """
    texts = list(sentences)
    figures: dict[str, float] = {}
    ref_core = reference.embed_core(texts).float().cpu().numpy()
    cand_core = candidate.embed_core(texts).float().cpu().numpy()
    ref = reference.embed(texts).float().cpu().numpy()
    cand = candidate.embed(texts).float().cpu().numpy()
    cosine = cosine_rows(ref, cand)
    figures["cosine_min"], figures["cosine_mean"] = float(cosine.min()), float(cosine.mean())
    figures["core_cosine_min"] = float(cosine_rows(ref_core, cand_core).min())
    if reference.head is not None and candidate.head is not None:
        premises, hypotheses = texts[:-1], texts[1:]
        p = reference.predict(premises, hypotheses).probs
        q = candidate.predict(premises, hypotheses).probs
        figures["probs_max_abs_diff"] = float(np.abs(p - q).max())
        figures["label_agreement"] = float((p.argmax(axis=1) == q.argmax(axis=1)).mean())
    return figures
