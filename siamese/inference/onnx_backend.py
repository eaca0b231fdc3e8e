"""Run the transformer of a sentence encoder with ONNX Runtime: fp32 or dynamically quantized int8.

`python -m siamese.inference.export` (siamese/inference/export.py) writes the files in sentence-transformers' own layout,
`onnx/model.onnx` and `onnx/model_qint8_avx2.onnx` beside the torch weights. sentence-transformers reads that
layout through optimum-onnx, whose latest release (0.1.0) requires transformers < 4.58 and fails to import with the
transformers 5 this project uses; so this module does what its ONNX backend does: an ONNX Runtime session stands
in for the transformers model inside the `Transformer` module, and tokenization, pooling and any post-processing
module (siamese/inference/postprocess.py) stay as they are. Everything except the transformer itself is unchanged, so the
NLI head reads the embedding at the same point as with torch (before post-processing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stagekit.errors import UserError

BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
ONNX_DIR = "onnx"
# The names sentence-transformers gives them (its export_dynamic_quantized_onnx_model calls the int8 file
# model_qint8_<config>.onnx), so the same folder loads there too once its ONNX backend runs on transformers 5.
ONNX_FILES: dict[str, str] = {"onnx": f"{ONNX_DIR}/model.onnx", "onnx-int8": f"{ONNX_DIR}/model_qint8_avx2.onnx"}
# The transformer's inputs in the order the exported graph takes them (a model may lack token_type_ids).
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"


def check_backend(backend: str) -> str:
    """`backend` if it is one of BACKENDS; else a one-line UserError naming the choices."""
    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def describe(backend: str) -> str:
    """The backend in words for a model card, e.g. "onnx-int8 (ONNX Runtime 1.32, onnx/model_qint8_avx2.onnx)"."""
    if backend == "torch":
        return f"torch {torch.__version__}"
    import onnxruntime as ort

    return f"{backend} (ONNX Runtime {ort.__version__}, {ONNX_FILES[backend]})"


def onnx_file(model_dir: Path, backend: str) -> Path:
    """The ONNX file of `backend` ("onnx" or "onnx-int8") in `model_dir`; UserError when it is missing."""
    path = Path(model_dir) / ONNX_FILES[check_backend(backend)]
    if not path.is_file():
        raise UserError(
            f"{model_dir} has no {ONNX_FILES[backend]} for backend {backend}: "
            f"export it first with python -m siamese.inference.export --model {model_dir} --out DIR"
        )
    return path


class OnnxTransformerModel(torch.nn.Module):
    """An ONNX Runtime session with the calling convention of a transformers encoder model.

    sentence-transformers' `Transformer.forward` calls `model(input_ids=..., attention_mask=..., ...)` and reads
    `["last_hidden_state"]`; this returns that as a (batch, tokens, hidden) float32 CPU tensor. It has no
    parameters: the weights live in the ONNX file. Several threads may run it at once (the app's sessions share one
    encoder): ONNX Runtime allows concurrent `run` calls on one session, and this keeps no state between calls; the
    tokenization before it is serialized by `NLIEncoder` (siamese/inference/encoder.py).
    """

    def __init__(self, path: Path, config: Any, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # The same thread count as torch (the app and the benchmark set it), so the two backends compare fairly;
        # ONNX Runtime's default of one thread per core spins on a busy CPU as OpenMP does (app/predict.py).
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # a damaged or foreign file: one line naming it
            raise UserError(f"{path} could not be loaded by ONNX Runtime: {str(err).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = config
        self.path = Path(path)
        self.device = torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> dict:
        given = {"input_ids": input_ids, "attention_mask": attention_mask} | kwargs
        if given.get("attention_mask") is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given.get("token_type_ids") is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {name: np.ascontiguousarray(given[name].cpu().numpy(), dtype=np.int64) for name in self.input_names}
        (hidden,) = self.session.run([OUTPUT_NAME], feeds)
        return {OUTPUT_NAME: torch.from_numpy(hidden)}


def use_onnx(model, path: Path, threads: int | None = None) -> None:
    """Replace the transformers model inside `model[0]` (a sentence-transformers Transformer) by the ONNX file
    at `path`, in place; the torch weights are dropped. Raises UserError for a model whose first module is not
    a Transformer."""
    transformer = model[0]
    if not hasattr(transformer, "auto_model"):
        raise UserError(f"the first module of the model is a {type(transformer).__name__}, not a Transformer")
    transformer.model = OnnxTransformerModel(path, transformer.model.config, threads)
    transformer.backend = "onnx"
