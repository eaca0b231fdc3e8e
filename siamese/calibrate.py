"""Calibrate a sentence encoder: fit its post-processing and random-pair reference (siamese/postprocess.py).

The siamese stage calls `calibrate` on the trained model before writing its folder; the command does the same
for any model folder — a pretraining output, a fine-tuned model, all-MiniLM-L6-v2 or a Hub id:

    python -m siamese.calibrate --model outputs/pretrain-cpu-small/model --out outputs/pretrain-cpu-small-whitened

Fitting uses training sentences only (MNLI train); `method: auto` selects on STS-B validation, never test.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from sentence_transformers import SentenceTransformer

from siamese.config import DataConfig, ImplConfig, ModelConfig, PostprocessConfig, SiameseConfig
from siamese.encoder import NLIEncoder, trained_dims
from siamese.model import build_model, resolve_base
from siamese.nli_data import first_pairs, source_name
from siamese.postprocess import (
    POSTPROCESS_FILE,
    REFERENCE_FILE,
    Decision,
    SimilarityReference,
    fit_postprocessing,
    save_postprocessing,
)
from siamese.scores import read_stsb, stsb_scale
from stagekit.cli import doc_summary, run_cli
from stagekit.config import REPO_ROOT, load_config
from stagekit.errors import UserError
from stagekit.folders import atomic_dir, require_writable
from stagekit.sources import SourceConfig, looks_local

log = logging.getLogger(__name__)


def fit_sentences(data: DataConfig, n: int, seed: int) -> list[str]:
    """Up to `n` distinct sentences (premises and hypotheses, in stream order) of the first training pairs."""
    rows = first_pairs(data, n, seed)
    seen: dict[str, None] = {}
    for premise, hypothesis in zip(rows["premise"], rows["hypothesis"], strict=True):
        seen.setdefault(premise)
        seen.setdefault(hypothesis)
        if len(seen) >= n:
            break
    return list(seen)[:n]


def short_name(source: SourceConfig) -> str:
    """A source as a person reads it: a local file by its last two path parts (mnli/train.jsonl.gz)."""
    name = source_name(source)
    return "/".join(Path(name).parts[-2:]) if looks_local(source.path) else name


def calibrate(
    model: SentenceTransformer,
    cfg: PostprocessConfig,
    data: DataConfig,
    seed: int,
    batch_size: int = 64,
    nested: bool = False,
) -> tuple[SentenceTransformer, Decision, SimilarityReference]:
    """Fit and attach the post-processing `cfg` asks for; see `siamese.postprocess.fit_postprocessing` (`nested`:
    whitening that keeps the widths of a model trained with loss.matryoshka_dims).

    Raises DataError (one line) when the training or selection data cannot be read.
    """
    texts = fit_sentences(data, cfg.fit_sentences, seed)
    source = "training sentences of " + ", ".join(short_name(s) for s in data.train_sources)
    selection, name = None, None
    if cfg.method == "auto":
        where = cfg.selection_source
        selection = read_stsb(
            where, None, stsb_scale(where.path), local_hint="${BERT_DATA_DIR}/stsb/validation.jsonl.gz"
        )
        name = f"STS-B validation ({len(selection[2]):,} pairs of {short_name(where)})"
    log.info("calibrating on %d %s", len(texts), source)
    return fit_postprocessing(
        model, texts, source, cfg.method, cfg.dims, selection, name, cfg.reference_pairs, seed, batch_size, nested
    )


# Files of a fine-tuned model folder that stay true after calibration (report.json does not: it is re-made).
KEPT_FILES = ("nli_head.safetensors", "nli_labels.json", "run_info.json", "resolved_config.yaml", "metrics.json")


def load_core(name: str) -> tuple[SentenceTransformer, Path | None]:
    """The encoder without any post-processing, and its folder when it is one of ours (to keep its head)."""
    path = Path(resolve_base(name)).expanduser()
    if path.is_dir() and (path / "modules.json").is_file():
        return NLIEncoder.load(path).core, path
    return build_model(ModelConfig(base_model=name), ImplConfig()), None


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m siamese.calibrate", description=doc_summary(__doc__))
    parser.add_argument(
        "--model", required=True, help="a model folder (pretraining output, SentenceTransformer) or Hub id"
    )
    parser.add_argument("--out", required=True, help="the calibrated model folder to write (replaced atomically)")
    parser.add_argument(
        "--config",
        default=None,
        help="a siamese config whose `postprocess` and `data.train_sources` to use (default: configs/siamese/cpu-small.yaml)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides of that config, e.g. postprocess.method=whiten"
    )
    args = parser.parse_args(argv)
    cfg = load_config(
        SiameseConfig, args.config or REPO_ROOT / "configs" / "siamese" / "cpu-small.yaml", args.overrides
    )
    out = Path(args.out)
    if out.resolve() == Path(args.model).expanduser().resolve():
        raise UserError("--out must differ from --model: the calibrated model is a new folder")
    require_writable(out.parent, "pass --out in a writable folder")  # before minutes of encoding
    model, folder = load_core(args.model)
    nested = folder is not None and bool(trained_dims(folder))  # trained for truncation: keep its widths
    model, decision, reference = calibrate(model, cfg.postprocess, cfg.data, cfg.train.seed, nested=nested)
    with atomic_dir(out) as tmp:
        model.save(str(tmp))
        for name in KEPT_FILES if folder is not None else ():
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        save_postprocessing(decision, reference, tmp)
    log.info("calibrated model: %s (%s, %s; %s)", out, decision.chosen.name, POSTPROCESS_FILE, REFERENCE_FILE)
    print(out)
    return out


def cli() -> None:
    import sys

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
