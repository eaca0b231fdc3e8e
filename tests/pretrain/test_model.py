"""Masking, the masked-only head of every architecture, the unigram start, and saved folders loading back."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForMaskedLM, pipeline

from pretrain.config import PretrainConfig
from pretrain.export import save_model_files
from pretrain.masking import BlockMasker, MaskedBlocks
from pretrain.model import build_model, init_output_bias, output_bias

ARCHITECTURES = {
    "bert": [],
    "nomic_bert": ["model.architecture=nomic_bert", "model.intermediate_size=96"],
    "modernbert": ["model.architecture=modernbert", "model.intermediate_size=96"],
}


def arch_config(tiny_config, name: str, *extra: str) -> PretrainConfig:
    return tiny_config(*ARCHITECTURES[name], *extra)


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def test_masking_statistics_match_bert(data):
    masker = BlockMasker(data.tokenizer)
    blocks = data.train[torch.arange(400)]
    pairs = [masker(block, seed=i) for i, block in enumerate(blocks)]
    input_ids = torch.stack([p[0] for p in pairs])
    labels = torch.stack([p[1] for p in pairs])
    specials = torch.isin(blocks, torch.tensor(data.tokenizer.all_special_ids))
    selected = labels != -100
    rate = selected.sum() / (~specials).sum()
    assert 0.14 < rate < 0.16  # ~48,000 maskable tokens: 15 % ± 1 point is far outside the noise
    assert not (selected & specials).any()  # [CLS], [SEP], [UNK] ... are never selected
    assert torch.equal(labels[selected], blocks[selected])  # labels are the original tokens
    n = selected.sum()
    as_mask = (input_ids[selected] == data.tokenizer.mask_token_id).sum() / n
    unchanged = (input_ids[selected] == labels[selected]).sum() / n
    assert 0.78 < as_mask < 0.82 and 0.08 < unchanged < 0.12
    assert torch.equal(input_ids[~selected], blocks[~selected])


def test_configurable_rate_and_split(data):
    masker = BlockMasker(data.tokenizer, mlm_probability=0.4, mask_replace_prob=1.0, random_replace_prob=0.0)
    blocks = data.train[torch.arange(200)]
    pairs = [masker(block, seed=i) for i, block in enumerate(blocks)]
    input_ids, labels = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    selected = labels != -100
    maskable = ~torch.isin(blocks, torch.tensor(data.tokenizer.all_special_ids))
    assert 0.38 < selected.sum() / maskable.sum() < 0.42
    assert (input_ids[selected] == data.tokenizer.mask_token_id).all()  # every selected token is [MASK]


def test_masks_are_a_function_of_seed_epoch_and_block(data):
    masker = BlockMasker(data.tokenizer)
    a, b = MaskedBlocks(data.train, masker, seed=3), MaskedBlocks(data.train, masker, seed=3)
    assert torch.equal(a[5]["input_ids"], b[5]["input_ids"]) and torch.equal(a[5]["labels"], b[5]["labels"])
    first = a[5]["labels"]
    a.set_epoch(1)
    assert not torch.equal(a[5]["labels"], first)  # a new mask every epoch
    assert torch.equal(data.train[5], data.train[5])  # masking never edits the blocks themselves
    assert not torch.equal(MaskedBlocks(data.train, masker, seed=4)[5]["labels"], first)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_masked_only_head_loss_equals_the_full_head_loss(tiny_config, data, name):
    cfg = arch_config(tiny_config, name)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.tokenizer).eval()
    masker = BlockMasker(data.tokenizer)
    pairs = [masker(block, seed=i) for i, block in enumerate(data.train[torch.arange(8)])]
    input_ids, labels = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    with torch.no_grad():
        fast = model(input_ids=input_ids, labels=labels)
        model.masked_only_head = False
        full = model(input_ids=input_ids, labels=labels)
        # normalised by a count from elsewhere (the Trainer's, over micro-batches and ranks): sum / count
        half = model(input_ids=input_ids, labels=labels, num_items_in_batch=2 * (labels != -100).sum())
    assert fast.logits.shape == ((labels != -100).sum(), cfg.model.vocab_size)
    assert torch.allclose(fast.loss, full.loss, atol=1e-5)
    assert torch.allclose(half.loss, full.loss / 2, atol=1e-5)


# A batch with no masked token (short blocks, batch 1) scored 0 / 0 = NaN, which poisoned the weights and
# was reported as divergence. Summed over no target the loss is 0, and so is its gradient.
@pytest.mark.parametrize("masked_only_head", [True, False], ids=["masked-only-head", "full-head"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_a_batch_without_masked_tokens_has_loss_zero_not_nan(tiny_config, data, name, masked_only_head):
    cfg = arch_config(tiny_config, name)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.tokenizer, masked_only_head)
    input_ids = data.train[torch.arange(2)]
    labels = torch.full_like(input_ids, -100)
    for count in (None, torch.tensor(0), 0):  # alone, or the Trainer's count over the whole step
        model.zero_grad()
        out = model(input_ids=input_ids, labels=labels, num_items_in_batch=count)
        out.loss.backward()
        assert out.loss.item() == 0.0, count
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


# Its masks are fixed, so a validation set whose masks hit no token scored 0 / 0 at every evaluation: a loss
# of 0 and a NaN accuracy, which the plateau schedule and early stopping then steered by.
def test_a_validation_set_without_a_masked_token_is_refused_before_training(tiny_config):
    from pretrain.blocks import prepare_data
    from pretrain.masking import mask_seed
    from pretrain.train import mlm_trainer
    from stagekit.errors import DataError

    short = ("data.block_size=8", "train.max_eval_batches=1", "train.per_device_eval_batch_size=1")
    data = prepare_data(tiny_config(*short))
    masker = BlockMasker(data.tokenizer)  # validation is masked with seed train.seed + 1
    seed = next(s for s in range(200) if (masker(data.validation[0], mask_seed(s + 1, 0, 0))[1] == -100).all())
    with pytest.raises(DataError, match=r"the 1 validation block\(s\) of 8 tokens .* hold no masked token"):
        mlm_trainer(tiny_config(*short, f"train.seed={seed}"), data, [], fresh=True)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_unigram_bias_start_puts_the_loss_at_the_token_frequencies(tiny_config, data, name):
    cfg = arch_config(tiny_config, name)
    torch.manual_seed(0)
    prior = build_model(cfg.model, data.tokenizer).eval()
    init_output_bias(prior, data.token_counts)
    torch.manual_seed(0)
    zero = build_model(cfg.model, data.tokenizer).eval()
    with torch.no_grad():
        output_bias(zero).zero_()
    masker = BlockMasker(data.tokenizer)
    pairs = [masker(block, seed=i) for i, block in enumerate(data.train[torch.arange(64)])]
    input_ids, labels = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    counts = data.token_counts
    frequencies = (counts + 1) / (counts + 1).sum()
    guess = -frequencies[labels[labels != -100]].log().mean()  # the loss of predicting by frequency alone
    with torch.no_grad():
        prior_loss = prior(input_ids=input_ids, labels=labels).loss
        zero_loss = zero(input_ids=input_ids, labels=labels).loss
    assert abs(prior_loss - guess) < 0.15  # an untrained encoder adds small logits either way
    assert abs(zero_loss - math.log(cfg.model.vocab_size)) < 0.15
    assert prior_loss < zero_loss - 0.5


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_exported_folder_loads_everywhere_with_identical_logits(tiny_config, data, name, tmp_path):
    cfg = arch_config(tiny_config, name)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.tokenizer).eval()
    (tmp_path / "model").mkdir()
    save_model_files(tmp_path / "model", model, data.tokenizer)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["architectures"] == [type(model).__mro__[2].__name__]  # the plain transformers class
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "model").eval()
    assert type(reloaded).__name__ == saved["architectures"][0]
    ids = data.validation[torch.arange(4)]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)
    fill = pipeline("fill-mask", model=str(tmp_path / "model"), device="cpu")
    assert len(fill("the movie was [MASK] .", top_k=3)) == 3
    encoder = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert encoder.encode(["a sentence"]).shape == (1, cfg.model.hidden_size)


def test_each_architecture_knows_its_own_fields(tiny_config):
    from stagekit.errors import ConfigError

    known = r"unknown config key 'model.hidden_dropout_prob' \(known for model.architecture=modernbert"
    with pytest.raises(ConfigError, match=known):
        tiny_config("model.architecture=modernbert", "model.hidden_dropout_prob=0.1")  # ModernBERT has mlp_dropout
    with pytest.raises(ConfigError, match="config key 'model.architecture': 'gpt' is not one of"):
        tiny_config("model.architecture=gpt")
    assert tiny_config("model.architecture=nomic_bert").model.rope_theta == 1000.0
