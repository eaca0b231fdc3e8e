"""Post-processing (whitening) as part of the saved model, its selection rule, and the random-pair reference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from siamese.fit_postprocessing import (
    Candidate,
    apply_transform,
    choose_postprocessing,
    dense_module,
    fit_transform,
    save_postprocessing,
    select,
)
from siamese.fit_postprocessing import main as fit_postprocessing_main
from siamese.inference.encoder import HEAD_FILE, NLIEncoder
from siamese.inference.postprocess import (
    POSTPROCESS_FILE,
    REFERENCE_FILE,
    SimilarityReference,
    cosine_rows,
    random_pair_cosines,
)


def anisotropic(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Embeddings in a narrow cone: a large shared offset plus correlated noise, like an untrained encoder's."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(2.0, 0.2, d)
    return 20.0 + rng.normal(size=(n, d)) @ mixing


@pytest.mark.parametrize("dims", [None, 4])
def test_whitening_gives_zero_mean_and_identity_covariance_on_its_fit_data(dims):
    x = anisotropic(2000, 16)
    mean, matrix = fit_transform(x, "whiten", dims)
    y = apply_transform(x, mean, matrix)
    k = dims or 16
    assert y.shape == (2000, k)
    assert np.abs(y.mean(axis=0)).max() < 1e-8
    assert np.abs(np.cov(y, rowvar=False) - np.eye(k)).max() < 1e-6


def test_nested_whitening_keeps_a_truncated_embeddings_widths_and_the_full_cosines():
    x = anisotropic(2000, 16)
    mean, nested = fit_transform(x, "whiten", nested=True)
    y = apply_transform(x, mean, nested)
    assert np.abs(np.cov(y, rowvar=False) - np.eye(16)).max() < 1e-6  # a whitening
    assert np.allclose(np.tril(nested, -1), 0.0)  # output j reads inputs 1..j only
    # its first 6 outputs are the whitening of the first 6 inputs alone: truncation keeps the trained prefix
    prefix_mean, prefix = fit_transform(x[:, :6], "whiten", nested=True)
    assert np.allclose(y[:, :6], apply_transform(x[:, :6], prefix_mean, prefix), atol=1e-6)
    assert np.allclose(fit_transform(x, "whiten", 6, nested=True)[1], nested[:, :6])
    # PCA's whitening differs from it by a rotation: every full-width cosine is the same
    mean, pca = fit_transform(x, "whiten")
    a, b = slice(0, 500), slice(500, 1000)
    assert np.allclose(
        cosine_rows(y[a], y[b]), cosine_rows(apply_transform(x[a], mean, pca), apply_transform(x[b], mean, pca))
    )
    # ... while truncated they are not: PCA keeps the directions of largest variance, not the first inputs
    pca_cosines = cosine_rows(apply_transform(x[a], mean, pca)[:, :6], apply_transform(x[b], mean, pca)[:, :6])
    assert not np.allclose(cosine_rows(y[a, :6], y[b, :6]), pca_cosines, atol=1e-3)


@pytest.mark.parametrize("nested", [False, True])
def test_a_direction_the_fit_data_never_vary_in_stays_finite(nested):
    x = anisotropic(500, 8)
    x[:, 3] = 1.0  # constant: zero variance
    mean, matrix = fit_transform(x, "whiten", nested=nested)
    assert np.isfinite(apply_transform(x, mean, matrix)).all()


def test_centring_only_subtracts_the_mean():
    x = anisotropic(500, 8)
    mean, matrix = fit_transform(x, "centre")
    assert np.allclose(apply_transform(x, mean, matrix), x - x.mean(axis=0))


def test_whitening_spreads_the_cosines_of_random_pairs_of_a_narrow_cone():
    x = anisotropic(3000, 16)
    before = random_pair_cosines(x, 2000, seed=0)
    mean, matrix = fit_transform(x, "whiten")
    after = random_pair_cosines(apply_transform(x, mean, matrix), 2000, seed=0)
    assert before.mean() > 0.9 and abs(after.mean()) < 0.05


def test_the_dense_module_computes_the_same_transform():
    x = anisotropic(64, 8)
    mean, matrix = fit_transform(x, "whiten", 5)
    dense = dense_module(mean, matrix)
    out = dense({"sentence_embedding": torch.tensor(x, dtype=torch.float32)})["sentence_embedding"]
    expected = apply_transform(x, mean, matrix)
    assert np.allclose(out.detach().numpy(), expected, atol=1e-3 * np.abs(expected).max())


def test_selection_keeps_the_best_candidate_and_none_wins_a_tie():
    rng = np.random.default_rng(0)
    fit = anisotropic(1000, 8)
    a, b = fit[:200], fit[200:400] + rng.normal(size=(200, 8))
    gold = list(cosine_rows(a, b))  # raw cosine ranks perfectly: no transform can beat it, so none stays
    chosen = select(fit, (a, b, gold), [Candidate("none"), Candidate("centre"), Candidate("whiten")])
    assert chosen.method == "none" and chosen.spearman == pytest.approx(1.0)
    # gold = the whitened cosine: whitening ranks perfectly and wins
    mean, matrix = fit_transform(fit, "whiten")
    gold = list(cosine_rows(apply_transform(a, mean, matrix), apply_transform(b, mean, matrix)))
    candidates = [Candidate("none"), Candidate("centre"), Candidate("whiten")]
    chosen = select(fit, (a, b, gold), candidates)
    assert chosen.method == "whiten" and all(c.spearman <= chosen.spearman for c in candidates)


def test_several_candidates_without_selection_data_are_refused():
    with pytest.raises(ValueError, match="STS-B validation"):
        select(anisotropic(100, 4), None, [Candidate("none"), Candidate("whiten")])


def test_random_pairs_never_pair_a_sentence_with_itself():
    cosines = random_pair_cosines(np.eye(50), 5000, seed=1)  # orthogonal rows: any self-pair would give 1
    assert cosines.max() == 0.0


def test_the_reference_percentile_reads_a_cosine_against_random_pairs():
    reference = SimilarityReference.from_cosines(np.random.default_rng(0).uniform(-1, 1, 100_000), "test")
    assert reference.percentile(-2.0) == 0.0 and reference.percentile(2.0) == 100.0
    assert reference.percentile(0.0) == pytest.approx(50.0, abs=1.0)
    assert reference.percentile(0.9) == pytest.approx(95.0, abs=1.0)
    values = [reference.percentile(c) for c in np.linspace(-1, 1, 50)]
    assert values == sorted(values)
    # ties in the sample (a model that maps many pairs to one cosine) still give a monotone answer
    tied = SimilarityReference.from_cosines(np.array([0.5] * 90 + list(np.linspace(0.6, 1.0, 10))), "ties")
    assert tied.percentile(0.5) <= tied.percentile(0.55) <= tied.percentile(0.7)


def test_an_unreadable_reference_is_none_with_a_warning(tmp_path, caplog):
    (tmp_path / REFERENCE_FILE).write_text('{"quantiles": [1, 2]}')
    assert SimilarityReference.load(tmp_path) is None
    assert REFERENCE_FILE in caplog.text


@pytest.fixture(scope="module")
def stsb_validation(data_dir):
    from siamese.evaluation.scores import read_stsb
    from stagekit.sources import SourceConfig

    return read_stsb(SourceConfig(path=str(data_dir / "stsb" / "validation.jsonl.gz"), config_name=None), 300, 5.0)


def fit_texts(data_dir, n=400) -> list[str]:
    from tests.app.tiny_model import read_pairs

    rows = read_pairs(data_dir / "mnli" / "train.jsonl.gz", n)
    return list(dict.fromkeys([r["premise"] for r in rows] + [r["hypothesis"] for r in rows]))


@pytest.mark.parametrize("method", ["whiten", "auto"])
def test_a_post_processed_folder_loads_as_a_sentence_transformer_and_keeps_the_head_exact(
    tiny_model_dir, tmp_path, data_dir, stsb_validation, method
):
    premises = ["A man is playing a guitar.", "The stock market fell sharply today.", "Two dogs run in a park."]
    hypotheses = ["Someone makes music.", "A cat is sitting on the mat.", "Animals are outside."]
    before = NLIEncoder.load(tiny_model_dir, device="cpu").predict(premises, hypotheses)
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    encoder = NLIEncoder.load(target, device="cpu")
    modules_before = len(encoder.model)
    model, decision, reference = choose_postprocessing(
        encoder.model, fit_texts(data_dir), "MNLI train", method, None,
        stsb_validation if method == "auto" else None, "STS-B validation", 500, seed=0,
    )  # fmt: skip
    assert len(encoder.model) == modules_before  # the trained model is left as it was
    model.save(str(target))
    save_postprocessing(decision, reference, target)

    saved = json.loads((target / POSTPROCESS_FILE).read_text())
    assert saved["chosen"]["method"] == decision.chosen.method and saved["modules"] == decision.modules
    if method == "auto":
        assert saved["selected_on"] == "STS-B validation"
        scores = [c["spearman"] for c in saved["candidates"]]
        assert saved["chosen"]["spearman"] == max(scores) and len(scores) == 3
    after = NLIEncoder.load(target, device="cpu")
    assert after.postprocessing == decision.modules and after.reference is not None
    # the head reads the embedding before post-processing: its probabilities are exactly the same
    prediction = after.predict(premises, hypotheses)
    assert np.allclose(prediction.probs, before.probs, atol=1e-6)
    # SentenceTransformer(path) alone gives the post-processed embedding that the app's cosine uses
    plain = SentenceTransformer(str(target), device="cpu").encode(premises, convert_to_tensor=True)
    assert torch.allclose(plain, after.embed(premises), atol=1e-5)
    if decision.modules:
        assert plain.shape[1] == after.core.get_embedding_dimension()
        assert not torch.allclose(plain, after.embed_core(premises), atol=1e-3)
        cosine = torch.nn.functional.cosine_similarity(plain, after.embed(hypotheses)).numpy()
        assert np.allclose(prediction.cosine, cosine, atol=1e-5)


def test_the_fit_postprocessing_command_keeps_the_head_and_refits_without_stacking(tiny_model_dir, tmp_path, repo_root):
    config = str(repo_root / "configs" / "siamese" / "debug.yaml")
    first = fit_postprocessing_main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "a"), "--config", config,
                            "postprocess.method=whiten", "postprocess.fit_sentences=300"])  # fmt: skip
    assert (first / HEAD_FILE).is_file() and (first / POSTPROCESS_FILE).is_file() and (first / REFERENCE_FILE).is_file()
    assert not (
        first / "report.json"
    ).exists()  # the old report described the model before its post-processing was fitted
    # fitting a post-processed model again refits on its core: still one post-processing module, not two
    second = fit_postprocessing_main(["--model", str(first), "--out", str(tmp_path / "b"), "--config", config,
                             "postprocess.method=whiten", "postprocess.fit_sentences=300"])  # fmt: skip
    modules = json.loads((second / "modules.json").read_text())
    assert len(modules) == len(json.loads((first / "modules.json").read_text()))
    ref = SimilarityReference.load(second)
    assert ref is not None and abs(ref.mean) < 0.2  # whitened: random pairs near orthogonal


def test_the_fit_postprocessing_command_takes_a_pretraining_output(tiny_bert_for_distributed, tmp_path, repo_root):
    out = fit_postprocessing_main(["--model", str(tiny_bert_for_distributed), "--out", str(tmp_path / "c"), "--config",
                          str(repo_root / "configs" / "siamese" / "debug.yaml")])  # fmt: skip
    decision = json.loads((out / POSTPROCESS_FILE).read_text())
    assert decision["selected_on"].startswith("STS-B validation") and decision["fit_sentences"] == 256
    assert SentenceTransformer(str(out), device="cpu").encode(["a test"]).shape[0] == 1
    assert not (out / HEAD_FILE).exists()
