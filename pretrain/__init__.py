"""MLM pretraining stage: corpus → tokenizer → packed blocks → BertForMaskedLM → outputs/<run>/model."""

import stagekit  # noqa: F401  (first: it sets PYTORCH_ENABLE_MPS_FALLBACK, which torch reads when imported)
