"""Weights files that cannot be opened, found before a loader trips on them.

A `.safetensors` file cut short or left empty (an interrupted copy or download, a full disk) makes safetensors
raise `SafetensorError: Error while deserializing header: header too small` (or "incomplete metadata, file not
fully covered", "invalid header length") from deep inside transformers or sentence-transformers, with no file
name; a `torch.save` file cut short fails in torch's zip reader the same way. Both formats record sizes that a
shorter file cannot meet, so opening a file's header (safetensors) or its zip directory, which sits at the end of
a `torch.save` file, finds any cut without reading a tensor. Every loader of a model folder checks here first and
says which file in one line (`check_weights`); a resume skips a checkpoint that fails (stagekit/resume.py).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from stagekit.errors import UserError

SAFETENSORS = ".safetensors"
TORCH_FILES = (".bin", ".pt", ".pth")  # torch.save's zip format: optimizer.pt, rng_state.pth, pytorch_model.bin
_ZIP_MAGIC = b"PK\x03\x04"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def weights_problem(file: str | Path) -> str | None:
    """Why weights file `file` (safetensors or torch.save's zip format) cannot be opened, in a few words, or None
    when it opens. Reads the header or the zip directory only. A torch file in the legacy (pre-zip) format is not
    checked: it has no directory to read."""
    file = Path(file)
    try:
        if file.stat().st_size == 0:
            return "the file is empty"
        if file.suffix == SAFETENSORS:
            with safe_open(str(file), framework="pt"):  # parses the header and checks that it covers the file
                return None
        with file.open("rb") as fh:
            if fh.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
                return None
        with zipfile.ZipFile(file):  # reads the central directory at the end of the file
            return None
    except (SafetensorError, zipfile.BadZipFile, OSError) as err:
        return _first_line(err)


def weights_files(path: str | Path) -> list[Path]:
    """`path` itself when it is a file, else the weights files anywhere under folder `path` (a
    SentenceTransformer keeps some in module sub-folders), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    suffixes = (SAFETENSORS, *TORCH_FILES)
    return sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())


def damaged_weights(path: str | Path) -> list[tuple[Path, str]]:
    """(file, why) for each weights file of `path` (a file or a folder) that cannot be opened; a folder that
    cannot be listed (removed while it was read) is one such (folder, why)."""
    try:
        files = weights_files(path)
    except OSError as err:
        return [(Path(path), _first_line(err))]
    return [(file, why) for file in files if (why := weights_problem(file)) is not None]


def damaged_line(file: Path, why: str) -> str:
    """The one line that names a damaged weights file and what to do about it."""
    return (
        f"weights file {file} cannot be opened ({why}): it was cut short or damaged (an interrupted copy or "
        "download, a full disk?); copy or download it again, or train it anew"
    )


def check_weights(path: str | Path) -> None:
    """Raise UserError (one line naming the file) when a weights file of `path` (a file, or a model folder and
    its sub-folders) cannot be opened; a path that does not exist passes (its loader says so)."""
    for file, why in damaged_weights(path):
        raise UserError(damaged_line(file, why))


def load_tensors(file: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with a file that cannot be opened (or is missing) as one UserError line."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"weights file {file} does not exist")
    check_weights(file)
    return load_file(str(file), device=str(device))
