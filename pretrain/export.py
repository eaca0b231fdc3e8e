"""The final, self-describing model folder: weights, config, tokenizer, resolved config, metrics and model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pretrain.card import write_model_card
from pretrain.model import saved_class_name
from stagekit.atomic import atomic_dir
from stagekit.config import save_config


def export_model(
    target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: Any, metrics: dict[str, Any]
) -> None:
    """Write `target` completely or not at all (a kill leaves only a `.tmp-*` sibling).

    The folder loads with `AutoModelForMaskedLM.from_pretrained`, `pipeline("fill-mask")` and
    `SentenceTransformer(path)`; config.json names the plain transformers class, not the training subclass.
    """
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)  # safetensors + config.json
        written = json.loads((tmp / "config.json").read_text())
        written["architectures"] = [saved_class_name(model)]
        (tmp / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)
        save_config(config, tmp / "resolved_config.yaml")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(tmp, model, target)  # README.md, from the files above
