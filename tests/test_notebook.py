"""notebooks/colab_t4.ipynb runs top to bottom (nbclient, CPU): its parameters replaced by the debug configs and
the shared local data, as papermill would, and the evaluation and predictions show inline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "colab_t4.ipynb"


def with_parameters(nb, **values):
    """papermill's convention: a cell tagged `injected-parameters` right after the one tagged `parameters`."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def test_the_notebook_names_its_parameters_and_the_t4_recipes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for name in ("REPO_URL", "PRETRAIN_CONFIG", "SIAMESE_CONFIG", "OUTPUT_DIR", "DATA_DIR", "INSTALL", "EVAL_LIMIT"):
        assert f"\n{name} = " in f"\n{parameters.source}"
    assert 'PRETRAIN_CONFIG = "configs/pretrain/t4.yaml"' in parameters.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs


def test_the_notebook_runs_top_to_bottom_on_the_debug_configs(tmp_path, data_dir, repo_root):
    nb = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4),
        PRETRAIN_CONFIG="configs/pretrain/debug.yaml",
        SIAMESE_CONFIG="configs/siamese/debug.yaml",
        OUTPUT_DIR=str(tmp_path / "outputs"),
        DATA_DIR=str(data_dir),
        INSTALL=False,
        EVAL_LIMIT=64,
        BASELINE=False,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo_root)}}
    )
    client.execute(env=env)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "precision: fp32" in text  # the device's decision, printed
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    html = "\n".join(o.data.get("text/html", "") for o in shown)
    markdown = "\n".join(o.data.get("text/markdown", "") for o in shown)
    assert "MNLI" in markdown and any("image/png" in o.data for o in shown)  # the report and its plots
    assert "entailment" in html and "A person is making music." in html  # the predictions table
    model = tmp_path / "outputs" / "siamese-debug" / "model"
    assert (model / "report.json").is_file() and (model / "metrics.json").is_file()
