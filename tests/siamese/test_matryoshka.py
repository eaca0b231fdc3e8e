"""A model trained for truncation (loss.matryoshka_dims) end to end on the debug config: the folder says its widths,
whitening keeps them, and every reader (NLIEncoder, SentenceTransformer(truncate_dim), evaluation) embeds the
width chosen while the NLI head reads the full embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from siamese.__main__ import main
from siamese.evaluation.evaluate import main as evaluate
from siamese.inference.encoder import NLIEncoder
from stagekit.errors import UserError
from tests.siamese.test_train import debug_args

pytestmark = pytest.mark.slow

TEXTS = ["A man is playing a guitar.", "Someone makes music.", "The cat sleeps on the sofa.", "It is raining."]


@pytest.fixture(scope="module")
def nested_model(repo_root, tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("matryoshka")
    # with cached mini-batches too: the two options train together (siamese/losses.py)
    extra = ["loss.name=both", "loss.matryoshka_dims=[32, 16]", "impl.mini_batch_size=4", "postprocess.method=whiten"]
    return main(debug_args(repo_root, tiny_bert, out, *extra)).model_dir


def test_the_folder_says_its_widths_and_whitening_keeps_them(nested_model):
    encoder = NLIEncoder.load(nested_model, device="cpu")
    assert encoder.widths == (64, 32, 16) and encoder.embed(TEXTS).shape == (4, 64)
    decision = json.loads((nested_model / "postprocessing.json").read_text())
    assert decision["chosen"]["method"] == "whiten" and decision["nested"] is True
    # nested whitening: the first 16 outputs depend on the first 16 pooled dimensions only
    weight = SentenceTransformer(str(nested_model), device="cpu")[-1].linear.weight.detach().numpy()  # (out, in)
    assert np.allclose(np.triu(weight, 1), 0.0)


@pytest.mark.parametrize("dims", [32, 16])
def test_every_reader_embeds_the_width_chosen_and_the_head_reads_all(nested_model, dims):
    full = NLIEncoder.load(nested_model, device="cpu")
    narrow = NLIEncoder.load(nested_model, device="cpu", truncate_dim=dims)
    assert narrow.dims == dims and narrow.embed(TEXTS).shape == (4, dims)
    plain = SentenceTransformer(str(nested_model), device="cpu", truncate_dim=dims).encode(TEXTS)
    assert plain.shape == (4, dims) and np.allclose(plain, narrow.embed(TEXTS).numpy(), atol=1e-5)
    a, b = full.predict(TEXTS[:2], TEXTS[2:]), narrow.predict(TEXTS[:2], TEXTS[2:])
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)  # the same head on the same full embedding
    assert not np.allclose(a.cosine, b.cosine)  # the cosine is the truncated one


def test_a_width_wider_than_the_model_is_one_line(nested_model):
    with pytest.raises(UserError, match="truncate_dim=128: the model's embeddings have 64 dimensions"):
        NLIEncoder.load(nested_model, device="cpu", truncate_dim=128)


def test_evaluation_scores_every_trained_width(nested_model, tmp_path):
    report = evaluate(["--model", str(nested_model), "limit=30", f"out={tmp_path}"])
    assert list(report["retrieval"]["by_width"]) == [64, 32, 16]
    assert list(report["stsb_test_by_width"]) == [64, 32, 16]
    assert "| model | 16 |" in (tmp_path / "report.md").read_text()
