"""The whole pipeline in one command: pretraining → Siamese fine-tuning → evaluation → app."""

import stagekit  # noqa: F401  (first: it sets PYTORCH_ENABLE_MPS_FALLBACK, which torch reads when imported)

SECTIONS = ("pretrain", "siamese", "eval")  # the config sections `python -m pipeline` takes overrides for
