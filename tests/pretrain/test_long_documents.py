"""One huge document: cleaned, tokenized and counted for the vocabulary in pieces, with the whole document's result."""

from __future__ import annotations

import gzip
import html
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from pretrain.blocks import prepare_data
from pretrain.corpus import _TAG, PIECE_CHARS, clean_text, in_validation, raw_pieces, text_pieces
from pretrain.packing import ENCODE_CHARS, encode_documents
from stagekit.config import REPO_ROOT

# Words, tags with and without spaces inside, entities, and whitespace of several kinds: every run without
# whitespace is short, so a piece of 16 characters always has a place to be cut that no tag spans.
TOKENS = ["ab", "Cd", "caf\u00e9", "x.", "<br />", "<BR/>", "<i>", "</i>", "< p >", ">", "&amp;", "&#8230;", "&nbsp;"]
SPACES = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\xa0", "\u3000"]


def whole_document_clean(text: str) -> str:
    """clean_text's definition (pretrain/corpus.py), applied to the whole text at once."""
    return re.sub(r"\s+", " ", html.unescape(_TAG.sub(" ", text))).strip()


@given(st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(SPACES)), max_size=120), st.integers(16, 80))
def test_cleaning_in_pieces_equals_cleaning_the_whole_document(parts, limit):
    text = "".join(token + space for token, space in parts)
    pieces = list(raw_pieces(text, limit))
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces)
    assert clean_text(text, piece_chars=limit) == whole_document_clean(text)


@given(st.lists(st.sampled_from(["ab", "cd\u00e9", "x.", "\u4e2d\u6587", "1,5"]), max_size=200), st.integers(4, 40))
def test_text_pieces_are_the_document_cut_before_spaces(words, limit):
    text = " ".join(words)
    pieces = list(text_pieces(text, limit))
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces)
    assert all(p.startswith(" ") for p in pieces[1:])  # words are shorter than `limit`: no cut inside one


def wikipedia_text(data_dir: Path, chars: int) -> str:
    """Articles of the Wikipedia stand-in joined by blank lines, cut to `chars` characters: one long document."""
    with gzip.open(data_dir / "pretrain" / "wikipedia_2015.jsonl.gz", "rt", encoding="utf-8") as fh:
        texts, total = [], 0
        for line in fh:
            texts.append(json.loads(line)["text"])
            total += len(texts[-1]) + 2
            if total >= chars:
                break
    return "\n\n".join(texts)[:chars]


def test_a_document_longer_than_a_piece_packs_into_the_blocks_of_the_whole_document(tiny_config, data_dir, tmp_path):
    long = wikipedia_text(data_dir, 3 * PIECE_CHARS).replace(". ", ". <br /> ", 50)
    assert len(long) > 3 * max(PIECE_CHARS, ENCODE_CHARS)
    with gzip.open(data_dir / "pretrain" / "imdb_100k.jsonl.gz", "rt", encoding="utf-8") as fh:
        reviews = [json.loads(line)["text"] for line in itertools.islice(fh, 120)]
    docs = [*reviews[:60], long, *reviews[60:]]
    source = tmp_path / "docs.jsonl.gz"
    with gzip.open(source, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": t}) + "\n" for t in docs)
    cfg = tiny_config(f"data.source={source}", "data.max_documents=null", f"data.cache_dir={tmp_path / 'cache'}")
    data = prepare_data(cfg)

    tokenizer, d = data.tokenizer, cfg.data
    streams: dict[str, list[int]] = {"train": [], "validation": []}
    for text in map(whole_document_clean, docs):  # the plain way: whole documents, cleaned and tokenized at once
        if len(text) >= d.min_chars:
            split = "validation" if in_validation(text, d.validation_fraction, d.split_seed) else "train"
            streams[split] += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    body = d.block_size - 2
    for split, stream in streams.items():
        expected = [[tokenizer.cls_token_id, *stream[i : i + body], tokenizer.sep_token_id] for i in range(0, len(stream) - body + 1, body)]  # fmt: skip
        blocks = getattr(data, split)
        assert torch.equal(blocks[: len(blocks)], torch.tensor(expected)), split
    assert data.stats["documents_read"] == len(docs)


PEAK = """
import resource, sys
from pretrain.config import TokenizerConfig
from pretrain.packing import ChunkEncoder
from pretrain.tokenizer import train_tokenizer
from tests.pretrain.test_long_documents import wikipedia_text
from pathlib import Path

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

document = wikipedia_text(Path(sys.argv[2]), 4_000_000)
encoder = ChunkEncoder(sys.argv[1], 64, 0.1, 42, "<u2")
encoder([document[:100_000]])  # the tokenizer loaded, every buffer of a normal document allocated once
train_tokenizer([[document[:100_000]]], TokenizerConfig(), 1024, 128)
start = peak_mib()
encoder([document])
encoded = peak_mib()
train_tokenizer([[document]], TokenizerConfig(), 1024, 128)
print(encoded - start, peak_mib() - encoded)
"""


# A 30 MB document raised pretraining's peak memory from 0.68 to 4.86 GB: cleaned, split and tokenized in
# one piece, a tokenizers Encoding costs ~100 bytes per token, and the tokenizer trainer as much again.
def test_one_huge_document_does_not_raise_peak_memory(tiny_data, cache_dir, data_dir):
    tokenizer_file = Path(cache_dir) / tiny_data.stats["cache_key"] / "tokenizer" / "tokenizer.json"
    assert Tokenizer.from_file(str(tokenizer_file)).get_vocab_size() > 0
    run = subprocess.run(
        [sys.executable, "-c", PEAK, str(tokenizer_file), str(data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={"TOKENIZERS_PARALLELISM": "false", "PATH": ""},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    encode_mib, train_mib = map(float, run.stdout.split())
    # 4 MB of text: a few copies of it while it is cleaned (it was 446 MiB to encode, 251 MiB to count)
    assert encode_mib < 40 and train_mib < 40, (encode_mib, train_mib)


def test_encoding_a_long_document_in_pieces_gives_its_tokens(tiny_data, cache_dir):
    tokenizer = Tokenizer.from_file(
        str(Path(cache_dir) / tiny_data.stats["cache_key"] / "tokenizer" / "tokenizer.json")
    )
    short = "a short review of a movie."
    long = " ".join(f"word{i % 97} and, the film; {i}" for i in range(3 * ENCODE_CHARS // 20))
    assert len(long) > 2 * ENCODE_CHARS
    ids = encode_documents(tokenizer, [short, long, short], sep=3, dtype="<u2").tolist()
    whole = [tokenizer.encode(t, add_special_tokens=False).ids + [3] for t in (short, long, short)]
    assert ids == whole[0] + whole[1] + whole[2]
