"""The pretrained model's own files: weights, config.json naming the plain transformers class, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pretrain.model import saved_class_name


def save_model_files(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Write the model into `folder` so that it loads with `AutoModelForMaskedLM.from_pretrained`,
    `pipeline("fill-mask")` and `SentenceTransformer(path)`: config.json names the plain transformers class
    (e.g. BertForMaskedLM), not the training subclass with the masked-only head."""
    model.save_pretrained(folder)  # safetensors + config.json
    written = json.loads((folder / "config.json").read_text())
    written["architectures"] = [saved_class_name(model)]
    (folder / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)
