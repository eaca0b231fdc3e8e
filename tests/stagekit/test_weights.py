"""Weights files cut short or empty are found by opening their header (or zip directory) and named in one line."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from stagekit.errors import UserError
from stagekit.weights import check_weights, damaged_weights, load_tensors, weights_problem


def cut(file, keep: int) -> None:
    file.write_bytes(file.read_bytes()[:keep])


@pytest.fixture
def folder(tmp_path):
    save_file({"weight": torch.ones(64, 64)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "2_Dense").mkdir()
    save_file({"linear.weight": torch.ones(8, 8)}, str(tmp_path / "2_Dense" / "model.safetensors"))
    torch.save({"state": {0: torch.ones(16)}}, tmp_path / "optimizer.pt")
    return tmp_path


def test_intact_files_open(folder):
    assert damaged_weights(folder) == []
    check_weights(folder)
    assert torch.equal(load_tensors(folder / "model.safetensors")["weight"], torch.ones(64, 64))


@pytest.mark.parametrize(
    ("name", "keep", "why"),
    [
        ("model.safetensors", 0, "empty"),
        ("model.safetensors", 4, "header"),
        ("model.safetensors", 5000, "incomplete metadata"),
        ("2_Dense/model.safetensors", 100, ""),
        ("optimizer.pt", 300, ""),
    ],
)
def test_a_file_cut_short_is_named_in_one_line(folder, name, keep, why):
    cut(folder / name, keep)
    ((file, reason),) = damaged_weights(folder)
    assert file == folder / name and why in reason
    with pytest.raises(UserError) as err:
        check_weights(folder)
    assert str(folder / name) in str(err.value) and "cut short" in str(err.value) and "\n" not in str(err.value)


def test_loading_a_damaged_or_missing_file_is_one_line(folder):
    cut(folder / "model.safetensors", 0)
    with pytest.raises(UserError, match="model.safetensors cannot be opened"):
        load_tensors(folder / "model.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        load_tensors(folder / "absent.safetensors")


def test_a_legacy_torch_file_is_not_taken_for_a_damaged_one(tmp_path):
    legacy = tmp_path / "pytorch_model.bin"
    legacy.write_bytes(pickle.dumps({"a": 1}))  # no zip directory to check: left to its loader
    assert weights_problem(legacy) is None
