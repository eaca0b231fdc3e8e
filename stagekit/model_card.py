"""The model card both stages write into their model folder as README.md: Hub metadata front matter, then the
stage's own sections (pretrain/card.py, siamese/inference/card.py).

The front matter is `huggingface_hub.ModelCardData` (license, library_name, tags, datasets, base_model and a
model-index of evaluation results), so the Hub reads it as it reads any card. The "How to load" snippets name
the model once, on a line `model_id = "..."`: the folder as a user types it, or — once the folder was pushed
(stagekit/push.py rewrites that line) — its Hub id, which a later rewrite of the card keeps.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from stagekit.folders import atomic_write_text

CARD_FILE = "README.md"
PROJECT_TAG = "bert-sentence-encoder"  # in every card this project writes: a card without it is not ours to replace
MODEL_ID_LINE = re.compile(r'^model_id = "(?P<id>[^"\n]*)"', re.MULTILINE)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The weights derive from their training data, whose terms differ (IMDB reviews, Wikipedia, MNLI's genres):
# "other" until the publisher picks the license that fits; each card says so in words.
LICENSE = "other"
# Files of the shared data folder (${BERT_DATA_DIR}, its README.md) and the Hub datasets they are copies of.
KNOWN_DATASETS = {"imdb_100k.jsonl.gz": "stanfordnlp/imdb"}  # by file name; the NLI / STS files by their folder
KNOWN_FOLDERS = {"mnli": "nyu-mll/glue", "stsb": "sentence-transformers/stsb", "snli": "stanfordnlp/snli"}


@dataclass
class Card:
    """What a stage's card holds: front matter, a title, one summary paragraph and (heading, markdown) sections."""

    metadata: ModelCardData
    title: str
    summary: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def render(self) -> str:
        parts = ["---", self.metadata.to_yaml().strip(), "---", "", f"# {self.title}", "", self.summary.strip()]
        for heading, body in self.sections:
            parts += ["", f"## {heading}", "", body.strip()]
        return "\n".join(parts) + "\n"


def write_card(folder: str | Path, card: Card) -> Path:
    """Write `card` as `folder`/README.md (replaced in one rename); returns the file."""
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, card.render())
    return path


def metadata(
    *,
    library_name: str,
    pipeline_tag: str,
    tags: Sequence[str],
    datasets: Sequence[str | None] = (),
    base_model: str | None = None,
    model_name: str | None = None,
    results: Sequence[EvalResult] = (),
) -> ModelCardData:
    """Hub front matter: English, `LICENSE`, and only the datasets and base model that are Hub ids."""
    known = list(dict.fromkeys(d for d in datasets if d))
    return ModelCardData(
        language=["en"],
        license=LICENSE,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=list(tags),
        datasets=known or None,
        base_model=base_model if base_model and hub_id(base_model) else None,
        model_name=model_name if results else None,
        eval_results=list(results) or None,
    )


def hub_id(name: str | None) -> str | None:
    """`name` if it reads as a Hub repository id ("owner/name") and is not an existing local path, else None."""
    if not name or not HUB_ID.match(name) or Path(name).expanduser().exists():
        return None
    return name


def dataset_id(source: str | None) -> str | None:
    """The Hub dataset a data source is: a Hub id as given, a file of the shared data folder as the set it copies
    (e.g. mnli/train.jsonl.gz → nyu-mll/glue), anything else None."""
    if not source:
        return None
    if hub_id(source):
        return source
    path = Path(source)
    return KNOWN_DATASETS.get(path.name) or KNOWN_FOLDERS.get(path.parent.name)


def source_words(source: str | None) -> str:
    """A data source as a card names it: a Hub id as is, a local file by its name only (no machine paths)."""
    if not source:
        return "unknown"
    if hub_id(source):
        return f"[{source}](https://huggingface.co/datasets/{source})"
    known = dataset_id(source)
    name = f"`{Path(source).parent.name}/{Path(source).name}`" if Path(source).parent.name else f"`{source}`"
    return f"the local file {name}" + (f" (taken from {known} on the Hub)" if known else "")


def model_reference(folder: str | Path, final: str | Path | None = None) -> str:
    """The id the card's load snippets use: the Hub id an earlier card of `folder` was pushed under, else the
    model folder (`final`, where `folder` is the temporary folder it is written in) as a user types it."""
    old = Path(folder) / CARD_FILE
    if old.is_file():
        match = MODEL_ID_LINE.search(old.read_text(encoding="utf-8"))
        if match and hub_id(match.group("id")):
            return match.group("id")
    return local_reference(final or folder)


def local_reference(folder: str | Path) -> str:
    """A folder as a user types it here: relative to the working directory when under it, else as given."""
    try:
        return str(Path(folder).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def replaceable(folder: str | Path, generated_by: str | None = None) -> bool:
    """Whether a card may be (re)written in `folder`: none there yet, or one of this project's (PROJECT_TAG), or
    one whose `library_name` is `generated_by` (a library's generic card, e.g. sentence-transformers')."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return True
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception:  # an unreadable card is nobody's to replace silently
        return False
    return PROJECT_TAG in (data.get("tags") or []) or (
        generated_by is not None and data.get("library_name") == generated_by
    )


def with_model_reference(text: str, repo_id: str) -> str:
    """A card's text with its `model_id = "..."` line, and every other mention of the folder that line named (e.g.
    `python -m siamese.evaluation --model DIR`), naming `repo_id`: the folder, absolute outside the working
    directory, is this machine's (unchanged if the card has no such line)."""
    match = MODEL_ID_LINE.search(text)
    if match is None:
        return text
    old = match.group("id")
    text = MODEL_ID_LINE.sub(f'model_id = "{repo_id}"', text)
    return re.sub(rf"(?<![\w/.-]){re.escape(old)}(?![\w/.-])", repo_id, text) if old else text


def describe_hardware(device: str, processes: int = 1) -> str:
    """What trained the model, e.g. "2-core AMD EPYC (CPU), torch 2.13.0+cpu" or "1 × NVIDIA H200, torch 2.11"."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        what = f"{processes} × {torch.cuda.get_device_name(0)}"
    elif device == "mps":
        what = "Apple GPU (MPS)"
    else:
        what = f"{os.cpu_count() or 1}-core {_cpu_name()} (CPU)" + (f", {processes} processes" if processes > 1 else "")
    return f"{what}, torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "CPU"


def duration(seconds: float | None) -> str:
    """ "13 min 40 s", "45 s", "–" for none."""
    if seconds is None:
        return "–"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def table(rows: Sequence[tuple[str, object]], header: tuple[str, str] = ("", "")) -> str:
    """A two-column markdown table; a None value shows as –."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {name} | {'–' if value is None else value} |" for name, value in rows]
    return "\n".join(lines)


def warmup_words(value: float | None) -> str:
    """`train.warmup_steps` in words: a value below 1 is a fraction of max_steps (as in TrainingArguments)."""
    if value is None:
        return "?"
    return f"{value:.0%} of max_steps" if 0 < value < 1 else f"{int(value)} steps"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def read_json(path: Path) -> Any:
    """A folder's JSON file as the card reads it: None when missing or unreadable (a card never fails a run)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_mapping(path: Path) -> dict[str, Any]:
    """A JSON (.json) or YAML (other) file holding a mapping; {} when missing, unreadable or not a mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
