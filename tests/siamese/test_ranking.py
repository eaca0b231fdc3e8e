"""The ranking objectives' options: cached mini-batches (impl.mini_batch_size) change memory, not the loss or its
gradients; Matryoshka widths (loss.matryoshka_dims) add the ranking loss at each width; refusals in one line. A text
identical to a row's positive is no negative of that row."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)

from siamese.config import ImplConfig, LossConfig, ModelConfig, SiameseConfig
from siamese.losses import build_loss, ranking_loss
from siamese.model import build_model
from stagekit.config import load_config
from stagekit.errors import ConfigError, UserError
from tests.siamese.test_model import PAIRS

# premise, entailment, contradiction: mnrl's triplets
TRIPLETS = [
    ("A man is playing a guitar on stage.", "A man plays music.", "The man is asleep."),
    ("Two dogs run through the snow.", "Animals are outside.", "The dogs are asleep."),
    ("The children are laughing.", "Kids are happy.", "The children are crying."),
    ("A plane lands at night.", "An aircraft arrives.", "The plane is taking off in the morning."),
    ("A woman is slicing an onion.", "Someone cuts a vegetable.", "A woman is swimming."),
    ("A cyclist rides up a hill.", "A person is on a bike.", "The cyclist is sitting on a sofa."),
]


@pytest.fixture(scope="module")
def model(tiny_bert):
    torch.manual_seed(0)
    model = build_model(ModelConfig(base_model=str(tiny_bert), max_seq_length=32), ImplConfig(device="cpu"))
    return model.eval()  # no dropout: the cached pass and the plain one see the same network


def batch(model, name: str) -> tuple[list[dict], torch.Tensor]:
    rows = TRIPLETS if name == "mnrl" else PAIRS
    columns = list(zip(*rows, strict=True))
    texts = columns if name == "mnrl" else columns[:2]
    labels = torch.zeros(len(rows), dtype=torch.long) if name == "mnrl" else torch.tensor(columns[2])
    return [dict(model.tokenize(list(column))) for column in texts], labels


def gradients(model, loss, name: str, factor: float) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss times `factor` (as the Trainer scales it for gradient accumulation), back-propagated; the loss
    value and every parameter's gradient (encoder and NLI head)."""
    features, labels = batch(model, name)
    model.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    value = loss([dict(f) for f in features], labels)
    value = sum(value.values()) if isinstance(value, dict) else value
    (factor * value).backward()
    grads = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    return value.item(), grads


@pytest.mark.parametrize("name", ["mnrl", "both"])
@pytest.mark.parametrize("dims", [None, [32, 16]])
def test_cached_mini_batches_give_the_plain_loss_and_gradients(model, name, dims):
    cfg = LossConfig(name=name, matryoshka_dims=dims)
    plain = build_loss(model, cfg)
    cached = build_loss(model, cfg, mini_batch_size=2, classifier=getattr(plain, "classifier", None))
    inner = cached.loss if isinstance(cached, MatryoshkaLoss) else cached
    assert isinstance(inner, CachedMultipleNegativesRankingLoss) if name == "mnrl" else cached.uses_gradient_cache
    value, expected = gradients(model, plain, name, factor=0.5)
    cached_value, got = gradients(model, cached, name, factor=0.5)
    assert cached_value == pytest.approx(value, rel=1e-5)
    assert set(got) == set(expected) and len(expected) > 10
    if name == "both":  # the head is trained, and its gradient carries the outer factor like the encoder's
        assert any(n.startswith("softmax.classifier") for n in expected)
    for n, grad in expected.items():
        torch.testing.assert_close(got[n], grad, rtol=1e-4, atol=1e-5, msg=n)


def test_both_ranks_at_every_matryoshka_width_and_classifies_at_the_full_one(model):
    features, labels = batch(model, "both")
    full = build_loss(model, LossConfig(name="both"))
    nested = build_loss(model, LossConfig(name="both", matryoshka_dims=[16, 32]), classifier=full.classifier)
    assert nested.widths == (64, 32, 16) and nested.classifier.in_features == 3 * 64
    with torch.no_grad():
        u = model(dict(features[0]))["sentence_embedding"]
        v = model(dict(features[1]))["sentence_embedding"]
        parts = nested([dict(f) for f in features], labels)
        alone = full([dict(f) for f in features], labels)
    by_hand = sum(ranking_loss(u[:, :k], v[:, :k], labels, 20.0) for k in (64, 32, 16))
    assert float(parts["mnrl"]) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(parts["softmax"]) == pytest.approx(float(alone["softmax"]), rel=1e-6)  # one head, full width


def test_mnrl_is_wrapped_in_sentence_transformers_matryoshka_loss(model):
    loss = build_loss(model, LossConfig(name="mnrl", matryoshka_dims=[32, 16]))
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.loss, MultipleNegativesRankingLoss)
    assert loss.matryoshka_dims == (64, 32, 16)
    assert not isinstance(build_loss(model, LossConfig(name="mnrl")), MatryoshkaLoss)


