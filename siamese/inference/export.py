"""Export a sentence encoder for serving: `python -m siamese.inference.export --model DIR --out DIR [--no-int8] [--truncate-dim K]`.

The new folder is a copy of the model folder (torch weights, tokenizer, post-processing, NLI head, report) plus
`onnx/model.onnx` (the transformer in fp32) and `onnx/model_qint8_avx2.onnx` (its MatMul weights dynamically
quantized to int8; activations are quantized per batch at run time, so no calibration data are needed), and
`onnx/export.json`: the files, their sizes and how closely each variant agrees with torch. Only the transformer
is exported: tokenization, pooling and a post-processing Dense module (siamese/inference/postprocess.py) stay what they
were, and so does the NLI head, which reads the pooled embedding (siamese/inference/encoder.py). Load it with
`NLIEncoder.load(out, backend="onnx" | "onnx-int8")`, `python -m siamese.evaluation --model out backend=onnx-int8`
or the app's `--backend`. Works for any SentenceTransformer folder whose first module is a Transformer (ours,
all-MiniLM-L6-v2: `--model all-MiniLM-L6-v2` is the offline copy).

`--truncate-dim K` makes the exported embeddings the first K dimensions (what a model trained with
`loss.matryoshka_dims` is trained for): a `Dense` module holding the first K rows of the identity is appended as one
more post-processing module, so `SentenceTransformer(out).encode` returns K dimensions with no code of ours, and the
NLI head still reads the full embedding. This project's model card is kept, rewritten with the width (siamese/inference/card.py);
another card (e.g. all-MiniLM-L6-v2's) is copied as it is.

Before the folder is written the agreement check runs on a fixed set of sentences; an fp32 export whose
embeddings fall below cosine MIN_FP32_COSINE of torch's is refused (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from siamese.inference.card import write_model_card
from siamese.inference.encoder import NLIEncoder, resolve_base
from siamese.inference.onnx_backend import INPUT_NAMES, ONNX_DIR, ONNX_FILES, OUTPUT_NAME
from siamese.inference.onnx_check import CHECK_SENTENCES, agreement
from siamese.inference.postprocess import POSTPROCESS_FILE, read_postprocessing
from stagekit.cli import doc_summary
from stagekit.errors import UserError
from stagekit.folders import atomic_dir
from stagekit.model_card import replaceable

log = logging.getLogger(__name__)
EXPORT_FILE = f"{ONNX_DIR}/export.json"
MIN_FP32_COSINE = 0.999
OPSET = 17  # LayerNormalization is an ONNX op from 17 on: one node instead of seven, as ONNX Runtime fuses it


class _HiddenStates(torch.nn.Module):
    """The transformers model as a function of positional tensors, returning last_hidden_state only."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


def export_fp32(model, path: Path) -> list[str]:
    """Write the transformer of SentenceTransformer `model` to `path` as fp32 ONNX with dynamic batch and
    sequence axes; returns the input names the graph takes.

    torch's TorchScript exporter (dynamo=False) is used: it exported NomicBERT and BERT here in about a second
    with outputs within 4e-6 of torch, while the dynamo exporter needs onnxscript and took ten times longer.
    """
    transformer = model[0]
    sample = transformer.tokenizer(
        ["a short one", "a somewhat longer sentence, so the batch is padded"], padding=True, return_tensors="pt"
    )
    names = [name for name in INPUT_NAMES if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT_NAME]}
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _HiddenStates(transformer.auto_model, names).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's deprecation and tracer warnings (shape-dependent Python branches in transformers'
        # mask code) would bury the one line that matters; the agreement check below is the real test.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return names


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of `source`'s MatMul weights into `target`: signed 8-bit weights with one
    scale per output channel, 7-bit range; activations are quantized per batch at run time.

    Measured here (docs/benchmarks.md, "ONNX and int8"; an AMD EPYC with AVX-512 VNNI): unsigned weights ran
    all-MiniLM-L6-v2 at about half the speed; one scale per tensor or the full 8-bit range lowered its worst
    embedding cosine to torch from 0.97 to 0.71-0.96. The 7-bit range is also ONNX Runtime's advice for CPUs with
    AVX2 but no VNNI, which sum u8·s8 products in saturating 16-bit pairs; the "avx2" in the file name is
    sentence-transformers' name for such a portable x86 file. The token embedding table (a Gather) stays fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs "please consider pre-processing" through the root logger every call
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=["MatMul"],
        )
    finally:
        root.setLevel(level)


