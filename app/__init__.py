"""The Streamlit app: explore a trained siamese encoder's similarity and NLI predictions.

`streamlit_app.py` is the UI only; the logic it needs (finding models, reading their card, loading
examples, checking uploaded CSVs, predicting) lives in the small modules beside it so tests can call it.
"""

import stagekit  # noqa: F401  (first: it sets PYTORCH_ENABLE_MPS_FALLBACK, which torch reads when imported)
