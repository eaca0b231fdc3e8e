"""Shared fixtures: the offline data folder, and an environment where nothing reaches the network."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from stagekit.config import REPO_ROOT

DATA_DIR = Path(os.environ["BERT_DATA_DIR"])  # set by stagekit.config: ../shared/data unless given


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
    """The tiny model with a whitening Dense module appended, in the layout siamese/calibrate.py writes: the
    post-processing the ONNX export must keep as a torch module after the ONNX transformer."""
    import json
    import shutil

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from siamese.postprocess import POSTPROCESS_FILE, Candidate, Decision, dense_module, fit_transform

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
    """`tiny_whitened_dir` exported by siamese/export.py: torch weights plus onnx/ (fp32 and int8)."""
    from siamese.export import export

    target = tmp_path_factory.mktemp("exported") / "model"
    export(tiny_whitened_dir, target)
    return target
