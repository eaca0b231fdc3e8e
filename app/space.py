"""`python -m app.space --model OWNER/NAME --out DIR [--push OWNER/SPACE] [--private]`: a Hugging Face Space that
runs this app on a model published with `python -m stagekit.push` (docs/app.md, "As a Hugging Face Space").

The folder holds what a Streamlit Space runs: `README.md` (the Space's front matter: sdk streamlit, its version,
the entry file, the model it shows), `space_app.py` (the entry: the app on that model), `requirements.txt` (the
app's runtime packages; the Space installs streamlit itself) and copies of the packages the app imports (`app/`,
`siamese/`, `stagekit/`). With `--push` the folder is uploaded as a Space (stagekit/push.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from stagekit.config import REPO_ROOT
from stagekit.errors import UserError
from stagekit.model_card import hub_id

ENTRY = "space_app.py"
PACKAGES = ("app", "siamese", "stagekit")  # what app/streamlit_app.py imports, transitively
# The runtime part of requirements.txt, with its bounds (tests/app/test_space.py keeps them in step); the CPU
# wheel of torch, as a free CPU Space runs it.
REQUIREMENTS = """--extra-index-url https://download.pytorch.org/whl/cpu
torch>=2.5
transformers>=5.0,<6
tokenizers>=0.22
datasets>=5.0,<6
sentence-transformers>=6.0,<7
accelerate>=1.10
safetensors>=0.4
scikit-learn>=1.5
pyyaml>=6.0
pandas>=2.2
"""
ENTRY_CODE = '''"""The Space's entry: the bert-sentence-encoder app on {model} (APP_MODEL_DIR, a Space variable, overrides it)."""

import os
import runpy
from pathlib import Path

os.environ.setdefault("APP_MODEL_DIR", "{model}")
os.environ.setdefault("APP_OUTPUTS_DIR", str(Path(__file__).parent / "outputs"))  # no local runs in a Space
runpy.run_path(str(Path(__file__).parent / "app" / "streamlit_app.py"), run_name="__main__")
'''


def space_readme(model: str, title: str, streamlit_version: str) -> str:
    return f"""---
title: {title}
emoji: 🔎
colorFrom: blue
colorTo: green
sdk: streamlit
sdk_version: {streamlit_version}
app_file: {ENTRY}
pinned: false
models:
- {model}
short_description: Sentence similarity and NLI with a small Siamese BERT
---

# {title}

The Streamlit app of the bert-sentence-encoder project on the model [{model}](https://huggingface.co/{model}): the cosine similarity of two sentences read against random sentence
pairs, the NLI head's entailment / neutral / contradiction, semantic search and a batch tab. Set the Space
variable `APP_MODEL_DIR` to show another model published by `python -m stagekit.push`.
"""


def write_space(model: str, out: Path, title: str | None = None) -> Path:
    """Write the Space folder for Hub model `model` into `out` (made; refused if it holds anything)."""
    import streamlit

    if hub_id(model) is None:
        raise UserError(f"--model {model!r}: a Space shows a model on the Hub (owner/name; push it first with "
                        "python -m stagekit.push MODEL_DIR OWNER/NAME)")  # fmt: skip
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: pass a new folder with --out")
    out.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, out / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / ENTRY).write_text(ENTRY_CODE.format(model=model), encoding="utf-8")
    (out / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    name = title or model.split("/")[-1]
    (out / "README.md").write_text(space_readme(model, name, streamlit.__version__), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m app.space", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the Hub id of a model pushed with python -m stagekit.push")
    parser.add_argument("--out", required=True, type=Path, help="a new folder for the Space's files")
    parser.add_argument("--title", help="the Space's title (default: the model's name)")
    parser.add_argument("--push", metavar="OWNER/SPACE", help="also upload the folder as this Space")
    parser.add_argument("--private", action="store_true", help="with --push: create the Space private")
    args = parser.parse_args(argv)
    if args.push:
        from stagekit.push import check_repo_id

        check_repo_id(args.push)  # before anything is written
    out = write_space(args.model, args.out, args.title)
    print(out)
    if args.push:
        from stagekit.push import check_hub, push_folder

        token = check_hub(args.push, out, again=f"python -m stagekit.push {out} {args.push}")
        url = push_folder(out, args.push, private=args.private, token=token, repo_type="space", space_sdk="streamlit")
        print(url)
    return out


if __name__ == "__main__":
    from stagekit.cli import run_cli

    sys.exit(run_cli(main))
