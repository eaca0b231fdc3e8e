"""Stage 2: fine-tune the pretrained BERT as a Siamese (bi-encoder) sentence encoder on NLI."""

import stagekit  # noqa: F401  (first: it sets PYTORCH_ENABLE_MPS_FALLBACK, which torch reads when imported)