def append_truncation(encoder: NLIEncoder, folder: Path, dims: int, final: Path | None = None) -> None:
    """Save `encoder`'s model into `folder` with one more module that keeps the first `dims` dimensions (a Dense
    layer whose weight is the first `dims` rows of the identity: exact in fp32), counted as post-processing in
    postprocessing.json so the NLI head keeps reading the full embedding. `final`: where `folder` will live, as
    the card's load snippet names it."""

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    full = encoder.widths[0]
    keep = Dense(full, dims, bias=False, activation_function=None, init_weight=torch.eye(full)[:dims].clone())
    # The copied card stays (sentence-transformers would write its generic one); ours is rewritten below.
    SentenceTransformer(modules=[*encoder.model, keep], device="cpu").save(str(folder), create_model_card=False)
    decision = read_postprocessing(folder) or {"modules": 0}
    decision |= {"modules": decision["modules"] + 1, "truncate_dim": dims}
    (folder / POSTPROCESS_FILE).write_text(json.dumps(decision, indent=2), encoding="utf-8")
    # A folder of the siamese stage (run_info.json) with its card, or the generic one of a folder from before cards:
    # this project's card, now giving the width; any other card stays as copied.
    if (folder / "run_info.json").is_file() and replaceable(folder, generated_by="sentence-transformers"):
        write_model_card(folder, final)


def export(model_dir: Path, out: Path, int8: bool = True, truncate_dim: int | None = None) -> dict:
    """Write the exported folder `out` (see the module docstring) atomically; returns what export.json holds.

    Raises UserError (one line) when the model cannot be loaded or does not start with a Transformer, `out` is
    `model_dir` or inside it, `truncate_dim` is outside 1..the model's width, or the fp32 export disagrees with torch.
    """
    source, target = model_dir.expanduser().resolve(), out.expanduser().resolve()
    if target == source or source in target.parents:
        raise UserError("--out must be outside --model: the export is a new folder beside the model, not in it")
    reference = NLIEncoder.load(model_dir, device="cpu", truncate_dim=truncate_dim)
    if not hasattr(reference.model[0], "auto_model"):
        raise UserError(f"{model_dir}: its first module is a {type(reference.model[0]).__name__}, not a Transformer")
    backends = ["onnx", *(["onnx-int8"] if int8 else [])]
    with atomic_dir(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ONNX_DIR, ".tmp-*"))
        if truncate_dim is not None and truncate_dim < reference.widths[0]:
            append_truncation(reference, tmp, truncate_dim, out)
        fp32 = tmp / ONNX_FILES["onnx"]
        names = export_fp32(reference.model, fp32)
        if int8:
            quantize_int8(fp32, tmp / ONNX_FILES["onnx-int8"])
        summary: dict = {"source": str(model_dir), "inputs": names, "opset": OPSET, "variants": {}}
        summary["dims"] = reference.dims
        for backend in backends:
            candidate = NLIEncoder.load(tmp, backend=backend)
            figures = agreement(reference, candidate, CHECK_SENTENCES)
            file = tmp / ONNX_FILES[backend]
            summary["variants"][backend] = {"file": ONNX_FILES[backend], "bytes": file.stat().st_size} | figures
            log.info("%s: %.1f MB, embedding cosine to torch min %.5f", backend, file.stat().st_size / 1e6,
                     figures["cosine_min"])  # fmt: skip
        if (low := summary["variants"]["onnx"]["cosine_min"]) < MIN_FP32_COSINE:
            raise UserError(f"the fp32 ONNX export disagrees with torch (cosine {low:.5f} < {MIN_FP32_COSINE})")
        (tmp / EXPORT_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m siamese.inference.export", description=doc_summary(__doc__))
    parser.add_argument("--model", required=True, help="a SentenceTransformer folder, or all-MiniLM-L6-v2")
    parser.add_argument("--out", required=True, help="the exported folder to write (replaced atomically)")
    parser.add_argument("--no-int8", action="store_true", help="write the fp32 ONNX file only")
    parser.add_argument(
        "--truncate-dim",
        type=int,
        help="export embeddings of the first K dimensions only (a model trained with loss.matryoshka_dims)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    export(Path(resolve_base(args.model)).expanduser(), out, int8=not args.no_int8, truncate_dim=args.truncate_dim)
    print(out)
    return out


def cli() -> None:
    import sys

    from stagekit.cli import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
