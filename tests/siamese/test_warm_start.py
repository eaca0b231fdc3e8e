"""The NLI head's warm start (siamese/warm_start.py), its pairs, and the head's own parameter groups' names."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from siamese.config import DataConfig, ImplConfig, LossConfig, ModelConfig
from siamese.losses import build_loss, head_parameter_pattern
from siamese.model import build_model
from siamese.nli_data import first_pairs, read_pairs
from siamese.warm_start import accuracy, fit_linear_head, pair_features, warm_start_head
from stagekit.sources import SourceConfig


def blobs(n: int = 300, dim: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three overlapping Gaussian classes: a problem a linear head solves well but not perfectly."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, dim))
    features = centres[labels] + 1.5 * rng.normal(size=(n, dim))
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def test_the_fit_is_scikit_learns_logistic_regression_at_c_1():
    features, labels = blobs()
    features = features.double()  # float64 on both sides: one optimum, up to the solvers' stopping tolerances
    weight, bias = fit_linear_head(features, labels, 3)
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(features.numpy(), labels.numpy())
    ours = torch.softmax(features @ weight.T + bias, dim=-1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(features.numpy()), atol=5e-5)


def test_the_fit_is_deterministic_and_beats_a_random_head_on_its_pairs():
    features, labels = blobs()
    first, second = fit_linear_head(features, labels, 3), fit_linear_head(features, labels, 3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])  # bit for bit
    torch.manual_seed(0)
    head = torch.nn.Linear(features.shape[1], 3)
    random_accuracy = accuracy(head, features, labels)
    with torch.no_grad():
        head.weight.copy_(first[0])
        head.bias.copy_(first[1])
    assert accuracy(head, features, labels) > max(0.75, random_accuracy + 0.3), random_accuracy


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert):
    return build_model(ModelConfig(base_model=str(tiny_bert), max_seq_length=32), ImplConfig(device="cpu"))


def fresh_head(model, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return build_loss(model, LossConfig()).classifier


def test_warm_start_is_deterministic_leaves_the_encoder_alone_and_beats_the_random_head(tiny_encoder, data_dir):
    pairs = read_pairs(SourceConfig(path=str(data_dir / "mnli" / "train.jsonl.gz"), config_name=None), 96)
    encoder_before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    tiny_encoder.train()
    heads = [fresh_head(tiny_encoder, seed) for seed in (1, 2)]  # different random starts
    results = [warm_start_head(tiny_encoder, head, pairs, pairs, batch_size=32) for head in heads]
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)
    assert tiny_encoder.training  # its mode is given back
    assert all(torch.equal(v, encoder_before[k]) for k, v in tiny_encoder.state_dict().items())
    result = results[0]
    assert result.pairs == 96 and result.eval_accuracy == pytest.approx(result.fit_accuracy)
    # on the pairs it was fitted on, the fitted head beats the random one it replaced
    assert result.fit_accuracy > result.eval_accuracy_untrained + 0.15, result
    features = pair_features(tiny_encoder, pairs, 32)
    assert accuracy(heads[0], features, torch.as_tensor(pairs["label"])) == pytest.approx(result.fit_accuracy)


def test_the_warm_start_reads_the_first_clean_training_pairs_every_time(data_dir):
    data = DataConfig(train_sources=[SourceConfig(path=str(data_dir / "mnli" / "train.jsonl.gz"), config_name=None)])
    first = first_pairs(data, 50, seed=42)
    assert first == first_pairs(data, 50, seed=42) and len(first["label"]) == 50
    assert first == read_pairs(data.train_sources[0], 50)  # one source: its first 50 clean pairs, unshuffled


@pytest.mark.parametrize(("loss_name", "names"), [
    ("softmax", {"classifier.weight", "classifier.bias"}),
    ("both", {"softmax.classifier.weight", "softmax.classifier.bias"}),
    ("mnrl", None),
])  # fmt: skip
def test_the_head_pattern_matches_the_heads_parameters_and_nothing_else(tiny_encoder, loss_name, names):
    loss = build_loss(tiny_encoder, LossConfig(name=loss_name))
    pattern = head_parameter_pattern(loss)
    if names is None:
        assert pattern is None
        return
    # sentence-transformers matches with re.search over the loss module's parameter names
    assert {n for n, _ in loss.named_parameters() if re.search(pattern, n)} == names
