"""The encoder: masked mean pooling, a 3·d head, a loss that falls, and save → reload with equal outputs."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from siamese.config import ImplConfig, LossConfig, ModelConfig
from siamese.inference.encoder import NLIEncoder, head_features, save_head
from siamese.losses import build_loss, loss_classifier
from siamese.model import build_model
from stagekit.errors import UserError

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


# a value that cannot work is refused when the model is built, in one line naming the key.
def test_max_seq_length_past_the_position_embeddings_is_refused(short_bert, tmp_path):
    with pytest.raises(UserError, match=r"model\.max_seq_length=64 .*32 position") as err:
        build_model(ModelConfig(base_model=str(short_bert), max_seq_length=64), ImplConfig(device="cpu"))
    assert "\n" not in str(err.value)
    fits = build_model(ModelConfig(base_model=str(short_bert), max_seq_length=32), ImplConfig(device="cpu"))
    fits.save(str(tmp_path))  # a SentenceTransformer folder is checked the same way
    with pytest.raises(UserError, match=r"model\.max_seq_length=48 .*32 position"):
        build_model(ModelConfig(base_model=str(tmp_path), max_seq_length=48), ImplConfig(device="cpu"))


def test_tokenizer_larger_than_the_embedding_table_is_refused(tiny_bert, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens([f"newtoken{i}" for i in range(5)])
    tokenizer.save_pretrained(base)
    with pytest.raises(UserError, match=r"tokenizer has \d+ tokens but the model embeds only \d+") as err:
        build_model(ModelConfig(base_model=str(base), max_seq_length=32), ImplConfig(device="cpu"))
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def distilbert(tiny_bert, tmp_path_factory):
    """A tiny DistilBERT: its config names dropout `dropout` and `attention_dropout`, not BERT's fields."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    out = tmp_path_factory.mktemp("distilbert")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=64, n_layers=1, n_heads=2, hidden_dim=128)
    DistilBertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_dropout_override_the_base_model_does_not_have_is_refused(distilbert):
    cfg = ModelConfig(base_model=str(distilbert), max_seq_length=32, hidden_dropout_prob=0.2)
    with pytest.raises(UserError, match=r"model\.hidden_dropout_prob.*distilbert.*no hidden_dropout_prob") as err:
        build_model(cfg, ImplConfig(device="cpu"))
    assert "\n" not in str(err.value)
    plain = build_model(ModelConfig(base_model=str(distilbert), max_seq_length=32), ImplConfig(device="cpu"))
    assert plain.get_embedding_dimension() == 64


def test_dropout_override_applies_to_a_sentence_transformer_folder_too(model, tmp_path):
    model.save(str(tmp_path))
    cfg = ModelConfig(base_model=str(tmp_path), max_seq_length=32, hidden_dropout_prob=0.3)
    again = build_model(cfg, ImplConfig(device="cpu"))
    assert again[0].auto_model.config.hidden_dropout_prob == 0.3
    rates = {m.p for name, m in again.named_modules() if isinstance(m, torch.nn.Dropout) and "output" in name}
    assert rates == {0.3}


# a Hub model id without a network fails within seconds, naming the local alternative.
def test_hub_model_id_with_an_unreachable_hub_fails_in_seconds(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect fails at once
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(base_model="someone/not-cached-bert"), ImplConfig(device="cpu"))
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "model.base_model" in message and "unreachable" in message and "\n" not in message
    assert "outputs/pretrain-cpu-small/model" in message and "all-MiniLM-L6-v2" in message


