from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForMaskedLM

from pretrain.blocks import prepare_data
from pretrain.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pretrain.engine import WarmupThenPlateau, build_training
from pretrain.model import mlm_loss, weight_decay_groups


@pytest.fixture
def engine_and_data(tiny_config):
    cfg = tiny_config()
    data = prepare_data(cfg)
    return build_training(cfg, data.tokenizer), data


def test_masking_statistics_match_bert(engine_and_data):
    engine, data = engine_and_data
    blocks = data.train[:512]
    input_ids, labels = engine.mask(blocks)
    specials = torch.isin(blocks.long(), engine.special_ids)
    selected = labels != -100
    rate = selected.sum() / (~specials).sum()
    assert 0.14 < rate < 0.16  # ~9,000 maskable tokens per 100 blocks: 15% ± 1 point is > 4 sigma
    assert not (selected & specials).any()  # [CLS], [SEP], [UNK] ... are never masked
    assert torch.equal(labels[selected], blocks.long()[selected])  # labels are the original tokens
    tok = data.tokenizer
    n = selected.sum()
    as_mask = (input_ids[selected] == tok.mask_token_id).sum() / n
    unchanged = (input_ids[selected] == labels[selected]).sum() / n
    assert 0.78 < as_mask < 0.82 and 0.08 < unchanged < 0.12
    assert 0.08 < 1 - as_mask - unchanged < 0.12  # replaced by a random token (rarely the same one)
    assert torch.equal(input_ids[~selected], blocks.long()[~selected])


def test_masking_is_reproducible_from_the_seed(tiny_config):
    cfg = tiny_config()
    data = prepare_data(cfg)
    a, b = build_training(cfg, data.tokenizer), build_training(cfg, data.tokenizer)
    for _ in range(2):
        ma, mb = a.mask(data.train[:8]), b.mask(data.train[:8])
        assert torch.equal(ma[0], mb[0]) and torch.equal(ma[1], mb[1])


def test_masked_only_head_loss_equals_full_head_loss(engine_and_data):
    engine, data = engine_and_data
    model = engine.model.eval()
    input_ids, labels = engine.mask(data.train[:8])
    with torch.no_grad():
        fast, fast_correct, count = mlm_loss(model, input_ids, labels, masked_only=True)
        full, full_correct, _ = mlm_loss(model, input_ids, labels, masked_only=False)
        reference = model(input_ids=input_ids, labels=labels).loss  # transformers' own MLM loss
    assert torch.allclose(fast, full, atol=1e-5) and torch.allclose(full, reference, atol=1e-5)
    assert fast_correct == full_correct and count == (labels != -100).sum()


def test_unigram_bias_init_starts_the_loss_at_the_token_frequencies(tiny_config):
    cfg = tiny_config()
    data = prepare_data(cfg)
    counts = data.token_counts
    prior = build_training(cfg, data.tokenizer, counts)
    zero = build_training(tiny_config("train.output_bias_init=zero"), data.tokenizer, counts)
    input_ids, labels = prior.mask(data.train[:64])
    targets = labels[labels != -100]
    frequencies = (counts + 1) / (counts + 1).sum()
    prior_guess = -frequencies[targets].log().mean()  # the loss of predicting by frequency alone
    with torch.no_grad():
        prior_loss = mlm_loss(prior.model.eval(), input_ids, labels)[0]
        zero_loss = mlm_loss(zero.model.eval(), input_ids, labels)[0]
    # The untrained encoder adds logits of ~0.1 either way: the bias decides where the loss starts.
    assert abs(prior_loss - prior_guess) < 0.1
    assert abs(zero_loss - math.log(cfg.model.vocab_size)) < 0.1
    assert prior_loss < zero_loss - 0.5
    # Only the bias differs: the same seed gives the same weights otherwise.
    for (name, a), b in zip(prior.model.named_parameters(), zero.model.parameters(), strict=True):
        assert torch.equal(a, b) or name == "cls.predictions.bias"


def test_weight_decay_groups(engine_and_data):
    engine, _ = engine_and_data
    decay, no_decay = weight_decay_groups(engine.model, 0.01)
    names = {id(p): n for n, p in engine.model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert not decay_names & no_decay_names and decay_names | no_decay_names == set(names.values())
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay_names)
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decay_names)
    assert "bert.embeddings.word_embeddings.weight" in decay_names
    assert "bert.encoder.layer.0.attention.self.query.weight" in decay_names
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in no_decay_names
    # the AdamW the engine built uses exactly these groups
    assert [g["weight_decay"] for g in engine.optimizer.param_groups] == [engine.cfg.train.weight_decay, 0.0]


def test_warmup_then_reduce_on_plateau_lowers_lr_when_validation_stalls(tiny_config):
    cfg = tiny_config(
        "train.learning_rate=1.0e-3", "train.warmup_steps=4", "train.plateau_patience=1", "train.plateau_factor=0.5"
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.train.learning_rate)
    schedule = WarmupThenPlateau(optimizer, cfg.train)
    lrs = []
    for step in range(4):
        schedule.before_step(step)
        lrs.append(schedule.lr)
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    schedule.after_eval(2, 9.0)  # still warming up: a plateau is not judged yet
    schedule.after_eval(4, 5.0)
    schedule.after_eval(5, 4.0)  # improving: lr holds
    assert schedule.lr == pytest.approx(1e-3)
    schedule.after_eval(6, 4.0)
    schedule.after_eval(7, 4.0)  # two evaluations without improvement, patience 1: halve
    assert schedule.lr == pytest.approx(5e-4)
    for step in range(8, 40):
        schedule.after_eval(step, 4.0)
    assert schedule.lr == pytest.approx(cfg.train.min_lr)  # never below min_lr


def test_save_pretrained_then_load_gives_identical_logits(engine_and_data, tmp_path):
    engine, data = engine_and_data
    model = engine.model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = data.validation[:4].long()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(engine_and_data, tmp_path):
    engine, data = engine_and_data
    engine.train_step([data.train[:8]])
    rng = engine.rng_state()
    path = save_checkpoint(tmp_path, 1, engine.model, engine.optimizer, rng, {"loop": {"step": 1}}, keep=2)
    assert latest_checkpoint(tmp_path) == path
    fresh = build_training(engine.cfg, data.tokenizer)
    state, rng_back = load_checkpoint(path, fresh.model, fresh.optimizer, fresh.device)
    assert state == {"loop": {"step": 1}} and all(torch.equal(rng[k], rng_back[k]) for k in rng)
    for (name, a), b in zip(engine.model.state_dict().items(), fresh.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    exp_avg = [s["exp_avg"] for s in engine.optimizer.state.values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, fresh.optimizer.state.values(), strict=True))
