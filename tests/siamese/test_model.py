"""The encoder: masked mean pooling, a 3·d head, a loss that falls, and save → reload with equal outputs."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from siamese.config import ImplConfig, LossConfig, ModelConfig
from siamese.encoder import NLIEncoder, head_features, save_head
from siamese.model import build_loss, build_model, loss_classifier

PAIRS = [
    ("A man is playing a guitar on stage.", "A man plays music.", 0),
    ("A woman is slicing an onion.", "A woman is cooking dinner for her family tonight.", 1),
    ("Two dogs run through the snow.", "The dogs are asleep.", 2),
    ("The children are laughing.", "Kids are happy.", 0),
    ("A cyclist rides up a hill.", "The cyclist is racing for a prize.", 1),
    ("A plane lands at night.", "The plane is taking off in the morning.", 2),
]


@pytest.fixture(scope="module")
def model(tiny_bert):
    return build_model(ModelConfig(base_model=str(tiny_bert), max_seq_length=32), ImplConfig(device="cpu"))


def test_pooling_is_the_masked_mean(model):
    texts = ["short one", "a much longer sentence with many more tokens than the first"]
    features = model.tokenize(texts)
    assert (features["attention_mask"] == 0).any()  # padding is present
    with torch.no_grad():
        tokens = model[0](dict(features))["token_embeddings"]
        pooled = model(dict(features))["sentence_embedding"]
    mask = features["attention_mask"].unsqueeze(-1).float()
    by_hand = (tokens * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(pooled, by_hand)
    # and not the mean over padding too
    assert not torch.allclose(pooled[0], tokens[0].mean(0))


@pytest.mark.parametrize("name", ["softmax", "both"])
def test_head_sees_three_times_d(model, name):
    d = model.get_embedding_dimension()
    head = loss_classifier(build_loss(model, LossConfig(name=name)))
    assert head.in_features == 3 * d and head.out_features == 3
    u, v = torch.randn(4, d), torch.randn(4, d)
    features = head_features(u, v)
    assert features.shape == (4, 3 * d)
    torch.testing.assert_close(features[:, 2 * d :], (u - v).abs())


def test_ranking_only_loss_has_no_head(model):
    assert loss_classifier(build_loss(model, LossConfig(name="mnrl"))) is None


@pytest.mark.parametrize("name", ["softmax", "both"])
def test_loss_falls_on_a_tiny_set(tiny_bert, name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(base_model=str(tiny_bert), max_seq_length=32), ImplConfig(device="cpu"))
    loss = build_loss(model, LossConfig(name=name))
    premises, hypotheses, labels = zip(*PAIRS, strict=True)
    labels = torch.tensor(labels)
    optimizer = torch.optim.AdamW(loss.parameters(), lr=5e-3)

    def step() -> float:
        value = loss([dict(model.tokenize(list(premises))), dict(model.tokenize(list(hypotheses)))], labels)
        value = sum(value.values()) if isinstance(value, dict) else value
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return float(value.detach())

    first = step()
    for _ in range(15):
        last = step()
    assert last < 0.5 * first


def test_save_then_load_gives_identical_probabilities(model, tmp_path):
    loss = build_loss(model, LossConfig(name="softmax"))
    torch.nn.init.normal_(loss.classifier.weight, std=0.5)  # a head far from uniform
    model.save(str(tmp_path))
    save_head(loss.classifier, tmp_path)
    premises, hypotheses, _ = zip(*PAIRS, strict=True)
    with torch.no_grad():
        u = model.encode(list(premises), convert_to_tensor=True)
        v = model.encode(list(hypotheses), convert_to_tensor=True)
        expected = torch.softmax(loss.classifier(head_features(u, v)), dim=-1).numpy()
    loaded = NLIEncoder.load(tmp_path, device="cpu").predict(list(premises), list(hypotheses))
    assert loaded.probs.shape == (len(PAIRS), 3)
    assert abs(loaded.probs - expected).max() < 1e-5


def test_a_folder_that_is_not_a_model_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match="not a model folder"):
        build_model(ModelConfig(base_model=str(tmp_path)), ImplConfig(device="cpu"))
    with pytest.raises(UserError, match="does not exist"):
        build_model(ModelConfig(base_model=str(tmp_path / "missing")), ImplConfig(device="cpu"))


def test_a_sentence_transformer_folder_is_accepted_as_base(model, tmp_path):
    model.save(str(tmp_path))
    again = build_model(ModelConfig(base_model=str(tmp_path), max_seq_length=16), ImplConfig(device="cpu"))
    assert again.max_seq_length == 16 and again.get_embedding_dimension() == model.get_embedding_dimension()


@pytest.mark.parametrize("name", ["softmax", "both"])
def test_merged_pair_forward_is_speed_only(model, name):
    premises, hypotheses, labels = zip(*PAIRS, strict=True)
    features = [dict(model.tokenize(list(premises))), dict(model.tokenize(list(hypotheses)))]
    model.eval()  # no dropout, so both paths see the same network
    torch.manual_seed(0)
    separate = build_loss(model, LossConfig(name=name), merge_pair_forward=False)
    merged = build_loss(model, LossConfig(name=name), merge_pair_forward=True)
    merged.load_state_dict(separate.state_dict())
    with torch.no_grad():
        a = separate([dict(f) for f in features], torch.tensor(labels))
        b = merged([dict(f) for f in features], torch.tensor(labels))
    a, b = (sum(x.values()) if isinstance(x, dict) else x for x in (a, b))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
