"""Shared fixtures: the offline data folder, and an environment where nothing reaches the network."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain.config import PretrainConfig
from stagekit.config import REPO_ROOT, load_config

DATA_DIR = Path(os.environ["BERT_DATA_DIR"])  # set by stagekit.config: ../shared/data unless given
PRETRAIN_DEBUG_CONFIG = REPO_ROOT / "configs" / "pretrain" / "debug.yaml"


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never track to W&B and never wait on the Hub.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder (../shared/data beside the checkout, or $BERT_DATA_DIR)."""
    if not (DATA_DIR / "mnli" / "train.jsonl.gz").is_file():
        pytest.fail(
            f"shared data not found at {DATA_DIR}: set BERT_DATA_DIR to the folder holding mnli/, stsb/, pretrain/"
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A 2-layer, 64-wide BERT with a WordPiece vocabulary trained on MNLI lines (both stages' tests and the
    probe's)."""
    from tests.tiny_bert import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), data_dir)


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 folder (a byte-level BPE tokenizer without a padding token, as GPT-2's): a decoder that
    fine-tuning and the probe refuse."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    out = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    texts = ["A man is playing a guitar on stage.", "Two dogs run through the snow.", "The children are laughing."]
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, show_progress=False, special_tokens=["<|eos|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|eos|>", eos_token="<|eos|>", unk_token="<|eos|>")
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    GPT2Model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_for_distributed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from tests.tiny_bert import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-distributed"), data_dir)


@pytest.fixture(scope="session")
def tiny_outputs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An outputs folder holding one tiny trained siamese model (tests/app/tiny_model.py), built once."""
    from tests.app.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("outputs")
    build_tiny_model(data_dir, root, run_name="tiny")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_outputs: Path) -> Path:
    return tiny_outputs / "tiny" / "model"


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """Make a folder (and everything under it) look like a read-only mount to this process: os.access says
    no writes, statvfs says ST_RDONLY and a new folder cannot be made (EROFS), as the kernel answers also
    for root. Tests run as root in CI, where chmod would not stop a write."""
    real_access, real_statvfs, real_mkdir = os.access, os.statvfs, os.mkdir
    frozen: list[Path] = []

    def under(path) -> bool:
        try:
            resolved = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        return any(resolved.is_relative_to(f) for f in frozen)

    def access(path, mode, *args, **kwargs):
        return False if mode & os.W_OK and under(path) else real_access(path, mode, *args, **kwargs)

    def statvfs(path):
        return SimpleNamespace(f_flag=os.ST_RDONLY) if under(path) else real_statvfs(path)

    def mkdir(path, *args, **kwargs):
        if under(path) and not os.path.exists(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(os, "mkdir", mkdir)
    return lambda folder: frozen.append(Path(folder).resolve())


@pytest.fixture(scope="session")
def tiny_whitened_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a whitening Dense module appended, in the layout siamese/fit_postprocessing.py writes: the
    post-processing the ONNX export must keep as a torch module after the ONNX transformer."""
    import json
    import shutil

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from siamese.fit_postprocessing import Candidate, Decision, dense_module, fit_transform
    from siamese.inference.postprocess import POSTPROCESS_FILE

    target = tmp_path_factory.mktemp("whitened") / "model"
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    d = model.get_embedding_dimension()
    cloud = np.random.default_rng(0).normal(0.3, 0.2, size=(4 * d, d))  # an affine map that is not the identity
    model.append(dense_module(*fit_transform(cloud, "whiten")))
    model.save(str(target))
    for name in ("nli_head.safetensors", "nli_labels.json", "run_info.json", "report.json"):
        shutil.copy2(tiny_model_dir / name, target / name)
    decision = Decision(Candidate("whiten"), [Candidate("whiten")], None, len(cloud), "random vectors", modules=1)
    (target / POSTPROCESS_FILE).write_text(json.dumps(decision.as_dict()), encoding="utf-8")
    return target


@pytest.fixture(scope="session")
def tiny_exported_dir(tiny_whitened_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_whitened_dir` exported by siamese/inference/export.py: torch weights plus onnx/ (fp32 and int8)."""
    from siamese.inference.export import export

    target = tmp_path_factory.mktemp("exported") / "model"
    export(tiny_whitened_dir, target)
    return target


# Tiny runs of the pretraining entry point on a slice of the shared IMDB stand-in corpus (pretrain/ and the probe).
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One packed-data cache for the whole session: the corpus slice is tokenized and packed once."""
    return tmp_path_factory.mktemp("pretrain-cache")


@pytest.fixture
def tiny_args(tmp_path: Path, cache_dir: Path, data_dir: Path):
    """argv for `pretrain.__main__.main`: the debug config, outputs in tmp_path, plus extra overrides."""

    def make(*overrides: str, out: Path | None = None) -> list[str]:
        return [
            "--config",
            str(PRETRAIN_DEBUG_CONFIG),
            f"output_dir={out or tmp_path}",
            f"data.cache_dir={cache_dir}",
            f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz",
            "data.max_documents=300",
            *overrides,
        ]

    return make


@pytest.fixture(scope="session")
def tiny_data(cache_dir: Path, data_dir: Path):
    """The packed debug corpus (300 IMDB reviews, vocabulary 1,024), prepared once per session."""
    from pretrain.blocks import prepare_data

    overrides = [
        f"data.cache_dir={cache_dir}",
        f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz",
        "data.max_documents=300",
    ]
    return prepare_data(load_config(PretrainConfig, PRETRAIN_DEBUG_CONFIG, overrides))


@pytest.fixture
def tiny_config(tiny_args):
    def make(*overrides: str) -> PretrainConfig:
        args = tiny_args(*overrides)
        return load_config(PretrainConfig, args[1], args[2:])

    return make


@pytest.fixture(scope="session")
def pretrained_debug(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, data_dir: Path) -> Path:
    """The debug config's pretraining output after 10 steps (the model folder, card included), built once."""
    from pretrain.__main__ import main

    out = tmp_path_factory.mktemp("pretrained-debug")
    main([
        "--config", str(PRETRAIN_DEBUG_CONFIG), f"output_dir={out}", f"data.cache_dir={cache_dir}",
        f"data.source={data_dir}/pretrain/imdb_100k.jsonl.gz", "data.max_documents=300", "train.max_steps=10",
        "impl.num_threads=1",
    ])  # fmt: skip
    return out / "pretrain-debug" / "model"