def test_hub_model_id_in_the_local_cache_loads_without_the_hub(tiny_bert, tmp_path, monkeypatch):
    import shutil
    import time

    from huggingface_hub import constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--cached-bert"
    shutil.copytree(tiny_bert, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    model = build_model(ModelConfig(base_model="someone/cached-bert", max_seq_length=32), ImplConfig(device="cpu"))
    assert time.monotonic() - started < 20 and model.get_embedding_dimension() == 64


@pytest.mark.parametrize("architecture", ["nomic_bert", "bert"])
def test_an_encoder_built_from_an_mlm_checkpoint_prints_no_load_report(tiny_bert, tmp_path, architecture, caplog):
    """Its MLM head is left out by design (and BERT's pooler, which mean pooling never reads, is new): one INFO
    line, not transformers' 10–15-line table of UNEXPECTED and MISSING keys (which the same load emits without
    stagekit/load_report.py's filter), for NomicBERT (configs/pretrain/cpu-small.yaml) and BERT (the GPU recipes)
    alike."""
    import logging
    import shutil

    from sentence_transformers.sentence_transformer.modules import Transformer
    from transformers import BertConfig, BertForMaskedLM, NomicBertConfig, NomicBertForMaskedLM

    from siamese.config import ImplConfig, ModelConfig
    from siamese.model import build_model
    from stagekit.load_report import REPORTING_LOGGER, UnusedWeightsOnly

    mlm = tmp_path / "mlm"
    bert = BertConfig.from_pretrained(tiny_bert)
    shape = {k: getattr(bert, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")}
    if architecture == "nomic_bert":
        NomicBertForMaskedLM(NomicBertConfig(**shape, intermediate_size=64)).save_pretrained(mlm)
    else:
        BertForMaskedLM(BertConfig(**shape, intermediate_size=64, max_position_embeddings=32)).save_pretrained(mlm)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert / name).is_file():
            shutil.copy(tiny_bert / name, mlm / name)

    class Reports(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.seen: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.seen.append(record.getMessage())

    logger, reports = logging.getLogger(REPORTING_LOGGER), Reports()
    logger.addHandler(reports)
    filters = [f for f in logger.filters if isinstance(f, UnusedWeightsOnly)]
    try:
        for f in filters:
            logger.removeFilter(f)
        Transformer(str(mlm))
        assert any("LOAD REPORT" in m for m in reports.seen)  # what the filter removes is really there
        reports.seen.clear()
        with caplog.at_level(logging.INFO, logger="stagekit.load_report"):
            build_model(ModelConfig(base_model=str(mlm), max_seq_length=32), ImplConfig(device="cpu"))
        assert not any("LOAD REPORT" in m for m in reports.seen)
        (line,) = [r.getMessage() for r in caplog.records if r.name == "stagekit.load_report"]
        assert str(mlm) in line and "not used (cls.*" in line
        assert ("new (pooler.*" in line) == (architecture == "bert")
        if architecture == "bert":  # a refused setting is the only line after the load, not the 16th
            caplog.clear()
            with pytest.raises(UserError, match=r"model\.max_seq_length=64 .*32 position"):
                build_model(ModelConfig(base_model=str(mlm), max_seq_length=64), ImplConfig(device="cpu"))
            assert not any("LOAD REPORT" in m for m in reports.seen)
    finally:
        logger.removeHandler(reports)
        for f in filters:
            if f not in logger.filters:
                logger.addFilter(f)


# A weights file cut short or emptied (an interrupted copy or download, a full disk): one line naming the file.
@pytest.mark.parametrize("keep", [0, 1000])
def test_a_base_model_whose_weights_are_cut_short_is_named_in_one_line(tiny_bert, tmp_path, keep):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(base_model=str(base), max_seq_length=32), ImplConfig(device="cpu"))
    assert str(weights) in str(err.value) and "cut short" in str(err.value) and "\n" not in str(err.value)


def test_a_base_model_that_is_not_an_encoder_is_refused_in_one_line(gpt2, tiny_bert, tmp_path):
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(base_model=str(gpt2), max_seq_length=32), ImplConfig(device="cpu"))
    message = str(err.value)
    assert str(gpt2) in message and "'gpt2'" in message and "not an encoder" in message and "\n" not in message
    encoder = SentenceTransformer(modules=[Transformer(str(gpt2)), Pooling(32)], device="cpu")
    encoder.save(str(tmp_path))  # a SentenceTransformer folder of it is refused the same way
    with pytest.raises(UserError, match="'gpt2'.*not an encoder"):
        build_model(ModelConfig(base_model=str(tmp_path), max_seq_length=32), ImplConfig(device="cpu"))
