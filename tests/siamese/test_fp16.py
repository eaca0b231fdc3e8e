"""One fp16 autocast + loss-scaling step of the siamese objective on padded pairs (CPU autocast: the Trainer's
fp16 path needs CUDA), against the same step in fp32."""

from __future__ import annotations

import pytest
import torch

from siamese.config import ImplConfig, LossConfig, ModelConfig
from siamese.losses import build_loss
from siamese.model import build_model

PAIRS = [
    ("A man is playing a guitar on a small stage in front of a crowd.", "A person makes music.", 0),
    ("Two dogs run.", "The animals are asleep in their baskets by the fire.", 2),
    ("The restaurant was closed on Sunday.", "It is expensive.", 1),
    ("A child reads.", "Someone is reading a book quietly in the library.", 1),
]


def step(tiny_bert, name: str, half: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(base_model=str(tiny_bert), max_seq_length=32), ImplConfig(device="cpu"))
    loss = build_loss(model, LossConfig(name=name))
    premises, hypotheses, labels = zip(*PAIRS, strict=True)
    features = [dict(model.tokenize(list(premises))), dict(model.tokenize(list(hypotheses)))]
    assert (features[0]["attention_mask"] == 0).any() and (features[1]["attention_mask"] == 0).any()  # padding
    scaler = torch.amp.GradScaler("cpu", enabled=half)
    optimizer = torch.optim.AdamW(loss.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in loss.parameters()]
    for _ in range(4):  # a step whose scaled gradients overflow is skipped and the scale halved, as in training
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=half):
            value = loss(features, torch.tensor(labels))
            value = sum(value.values()) if isinstance(value, dict) else value
        scale = scaler.get_scale() if half else 1.0
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        if not half or scaler.get_scale() == scale:  # taken: the scale was kept
            break
        assert not torch.isfinite(norm)  # skipped: the weights are untouched
        assert all(torch.equal(a, b) for a, b in zip(before, loss.parameters(), strict=True))
    else:
        pytest.fail("four fp16 steps in a row overflowed")
    assert all(p.dtype == torch.float32 for p in loss.parameters())
    return float(value.detach()), float(norm)


@pytest.mark.parametrize("name", ["softmax", "both"])
def test_an_fp16_siamese_step_matches_fp32(tiny_bert, name):
    loss32, norm32 = step(tiny_bert, name, half=False)
    loss16, norm16 = step(tiny_bert, name, half=True)
    assert torch.isfinite(torch.tensor([loss16, norm16])).all()
    assert abs(loss16 - loss32) < 2e-2 * loss32 and abs(norm16 - norm32) < 0.05 * norm32