def test_a_matryoshka_width_not_below_the_models_is_refused_in_one_line(model):
    with pytest.raises(UserError, match=r"loss\.matryoshka_dims: 64 is not below the model's 64 dimensions"):
        build_loss(model, LossConfig(name="both", matryoshka_dims=[64, 32]))


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.matryoshka_dims=[64, 32]"], "loss.matryoshka_dims': trains each width through the ranking loss"),
    (["loss.name=both", "loss.matryoshka_dims=[32, 32]"], "lists a width twice"),
    (["loss.name=both", "loss.matryoshka_dims=[]"], "at least one width"),
    (["impl.mini_batch_size=4"], "impl.mini_batch_size': caches gradients for the in-batch negatives"),
    (["loss.name=mnrl", "impl.mini_batch_size=8"], "must be below train.per_device_train_batch_size (8)"),
])  # fmt: skip
def test_options_that_cannot_work_are_refused_before_any_data(repo_root, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(SiameseConfig, repo_root / "configs" / "siamese" / "debug.yaml", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_options_load_from_the_command_line(repo_root):
    cfg = load_config(
        SiameseConfig,
        repo_root / "configs" / "siamese" / "debug.yaml",
        ["loss.name=both", "loss.matryoshka_dims=[32, 16]", "impl.mini_batch_size=2"],
    )
    assert cfg.loss.matryoshka_dims == [32, 16] and cfg.impl.mini_batch_size == 2


def test_a_merged_pair_forward_is_ignored_with_mini_batches_and_says_so(model, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="siamese.model"):
        loss = build_loss(model, LossConfig(name="both"), merge_pair_forward=True, mini_batch_size=2)
    assert loss.uses_gradient_cache and "impl.merge_pair_forward has no effect" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnrl", "both"])
def test_the_configured_mini_batch_is_what_training_uses(repo_root, tiny_bert, tmp_path, monkeypatch, name):
    from siamese.__main__ import main
    from siamese.losses import CachedDistinctRankingLoss, SoftmaxRankingLoss
    from tests.siamese.test_train import debug_args

    cached = CachedDistinctRankingLoss if name == "mnrl" else SoftmaxRankingLoss
    calculate, seen = cached.calculate_loss, []

    def spy(self, reps, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps: the mini-batches of each column
            seen.append([len(r) for r in reps[0]])
        return calculate(self, reps, *args, **kwargs)

    monkeypatch.setattr(cached, "calculate_loss", spy)
    triplets = ["data.max_train_pairs=null", "data.eval_pairs=600"] if name == "mnrl" else []
    main(debug_args(repo_root, tiny_bert, tmp_path, f"loss.name={name}", "impl.mini_batch_size=4", *triplets))
    assert seen and all(sizes == [4, 4] for sizes in seen)  # batches of 8 in mini-batches of 4


def perfect_encoder(model, rows: list[tuple[str, str, str]]):
    """A forward for `model` that embeds each text as a one-hot of its meaning: a premise and its entailment
    alike, each contradiction apart. Texts are recognised by their token ids (padding stripped)."""
    meaning: dict[tuple[int, ...], int] = {}

    def ids(text: str) -> tuple[int, ...]:
        return tuple(model.tokenize([text])["input_ids"][0].tolist())

    for i, (premise, entailment, contradiction) in enumerate(rows):
        meaning[ids(premise)] = meaning[ids(entailment)] = i
        meaning[ids(contradiction)] = len(rows) + i

    def forward(features: dict, *args, **kwargs) -> dict:
        ids, masks = features["input_ids"], features["attention_mask"].bool()
        index = [meaning[tuple(row[mask].tolist())] for row, mask in zip(ids, masks, strict=True)]
        width = model.get_embedding_dimension()
        return features | {"sentence_embedding": torch.nn.functional.one_hot(torch.tensor(index), width).float()}

    return forward


def duplicated_batch(model, name: str) -> tuple[list[dict], torch.Tensor]:
    """Every row twice: `mnrl`'s triplets, or `both`'s pairs (each premise with its entailment and its
    contradiction), so each positive has an identical twin among the candidates."""
    if name == "mnrl":
        rows = TRIPLETS + TRIPLETS
        columns = list(zip(*rows, strict=True))
        return [dict(model.tokenize(list(column))) for column in columns], torch.zeros(len(rows), dtype=torch.long)
    pairs = [(p, e, 0) for p, e, _ in TRIPLETS] + [(p, c, 2) for p, _, c in TRIPLETS]
    premises, hypotheses, labels = zip(*(pairs + pairs), strict=True)
    return [dict(model.tokenize(list(premises))), dict(model.tokenize(list(hypotheses)))], torch.tensor(labels)


# With every row twice, a pair's own twin was one of its negatives: a perfect encoder could not rank its positive
# above an identical text, and its ranking loss stayed at log 2 instead of 0.
@pytest.mark.parametrize("name", ["mnrl", "both"])
@pytest.mark.parametrize("mini_batch_size", [None, 4])
@pytest.mark.parametrize("dims", [None, [16]])
def test_a_text_identical_to_the_positive_is_no_negative(model, monkeypatch, name, mini_batch_size, dims):
    loss = build_loss(model, LossConfig(name=name, matryoshka_dims=dims), mini_batch_size=mini_batch_size)
    monkeypatch.setattr(model, "forward", perfect_encoder(model, TRIPLETS))
    features, labels = duplicated_batch(model, name)
    with torch.no_grad():
        value = loss([dict(f) for f in features], labels)
    ranking = float(value["mnrl"] if isinstance(value, dict) else value)
    assert 0 <= ranking < 1e-4  # each anchor's positive scores 20, every other candidate 0 (weight 1 per width)


def test_mnrl_is_sentence_transformers_loss_when_no_text_repeats(model):
    features, labels = batch(model, "mnrl")
    with torch.no_grad():
        ours = build_loss(model, LossConfig(name="mnrl"))([dict(f) for f in features], labels)
        theirs = MultipleNegativesRankingLoss(model, scale=20.0)([dict(f) for f in features], labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)  # float32 rounding apart


def test_one_text_has_one_key_however_its_batch_pads_it():
    from siamese.losses import input_keys, pad_keys

    right = input_keys({"input_ids": torch.tensor([[5, 6, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0, 0]])})
    left = input_keys({"input_ids": torch.tensor([[0, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1]])})
    other = input_keys({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]])})
    right, left, other = pad_keys([right, left, other])
    assert torch.equal(right, left) and not torch.equal(right, other)
